"""The launcher's pre-launch check: parse the job as torchtitan will and check the rope section.

``python -m titan_rope_ext.launch.check <torchtitan args>`` exits 0 when the job is fine, or 2 with
``titan-rope: error: <message naming the key and the value>``. ``titan-rope train`` runs it before
torchrun starts any rank; a single rank runs the same check in its own process before torchtitan's
main (``TITAN_ROPE_CHECK=1``), so no device work starts for a bad job.
"""

from __future__ import annotations

import sys

from titan_rope_ext.config import RopeScaling
from titan_rope_ext.converter import check_job, NAME


class ConfigError(ValueError):
    pass


def preflight(args: list[str]):
    """Parses ``args`` with torchtitan's ConfigManager and checks ``[rope_scaling]``; returns the JobConfig.

    Raises ConfigError for a bad value (tyro's own usage message is printed first), an
    unsupported model, longrope lists that do not fit the model's head_dim, or a section
    that has no effect because ``model.converters`` does not list the converter.
    """
    from torchtitan.config import ConfigManager

    try:
        job = ConfigManager().parse_args(list(args))
    except SystemExit as e:  # tyro's usage errors (bad value, unknown flag) are already printed
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


def check_or_exit(args: list[str]) -> None:
    try:
        preflight(args)
    except ConfigError as e:
        print(f"titan-rope: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    check_or_exit(sys.argv[1:])
