"""``titan-rope export`` on torchtitan 0.3 (marker ``integration``): what transformers computes from the exported
folder is what the trained torchtitan 0.3 model computes.

Tiny random HF models made by transformers (``titan_rope_ext.assets.tiny_hf``, attention sharpened so a wrong RoPE
shows) with the dims of torchtitan's llama3 and qwen3 debug flavors, extended and trained 2 steps through
``titan-rope train`` (the real 0.3 Trainer, ``checkpoint.initial_load_in_hf``, the section with ``from_hf_assets``):

* llama3, YaRN 4x over the file's 64 positions (config.json without rope_theta: transformers' 10000): a full DCP
  checkpoint at step 1 and a ``checkpoint.last_save_in_hf`` folder at step 2, which ``titan-rope train`` completes
  with config.json;
* qwen3, LongRoPE 4x over 32 positions (theta 20000 from the file): a model-only DCP checkpoint at step 2.

Each export is loaded with ``AutoModelForCausalLM.from_pretrained`` and compared with the trained torchtitan model
(the job's model config as training builds it, CPU SDPA, the checkpoint's weights) at lengths below the original,
just past it and at the trained length (``titan_rope_ext.tools.agreement``: max |diff| within 1e-4 of the logit
scale, argmax equal wherever the top-2 margin is clear). Controls that must fail: the exported weights with the base
config.json (plain RoPE), and the torchtitan model without the section (stock 0.3 RoPE).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.torchtitan03.helpers import build, with_sdpa
from titan_rope_ext.tools.agreement import agree

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ORIGINAL = {"llama3": 64, "qwen3": 32}  # the HF base model's max_position_embeddings
SEQ_LEN = {"llama3": 256, "qwen3": 128}  # the trained length: 4x
THETA = {"llama3": None, "qwen3": 20000.0}  # None: no rope_theta in config.json (transformers: 10000)
SHORT = [round(1 + 0.1 * i / 64, 4) for i in range(64)]
LONG = [round(1 + 3.0 * i / 64, 4) for i in range(64)]
SECTION = {
    "llama3": ["--rope_scaling.rope_type", "yarn", "--rope_scaling.factor", "4"],
    "qwen3": ["--rope_scaling.rope_type", "longrope", "--rope_scaling.factor", "4",
              "--rope_scaling.short_factor", *map(str, SHORT), "--rope_scaling.long_factor", *map(str, LONG)],
}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export03")


@pytest.fixture(scope="module")
def hf_base(work) -> dict[str, Path]:
    from titan_rope_ext.assets.tiny_hf import make_tiny_hf_model

    return {m: make_tiny_hf_model(work / f"hf_{m}", m, max_position_embeddings=ORIGINAL[m], rope_theta=THETA[m])
            for m in ORIGINAL}


def job(model: str, hf_dir: Path) -> list[str]:
    """The job as trained: the stock debug config function, the HF folder as assets, the section, the length."""
    return ["--module", model, "--config", f"{model}_debugmodel", "--hf_assets_path", str(hf_dir),
            "--rope_scaling.from_hf_assets", *SECTION[model], "--training.seq_len", str(SEQ_LEN[model])]


@pytest.fixture(scope="module")
def runs(work, hf_base):
    """``runs[model]`` -> (titan-rope train output, checkpoint folder), trained on first use."""

    class Runs(dict):
        def __missing__(self, model):
            dump = work / f"run_{model}"
            saves = (["--checkpoint.interval", "1", "--checkpoint.last_save_in_hf"] if model == "llama3"
                     else ["--checkpoint.interval", "5"])  # qwen3: the last step only, model-only DCP
            proc = subprocess.run(
                [sys.executable, "-m", "titan_rope_cli", "train", *job(model, hf_base[model]), "--training.steps", "2",
                 "--training.local_batch_size", "1", "--lr_scheduler.warmup_steps", "1", "--metrics.log_freq", "1",
                 "--debug.seed", "0", "--dump_folder", str(dump), "--checkpoint.enable",
                 "--checkpoint.initial_load_path", str(hf_base[model]), "--checkpoint.initial_load_in_hf",
                 "--checkpoint.last_save_model_only", *saves],
                cwd=REPO, capture_output=True, text=True, timeout=300)
            output = proc.stdout + proc.stderr
            assert proc.returncode == 0, output[-6000:]
            assert "Loading from HF safetensors" in output
            self[model] = (output, dump / "checkpoint")
            return self[model]

    return Runs()


# ---- both sides ----------------------------------------------------------------------------------------------

def export_main(*args) -> int:
    from titan_rope_ext.torchtitan03.tools import export

    return export.main([str(a) for a in args])


def torchtitan_model(args: list[str], checkpoint: Path | None = None, hf_weights: Path | None = None,
                     section: bool = True):
    """The job's model as training builds it (its model config after the section and ``update_from_config``; SDPA for
    CPU), with the weights of a DCP checkpoint or of an HF safetensors file (through the model's state-dict adapter).
    ``section=False``: the stock model config (0.3's own RoPE), resized to the trained length as stock resizes it."""
    from safetensors.torch import load_file

    from titan_rope_ext.torchtitan03.launch.check import preflight
    from titan_rope_ext.torchtitan03.tools.export import trained_model_config
    from titan_rope_ext.tools.hf_folder import check_checkpoint, load_model_tensors

    config = preflight(args)
    if section:
        model_config = trained_model_config(config)
    else:
        model_config = config.model_spec.model
        model_config.update_from_config(config=config)
    model = build(with_sdpa(model_config))
    if checkpoint is not None:
        shapes = {k: v.shape for k, v in model.state_dict().items()}
        state = load_model_tensors(str(checkpoint), check_checkpoint(str(checkpoint), shapes))
    else:
        state = config.model_spec.state_dict_adapter(model_config, None).from_hf(load_file(str(hf_weights)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return model.eval()


def transformers_model(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()


def tokens(length: int) -> torch.Tensor:
    return torch.randint(2, 2048, (1, length), generator=torch.Generator().manual_seed(length))


@torch.no_grad()
def logits(model, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    return getattr(out, "logits", out).float()


def lengths(model: str) -> tuple[int, ...]:
    return ORIGINAL[model] // 2, ORIGINAL[model] + 1, SEQ_LEN[model]  # longrope: transformers switches at original


def assert_agree(reference, candidate, what: str):
    result = agree(reference, candidate)
    print(f"{what}: {result}")
    assert result.ok, f"{what}: {result}"


def assert_differ(reference, candidate, what: str):
    result = agree(reference, candidate)
    print(f"{what} (control): {result}")
    assert result.max_abs_diff > 100 * result.rel_tol * result.scale and result.argmax_agreement < 0.75, str(result)


def with_base_config(exported: Path, base: Path, work: Path) -> Path:
    """The exported weights under the base model's config.json, as a user copying it next to them would have it."""
    folder = work / f"{exported.name}_base_config"
    folder.mkdir()
    shutil.copyfile(base / "config.json", folder / "config.json")
    os.symlink(exported / "model.safetensors", folder / "model.safetensors")
    return folder


# ---- the round trips -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", list(ORIGINAL))
def test_trained_model_exports_and_transformers_computes_it(runs, hf_base, work, model):
    output, ckpt = runs[model]
    step = ckpt / ("step-1" if model == "llama3" else "step-2")  # llama3: a full checkpoint; qwen3: model-only
    args = job(model, hf_base[model])
    out = work / f"export_{model}"
    assert export_main(*args, "--checkpoint", step, "--out", out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                    "tokenizer.json", "tokenizer_config.json"]
    exported = json.loads((out / "config.json").read_text())
    theta = THETA[model] or 10000.0
    assert exported["max_position_embeddings"] == SEQ_LEN[model] and exported["rope_theta"] == theta
    expected = {"rope_type": "yarn", "rope_theta": theta, "factor": 4.0,
                "original_max_position_embeddings": ORIGINAL[model]}
    if model == "qwen3":  # both lists the long one the run used (128 > 32), the attention factor explicit
        expected.update(rope_type="longrope", short_factor=LONG, long_factor=LONG,
                        attention_factor=pytest.approx(1.1832159566199232))
    assert exported["rope_parameters"] == expected

    trained, hf = torchtitan_model(args, step), transformers_model(out)
    for length in lengths(model):
        ids = tokens(length)
        assert_agree(logits(trained, ids), logits(hf, ids), f"{model} export at {length}")
    # controls at the trained length: the base config.json (plain RoPE) next to the weights; the torchtitan model
    # without the section (stock 0.3: llama3 with Llama 3.1 scaling, qwen3 plain) against the export
    ours = logits(trained, ids)
    assert_differ(ours, logits(transformers_model(with_base_config(out, hf_base[model], work)), ids),
                  f"{model} weights with the base config.json at {length}")
    assert_differ(logits(hf, ids), logits(torchtitan_model(args, step, section=False), ids),
                  f"{model} stock torchtitan 0.3 model vs the export at {length}")


def test_last_save_in_hf_folder_gets_the_same_config(runs, hf_base, work):
    output, ckpt = runs["llama3"]
    folder = ckpt / "step-2"
    assert f"titan-rope: wrote {folder / 'config.json'}" in output
    args = job("llama3", hf_base["llama3"])
    out = work / "export_llama3"
    if not out.exists():
        assert export_main(*args, "--checkpoint", ckpt / "step-1", "--out", out) == 0
    assert json.loads((folder / "config.json").read_text()) == json.loads((out / "config.json").read_text())
    assert (folder / "tokenizer.json").is_file()
    weights = next(folder.glob("model-*.safetensors"))
    ids = tokens(SEQ_LEN["llama3"])
    assert_agree(logits(torchtitan_model(args, hf_weights=weights), ids), logits(transformers_model(folder), ids),
                 "llama3 last_save_in_hf folder at 256")
