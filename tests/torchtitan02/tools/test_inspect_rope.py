"""titan-rope inspect: the job resolved like training, per-band numbers from the real caches."""

import math
import re

import pytest
import torch
from torchtitan.models.llama3.model.args import RoPEScalingArgs
from torchtitan.models.llama3.model.model import precompute_freqs_cis

from titan_rope_ext import RopeScaling, rope_frequencies
from titan_rope_ext.torchtitan02.tools import inspect_rope
from titan_rope_ext.tools.rope_bands import table

CONFIGS = inspect_rope.__file__.rsplit("/titan_rope_ext/", 1)[0] + "/configs"


def job(name, *overrides):
    return ["--job.config_file", f"{CONFIGS}/{name}.toml", *overrides]


def test_llama3_yarn_bands():
    ins = inspect_rope.inspect_job(job("llama3_debug_yarn"))
    assert (ins.model, ins.head_dim, ins.seq_len, ins.trained_length) == ("llama3", 16, 256, 64)
    cfg = RopeScaling(rope_type="yarn", factor=4.0, original_max_position_embeddings=64, beta_fast=32.0, beta_slow=1.0)
    expected, factor = rope_frequencies(cfg, 16, 500000.0, 256)
    assert torch.equal(ins.converted, expected.double()) and ins.attention_factor == factor == pytest.approx(0.1 * math.log(4) + 1)
    # stock: torchtitan's own llama3 cache (llama3 scaling 8 / 1 / 4 / 8192), read back from position 1
    stock = precompute_freqs_cis(16, 256, 500000.0, RoPEScalingArgs())[1].angle().double()
    torch.testing.assert_close(ins.stock, stock, rtol=1e-6, atol=0)
    assert ins.stock_factor == pytest.approx(1.0)
    lines = table(ins).splitlines()
    bands = [line.split() for line in lines if line[:4].strip().isdigit()]
    assert len(bands) == 8
    # band 0 turns 32+ times over 64 tokens: kept; bands 2.. turn less than once: interpolated by 4, covering 4 x 64
    assert bands[0][5:8] == ["1", "64", "kept"]
    assert all(b[5:8] == ["4", "256", "interpolated"] for b in bands[2:])
    assert bands[1][7] == "blended"


def test_cos_sin_layout_is_decoded():
    ins = inspect_rope.inspect_job(job("qwen3_debug_yarn"))
    torch.testing.assert_close(ins.stock, ins.default, rtol=1e-6, atol=0)  # stock qwen3: plain RoPE
    assert ins.stock_factor == pytest.approx(1.0) and ins.attention_factor > 1.1


def test_plot_and_cli(tmp_path, capsys):
    png = tmp_path / "rope.png"
    assert inspect_rope.main([f"{CONFIGS}/llama3_debug_linear.toml", "--plot", str(png),
                              "--rope_scaling.factor", "8"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "rope_type=linear factor=8.0" in out and "trained length 32 -> 256 (8x)" in out


@pytest.mark.parametrize("overrides, message", [
    (["--rope_scaling.rope_type", "llama3", "--rope_scaling.factor", "8"], "rope_scaling.high_freq_factor is required for rope_type 'llama3'"),
    (["--model.name", "flux", "--model.flavor", "flux-debug"], "supported models"),
])
def test_bad_job_exits_2_with_the_training_message(overrides, message, capsys):
    assert inspect_rope.main([f"{CONFIGS}/llama3_debug_linear.toml", *overrides]) == 2
    err = re.sub(r"\s+", " ", capsys.readouterr().err.replace("│", " "))  # tyro draws a box
    assert "titan-rope: error:" in err and message in err


def test_seq_len_past_the_scaled_window_is_flagged():
    ins = inspect_rope.inspect_job(job("llama3_debug_yarn", "--training.seq_len", "512"))
    lines = table(ins).splitlines()
    assert lines[3] == ("WARNING: training.seq_len = 512 exceeds rope_scaling.original_max_position_embeddings (64) "
                        "x rope_scaling.factor (4) = 256: positions past 256 extrapolate beyond the scaled window; "
                        "raise factor to at least 8")
    assert not any(line.startswith("WARNING") for line in table(inspect_rope.inspect_job(
        job("llama3_debug_yarn"))).splitlines())
