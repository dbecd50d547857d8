"""``titan-rope train`` arguments for torchtitan 0.3: ``--module M --config F`` -> the ``jobs`` form. Pure Python."""

from __future__ import annotations

JOBS = "titan_rope_ext.torchtitan03.jobs"


def _take(args: list[str], flag: str) -> tuple[str | None, list[str]]:
    rest, value, i = [], None, 0
    while i < len(args):
        arg = args[i]
        if arg == flag:
            if i + 1 >= len(args):
                raise ValueError(f"{flag} requires a value")
            value, i = args[i + 1], i + 2
            continue
        if arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return value, rest


def with_rope_section(args: list[str]) -> list[str]:
    """``args`` with ``--module M --config F`` replaced by ``--module <jobs> --config M.F`` (already that: unchanged)."""
    if any(a.split("=", 1)[0] in ("--job.config_file", "--job.config-file") for a in args):
        raise ValueError("torchtitan 0.3 has no TOML jobs (--job.config_file): use --module M --config F with "
                         "--rope_scaling.<key> flags (e.g. --module titan_rope_ext.torchtitan03 --config "
                         "llama3_debugmodel_yarn), or install torchtitan 0.2.x for the TOML files in configs/")
    module, rest = _take(list(args), "--module")
    config, rest = _take(rest, "--config")
    if module is None or config is None:
        raise ValueError("titan-rope train on torchtitan 0.3 needs --module and --config "
                         "(e.g. --module llama3 --config llama3_debugmodel)")
    if module != JOBS:
        config = f"{module}.{config}"
    return ["--module", JOBS, "--config", config, *rest]
