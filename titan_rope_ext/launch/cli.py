"""``titan-rope``: run torchtitan's own trainer with the rope_scaling converter, on CPU too.

    titan-rope train [--nproc N] --job.config_file configs/llama3_debug_yarn.toml [torchtitan args]

``train`` parses the job with torchtitan's ConfigManager and checks the ``[rope_scaling]``
section against the model before anything is launched (bad values exit with status 2 and
a message naming the key), then runs ``torchtitan.train``'s main on N ranks through
torchrun. On a host without an accelerator the ranks use gloo and the CPU shims of
``titan_rope_ext.launch.cpu``, and unless the job sets ``training.mixed_precision_param``
the run uses float32 (CPU bfloat16 autocast was ~27x slower on the 2-core dev machine).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from titan_rope_ext.launch.cpu import accelerator_available

_PRECISION_KEYS = ("--training.mixed_precision_param", "--training.mixed-precision-param")


class ConfigError(ValueError):
    pass


def preflight(args: list[str]):
    """Parses the job as torchtitan will and checks the rope section; returns the JobConfig."""
    from torchtitan.config import ConfigManager

    from titan_rope_ext.config import RopeScaling
    from titan_rope_ext.converter import check_job, NAME

    try:
        job = ConfigManager().parse_args(list(args))
    except SystemExit as e:  # tyro's own usage errors (unknown flag, bad choice) already printed
        raise ConfigError("invalid torchtitan arguments (see above)") from e
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from e
    section = getattr(job, NAME, None)
    try:
        if NAME in job.model.converters:
            check_job(job)
        elif section is not None and section != RopeScaling():
            raise ValueError(
                f"[{NAME}] sets {section.describe()} but model.converters = {job.model.converters} "
                f"does not list {NAME!r}; add it or the section has no effect"
            )
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return job


def _sets_precision(args: list[str], job) -> bool:
    if any(a.split("=", 1)[0] in _PRECISION_KEYS for a in args):
        return True
    path = job.job.config_file
    if not path:
        return False
    with open(path, "rb") as f:
        return "mixed_precision_param" in tomllib.load(f).get("training", {})


def worker_command(nproc: int, args: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        "--local-ranks-filter=0", "-m", "titan_rope_ext.launch.worker", *args,
    ]


def train(nproc: int, args: list[str]) -> int:
    try:
        job = preflight(args)
    except ConfigError as e:
        print(f"titan-rope: error: {e}", file=sys.stderr)
        return 2
    env = dict(os.environ)
    if not accelerator_available():
        env["TITAN_ROPE_CPU_WORKER"] = "1"
        if not _sets_precision(args, job):
            args = [*args, "--training.mixed_precision_param", "float32"]
            print("titan-rope: no accelerator; running on CPU with gloo in float32", file=sys.stderr)
    return subprocess.call(worker_command(nproc, args), env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="titan-rope", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser(
        "train",
        help="run torchtitan.train (torchrun for N ranks; CPU-only hosts supported)",
        description="Arguments other than --nproc go to torchtitan unchanged.",
    )
    p_train.add_argument("--nproc", type=int, default=1, help="ranks on this host (default 1)")
    ns, rest = parser.parse_known_args(argv)
    if ns.command == "train":
        if ns.nproc < 1:
            parser.error(f"--nproc must be >= 1, got {ns.nproc}")
        return train(ns.nproc, rest)
    parser.error(f"unknown command {ns.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
