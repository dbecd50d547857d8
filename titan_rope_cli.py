"""``titan-rope``: run torchtitan's own trainer with the rope_scaling converter, on CPU-only hosts too.

    titan-rope train [--nproc N] --job.config_file configs/llama3_debug_yarn.toml [torchtitan args]
    titan-rope inspect configs/llama3_debug_yarn.toml [--plot out.png] [torchtitan args]
    titan-rope train|inspect --module llama3 --config llama3_debugmodel --rope_scaling.rope_type yarn ...  (torchtitan 0.3)
    titan-rope eval --job.config_file ... --checkpoint PATH [options] [torchtitan args]
    titan-rope export --job.config_file ... --checkpoint PATH --out DIR [options] [torchtitan args]
    titan-rope eval|export --module M --config F ... --checkpoint PATH [options]  (torchtitan 0.3)

Arguments other than the subcommand's own go to torchtitan unchanged. The job is parsed with
torchtitan's ConfigManager and ``[rope_scaling]`` is checked against the model before any device work
(``titan_rope_ext.torchtitan02.launch.check``; a bad job exits with status 2 and a message naming the key).
N = 1 runs one rank process directly; N > 1 runs the check, then torchrun (``--standalone``,
rank 0's log shown). Each rank runs ``torchtitan.train``'s main (``titan_rope_ext.torchtitan02.launch.worker``).

The job's form follows the installed torchtitan: a TOML file (``--job.config_file``) on 0.2.x, a config
function (``--module M --config F``) on 0.3.x; each line's rank entry and pre-launch check live in its
own package (``titan_rope_ext.launch``, ``titan_rope_ext.torchtitan03.launch``).

On a host without an accelerator the ranks use gloo and the CPU shims of
``titan_rope_ext.launch.cpu``, and unless the job sets ``training.mixed_precision_param`` the run
is float32 (bf16 autocast was ~27x slower per step on the 2-core dev machine).

This module sits outside the ``titan_rope_ext`` package on purpose and imports neither it, torch nor
torchtitan until the arguments are parsed: importing torchtitan takes ~8 s on a small CPU and fixes the
device type at import, so ``--help`` and argument errors are instant and the launcher decides in a light
process, leaving that import to the rank processes.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import socket
import subprocess
import sys
import textwrap

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

_CONFIG_KEYS = ("--job.config_file", "--job.config-file")
_PRECISION_KEYS = ("--training.mixed_precision_param", "--training.mixed-precision-param")
_PLOT_EXTRA = "pip install 'titan_rope_ext[plot]' (or: pip install matplotlib)"


def _flag_value(args: list[str], keys: tuple[str, ...]) -> str | None:
    for i, arg in enumerate(args):
        key, eq, value = arg.partition("=")
        if key in keys:
            return value if eq else (args[i + 1] if i + 1 < len(args) else None)
    return None


def sets_precision(args: list[str]) -> bool:
    """Whether the CLI args or the job's TOML set training.mixed_precision_param."""
    if _flag_value(args, _PRECISION_KEYS) is not None:
        return True
    path = _flag_value(args, _CONFIG_KEYS)
    if not path or not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return "mixed_precision_param" in tomllib.load(f).get("training", {})


def torchtitan_line() -> str | None:
    """``"0.2"``, ``"0.3"`` or None, from package metadata: no import of torch or torchtitan (the package's own
    ``titan_rope_ext._torchtitan`` answers the same, but importing any module of the package imports torch)."""
    import importlib.metadata

    try:
        return ".".join(importlib.metadata.version("torchtitan").split(".")[:2])
    except importlib.metadata.PackageNotFoundError:
        return None


def launch_package(line: str | None) -> str:
    """Where the rank entry and the pre-launch check live for a torchtitan line."""
    return "titan_rope_ext.torchtitan03.launch" if line == "0.3" else "titan_rope_ext.torchtitan02.launch"


