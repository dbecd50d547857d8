"""``titan-rope export``'s torchtitan 0.3 glue without a Trainer run: the RoPE it reads off the job, the config.json it
plans, and its refusals (before any work, nothing left in ``--out``). The round trip through real ``titan-rope train``
runs and transformers' ``from_pretrained`` is ``tests/torchtitan03/test_export.py``."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from transformers import AutoConfig, AutoModelForCausalLM

from tests.torchtitan03.helpers import build, model_config
from titan_rope_ext.assets.tiny_hf import make_tiny_hf_model
from titan_rope_ext.torchtitan03.launch.check import preflight
from titan_rope_ext.torchtitan03.tools import export
from titan_rope_ext.torchtitan03.tools.export import Plan, stock_section

LLAMA3 = ["--module", "llama3", "--config", "llama3_debugmodel"]
QWEN3 = ["--module", "qwen3", "--config", "qwen3_debugmodel"]
YARN = ["--rope_scaling.rope_type", "yarn", "--rope_scaling.factor", "4",
        "--rope_scaling.original_max_position_embeddings", "64", "--training.seq_len", "256"]


def plan(*args: str, dtype: str = "float32") -> Plan:
    return Plan(preflight(list(args)), dtype)


# ---- the RoPE and the config.json ---------------------------------------------------------------------------

@pytest.mark.parametrize("model, scaling", [("llama3", "llama"), ("llama3", "yarn"), ("qwen3", "none"),
                                            ("qwen3", "yarn")])
def test_stock_section_is_the_stock_cache_bitwise(model, scaling):
    """What a job that kept 0.3's own RoPE trained with: our cache of ``stock_section`` equals stock's, bit for bit."""
    from titan_rope_ext.torchtitan03.models import attentions, scale_model

    config = model_config(model, n_layers=1)
    rope = attentions(config)[0][2].rope
    rope = dataclasses.replace(rope, max_seq_len=512, scaling=scaling, rope_factor=4.0, original_seq_len=64)
    section = stock_section(rope)
    expected = {"llama": "llama3", "none": "default", "yarn": "yarn"}[scaling]
    assert section.rope_type == expected
    attentions(config)[0][1].attention = dataclasses.replace(attentions(config)[0][2], rope=rope)
    with torch.device("cpu"):
        stock = rope.build().cache
        scale_model(config, section)
        ours = attentions(config)[0][2].rope.build().cache
    assert torch.equal(ours, stock)


def test_a_yarn_job_plans_transformers_yarn_at_the_trained_length():
    p = plan(*LLAMA3, *YARN)
    assert p.base_source is None  # the shipped tokenizer folder has no config.json: made from the model config
    assert p.hf_config["rope_parameters"] == {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 4.0,
                                              "original_max_position_embeddings": 64}
    assert p.hf_config["max_position_embeddings"] == 256
    assert (p.hf_config["bos_token_id"], p.hf_config["eos_token_id"]) == (0, 1)  # the shipped tokenizer's
    assert (p.hf_config["num_attention_heads"], p.hf_config["head_dim"], p.hf_config["intermediate_size"]) == (16, 16, 768)


def test_a_job_without_section_keys_trained_plain_rope():
    # titan-rope train gives every job the section; left unset it means plain RoPE, even on llama3 (whose stock
    # RoPE is Llama 3.1 scaling): the export says what was trained
    assert plan(*LLAMA3).hf_config["rope_parameters"] == {"rope_type": "default", "rope_theta": 500000.0}
    qwen3 = plan(*QWEN3, dtype="bfloat16").hf_config
    assert qwen3["rope_parameters"] == {"rope_type": "default", "rope_theta": 1000000.0}
    assert qwen3["dtype"] == qwen3["torch_dtype"] == "bfloat16" and qwen3["tie_word_embeddings"] is True


OVERRIDE = "titan_rope_ext.torchtitan03.override.rope_scaling"


def test_checkpoints_of_stock_torchtitan_train_export_the_rope_their_model_config_holds():
    """``--torchtitan-train``: the arguments as stock ``torchtitan.train`` parses them."""
    def as_given(*args: str) -> dict:
        return Plan(preflight(list(args), as_given=True), "float32").hf_config

    # no rope_scaling anywhere: stock 0.3's own RoPE (llama3: Llama 3.1 scaling with the flavor's values)
    stock_llama3 = as_given(*LLAMA3)
    assert stock_llama3["rope_parameters"] == {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                               "original_max_position_embeddings": 8192}
    assert stock_llama3["max_position_embeddings"] == 2048  # the debug config's training.seq_len
    assert as_given(*QWEN3)["rope_parameters"] == {"rope_type": "default", "rope_theta": 1000000.0}
    # a RopeScalingConverter in the config function, and --override.imports on a stock one
    yarn = {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 4.0, "original_max_position_embeddings": 64}
    converter = as_given("--module", "tests.torchtitan03.cpu_configs", "--config", "llama3_debugmodel_converter",
                         "--training.seq_len", "256")
    assert converter["rope_parameters"] == yarn and converter["max_position_embeddings"] == 256
    override = as_given("--module", "tests.torchtitan03.cpu_configs", "--config", "llama3_debugmodel",
                        "--override.imports", OVERRIDE + '={"rope_type": "yarn", "factor": 4, '
                        '"original_max_position_embeddings": 64}', "--training.seq_len", "128")
    assert override["rope_parameters"] == yarn and override["max_position_embeddings"] == 128
    # the section's jobs form (titan-rope train's) refuses the converter's config function, as training does
    with pytest.raises(ValueError, match="apply rope_scaling once"):
        plan("--module", "tests.torchtitan03.cpu_configs", "--config", "llama3_debugmodel_converter")

@pytest.mark.parametrize("args", [LLAMA3, QWEN3], ids=["llama3", "qwen3"])
def test_planned_config_holds_the_adapters_tensors(args):
    """transformers' model for the planned config.json has exactly the tensors torchtitan's adapter writes."""
    p = plan(*args, *YARN)
    with torch.device("meta"):
        hf_model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**p.hf_config))
        state = p.model_config.build().state_dict()
    hf_shapes = {k: v.shape for k, v in hf_model.state_dict().items()}
    if p.hf_config["tie_word_embeddings"]:
        hf_shapes.pop("lm_head.weight")
    assert hf_shapes == {k: v.shape for k, v in p.hf_tensors(state).items()}


def test_torchtitan_rounding_that_transformers_cannot_give_is_refused():
    # yarn with 0.3's own rounding at (128, 1e6, 4x over 256): one band 1 ulp off transformers'
    with pytest.raises(ValueError, match=r"1 of 64 bands of inv_freq differ .*arithmetic = 'torchtitan'"):
        plan(*QWEN3, "--rope_scaling.rope_type", "yarn", "--rope_scaling.factor", "4",
             "--rope_scaling.original_max_position_embeddings", "256", "--rope_scaling.arithmetic", "torchtitan",
             "--training.seq_len", "1024")


def test_moe_flavors_are_refused():
    with pytest.raises(ValueError, match="layers.0.moe is set: the flavor has MoE layers; titan-rope export supports dense llama3 and qwen3"):
        plan("--module", "qwen3", "--config", "qwen3_moe_debug")


# ---- refusals through the command -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A model-only DCP checkpoint of the llama3 debug model (what torchtitan's last step saves by default)."""
    path = tmp_path_factory.mktemp("ckpt") / "step-1"
    with pytest.warns(UserWarning):  # "torch.distributed is disabled ... single process": intended
        dcp.save(build(model_config("llama3")).state_dict(), checkpoint_id=str(path))
    return path


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_export_refuses_bad_input_and_leaves_nothing(checkpoint, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"

    def refused(*args, message: str):
        assert export.main([*map(str, args)]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert message in err, err
        assert not out.exists() and leftovers(tmp_path) == []

    refused(*LLAMA3, *YARN, "--checkpoint", tmp_path / "nope", "--out", out,
            message=f"--checkpoint '{tmp_path / 'nope'}' is not a torchtitan DCP folder (no .metadata)")
    # a checkpoint of another model, and of another flavor of the same model
    refused(*QWEN3, "--checkpoint", checkpoint, "--out", out, message="no tensors for layers.0.attention.k_norm.weight")
    refused("--module", "llama3", "--config", "llama3_8b", "--checkpoint", checkpoint, "--out", out,
            message="no tensors for layers.10.attention.qkv_linear.wk.weight")
    # a model the package trains but export does not cover (no checked transformers counterpart)
    refused("--module", "gpt_oss", "--config", "gpt_oss_debugmodel", "--checkpoint", checkpoint, "--out", out,
            message="titan-rope: error: model 'gpt_oss': titan-rope export supports llama3, qwen3")
    # a model the package refuses (refused while the job is parsed, as titan-rope train refuses it)
    if importlib.util.find_spec("fla") is not None:  # torchtitan's qwen3_5 imports flash-linear-attention
        refused("--module", "tests.torchtitan03.cpu_configs", "--config", "qwen3_5_debugmodel", "--checkpoint",
                checkpoint, "--out", out, message="titan-rope: error: rope_scaling on torchtitan 0.3 supports llama3")
    # a config.json whose dims contradict the model config
    assets = make_tiny_hf_model(tmp_path / "assets", "llama3", max_position_embeddings=64)
    cfg = json.loads((assets / "config.json").read_text())
    (assets / "config.json").write_text(json.dumps({**cfg, "num_key_value_heads": 4}))
    refused(*LLAMA3, *YARN, "--hf_assets_path", assets, "--checkpoint", checkpoint, "--out", out,
            message=f"{assets / 'config.json'}: num_key_value_heads = 4 contradicts the torchtitan model, which has 16")
    shutil.rmtree(assets)
    # --config-only completes an HF folder only
    refused(*LLAMA3, "--config-only", "--out", checkpoint, message="holds no .safetensors files")
    assert not (checkpoint / "config.json").exists()
    # an --out that is not empty, unless --force
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert export.main([*LLAMA3, *YARN, "--checkpoint", str(checkpoint), "--out", str(out)]) == 2
    assert "exists and is not empty; pass --force" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine" and leftovers(tmp_path) == []
    # a failure while writing leaves --out as it was

    def disk_full(*_):
        raise OSError("No space left on device")

    monkeypatch.setattr(export, "write_safetensors", disk_full)
    with pytest.raises(OSError):
        export.main([*LLAMA3, *YARN, "--checkpoint", str(checkpoint), "--out", str(out), "--force"])
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"] and leftovers(tmp_path) == []
    monkeypatch.undo()
    assert export.main([*LLAMA3, *YARN, "--checkpoint", str(checkpoint), "--out", str(out), "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json",
                                                    "tokenizer_config.json"]
    assert leftovers(tmp_path) == []


def test_the_command_exports_a_stock_torchtitan_train_checkpoint(checkpoint, tmp_path):
    assert export.main([*LLAMA3, "--torchtitan-train", "--checkpoint", str(checkpoint),
                        "--out", str(tmp_path / "out")]) == 0
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
