"""``titan-rope inspect`` on torchtitan 0.3 jobs: numbers against torchtitan's own cache and our formulas."""

from __future__ import annotations

import math

import pytest
import torch

from titan_rope_ext import RopeScaling, rope_frequencies
from titan_rope_ext.torchtitan03.tools.inspect_rope import inspect_job, main

YARN = ["--rope_scaling.rope_type", "yarn", "--rope_scaling.factor", "4",
        "--rope_scaling.original_max_position_embeddings", "512"]


def test_llama3_job_per_band(capsys):
    ins = inspect_job(["--module", "llama3", "--config", "llama3_debugmodel", *YARN])
    assert (ins.model, ins.flavor, ins.head_dim, ins.theta, ins.seq_len) == ("llama3", "debugmodel", 16, 500000, 2048)
    # stock: 0.3's llama3 cache with its built-in Llama 3.1 scaling (8, 1, 4, 8192), magnitude 1
    llama = rope_frequencies(RopeScaling(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                         original_max_position_embeddings=8192), 16, 500000.0, 2048)[0].double()
    torch.testing.assert_close(ins.stock, llama, rtol=1e-6, atol=0)
    assert ins.stock_factor == pytest.approx(1.0)
    ours, af = rope_frequencies(RopeScaling(rope_type="yarn", factor=4.0, original_max_position_embeddings=512),
                                16, 500000.0, 2048)
    assert torch.equal(ins.converted, ours.double()) and af == ins.attention_factor == pytest.approx(0.1 * math.log(4) + 1)
    assert main(["--module", "llama3", "--config", "llama3_debugmodel", *YARN]) == 0
    out = capsys.readouterr().out
    assert "trained length 512 -> 2048 (4x); attention factor 1.13863" in out
    assert "   0       0,1              6.28319      6.28319      6.28319        1              512  kept" in out


def test_qwen3_recipe_and_a_refused_job(capsys):
    ins = inspect_job(["--module", "titan_rope_ext.torchtitan03", "--config", "qwen3_debugmodel_yarn"])
    assert (ins.head_dim, ins.seq_len, ins.trained_length, ins.stock_factor) == (128, 256, 64, pytest.approx(1.0))
    default = rope_frequencies(RopeScaling(), 128, 1e6, 256)[0].double()
    torch.testing.assert_close(ins.stock, default, rtol=1e-6, atol=0)  # stock qwen3: plain RoPE
    pytest.importorskip("fla", reason="torchtitan's qwen3_5 imports flash-linear-attention")
    assert main(["--module", "tests.torchtitan03.cpu_configs", "--config", "qwen3_5_debugmodel"]) == 2  # MRoPE
    assert "titan-rope: error: rope_scaling on torchtitan 0.3 supports llama3" in capsys.readouterr().err
