"""Ground truth outside ourselves: transformers' logits on tiny random Llama and Qwen3 checkpoints made with
``save_pretrained``, against torchtitan 0.3's models with our RoPE read from the same ``config.json`` and the
weights loaded through the models' own HF state-dict adapters (the conversion ``initial_load_in_hf`` uses)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torchtitan.models.llama3.state_dict_adapter import Llama3StateDictAdapter
from torchtitan.models.qwen3.state_dict_adapter import Qwen3StateDictAdapter
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from tests.torchtitan03.helpers import build, model_config, with_sdpa
from titan_rope_ext import RopeScaling
from titan_rope_ext.torchtitan03.models import scale_model

SEQ = 128  # tokens per forward; the runs' training length
ORIGINAL = 32  # length the rope dicts say the model was trained at

ROPE = {  # transformers 5 rope_parameters (rope_theta added per model); ntk has no transformers rope_type
    "default": {"rope_type": "default"},
    "linear": {"rope_type": "linear", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 4.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": ORIGINAL},
    "longrope": {"rope_type": "longrope", "original_max_position_embeddings": ORIGINAL},
}

MODELS = {
    # torchtitan debug flavor (2 of its layers) and the transformers model with the same shapes
    "llama3": (LlamaConfig, LlamaForCausalLM, Llama3StateDictAdapter, 500000.0, 16,
               dict(vocab_size=2048, hidden_size=256, intermediate_size=768, num_hidden_layers=2,
                    num_attention_heads=16, num_key_value_heads=16, rms_norm_eps=1e-5, tie_word_embeddings=False)),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, Qwen3StateDictAdapter, 1e6, 128,
              dict(vocab_size=2048, hidden_size=256, intermediate_size=3072, num_hidden_layers=2, head_dim=128,
                   num_attention_heads=16, num_key_value_heads=8, rms_norm_eps=1e-6, tie_word_embeddings=True)),
}


def hf_checkpoint(model: str, method: str, path) -> torch.Tensor:
    """Saves a random HF model with ``method``'s rope dict in ``path``; returns its float32 logits on fixed tokens."""
    config_cls, model_cls, _, theta, head_dim, dims = MODELS[model]
    rope = dict(ROPE[method], rope_theta=theta)
    max_pos = SEQ
    if method == "longrope":
        rope.update(short_factor=[1.0 + 0.02 * i for i in range(head_dim // 2)],
                    long_factor=[1.0 + 0.5 * i for i in range(head_dim // 2)])
    if method == "dynamic":
        max_pos = ORIGINAL  # transformers' dynamic NTK reads the trained length here and grows past it
    torch.manual_seed(0)
    hf = model_cls(config_cls(**dims, max_position_embeddings=max_pos, rope_parameters=rope,
                              attn_implementation="eager")).eval()
    hf.save_pretrained(path)
    with torch.no_grad():
        return hf(tokens()).logits.float()


def tokens() -> torch.Tensor:
    return torch.randint(0, 2048, (2, SEQ), generator=torch.Generator().manual_seed(1))


def titan_logits(model: str, path, section: RopeScaling | None) -> torch.Tensor:
    _, _, adapter_cls, _, _, dims = MODELS[model]
    config = with_sdpa(model_config(model, n_layers=dims["num_hidden_layers"]))
    if section is not None:
        scale_model(config, section, max_seq_len=SEQ)
    titan = build(config)
    state = adapter_cls(config, str(path)).from_hf(load_file(str(path / "model.safetensors")))
    missing, unexpected = titan.load_state_dict(state, strict=False)
    assert not unexpected and all("rope" in key for key in missing), (missing, unexpected)
    with torch.no_grad():
        return titan(tokens()).float()


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("method", list(ROPE))
def test_logits_equal_transformers(model, method, tmp_path):
    expected = hf_checkpoint(model, method, tmp_path)
    section = RopeScaling(hf_config=str(tmp_path / "config.json"))  # read as transformers reads it
    assert section.rope_type == method
    torch.testing.assert_close(titan_logits(model, tmp_path, section), expected, rtol=1e-5, atol=1e-5)  # measured: at most 1.1e-6 apart


@pytest.mark.parametrize("model", list(MODELS))
def test_stock_torchtitan_misses_yarns_attention_factor(model, tmp_path):
    # the same checkpoint with YaRN frequencies but no attention factor, as stock 0.3 has it: the logits move
    # well past the tolerance above (the test can tell), and with our section they do not
    expected = hf_checkpoint(model, "yarn", tmp_path)
    no_factor = RopeScaling(hf_config=str(tmp_path / "config.json"), attention_factor=1.0)
    gap = (titan_logits(model, tmp_path, no_factor) - expected).abs().max()
    assert gap > 1e-3  # measured: 0.037 (llama3), 0.49 (qwen3)
