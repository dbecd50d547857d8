"""``titan-rope eval`` on torchtitan 0.3 jobs and checkpoints.

Without a Trainer run: the command on a random llama3 debug checkpoint (the section's RoPE, and with
``--torchtitan-train`` stock 0.3's), and its refusals, one line and status 2 before any model tensor is allocated.
With marker ``integration``: a llama3 debug YaRN run of 3 steps through ``titan-rope train`` checkpoints a full step 2
and a model-only step 3; ``titan-rope eval`` of each gives perplexities far below the untrained model's (the trained
weights were loaded) and every passkey field; and the masks the CUDA path gives FlexAttention (one causal sequence per
window) compute what the CPU path's causal SDPA computes.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from tests.torchtitan03.helpers import build, model_config, with_sdpa
from tests.torchtitan03.test_training import REPO, small, titan_rope
from titan_rope_ext.torchtitan03.tools.evaluate import main, window_masks

LLAMA3 = ["--module", "llama3", "--config", "llama3_debugmodel"]
YARN = ["--rope_scaling.rope_type", "yarn", "--rope_scaling.factor", "4",
        "--rope_scaling.original_max_position_embeddings", "16", "--training.seq_len", "64"]
TOY = ["--lengths", "32,64", "--tokens", "256", "--trials", "1", "--depths", "0,1"]
YARN_ROPE = "rope_type=yarn factor=4.0 original_max_position_embeddings=16"


def check_result(result: dict, rope: str, max_ppl: float) -> None:
    """The JSON ``titan-rope eval`` writes for ``TOY``: every field, perplexities finite and below ``max_ppl``."""
    assert (result["model"], result["flavor"], result["rope"], result["training_seq_len"]) == (
        "llama3", "debugmodel", rope, 64)
    assert result["lengths"] == [32, 64] and result["depths"] == [0.0, 1.0] and result["device"] == "cpu"
    for length in ("32", "64"):
        ppl = result["sliding_ppl"][length]
        assert math.isfinite(ppl) and 1 < ppl < max_ppl, (length, ppl)
        assert len(result["ppl_by_position"][length]) == 4
        assert all(math.isfinite(p) for p in result["ppl_by_position"][length])
        assert set(result["passkey"][length]) == {"0.0", "1.0"}
        assert all(0 <= acc <= 1 for acc in result["passkey"][length].values())
        misses = result["passkey_misses"][length]  # one prompt per depth: the misses are the wrong answers
        assert len(misses) == round(sum(1 - acc for acc in result["passkey"][length].values()))
        assert all(not m["answer"].startswith(m["key"]) and len(m["key"]) == 5 for m in misses)


# ---- without a Trainer run --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A model-only DCP checkpoint of the random llama3 debug model (what torchtitan's last step saves by default)."""
    path = tmp_path_factory.mktemp("ckpt") / "step-1"
    with pytest.warns(UserWarning):  # "torch.distributed is disabled ... single process": intended
        dcp.save(build(model_config("llama3")).state_dict(), checkpoint_id=str(path))
    return path


def test_eval_of_a_random_checkpoint_reads_the_rope_the_job_trained_with(checkpoint, tmp_path, capsys):
    light = ["--checkpoint", str(checkpoint), "--lengths", "48", "--tokens", "64", "--trials", "1", "--depths", "1"]
    assert main([*LLAMA3, *YARN, *light, "--out", str(tmp_path / "yarn")]) == 0
    out = capsys.readouterr().out
    assert f"llama3 debugmodel, {YARN_ROPE}, checkpoint {checkpoint}" in out
    assert "     48         3" in out  # x trained: 48 / original 16
    result = json.loads((tmp_path / "yarn" / "eval.json").read_text())
    assert (result["rope"], result["training_seq_len"], result["lengths"]) == (YARN_ROPE, 64, [48])
    assert math.isfinite(result["sliding_ppl"]["48"]) and set(result["passkey"]["48"]) == {"1.0"}
    assert (tmp_path / "yarn" / "eval.png").read_bytes()[:4] == b"\x89PNG"
    # a checkpoint of stock torchtitan.train on the same job: stock 0.3's llama3 RoPE (Llama 3.1 scaling)
    assert main([*LLAMA3, "--torchtitan-train", "--hf_assets_path", "titan_rope_ext/assets/tokenizer", *light,
                 "--out", str(tmp_path / "stock")]) == 0
    stock = json.loads((tmp_path / "stock" / "eval.json").read_text())
    assert stock["rope"] == "stock torchtitan 0.3 RoPE (scaling='llama')"