def accelerator_available() -> bool:
    import torch

    return torch._utils._get_available_device_type() is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(nproc: int, args: list[str], line: str | None = "0.2") -> int:
    package = launch_package(line)
    env = dict(os.environ)
    if not accelerator_available():
        env["TITAN_ROPE_CPU_WORKER"] = "1"
        if not sets_precision(args):
            args = [*args, "--training.mixed_precision_param", "float32"]
            print("titan-rope: no accelerator; running on CPU with gloo in float32", file=sys.stderr)
    python = sys.executable
    if nproc == 1:
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", GROUP_RANK="0",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), TITAN_ROPE_CHECK="1")
        return subprocess.call([python, "-m", f"{package}.worker", *args], env=env)
    rc = subprocess.call([python, "-m", f"{package}.check", *args], env=env)
    if rc != 0:
        return rc
    return subprocess.call(
        [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
         "--local-ranks-filter=0", "-m", f"{package}.worker", *args],
        env=env,
    )


def rope_keys_help(width: int = 100) -> str:
    """The ``[rope_scaling]`` keys with their docstrings, read from ``titan_rope_ext/config.py``'s source
    (parsed, not imported: importing the package imports torch)."""
    spec = importlib.util.find_spec("titan_rope_ext")
    if spec is None or not spec.submodule_search_locations:
        return "  (titan_rope_ext is not installed)"
    path = os.path.join(list(spec.submodule_search_locations)[0], "config.py")
    with open(path) as f:
        tree = ast.parse(f.read())
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "RopeScaling").body
    lines = []
    for node, after in zip(body, body[1:]):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        doc = after.value.value if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) else ""
        doc = " ".join(str(doc).split())
        lines.append(textwrap.fill(doc, width, initial_indent=f"  {node.target.id:<34}",
                                   subsequent_indent=" " * 36))
    return "\n".join(lines)


def _fail(parser: argparse.ArgumentParser, message: str) -> int:
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return 2


_MODULE_KEYS, _FUNCTION_KEYS = ("--module",), ("--config",)
_EXAMPLE_03 = "--module titan_rope_ext.torchtitan03 --config llama3_debugmodel_yarn"


def _check_job(parser: argparse.ArgumentParser, args: list[str], line: str | None, command: str) -> int | None:
    """Exit status 2 with one line when ``args`` name no job of the installed line's form (0.2: a TOML file
    that exists; 0.3: ``--module M --config F``); None when they do."""
    if line == "0.3":
        if _flag_value(args, _CONFIG_KEYS) is not None or any(a.endswith(".toml") for a in args):
            return _fail(parser, "torchtitan 0.3 has no TOML jobs (--job.config_file): use --module M --config F with "
                                 f"--rope_scaling.<key> flags, e.g. titan-rope {command} {_EXAMPLE_03}; or install "
                                 "torchtitan 0.2.x for the TOML files in configs/")
        if _flag_value(args, _MODULE_KEYS) is None or _flag_value(args, _FUNCTION_KEYS) is None:
            return _fail(parser, f"needs a job: --module M --config F (torchtitan 0.3), e.g. titan-rope {command} "
                                 f"{_EXAMPLE_03}")
        return None
    path = _flag_value(args, _CONFIG_KEYS)
    if path is None:
        return _fail(parser, f"needs a job: --job.config_file JOB.toml (shipped jobs: configs/*.toml), e.g. "
                             f"titan-rope {command} --job.config_file configs/llama3_debug_yarn.toml")
    if not os.path.isfile(path):
        return _fail(parser, f"--job.config_file: no such file {path!r}")
    return None


def _has_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


_TRAIN_EPILOG = """\
The job: torchtitan 0.2.x: --job.config_file JOB.toml; torchtitan 0.3.x: --module M --config F (any
stock or own config function); then any --<section>.<key> <value> override. Every torchtitan key:
`python -m torchtitan.config.manager --job.custom_config_module titan_rope_ext.job_config --help` (0.2),
`python -m torchtitan.train --module titan_rope_ext.torchtitan03.jobs --config llama3.llama3_debugmodel --help`
(0.3). The [rope_scaling] keys (--rope_scaling.<key> <value> on the command line; a TOML section on 0.2):

{keys}

Examples: titan-rope train --job.config_file configs/llama3_debug_yarn.toml --rope_scaling.factor 8     (0.2)
          titan-rope train --module llama3 --config llama3_debugmodel --rope_scaling.rope_type yarn \\
              --rope_scaling.factor 4 --rope_scaling.original_max_position_embeddings 32               (0.3)
"""


