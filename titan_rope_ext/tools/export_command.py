"""The flow of ``titan-rope export`` and the end-of-training ``last_save_in_hf`` message, for both torchtitan lines.

Each line's ``tools/export.py`` supplies what differs (how the job is resolved, its ``Plan``, where the last HF save
goes, the writers); what a user sees -- one ``describe()`` line, the folder written or one ``error:`` line with exit
status 2 -- is the same on both lines.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Callable


def run(opts, resolve_job: Callable, line: ModuleType, errors: tuple[type[Exception], ...]) -> int:
    """``titan-rope export`` with parsed options: ``resolve_job()`` gives the job, ``line`` is the line's export module
    (``Plan``, ``last_save_folder``, ``write_config_only``, ``export``); ``errors`` (and ValueError) are bad input."""
    try:
        job = resolve_job()
        plan = line.Plan(job, opts.dtype or (job.checkpoint.export_dtype if opts.config_only else "float32"))
        print(f"titan-rope export: {plan.describe()}", file=sys.stderr)
        if opts.config_only:
            folder = Path(opts.out) if opts.out else line.last_save_folder(job)
            files = line.write_config_only(plan, folder)
        else:
            folder = Path(opts.out)
            files = line.export(plan, opts.checkpoint, folder, opts.force)
    except (*errors, ValueError) as e:
        print(f"titan-rope: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {folder}: {', '.join(files)}")
    return 0


def report_last_save(complete: Callable[[], Path | None]) -> None:
    """After training, on rank 0: ``complete()`` writes config.json (and tokenizer files) into the job's
    ``last_save_in_hf`` folder, or returns None where the job saves none; a job that cannot is told why (training
    is done and its safetensors are fine, so this warns instead of failing the run)."""
    try:
        folder = complete()
    except ValueError as e:
        print(f"titan-rope: warning: no config.json written next to the last_save_in_hf safetensors: {e}",
              file=sys.stderr)
        return
    if folder is not None:
        print(f"titan-rope: wrote {folder / 'config.json'} (trained RoPE for transformers; see docs/hf_roundtrip.md)",
              file=sys.stderr)
