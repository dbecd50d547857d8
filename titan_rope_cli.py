"""``titan-rope``: run torchtitan's own trainer with the rope_scaling converter, on CPU-only hosts too.

    titan-rope train [--nproc N] --job.config_file configs/llama3_debug_yarn.toml [torchtitan args]
    titan-rope inspect configs/llama3_debug_yarn.toml [--plot out.png] [torchtitan args]
    titan-rope train|inspect --module llama3 --config llama3_debugmodel --rope_scaling.rope_type yarn ...  (torchtitan 0.3)
    titan-rope eval --job.config_file ... --checkpoint PATH [options] [torchtitan args]

Arguments other than ``--nproc`` go to torchtitan unchanged. The job is parsed with torchtitan's
ConfigManager and ``[rope_scaling]`` is checked against the model before any device work
(``titan_rope_ext.launch.check``; a bad value exits with status 2 and a message naming the key).
N = 1 runs one rank process directly; N > 1 runs the check, then torchrun (``--standalone``,
rank 0's log shown). Each rank runs ``torchtitan.train``'s main (``titan_rope_ext.launch.worker``).

On a host without an accelerator the ranks use gloo and the CPU shims of
``titan_rope_ext.launch.cpu``, and unless the job sets ``training.mixed_precision_param`` the run
is float32 (bf16 autocast was ~27x slower per step on the 2-core dev machine).

This module sits outside the ``titan_rope_ext`` package on purpose and imports neither it nor
torchtitan: importing torchtitan takes ~8 s on a small CPU and fixes the device type at import,
so the launcher decides in a light process and leaves that import to the rank processes.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

_CONFIG_KEYS = ("--job.config_file", "--job.config-file")
_PRECISION_KEYS = ("--training.mixed_precision_param", "--training.mixed-precision-param")


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
        return False  # torchtitan reports a missing file itself
    with open(path, "rb") as f:
        return "mixed_precision_param" in tomllib.load(f).get("training", {})


def accelerator_available() -> bool:
    import torch

    return torch._utils._get_available_device_type() is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def on_torchtitan03() -> bool:
    """Whether the installed torchtitan is 0.3.x (call after argument parsing: imports the package, so torch)."""
    from titan_rope_ext._torchtitan import torchtitan_line

    return torchtitan_line() == "0.3"


def launch_package() -> str:
    """Where the rank entry and the pre-launch check live for the installed torchtitan line."""
    return "titan_rope_ext.torchtitan03.launch" if on_torchtitan03() else "titan_rope_ext.launch"


def train(nproc: int, args: list[str]) -> int:
    package = launch_package()
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="titan-rope", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser(
        "train",
        help="run torchtitan.train on N ranks (CPU-only hosts supported)",
        description="Arguments other than --nproc go to torchtitan unchanged.",
    )
    p_train.add_argument("--nproc", type=int, default=1, help="ranks on this host (default 1)")
    sub.add_parser("inspect", add_help=False,
                   help="per-band RoPE of a job: CONFIG.toml [--plot out.png] [torchtitan overrides]")
    sub.add_parser("eval", add_help=False,
                   help="perplexity by position and passkey retrieval of a checkpoint (--help for options)")
    ns, rest = parser.parse_known_args(argv)
    if ns.command == "inspect":  # in this process: one model on meta, no ranks
        if on_torchtitan03():
            from titan_rope_ext.torchtitan03.tools import inspect_rope
        else:
            from titan_rope_ext.tools import inspect_rope

        return inspect_rope.main(rest)
    if ns.command == "eval":
        if on_torchtitan03():
            print("titan-rope: error: eval reads torchtitan 0.2 jobs only so far; install torchtitan 0.2.x",
                  file=sys.stderr)
            return 2
        from titan_rope_ext.tools import evaluate

        return evaluate.main(rest)
    if ns.nproc < 1:
        parser.error(f"--nproc must be >= 1, got {ns.nproc}")
    return train(ns.nproc, rest)


if __name__ == "__main__":
    sys.exit(main())
