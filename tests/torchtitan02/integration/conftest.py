"""Helpers for integration tests: run ``titan-rope train`` for real and read its log."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "configs"
STEP_RE = re.compile(r"step:\s*(\d+)\s+loss:\s*([-\d.naninf]+)")


@dataclass
class Run:
    returncode: int
    output: str

    @property
    def losses(self) -> dict[int, float]:
        return {int(s): float(v) for s, v in STEP_RE.findall(self.output)}

    def check(self) -> "Run":
        assert self.returncode == 0, self.output[-6000:]
        return self


def titan_rope(*args: str, nproc: int = 1, timeout: int = 600) -> Run:
    """``titan-rope train --nproc N <args>`` from the repo root (configs use repo-relative paths)."""
    cmd = [sys.executable, "-m", "titan_rope_cli", "train", f"--nproc={nproc}", *map(str, args)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return Run(proc.returncode, proc.stdout + proc.stderr)


def config(name: str, model: str = "llama3") -> Path:
    return CONFIGS / f"{model}_debug_{name}.toml"


def _seed_flag() -> str:
    """torchtitan 0.2.1+ keeps the seed in [debug]; 0.2.0 in [training]."""
    from torchtitan.config import JobConfig

    return "--debug.seed" if hasattr(getattr(JobConfig(), "debug", None), "seed") else "--training.seed"


def short_run_args(dump: Path, steps: int) -> list[str]:
    # decay_ratio 0: warmup then constant LR, so a 5-step run follows the first half of a 10-step one
    return ["--training.steps", str(steps), "--training.local_batch_size", "2", "--metrics.log_freq", "1",
            "--lr_scheduler.warmup_steps", "2", "--lr_scheduler.decay_ratio", "0.0", _seed_flag(), "0",
            "--job.dump_folder", str(dump)]


def checkpoint_args(steps: int) -> list[str]:
    return ["--checkpoint.enable", "--checkpoint.interval", str(steps), "--checkpoint.no_last_save_model_only"]


def assert_trains(run: Run, steps: int) -> None:
    losses = run.losses
    assert sorted(losses) == list(range(1, steps + 1)), run.output[-4000:]
    assert all(math.isfinite(v) for v in losses.values()), losses
    assert losses[steps] < losses[1] - 1.0, losses


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """Session cache of training runs, keyed by (config name, model, nproc, steps, extra args)."""
    cache: dict[tuple, Run] = {}

    def get(name: str, nproc: int = 1, steps: int = 10, model: str = "llama3", extra: tuple[str, ...] = ()) -> Run:
        key = (name, model, nproc, steps, extra)
        if key not in cache:
            dump = tmp_path_factory.mktemp(f"{model}-{name}-{nproc}")
            cache[key] = titan_rope("--job.config_file", config(name, model), *short_run_args(dump, steps),
                                    *extra, nproc=nproc)
        return cache[key]

    return get
