"""Pre-launch check of a torchtitan 0.3 job: parse it as the ranks will, with the ``rope_scaling`` section.

``python -m titan_rope_ext.torchtitan03.launch.check <titan-rope train args>`` exits 0 when the job
is fine, or 2 with ``titan-rope: error: <message>``. The job is parsed by torchtitan's own
ConfigManager on the ``jobs`` form of the arguments, which builds ``RopeTrainer.Config`` and so
runs its checks (the section's values, the model's attention and RoPE, longrope lengths,
``from_hf_assets``). Nothing is built and no device is touched.
"""

from __future__ import annotations

import sys

from titan_rope_ext.torchtitan03.launch.args import with_rope_section


class ConfigError(ValueError):
    pass


def preflight(args: list[str], as_given: bool = False):
    """Parses ``args`` (``titan-rope train`` form) like torchtitan's ``train.py``; returns the RopeTrainer.Config.

    ``as_given``: parse them as ``torchrun -m torchtitan.train`` does, without the rewrite to the ``jobs`` form
    (the config function's own ``Trainer.Config``: a section only if it returns ``RopeTrainer.Config``).
    """
    from torchtitan.config import ConfigManager

    try:
        return ConfigManager().parse_args(list(args) if as_given else with_rope_section(args))
    except SystemExit as e:  # tyro printed its usage error (bad value, unknown flag) already
        raise ConfigError("invalid torchtitan arguments (see above)") from e
    except (ValueError, TypeError, ImportError) as e:
        raise ConfigError(str(e)) from e


def check_or_exit(args: list[str]) -> None:
    try:
        preflight(args)
    except ConfigError as e:
        print(f"titan-rope: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    check_or_exit(sys.argv[1:])
