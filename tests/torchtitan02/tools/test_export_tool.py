"""titan-rope export's torchtitan-0.2 glue, without a checkpoint: the config.json it plans and the checks.

The round trip through a real Trainer run and ``from_pretrained`` is in tests/torchtitan02/integration/test_hf_roundtrip.py.
"""

import pytest
import torch
from torchtitan.config import ConfigManager
from transformers import AutoConfig, AutoModelForCausalLM

from titan_rope_ext.torchtitan02.tools.export import ARCHITECTURES, hf_tensors, mentions_last_save_in_hf, Plan
from tests.torchtitan02.integration.conftest import config


def job(name: str, model: str = "llama3", *args: str):
    return ConfigManager().parse_args(["--job.config_file", str(config(name, model)), *args])


@pytest.mark.parametrize("model", sorted(ARCHITECTURES))
def test_defaults_are_transformers_own(model):
    """What the architecture assumes for a key a base config.json leaves out is what transformers assumes."""
    plan = Plan(job("yarn", model), "float32")
    base = {"model_type": plan.arch.model_types[0], "hidden_size": 512, "num_attention_heads": 8,
            "num_hidden_layers": 3}
    hf = AutoConfig.for_model(**base)
    for key, default in plan.arch.defaults.items():
        expected = default(base) if callable(default) else default
        assert getattr(hf, key) == expected, key


@pytest.mark.parametrize("model", sorted(ARCHITECTURES))
def test_planned_config_holds_the_adapters_tensors(model):
    """transformers' model for the planned config.json has exactly the tensors torchtitan's adapter writes."""
    plan = Plan(job("yarn", model), "float32")  # no config.json in the shipped tokenizer folder: made from the flavor
    assert plan.base_source is None
    assert (plan.config["bos_token_id"], plan.config["eos_token_id"]) == (0, 1)  # the shipped tokenizer's
    with torch.device("meta"):
        hf_model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**plan.config))
        tt_model = plan.spec.model_cls(plan.model_args)
    hf_shapes = {k: v.shape for k, v in hf_model.state_dict().items()}
    written = hf_tensors(plan, tt_model.state_dict())  # the adapter's tensors as the export writes them
    if plan.config["tie_word_embeddings"]:
        hf_shapes.pop("lm_head.weight")
    assert hf_shapes == {k: v.shape for k, v in written.items()}


def test_unconverted_jobs_export_the_stock_rope():
    stock_llama3 = job("llama3")
    stock_llama3.model.converters = []
    plan = Plan(stock_llama3, "bfloat16")
    assert plan.config["rope_parameters"] == {  # torchtitan 0.2.2's built-in Llama 3.1 scaling, flavor theta
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    assert plan.config["dtype"] == plan.config["torch_dtype"] == "bfloat16"
    stock_qwen3 = job("yarn", "qwen3")
    stock_qwen3.model.converters = []
    assert Plan(stock_qwen3, "float32").config["rope_parameters"] == {"rope_type": "default", "rope_theta": 1000000.0}


def test_unsupported_models_and_flavors_are_refused():
    with pytest.raises(ValueError, match="model.name = 'llama4': titan-rope export supports llama3, qwen3"):
        Plan(job("yarn", "llama4"), "float32")


def test_only_jobs_that_mention_last_save_in_hf_are_parsed_again(tmp_path):
    assert not mentions_last_save_in_hf(["--job.config_file", str(config("yarn"))])
    assert mentions_last_save_in_hf(["--job.config_file", str(config("yarn")), "--checkpoint.last_save_in_hf"])
    toml = tmp_path / "job.toml"
    toml.write_text("[checkpoint]\nlast_save_in_hf = true\n")
    assert mentions_last_save_in_hf([f"--job.config_file={toml}"])
