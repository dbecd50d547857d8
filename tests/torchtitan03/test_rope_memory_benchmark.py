"""``benchmarks/rope_memory03.py`` runs every part on CPU at toy size, the out-of-memory path included.

The GPU run (parts b-d on one H200) must work the first time: this runs the same code with the debug flavors,
causal SDPA (FlexAttention has no CPU backward) and ``--simulate-oom`` (a step raises ``torch.OutOfMemoryError``
at or past a length), and checks the numbers the JSON must hold. Memory and time on a CPU are not measured
(``null``). No time budget: on a busy CPU the search must not stop early. About 30 s (minutes on a loaded host).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_rope_memory03_toy_run_on_cpu(tmp_path):
    out = tmp_path / "rope_memory03.json"
    proc = subprocess.run([sys.executable, "benchmarks/rope_memory03.py", "--device", "cpu", "--toy", "--rounds", "2", "--budget-s", "3600",
                           "--simulate-oom", "stock:256,converted:512", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    r = json.loads(out.read_text())
    assert r["versions"]["torchtitan"].startswith("0.3.") and r["failed_parts"] == []

    # a: whole debug models on meta, 512 positions; llama3 complex64 (512, 8), qwen3 float32 (512, 256)
    a = r["a_meta_cpu"]
    for model, layers, per_layer in (("llama3", 6, 512 * 8 * 8), ("qwen3", 8, 512 * 256 * 4)):
        row = a[model]
        assert row["stock"]["meta"]["unique_storages"] == layers and row["converted"]["meta"]["unique_storages"] == 1
        assert row["stock"]["meta"]["bytes"] == layers * per_layer and row["converted"]["meta"]["bytes"] == per_layer
        assert row["stock"]["cpu_2_layers"]["unique_storages"] == 2 and row["converted"]["cpu_2_layers"][
            "unique_storages"] == 1
        assert row["consistent"] and row["stock_over_converted"] == layers
    assert a["llama3"]["converted_cache_equals_stock"] is True

    # b: after init (on the CPU here): storages per model, and caches on buffer_device with parameters elsewhere
    b = r["b_after_init"]
    assert [b[m][k]["report"]["unique_storages"] for m in ("llama3", "qwen3") for k in ("stock", "converted")] == [
        6, 1, 8, 1]
    assert [b["qwen3_buffer_device"][k]["report"]["unique_storages"] for k in ("stock", "converted")] == [8, 1]

    # c: 64 and 128 fit both; at 256 stock is out of memory (simulated) and converted fits; at 512 neither; one
    # bisection step tries 384
    c = r["c_peak"]
    fits = {seq: (row["stock"]["fits"], row["converted"]["fits"]) for seq, row in c["by_seq"].items()}
    assert fits == {"64": (True, True), "128": (True, True), "256": (False, True), "384": (False, True),
                    "512": (False, False)}
    assert "simulated" in c["by_seq"]["256"]["stock"]["oom"]
    assert c["longest_fit"] == {"stock": 128, "converted": 384}
    assert c["stopped"] == "converted does not fit at 512"
    longest = c["at_longest_all_fit"]
    assert longest["seq"] == 128 and longest["first_loss_equal"] == {"converted": True}  # the same numbers
    assert longest["rope_bytes"] == {"stock": 8 * 128 * 256 * 4, "converted": 128 * 256 * 4}

    # d: both copies side by side at half the longest stock fit
    d = r["d_step_time"]
    assert d["seq"] == 64 and d["first_loss_equal"] is True
    assert all(len(v) == 2 for v in d["step_ms_per_round"].values())
    assert math.isfinite(d["ratio_converted_over_stock_tokens_per_s"]) and d["ratio_converted_over_stock_tokens_per_s"] > 0
    assert d["rope_bytes"] == {"stock": 8 * 64 * 256 * 4, "converted": 64 * 256 * 4}
    assert "Peak of one training step" in proc.stdout and "Step time at seq 64" in proc.stdout


def test_rope_memory03_four_copies_at_given_lengths(tmp_path):
    """``--copies`` with the fused and cacheless applies, ``--seqs`` instead of the search: every copy is measured
    at each length, the cacheless copy holds no cache rows, and all four compute stock's first loss."""
    out = tmp_path / "four.json"
    proc = subprocess.run([sys.executable, "benchmarks/rope_memory03.py", "--device", "cpu", "--toy", "--parts", "c,d",
                           "--copies", "stock,converted,fused,fused_cacheless", "--seqs", "64,128", "--time-seq", "64",
                           "--rounds", "2", "--budget-s", "3600", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    r = json.loads(out.read_text())
    c = r["c_peak"]
    assert list(c["by_seq"]) == ["64", "128"] and c["stopped"] == "--seqs done"
    assert c["copies"] == {"stock": None, "converted": "torchtitan", "fused": "fused",
                           "fused_cacheless": "fused_cacheless"}
    longest = c["at_longest_all_fit"]
    assert longest["seq"] == 128
    assert longest["rope_bytes"]["stock"] == 8 * 128 * 256 * 4
    assert longest["rope_bytes"]["converted"] == longest["rope_bytes"]["fused"] == 128 * 256 * 4
    # the cacheless copy: zero-row caches, and one inv_freq (head_dim 128 -> 64 floats) in each of 8 modules
    assert longest["rope_bytes"]["fused_cacheless"] == 0
    assert c["by_seq"]["128"]["fused_cacheless"]["rope"]["inv_freq_bytes"] == 8 * 64 * 4
    # CPU: stock's apply for "fused", the op's float32 torch implementation for the cacheless copy
    assert longest["first_loss_equal"]["converted"] and longest["first_loss_equal"]["fused"]
    assert abs(c["by_seq"]["128"]["fused_cacheless"]["first_loss"] - c["by_seq"]["128"]["stock"]["first_loss"]) < 1e-5
    d = r["d_step_time"]
    assert d["seq"] == 64 and set(d["ratio_over_stock_tokens_per_s"]) == {"converted", "fused", "fused_cacheless"}