def test_eval_refuses_bad_input_before_building_anything(checkpoint, tmp_path, capsys):
    def refused(*args, message: str):
        assert main([*map(str, args)]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert message in err, err
        assert not (tmp_path / "out").exists()

    out = ["--out", tmp_path / "out"]
    refused(*LLAMA3, *YARN, "--checkpoint", tmp_path / "nope", *out,
            message=f"titan-rope: error: --checkpoint '{tmp_path / 'nope'}' is not a torchtitan DCP folder")
    refused(*LLAMA3, "--rope_scaling.factor", "0.5", "--checkpoint", checkpoint, *out,
            message="titan-rope: error: invalid torchtitan arguments")
    refused(*LLAMA3, *YARN, "--checkpoint", checkpoint, "--depths", "0,2", *out,
            message="titan-rope: error: --depths must lie in [0, 1], got 0,2")
    # a checkpoint of another model
    refused("--module", "qwen3", "--config", "qwen3_debugmodel", "--checkpoint", checkpoint, *out,
            message="no tensors for layers.0.attention.k_norm.weight")
    # on CPU only the models whose FlexAttention is plain causal attention (the CPU training shim's list)
    refused("--module", "gpt_oss", "--config", "gpt_oss_debugmodel", "--checkpoint", checkpoint, *out,
            message="titan-rope eval on CPU runs llama3, qwen3 (causal SDPA in place of FlexAttention); gpt_oss's")
    # stock 0.3 RoPE configs are as long as the flavor says (qwen3 debug: 4096 positions)
    refused("--module", "qwen3", "--config", "qwen3_debugmodel", "--torchtitan-train", "--hf_assets_path",
            "titan_rope_ext/assets/tokenizer", "--checkpoint", checkpoint, "--lengths", "8192", *out,
            message="the model for 8192 positions (the longest of --lengths): Training sequence length 8192 exceeds")


# ---- real runs (marker integration) -----------------------------------------------------------------------------

@pytest.mark.integration
def test_eval_of_trained_yarn_checkpoints_full_and_model_only(tmp_path):
    dump = tmp_path / "run"
    run = titan_rope(*LLAMA3, *YARN, *small(dump, steps=3, seq_len=64, batch=4),
                     "--optimizer.param-groups.0.optimizer-kwargs.lr", "3e-3", "--lr_scheduler.warmup_steps", "1",
                     "--checkpoint.enable", "--checkpoint.interval", "2", "--checkpoint.last_save_model_only",
                     timeout=300).check(steps=3)
    untrained = math.exp(run.losses[1])  # the step-1 loss is the random model's
    # step 3, model-only (the last save), through the command as a user runs it
    proc = subprocess.run([sys.executable, "-m", "titan_rope_cli", "eval", *LLAMA3, *YARN, "--dump_folder", str(dump),
                           "--checkpoint", str(dump / "checkpoint" / "step-3"), *TOY],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "titan-rope eval: building the model for 64 positions on cpu" in proc.stderr
    last = json.loads((dump / "eval" / "step-3" / "eval.json").read_text())  # the default --out
    # the trained weights were loaded: far below the untrained model's and the vocab size's (2048)
    check_result(last, YARN_ROPE, max_ppl=min(untrained / math.e, 2048 / 4))
    # step 2, a full checkpoint (optimizer, dataloader, train_state beside the model's tensors)
    assert main([*LLAMA3, *YARN, "--checkpoint", str(dump / "checkpoint" / "step-2"), *TOY,
                 "--out", str(tmp_path / "step-2")]) == 0
    full = json.loads((tmp_path / "step-2" / "eval.json").read_text())
    check_result(full, YARN_ROPE, max_ppl=untrained / math.e)
    assert full["sliding_ppl"]["64"] != last["sliding_ppl"]["64"]  # other weights


@pytest.mark.integration
def test_cuda_path_masks_give_what_cpu_path_sdpa_gives():
    """On CUDA eval keeps the model's FlexAttention with ``window_masks`` (positions 0..T-1: one causal sequence); on
    CPU it uses causal SDPA. Here both on CPU (compiled flex forward), same weights: the same logits."""
    config = model_config("llama3", n_layers=2)
    flex, sdpa = build(config), build(with_sdpa(config))
    sdpa.load_state_dict(flex.state_dict())
    tokens = torch.randint(0, 2048, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(flex(tokens, attention_masks=window_masks(config, flex)(tokens)), sdpa(tokens),
                                   rtol=0, atol=1e-5)
    assert window_masks(with_sdpa(config), sdpa) is None  # SDPA takes no masks
