"""Same numbers as Hugging Face transformers: our functions against its ROPE_INIT_FUNCTIONS (pinned 5.24.0).

Mapping of the run's lengths onto a transformers config: ``max_position_embeddings`` is the length the
cache is built for (our ``seq_len``) except for ``dynamic``, where transformers reads the trained length
from it (our ``original_max_position_embeddings``) and takes the current length as ``seq_len``.
"""

import random

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from titan_rope_ext import RopeScaling, rope_frequencies

rng = random.Random(0)
LONG = [round(1 + 3 * rng.random(), 4) for _ in range(64)]
SHORT = [round(1 + 0.2 * rng.random(), 4) for _ in range(64)]

CASES = [
    ("default", {}, 8192),
    ("linear", dict(factor=4.0), 16384),
    ("dynamic", dict(factor=4.0, original_max_position_embeddings=4096), 16384),
    ("dynamic", dict(factor=4.0, original_max_position_embeddings=4096), 2048),
    ("yarn", dict(factor=4.0, original_max_position_embeddings=4096), 16384),
    ("yarn", dict(factor=16.0, original_max_position_embeddings=4096, beta_fast=16.0, beta_slow=2.0), 65536),
    ("yarn", dict(factor=40.0, original_max_position_embeddings=4096, mscale=1.0, mscale_all_dim=0.707), 163840),
    ("yarn", dict(factor=4.0, original_max_position_embeddings=32768, truncate=False), 131072),
    ("yarn", dict(factor=4.0, original_max_position_embeddings=4096, attention_factor=1.3), 16384),
    ("llama3", dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192),
     131072),
    ("llama3", dict(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192),
     131072),
    ("llama3", dict(factor=16.0, low_freq_factor=1.0, high_freq_factor=1.0, original_max_position_embeddings=8192),
     262144),  # Llama 4's values: equal factors
    ("longrope", dict(short_factor=SHORT, long_factor=LONG, original_max_position_embeddings=4096), 131072),
    ("longrope", dict(short_factor=SHORT, long_factor=LONG, original_max_position_embeddings=4096), 4096),
    ("longrope", dict(short_factor=SHORT, long_factor=LONG, original_max_position_embeddings=4096, factor=32.0),
     16384),
]


@pytest.mark.parametrize("theta", [10000.0, 500000.0])
@pytest.mark.parametrize("rope_type, section, seq_len", CASES, ids=lambda c: c if isinstance(c, str) else None)
def test_bitwise_equal_to_transformers(rope_type, section, seq_len, theta):
    head_dim, heads = 128, 4
    params = {"rope_type": rope_type, "rope_theta": theta, **section}
    max_pos = seq_len
    if rope_type == "dynamic":
        max_pos = params.pop("original_max_position_embeddings")
    hf_config = LlamaConfig(hidden_size=head_dim * heads, num_attention_heads=heads, head_dim=head_dim,
                            max_position_embeddings=max_pos, rope_parameters=params)
    if rope_type == "default":  # transformers 5 keeps plain RoPE on each model's rotary class
        hf_inv_freq, hf_attention_factor = LlamaRotaryEmbedding.compute_default_rope_parameters(hf_config)
    else:
        hf_inv_freq, hf_attention_factor = ROPE_INIT_FUNCTIONS[rope_type](hf_config, "cpu", seq_len=seq_len)

    if rope_type == "longrope" and "factor" not in section:
        # transformers takes max_position_embeddings / original (here seq_len / original); the section asks for it
        section = dict(section, factor=max_pos / section["original_max_position_embeddings"])
    inv_freq, attention_factor = rope_frequencies(
        RopeScaling(rope_type=rope_type, **section), head_dim, theta, seq_len)
    assert inv_freq.dtype == hf_inv_freq.dtype == torch.float32
    assert torch.equal(inv_freq, hf_inv_freq)
    assert attention_factor == pytest.approx(hf_attention_factor, rel=1e-12)


def test_from_hf_reads_a_transformers_standardized_dict():
    hf_config = LlamaConfig(rope_parameters={"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0,
                                             "original_max_position_embeddings": 32768})
    cfg = RopeScaling.from_hf(dict(hf_config.rope_parameters))
    assert cfg == RopeScaling(rope_type="yarn", theta=1e6, factor=4.0, original_max_position_embeddings=32768)
