"""The exported config.json, read by transformers 5.24.0's own rotary modules, gives the trained RoPE bitwise.

For each method the trained ``(inv_freq, attention_factor)`` is ``rope_frequencies(section, head_dim, theta,
seq_len)`` with ``seq_len = training.seq_len``. The exported keys go through JSON into ``LlamaConfig`` /
``Qwen3Config`` and into ``LlamaRotaryEmbedding`` / ``Qwen3RotaryEmbedding``, which run their forward (with
transformers' per-forward updates: longrope's list switch) at input lengths 1, original, original + 1 and
seq_len: the buffer must equal the trained inv_freq bitwise, the attention scaling must be the same float,
and the cos/sin they return must be bitwise the trained cache's.
"""

import json
import math
import random

import pytest
import torch
from transformers import LlamaConfig, Qwen3Config
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

from titan_rope_ext import RopeScaling, rope_frequencies
from titan_rope_ext.cache import cos_sin_cache
from titan_rope_ext.hf import rope_keys_from_hf
from titan_rope_ext.hf_export import Architecture, hf_rope_keys, merge_config

rng = random.Random(0)


def lists(head_dim):
    return ([round(1 + 0.2 * rng.random(), 4) for _ in range(head_dim // 2)],
            [round(1 + 3 * rng.random(), 4) for _ in range(head_dim // 2)])


def sections(head_dim):
    short, long = lists(head_dim)
    return [
        ("default", {}),
        ("linear", dict(factor=4.0)),
        ("ntk", dict(factor=4.0)),
        ("ntk", dict(factor=2.5)),
        ("dynamic", dict(factor=4.0, original_max_position_embeddings=64)),
        ("yarn", dict(factor=4.0, original_max_position_embeddings=64)),
        ("yarn", dict(factor=8.0, original_max_position_embeddings=64, beta_fast=16.0, beta_slow=2.0, truncate=False)),
        ("yarn", dict(factor=40.0, original_max_position_embeddings=64, mscale=1.0, mscale_all_dim=0.707)),
        ("yarn", dict(factor=4.0, original_max_position_embeddings=64, attention_factor=1.3)),
        ("llama3", dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=64)),
        ("llama3", dict(factor=16.0, low_freq_factor=1.0, high_freq_factor=1.0, original_max_position_embeddings=64)),
        ("longrope", dict(short_factor=short, long_factor=long, original_max_position_embeddings=64, factor=4.0)),
        ("longrope", dict(short_factor=short, long_factor=long, original_max_position_embeddings=64,
                          attention_factor=1.1)),
    ]


CASES = [(head_dim, theta, seq_len, rope_type, section)
         for head_dim in (64, 128) for theta in (10000.0, 500000.0) for seq_len in (48, 256)
         for rope_type, section in sections(head_dim)]
HF_MODELS = {"llama": (LlamaConfig, LlamaRotaryEmbedding), "qwen3": (Qwen3Config, Qwen3RotaryEmbedding)}


def exported_config(model: str, head_dim: int, keys: dict):
    """The config transformers builds from a config.json holding the exported keys (through JSON)."""
    config_cls, _ = HF_MODELS[model]
    text = json.dumps(dict(model_type=model, hidden_size=4 * head_dim, num_attention_heads=4, head_dim=head_dim,
                           **keys))
    return config_cls.from_dict(json.loads(text))


def transformers_rope(model: str, hf_config, input_len: int):
    """What transformers' rotary module uses for an input of ``input_len`` tokens: inv_freq, scaling, cos, sin."""
    rotary = HF_MODELS[model][1](hf_config)
    x = torch.zeros(1, input_len, hf_config.head_dim)
    cos, sin = rotary(x, torch.arange(input_len)[None])
    return rotary.inv_freq.clone(), rotary.attention_scaling, cos[0], sin[0]


@pytest.mark.parametrize("model", sorted(HF_MODELS))
@pytest.mark.parametrize("head_dim, theta, seq_len, rope_type, section", CASES,
                         ids=lambda c: c if isinstance(c, str) else None)
def test_transformers_reads_the_trained_rope(model, head_dim, theta, seq_len, rope_type, section):
    cfg = RopeScaling(rope_type=rope_type, **section)
    trained_inv_freq, trained_factor = rope_frequencies(cfg, head_dim, theta, seq_len)
    hf = hf_rope_keys(cfg, head_dim, theta, seq_len)
    hf_config = exported_config(model, head_dim, hf.config_keys())
    original = section.get("original_max_position_embeddings", seq_len)
    for input_len in sorted({1, original, original + 1, seq_len}):
        inv_freq, scaling, cos, sin = transformers_rope(model, hf_config, input_len)
        assert torch.equal(inv_freq, trained_inv_freq), input_len
        assert scaling == trained_factor, input_len
        cache = cos_sin_cache(trained_inv_freq, trained_factor, input_len)
        assert torch.equal(torch.cat([cos, sin], dim=-1), cache), input_len


def test_what_each_method_is_written_as():
    def written(rope_type, seq_len=256, **section):
        return hf_rope_keys(RopeScaling(rope_type=rope_type, **section), 64, 10000.0, seq_len)

    assert written("default").config_keys() == dict(
        rope_parameters=dict(rope_type="default", rope_theta=10000.0), rope_scaling=None, rope_theta=10000.0,
        max_position_embeddings=256)
    ntk = written("ntk", factor=4.0)
    assert ntk.rope_parameters == dict(rope_type="default", rope_theta=10000.0 * 4.0 ** (64 / 62))
    # dynamic at training length 256 with original 64: scale 4 * 256 / 64 - 3 = 13
    dynamic = written("dynamic", factor=4.0, original_max_position_embeddings=64)
    assert dynamic.rope_parameters == dict(rope_type="default", rope_theta=10000.0 * 13.0 ** (64 / 62))
    # at or below the original length dynamic is plain RoPE
    assert written("dynamic", 64, factor=4.0, original_max_position_embeddings=64).rope_theta == 10000.0
    yarn = written("yarn", factor=4.0, original_max_position_embeddings=64, theta=20000.0)
    assert yarn.config_keys() == dict(
        rope_parameters=dict(rope_type="yarn", rope_theta=20000.0, factor=4.0, original_max_position_embeddings=64),
        rope_scaling=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64), rope_theta=20000.0,
        max_position_embeddings=256)
    short, long = [1.0] * 32, [2.0] * 32
    trained_long = written("longrope", short_factor=short, long_factor=long, original_max_position_embeddings=64,
                           factor=4.0).rope_parameters
    assert trained_long["short_factor"] == trained_long["long_factor"] == long
    assert trained_long["attention_factor"] == math.sqrt(1 + math.log(4.0) / math.log(64))
    trained_short = written("longrope", 64, short_factor=short, long_factor=long, original_max_position_embeddings=64,
                            factor=4.0).rope_parameters
    assert trained_short["short_factor"] == trained_short["long_factor"] == short


@pytest.mark.parametrize("rope_type, section, input_len", [
    ("dynamic", dict(factor=4.0, original_max_position_embeddings=64), 64),   # plain RoPE below the original
    ("dynamic", dict(factor=4.0, original_max_position_embeddings=64), 128),  # another base at 2x
    ("longrope", dict(short_factor=[1.0] * 32, long_factor=[2.0] * 32, original_max_position_embeddings=64,
                      factor=4.0), 64),  # short_factor for short inputs
])
def test_writing_the_section_as_is_would_differ(rope_type, section, input_len):
    """Why dynamic and longrope are rewritten: transformers reading the section's own dict (max_position_embeddings
    = original for dynamic, as transformers means it) computes another RoPE than the trained one."""
    cfg = RopeScaling(rope_type=rope_type, **section)
    trained, _ = rope_frequencies(cfg, 64, 10000.0, 256)
    as_is = dict(rope_parameters=dict(rope_type=rope_type, rope_theta=10000.0, **section),
                 max_position_embeddings=64 if rope_type == "dynamic" else 256)
    inv_freq, *_ = transformers_rope("llama", exported_config("llama", 64, as_is), input_len)
    assert not torch.equal(inv_freq, trained)


def test_deepseek_rounding_is_refused_when_transformers_cannot_give_its_bits():
    # DeepSeek-V3's rope dims (64, theta 10000, factor 40, original 4096): 1 ulp off in some bands
    cfg = RopeScaling(rope_type="yarn", factor=40.0, original_max_position_embeddings=4096, mscale=1.0,
                      mscale_all_dim=1.0, arithmetic="deepseek")
    with pytest.raises(ValueError, match=r"no transformers config.json reproduces the trained RoPE .* bands of "
                                         r"inv_freq differ .*arithmetic = 'deepseek' .*Nothing was written"):
        hf_rope_keys(cfg, 64, 10000.0, 163840)
    # the default arithmetic is transformers'
    hf_rope_keys(RopeScaling(**{**cfg.method_kwargs(), "rope_type": "yarn", "arithmetic": "transformers"}),
                 64, 10000.0, 163840)



def test_torchtitan_rounding_is_exported_where_transformers_gives_its_bits_and_refused_elsewhere():
    """torchtitan 0.3's own yarn rounding (``arithmetic = "torchtitan"``) is handled as deepseek's: at the debug
    recipes' dims (head_dim 16, theta 5e5, 4x over 64) it gives transformers' bits and is written as plain yarn
    (transformers, reading it back, computes them); at (128, 1e6, 4x over 256) one band is 1 ulp off: refused."""
    section = dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64)
    cfg = RopeScaling(**section, arithmetic="torchtitan")
    hf = hf_rope_keys(cfg, 16, 5e5, 256)
    assert hf.rope_parameters == {"rope_type": "yarn", "rope_theta": 5e5, **{k: v for k, v in section.items()
                                                                               if k != "rope_type"}}
    trained, factor = rope_frequencies(cfg, 16, 5e5, 256)
    inv_freq, scaling, *_ = transformers_rope("llama", exported_config("llama", 16, hf.config_keys()), 256)
    assert torch.equal(inv_freq, trained) and scaling == factor
    wide = RopeScaling(rope_type="yarn", factor=4.0, original_max_position_embeddings=256, arithmetic="torchtitan")
    with pytest.raises(ValueError, match=r"1 of 64 bands of inv_freq differ .*arithmetic = "
                                         r"'torchtitan' rounds the interpolated bands unlike transformers' yarn"
                                         r".*Nothing was written"):
        hf_rope_keys(wide, 128, 1e6, 1024)

# ---- the whole config.json ----------------------------------------------------------------------------------

ARCH = Architecture(model_types=("llama",),
                    expected=dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=64),
                    defaults=dict(num_key_value_heads=4), new_config=dict(architectures=["LlamaForCausalLM"]))


def test_merge_keeps_the_base_and_replaces_the_rope():
    base = dict(model_type="llama", hidden_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                max_position_embeddings=64, rope_theta=10000.0, bos_token_id=7, original_max_position_embeddings=64,
                rope_parameters=dict(rope_type="default", rope_theta=10000.0))
    hf = hf_rope_keys(RopeScaling(rope_type="yarn", factor=4.0, original_max_position_embeddings=64, theta=1e4),
                      64, 5e5, 256)
    out = merge_config(base, ARCH, hf, "bfloat16")
    assert out["bos_token_id"] == 7 and out["max_position_embeddings"] == 256
    assert out["dtype"] == out["torch_dtype"] == "bfloat16"
    assert out["rope_parameters"]["rope_type"] == out["rope_scaling"]["rope_type"] == "yarn"
    assert out["original_max_position_embeddings"] == 64  # Phi-3-style top-level key follows the export
    # our own reader (from_hf_assets on the export) gives back the trained section
    assert RopeScaling(**rope_keys_from_hf(out)) == RopeScaling(rope_type="yarn", factor=4.0,
                                                                original_max_position_embeddings=64, theta=1e4)
    plain = merge_config(base, ARCH, hf_rope_keys(RopeScaling(rope_type="ntk", factor=4.0), 64, 1e4, 256), "float32")
    assert "original_max_position_embeddings" not in plain and plain["rope_scaling"] is None
    fresh = merge_config(None, ARCH, hf, "float32")
    assert fresh["architectures"] == ["LlamaForCausalLM"] and fresh["num_key_value_heads"] == 2


@pytest.mark.parametrize("change, message", [
    (dict(hidden_size=512), "hidden_size = 512 contradicts the torchtitan model, which has 256"),
    (dict(num_key_value_heads=None), "num_key_value_heads = None contradicts .* 2"),
    (dict(model_type="qwen3"), "model_type = 'qwen3' is not this model's \\('llama'\\)"),
])
def test_a_base_config_of_another_model_is_refused(change, message):
    base = dict(model_type="llama", hidden_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=64)
    hf = hf_rope_keys(RopeScaling(), 64, 1e4, 256)
    with pytest.raises(ValueError, match=f"base.json: {message}"):
        merge_config({**base, **change}, ARCH, hf, "float32", source="base.json")


def test_the_core_imports_no_torchtitan_and_no_transformers():
    """hf_export serves both torchtitan lines: it and what it imports stay free of torchtitan (and of
    transformers, a test-only dependency)."""
    import ast
    from pathlib import Path

    import titan_rope_ext

    package = Path(titan_rope_ext.__file__).parent
    for name in ("hf_export", "hf", "config", "scaling", "cache"):
        tree = ast.parse((package / f"{name}.py").read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not {m for m in imported if m.split(".")[0] in ("torchtitan", "transformers")}, (name, imported)
        assert {m for m in imported if m.startswith("titan_rope_ext")} <= {
            "titan_rope_ext.hf", "titan_rope_ext.config", "titan_rope_ext.scaling", "titan_rope_ext.cache"}, name
