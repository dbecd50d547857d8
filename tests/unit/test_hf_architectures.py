"""The transformers architectures an export writes (either torchtitan line): what they assume for a key a base
config.json leaves out is what transformers 5.24.0 itself assumes."""

import pytest
from transformers import AutoConfig

from titan_rope_ext.tools import hf_architectures


@pytest.mark.parametrize("make", [hf_architectures.llama, hf_architectures.qwen3], ids=["llama", "qwen3"])
def test_defaults_are_transformers_own(make):
    arch = make({})
    base = {"model_type": arch.model_types[0], "hidden_size": 512, "num_attention_heads": 8, "num_hidden_layers": 3}
    hf = AutoConfig.for_model(**base)
    for key, default in arch.defaults.items():
        assert getattr(hf, key) == (default(base) if callable(default) else default), key
    assert arch.new_config["model_type"] == arch.model_types[0] == hf.model_type
    assert arch.new_config["architectures"] == [{"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}[hf.model_type]]
