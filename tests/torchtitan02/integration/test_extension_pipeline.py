"""titan-rope eval and the context-extension reproduction at toy size, on CPU, so neither can rot."""

import json
import math
import subprocess
import sys

import pytest

from tests.torchtitan02.integration.conftest import config, REPO

pytestmark = pytest.mark.integration


def test_reproduction_pipeline_at_toy_size(tmp_path):
    """Pretrain (default RoPE, L = 32) -> fine-tune at 2L with default and yarn -> titan-rope eval of all three."""
    out = tmp_path / "ext"
    cmd = [sys.executable, "scripts/reproduce_extension.py", "--out", str(out), "--short-len", "32", "--factor", "2",
           "--pretrain-steps", "4", "--finetune-steps", "2", "--batch", "4", "--methods", "default,yarn",
           "--tokens", "512", "--trials", "1", "--depths", "0,1"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "results.json").read_text())
    assert list(summary["results"]) == ["pretrained (default, no fine-tune)", "default", "yarn"]
    for name, result in summary["results"].items():
        assert result["lengths"] == [32, 64, 128, 256]
        for length in ("32", "64", "128", "256"):
            ppl = result["sliding_ppl"][length]
            # trained weights were loaded: far below the ~2048 (vocab size) of an untrained model
            assert math.isfinite(ppl) and 1 < ppl < 1500, (name, length, ppl)
            assert len(result["ppl_by_position"][length]) == 4
            assert set(result["passkey"][length]) == {"0.0", "1.0"}
            assert all(0 <= acc <= 1 for acc in result["passkey"][length].values())
            # the misses recorded agree with the accuracies (two prompts per length, at most five kept)
            misses = result["passkey_misses"][length]
            assert len(misses) == round(sum(1 - acc for acc in result["passkey"][length].values()))
            assert all(not m["answer"].startswith(m["key"]) and len(m["key"]) == 5 for m in misses)
    assert summary["results"]["yarn"]["rope"].startswith("rope_type=yarn factor=2.0 original_max_position_embeddings=32")
    # the fine-tunes start from the pretrained weights and move on from them
    assert summary["results"]["default"]["sliding_ppl"]["32"] != summary["results"]["pretrained (default, no fine-tune)"]["sliding_ppl"]["32"]
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert "| yarn |" in (out / "results.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "/nonexistent/step-1"], "is not a torchtitan DCP folder"),
    (["--checkpoint", "/tmp", "--rope_scaling.factor", "0.5"], "invalid torchtitan arguments"),
])
def test_eval_refuses_bad_input_before_building_anything(args, message):
    cmd = [sys.executable, "-m", "titan_rope_cli", "eval", "--job.config_file", str(config("yarn")), *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
