"""``benchmarks/overhead03.py`` (stock vs converted step time on torchtitan 0.3) runs end to end on CPU at toy size.

Timings on a shared CPU mean nothing; this checks that the script builds both copies through 0.3's own path,
times both modes (compiled through torchtitan's ``apply_compile``, with ``aot_eager`` so no C++ is generated)
and writes the JSON the GPU run's note is made from. About 15 s.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOY = ["--device", "cpu", "--layers", "2", "--dim", "64", "--heads", "4", "--kv-heads", "2", "--ffn", "128",
       "--vocab", "256", "--seq", "64", "--rounds", "2", "--steps", "1", "--warmup", "1",
       "--compile-backend", "aot_eager"]


def test_overhead03_toy_run_on_cpu_writes_both_modes(tmp_path):
    out = tmp_path / "overhead03.json"
    proc = subprocess.run([sys.executable, "benchmarks/overhead03.py", *TOY, "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    report = json.loads(out.read_text())

    assert report["versions"]["torchtitan"].startswith("0.3.")
    assert report["shape"] == {"layers": 2, "dim": 64, "heads": 4, "kv_heads": 2, "ffn": 128, "vocab": 256,
                               "theta": 500000.0, "head_dim": 16, "rope_max_seq_len": 64,
                               "inner_attention": "ScaledDotProductAttention.Config"}
    assert report["stock_rope"].startswith("ComplexRoPE.Config scaling=llama")
    assert report["converted_rope"].startswith("llama3: rope_type=yarn factor=4.0 original_max_position_embeddings=16")
    assert report["layer0_cache_max_abs_diff"] > 0  # the converted copy really has another cache

    for mode in ("eager", "compiled"):
        result = report[mode]
        assert math.isfinite(result["ratio"]) and result["ratio"] > 0
        assert all(len(v) == 2 for v in result["step_ms_per_round"].values())
        assert result["host_device_sync"] == {"stock": "not checked (no CUDA)", "converted": "not checked (no CUDA)"}
    assert "apply_compile" in report["compiled"]["how"]

    # one complex64 (seq, head_dim / 2) cache per RoPE storage: 64 x 8 x 8 bytes
    for copy in ("stock", "converted"):
        cache = report["rope_cache"][copy]
        assert cache["rope_modules"] == 2 and cache["buffer_dtype"] == "torch.complex64"
        assert cache["buffer_shape"] == [64, 8] and cache["bytes"] == cache["unique_storages"] * 64 * 8 * 8


def test_overhead03_apply_fused_converts_with_the_fused_apply(tmp_path):
    # on CPU our modules take stock's forward, so the kernel never launches (on a GPU: once per layer)
    out = tmp_path / "fused.json"
    args = [a for a in TOY if a not in ("--compile-backend", "aot_eager")] + ["--no-compile", "--apply", "fused"]
    proc = subprocess.run([sys.executable, "benchmarks/overhead03.py", *args, "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    report = json.loads(out.read_text())
    assert report["args"]["apply"] == "fused"
    assert " apply=fused; head_dim=16" in report["converted_rope"]
    assert report["fused_launches_per_forward"] == {"stock": 0, "converted": 0}
    assert math.isfinite(report["eager"]["ratio"]) and report["compiled"] == "skipped (--no-compile)"


def test_overhead03_apply_fused_cacheless_keeps_no_cache(tmp_path):
    out = tmp_path / "cacheless.json"
    args = [a for a in TOY if a not in ("--compile-backend", "aot_eager")] + ["--no-compile", "--apply",
                                                                             "fused_cacheless"]
    proc = subprocess.run([sys.executable, "benchmarks/overhead03.py", *args, "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    report = json.loads(out.read_text())
    assert " apply=fused_cacheless; head_dim=16" in report["converted_rope"]
    # no cache rows: what the modules hold is inv_freq, head_dim / 2 = 8 floats each
    assert report["rope_cache"]["converted"]["buffer_shape"] == [0, 8] and report["rope_cache"]["converted"]["bytes"] == 2 * 8 * 4
    assert report["layer0_cache_max_abs_diff"] is None
    assert report["fused_launches_per_forward"] == {"stock": 0, "converted": 0}  # CPU: the op's torch implementation
    assert math.isfinite(report["eager"]["ratio"])