def _add_job_option(p: argparse.ArgumentParser, line: str | None) -> None:
    """``eval`` and ``export`` read the job a checkpoint was trained with: 0.2's TOML file is their option; 0.3's
    ``--module M --config F`` flags pass through to torchtitan, and ``--torchtitan-train`` says who trained it."""
    if line == "0.3":
        p.set_defaults(job_config_file=None)
        p.add_argument("--torchtitan-train", action="store_true",
                       help="the checkpoint comes from torchtitan's own torchtitan.train (torchrun, run_train.sh) "
                            "given these arguments, not from titan-rope train: parsed as given, the RoPE is the "
                            "model config's (a RopeScalingConverter's, --override.imports', or stock 0.3's)")
    else:
        p.add_argument("--job.config_file", dest="job_config_file", metavar="JOB.toml", required=True,
                       help="the torchtitan TOML job the checkpoint was trained with (its overrides too)")


def build_parser(line: str | None = "0.2") -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``titan-rope`` parser and its subcommand parsers by name, for a torchtitan line (0.3's jobs are
    ``--module M --config F`` flags, so ``inspect`` takes no positional job file and ``eval`` and ``export`` no
    ``--job.config_file`` there)."""
    parser = argparse.ArgumentParser(prog="titan-rope", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,inspect,eval,export}")
    raw = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("train", help="run torchtitan.train on N ranks (CPU-only hosts supported)",
                       usage="titan-rope train [--nproc N] (--job.config_file JOB.toml | --module M --config F) "
                             "[--<section>.<key> VALUE ...]",
                       description="Checks the job (exit 2 on a bad one), then runs torchtitan's own Trainer.",
                       epilog=_TRAIN_EPILOG.format(keys=rope_keys_help()), formatter_class=raw)
    p.add_argument("--nproc", type=int, default=1, help="ranks on this host (default 1)")

    p = sub.add_parser("inspect", help="per-band RoPE of a job: JOB.toml [--plot out.png] [torchtitan overrides]",
                       usage="titan-rope inspect (JOB.toml | --module M --config F) [--plot out.png] "
                             "[--<section>.<key> VALUE ...]",
                       description="Resolves the job as training does (no device work) and prints, per frequency "
                                   "band, the wavelengths of plain RoPE, stock torchtitan and the converted model. "
                                   "torchtitan 0.2: a TOML job file; 0.3: --module M --config F.")
    if line == "0.3":
        p.set_defaults(config=None)
    else:
        p.add_argument("config", nargs="?", default=None, help="torchtitan 0.2 TOML job file")
    p.add_argument("--plot", default=None, help=f"write a PNG of wavelength vs dimension (needs matplotlib: {_PLOT_EXTRA})")

    job_usage = "--module M --config F" if line == "0.3" else "--job.config_file JOB.toml"
    p = sub.add_parser("eval", help="perplexity by position and passkey retrieval of a checkpoint",
                       usage=f"titan-rope eval {job_usage} --checkpoint DIR [options] [--<section>.<key> VALUE ...]",
                       description="Loads a torchtitan DCP checkpoint (full or model-only) into the job's converted "
                                   "model and measures sliding-window perplexity, perplexity by position and passkey "
                                   "retrieval at each length. CPU or GPU. Pass the job as it trained (torchtitan 0.2: "
                                   "a TOML job file; 0.3: --module M --config F and its flags).",
                       allow_abbrev=False)  # 0.3's job flags go to torchtitan whole, never matched to a prefix
    _add_job_option(p, line)
    p.add_argument("--checkpoint", required=True,
                   help="a torchtitan DCP folder, e.g. <job.dump_folder>/checkpoint/step-100")
    p.add_argument("--lengths", default=None,
                   help="comma-separated window lengths (default: training seq_len x 1, 2, 4, 8)")
    p.add_argument("--depths", default="0,0.25,0.5,0.75,1", help="passkey depths in [0, 1]")
    p.add_argument("--trials", type=int, default=5, help="passkey prompts per length and depth")
    p.add_argument("--stride", type=int, default=256, help="sliding-window stride")
    p.add_argument("--buckets", type=int, default=4, help="position buckets per window")
    p.add_argument("--tokens", type=int, default=32768, help="held-out tokens scored per length")
    p.add_argument("--seed", type=int, default=1, help="held-out corpus and passkey seed (training used 0)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--out", default=None,
                   help="folder for eval.json and eval.png (default: <job.dump_folder>/eval/<checkpoint folder name>)")

    p = sub.add_parser("export", help="a checkpoint as a Hugging Face model folder with the trained RoPE",
                       usage=f"titan-rope export {job_usage} --checkpoint DIR --out DIR [options] "
                             "[--<section>.<key> VALUE ...]\n"
                             f"       titan-rope export {job_usage} --config-only [--out DIR]",
                       description="Writes safetensors (torchtitan's state-dict adapter), config.json with the "
                                   "trained RoPE (transformers computes it exactly) and the tokenizer files, from a "
                                   "DCP checkpoint (full or model-only), on CPU. Pass the job as it trained "
                                   "(torchtitan 0.2: a TOML job file; 0.3: --module M --config F and its flags).",
                       allow_abbrev=False)  # 0.3's --config is the job's, not an abbreviation of --config-only
    _add_job_option(p, line)
    p.add_argument("--checkpoint", help="a torchtitan DCP folder (full or model-only), e.g. DUMP/checkpoint/step-100")
    p.add_argument("--out", help="the HF folder to write (must not exist or be empty, unless --force)")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default=None,
                   help="weights' dtype (default float32; with --config-only the job's checkpoint.export_dtype)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.add_argument("--config-only", action="store_true",
                   help="write config.json and tokenizer files into an HF folder that holds the weights (default: "
                        "the job's checkpoint.last_save_in_hf folder); the step for run_train.sh users")
    return parser, dict(sub.choices)


def parse(argv: list[str]) -> tuple[argparse.ArgumentParser, argparse.Namespace, list[str]]:
    """``(subcommand parser, its options, the torchtitan arguments)``; exits on ``--help`` and usage errors."""
    parser, subs = build_parser(torchtitan_line())
    ns, rest = parser.parse_known_args(argv)
    return subs[ns.command], ns, rest


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    sub, ns, rest = parse(argv)
    line = torchtitan_line()
    if ns.command == "inspect":  # in this process: one model on meta, no ranks
        if ns.plot and not _has_matplotlib():
            return _fail(sub, f"--plot needs matplotlib: {_PLOT_EXTRA}")
        if line == "0.3":
            if (status := _check_job(sub, rest, line, "inspect")):
                return status
            from titan_rope_ext.torchtitan03.tools import inspect_rope
        else:
            if ns.config is None:
                return _fail(sub, "needs a job: titan-rope inspect JOB.toml (shipped jobs: configs/*.toml)")
            if not os.path.isfile(ns.config):
                return _fail(sub, f"no such job file {ns.config!r}")
            from titan_rope_ext.torchtitan02.tools import inspect_rope
        return inspect_rope.run(ns, rest)
    if ns.command == "eval" and line == "0.3":
        if (status := _check_job(sub, rest, line, "eval")):
            return status
        from titan_rope_ext.torchtitan03.tools import evaluate

        return evaluate.run(ns, rest)
    if ns.command == "eval":
        if not os.path.isfile(ns.job_config_file):
            return _fail(sub, f"--job.config_file: no such file {ns.job_config_file!r}")
        from titan_rope_ext.torchtitan02.tools import evaluate

        return evaluate.run(ns, ["--job.config_file", ns.job_config_file, *rest])
    if ns.command == "export":
        if line == "0.3":
            if (status := _check_job(sub, rest, line, "export")):
                return status
        elif not os.path.isfile(ns.job_config_file):
            return _fail(sub, f"--job.config_file: no such file {ns.job_config_file!r}")
        if ns.config_only and ns.checkpoint:
            return _fail(sub, "--config-only writes no weights; drop --checkpoint")
        if not ns.config_only and not (ns.checkpoint and ns.out):
            return _fail(sub, "--checkpoint and --out are required (or --config-only)")
        if line == "0.3":
            from titan_rope_ext.torchtitan03.tools import export

            return export.run(ns, rest)
        from titan_rope_ext.torchtitan02.tools import export

        return export.run(ns, ["--job.config_file", ns.job_config_file, *rest])
    if ns.nproc < 1:
        return _fail(sub, f"--nproc must be >= 1, got {ns.nproc}")
    if (status := _check_job(sub, rest, line, "train")):
        return status
    return train(ns.nproc, rest, line)


if __name__ == "__main__":
    sys.exit(main())
