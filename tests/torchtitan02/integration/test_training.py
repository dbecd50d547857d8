"""The real torchtitan Trainer, through titan-rope on CPU: every rope type, 1 rank and 2-rank FSDP2 (gloo)."""

import pytest

from titan_rope_ext import ROPE_TYPES
from tests.torchtitan02.integration.conftest import assert_trains

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("rope_type", ROPE_TYPES)
def test_one_rank(runs, rope_type):
    run = runs(rope_type, nproc=1).check()
    assert f"rope_scaling: llama3 rope_type={rope_type}" in run.output
    assert_trains(run, 10)


@pytest.mark.parametrize("rope_type", ROPE_TYPES)
def test_two_ranks_fsdp2(runs, rope_type):
    run = runs(rope_type, nproc=2, steps=6).check()
    assert "Applied FSDP to the model" in run.output
    assert f"rope_scaling: llama3 rope_type={rope_type}" in run.output
    assert_trains(run, 6)


def test_qwen3_cos_sin_cache_trains(runs):
    run = runs("yarn", model="qwen3", steps=8).check()
    assert "rope_scaling: qwen3 rope_type=yarn" in run.output and "attention_factor=1.13863 (on cos and sin)" in run.output
    assert_trains(run, 8)


def test_scaling_changes_training(runs):
    # same data, seed and weights: only the rotary cache differs, so the losses must differ
    default, linear = runs("default").check().losses, runs("linear").check().losses
    assert default[1] != linear[1] or default[10] != linear[10]


def test_fused_apply_on_cpu_trains_exactly_like_torchtitans_apply(runs):
    # --rope_scaling.apply fused from the CLI: the attention modules are swapped, and on CPU the drop-in
    # calls torchtitan's own apply_rotary_emb, so every loss is the stock-apply run's, to the printed digit
    fused = runs("yarn", extra=("--rope_scaling.apply", "fused")).check()
    assert "apply=fused in 6 attention modules" in fused.output
    assert fused.losses == runs("yarn").check().losses


def test_fused_cacheless_apply_on_cpu_trains_like_the_cached_model(runs):
    # the cacheless op rotates on CPU too (its torch implementation) from the inv_freq the model holds instead
    # of a cache; with a constant LR after warmup, 4 steps follow the first 4 of the cached 10-step run
    cacheless = runs("yarn", steps=4, extra=("--rope_scaling.apply", "fused_cacheless")).check()
    assert "apply=fused_cacheless in 6 attention modules: no rotary cache is allocated" in cacheless.output
    cached = runs("yarn").check().losses
    assert cacheless.losses == pytest.approx({step: cached[step] for step in range(1, 5)}, abs=2e-5)


def test_cpu_run_log_shows_memory_and_no_gpu_noise(runs):
    run = runs("yarn").check()
    memory = [float(m) for m in __import__("re").findall(r"memory:\s+([-\d.]+)GiB", run.output)]
    assert memory and all(0.05 < m < 64 for m in memory), memory  # the rank's peak RSS, not -0.00
    for noise in ("Error running lspci", "Peak flops undefined", "In CPU autocast, but the target dtype"):
        assert noise not in run.output
