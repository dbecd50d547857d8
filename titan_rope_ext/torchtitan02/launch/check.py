"""The launcher's pre-launch check: parse the job as torchtitan will and check the rope section.

``python -m titan_rope_ext.torchtitan02.launch.check <torchtitan args>`` exits 0 when the job is fine, or 2 with
``titan-rope: error: <message naming the key and the value>``. ``titan-rope train`` runs it before
torchrun starts any rank; a single rank runs the same check in its own process before torchtitan's
main (``TITAN_ROPE_CHECK=1``), so no device work starts for a bad job.

Before torchtitan's ConfigManager sees the job, the TOML file is read here: a missing or unreadable
file, and a key or section the job config does not have, get one line naming the file, the key, the
valid keys and the closest one (torchtitan would raise a bare "Invalid field names" or a traceback).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from titan_rope_ext.config import RopeScaling
from titan_rope_ext.torchtitan02.converter import check_job, NAME
from titan_rope_ext.torchtitan02.job_config import unlisted_section_error

CUSTOM_CONFIG_MODULE = "titan_rope_ext.job_config"


class ConfigError(ValueError):
    pass


def _flag(args: list[str], names: tuple[str, ...]) -> str | None:
    for i, arg in enumerate(args):
        key, eq, value = arg.partition("=")
        if key in names:
            return value if eq else (args[i + 1] if i + 1 < len(args) else None)
    return None


def read_toml(args: list[str]) -> tuple[str | None, dict]:
    """``(path, values)`` of the job's ``--job.config_file`` (``(None, {})`` without one); ConfigError for a
    missing or malformed file."""
    path = _flag(args, ("--job.config_file", "--job.config-file"))
    if path is None:
        return None, {}
    if not os.path.isfile(path):
        raise ConfigError(f"--job.config_file: no such file {path!r}")
    try:
        with open(path, "rb") as f:
            return path, tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--job.config_file {path!r} is not valid TOML: {e}") from e


def _fields(classes: list[type]) -> dict[str, list[type]]:
    """Field name -> the field's dataclass types, over the (base, custom) classes torchtitan merges."""
    out: dict[str, list[type]] = {}
    for cls in classes:
        for f in dataclasses.fields(cls):
            types = out.setdefault(f.name, [])
            if isinstance(f.type, type) and dataclasses.is_dataclass(f.type):
                types.append(f.type)
    return out


def unknown_keys(path: str, values: dict, classes: list[type], where: str = "") -> None:
    """Raises ConfigError for the first TOML key that the merged job config has no field for, naming the
    valid keys of that section and the closest one."""
    fields = _fields(classes)
    for key, value in values.items():
        name = f"{where}.{key}" if where else key
        if key not in fields:
            what = f"[{where}] has no key {key!r}" if where else f"there is no section [{key}]"
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            if not where and key == NAME:
                hint = f'; add [job] custom_config_module = "{CUSTOM_CONFIG_MODULE}", which defines it'
            valid = "valid keys" if where else "valid sections"
            raise ConfigError(f"{path}: {what}{hint} ({valid}: {', '.join(sorted(fields))})")
        if isinstance(value, dict) and fields[key]:
            unknown_keys(path, value, fields[key], name)


def _config_classes(args: list[str], toml: dict) -> list[type]:
    """torchtitan's JobConfig and, when the job names one, its custom config module's JobConfig."""
    from torchtitan.config import JobConfig

    module = _flag(args, ("--job.custom_config_module", "--job.custom-config-module"))
    if module is None:
        module = (toml.get("job") or {}).get("custom_config_module")
    if not module:
        return [JobConfig]
    try:
        return [JobConfig, importlib.import_module(module).JobConfig]
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"job.custom_config_module = {module!r} cannot be imported: {e}") from e


def preflight(args: list[str]):
    """Parses ``args`` with torchtitan's ConfigManager and checks ``[rope_scaling]``; returns the JobConfig.

    Raises ConfigError for a missing or malformed TOML, an unknown key (naming the closest valid one),
    a bad value (tyro's own usage message is printed first), an unsupported model, longrope lists that
    do not fit the model's head_dim, or a section that has no effect because ``model.converters`` does
    not list the converter.
    """
    from torchtitan.config import ConfigManager

    path, toml = read_toml(args)
    if path is not None:
        unknown_keys(path, toml, _config_classes(args, toml))
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
        elif isinstance(section, RopeScaling) and (error := unlisted_section_error(section, job.model.converters)):
            raise ValueError(error)  # a section composed without our checked field (job_config.rope_scaling_field)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return job


_TRAINING_STATES = ("optimizer", "lr_scheduler", "dataloader", "train_state")


def resume_problem(job) -> str | None:
    """Why torchtitan cannot resume ``job`` from its own checkpoint folder, or None.

    torchtitan resumes from the latest ``step-N`` in ``<dump_folder>/<checkpoint.folder>`` and then needs
    the training states too, but by default it saves the last step model-only
    (``checkpoint.last_save_model_only``): rerunning a finished checkpointed job fails deep in DCP with
    "Missing key in checkpoint state_dict: dataloader.dp_rank_0" (stock torchtitan does the same).
    """
    import re

    ckpt = job.checkpoint
    folder = os.path.join(job.job.dump_folder, ckpt.folder)
    if not ckpt.enable or not os.path.isdir(folder):
        return None
    steps = [int(m.group(1)) for name in os.listdir(folder) if (m := re.fullmatch(r"step-(\d+)", name))
             and os.path.isfile(os.path.join(folder, name, ".metadata"))]
    step = ckpt.load_step if ckpt.load_step != -1 else max(steps, default=-1)
    if step <= 0 or step not in steps:  # nothing to resume, a seed checkpoint (model-only by design), or torchtitan's own error
        return None
    import torch.distributed.checkpoint as dcp

    path = os.path.join(folder, f"step-{step}")
    keys = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    needed = [s for s in _TRAINING_STATES if s not in ckpt.exclude_from_loading]
    if not needed or any(k.split(".", 1)[0] in needed for k in keys):
        return None
    return (f"torchtitan would resume this job from {path}, which holds the model only (torchtitan saves the last "
            f"step model-only unless checkpoint.last_save_model_only = false) and cannot resume training from it "
            f"(DCP: missing {needed[0]} state). Use another --job.dump_folder or delete {folder}; to start from "
            f"those weights in a new dump folder, pass --checkpoint.initial_load_path {path}; to keep finished runs "
            f"resumable, pass --checkpoint.no_last_save_model_only")


def check_or_exit(args: list[str]) -> None:
    """The launcher's check before training: the job (``preflight``) and whether torchtitan can resume it."""
    try:
        job = preflight(args)
        if problem := resume_problem(job):
            raise ConfigError(problem)
    except ConfigError as e:
        print(f"titan-rope: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    check_or_exit(sys.argv[1:])
