"""gpt_oss on torchtitan 0.3 (sink attention, CosSinRoPE): YaRN's own factor through stock's softmax rule, any other
factor in cos and sin; stock parity; the attention block against transformers' GptOssAttention, factor once."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.nn.attention.flex_attention import and_masks, create_block_mask, flex_attention
from torchtitan.models.common.attention import FlexAttention, get_causal_mask_mod, get_sliding_window_mask_mod
from torchtitan.models.gpt_oss import model_registry

from tests.torchtitan03.helpers import build, section, SECTIONS
from titan_rope_ext import RopeScaling, rope_frequencies
from titan_rope_ext.cache import cos_sin_cache
from titan_rope_ext.torchtitan03.models import scale_model
from titan_rope_ext.torchtitan03.rope import ScaledCosSinRoPE

HEAD_DIM = 64
THETA = 150000.0


def flavor(name: str = "debugmodel", n_layers: int = 1, attn_backend: str = "varlen"):
    config = model_registry(name, attn_backend=attn_backend).model
    config.layers = config.layers[:n_layers]
    return config


def stock_equivalent(rope) -> RopeScaling:
    """The section that is stock 0.3's gpt_oss RoPE and softmax scale (gpt-oss's own YaRN)."""
    assert rope.scaling == "yarn"
    return RopeScaling(rope_type="yarn", factor=float(rope.rope_factor), original_max_position_embeddings=rope.original_seq_len,
                       beta_fast=rope.beta_fast, beta_slow=rope.beta_slow, truncate=rope.truncate, arithmetic="torchtitan")


def softmax_scale(attention_config) -> float:
    with torch.device("meta"):
        return attention_config.build().softmax_scale


@pytest.mark.parametrize("method", list(SECTIONS))
def test_meta_then_init_states_equals_eager_and_the_formula(method):
    config = flavor(n_layers=2)
    cfg = section(method, HEAD_DIM)
    scale_model(config, cfg, max_seq_len=256)
    model = build(config)
    inv_freq, af = rope_frequencies(cfg, HEAD_DIM, THETA, 256)
    in_softmax = method == "yarn"  # YaRN's own 0.1 ln 4 + 1: stock's rule applies it; longrope's goes in cos/sin
    assert (af != 1.0) == (method in ("yarn", "longrope"))
    expected = cos_sin_cache(inv_freq, 1.0 if in_softmax else af, 256)
    for layer, layer_config in zip(model.layers.values(), config.layers):
        assert type(layer_config.attention.rope) is ScaledCosSinRoPE.Config
        assert torch.equal(layer.attention.rope.cache, expected)
        assert torch.equal(layer.attention.rope.cache, layer_config.attention.rope.build().cache)
        scale = 1.0 / math.sqrt(HEAD_DIM)
        if in_softmax:
            m = 0.1 * math.log(4.0) + 1.0
            scale *= m * m
        assert layer.attention.softmax_scale == scale
    assert not any("rope" in key for key in model.state_dict())


@pytest.mark.parametrize("name", ["debugmodel", "20b", "120b"])
def test_stock_equivalent_section_is_stocks_cache_and_softmax_scale(name):
    stock = flavor(name).layers[0].attention
    stock = dataclasses.replace(stock, rope=dataclasses.replace(stock.rope, max_seq_len=8192))  # past original_seq_len
    assert (stock.rope.scaling, stock.rope.rope_factor, stock.rope.original_seq_len, stock.rope.truncate) == ("yarn", 32, 4096, False)
    config = flavor(name)
    scale_model(config, stock_equivalent(stock.rope), max_seq_len=8192)
    ours = config.layers[0].attention
    assert type(ours.rope) is ScaledCosSinRoPE.Config and not ours.rope.factor_in_cache
    assert torch.equal(ours.rope.build().cache, stock.rope.build().cache)
    m = 0.1 * math.log(32) + 1.0  # frozen: gpt-oss's YaRN factor, folded once into the softmax scale
    assert softmax_scale(ours) == softmax_scale(stock) == 1.0 / math.sqrt(HEAD_DIM) * (m * m)


def test_a_factor_stocks_rule_cannot_write_goes_in_cos_and_sin():
    # yarn with an explicit attention_factor (or DeepSeek's mscale pair) and longrope: cos/sin carry it, softmax plain
    for cfg in (RopeScaling(rope_type="yarn", factor=32.0, original_max_position_embeddings=4096, attention_factor=1.5),
                RopeScaling(rope_type="yarn", factor=32.0, original_max_position_embeddings=4096, mscale=1.0, mscale_all_dim=0.5),
                section("longrope", HEAD_DIM)):
        config = flavor()
        scale_model(config, cfg, max_seq_len=512)
        rope = config.layers[0].attention.rope
        inv_freq, af = rope_frequencies(cfg, HEAD_DIM, THETA, 512)
        assert af != 1.0 and (rope.scaling, rope.factor_in_cache) == ("none", True)
        assert torch.equal(rope.build().cache, cos_sin_cache(inv_freq, af, 512))
        assert softmax_scale(config.layers[0].attention) == 1.0 / math.sqrt(HEAD_DIM)


SEQ, WINDOW = 128, 32


def _transformers_attention(layer: int, rope: dict):
    from transformers import GptOssConfig
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssAttention, GptOssRotaryEmbedding

    config = GptOssConfig(hidden_size=256, num_attention_heads=64, num_key_value_heads=8, head_dim=HEAD_DIM,
                          num_hidden_layers=2, sliding_window=WINDOW, max_position_embeddings=32 * 32, attention_bias=True,
                          rope_parameters=dict(rope, rope_theta=THETA), attn_implementation="eager")
    torch.manual_seed(layer)
    attention = GptOssAttention(config, layer).eval()
    for p in attention.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return attention, GptOssRotaryEmbedding(config)


@pytest.mark.parametrize("rope", [
    {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
     "original_max_position_embeddings": 32},  # gpt-oss's own YaRN: the factor in the softmax scale
    {"rope_type": "yarn", "factor": 32.0, "original_max_position_embeddings": 32, "attention_factor": 1.5},  # cos/sin
], ids=["softmax", "cos-sin"])
@pytest.mark.parametrize("layer", [0, 1], ids=["sliding", "full"])
def test_attention_block_equals_transformers_with_the_factor_once(layer, rope, monkeypatch):
    # torchtitan's gpt_oss HF adapter reads MXFP4 expert blocks, which save_pretrained does not write: the whole model
    # cannot load a random transformers checkpoint, so the attention block is compared (sinks, window, GQA). torchtitan
    # compiles flex_attention; compiled flex on CPU cannot return the log-sum-exp the sinks need, so the kernel runs
    # eagerly here (same math); everything else is the module's own forward.
    monkeypatch.setattr(FlexAttention, "_compiled_flex_attn", flex_attention)
    hf, rotary = _transformers_attention(layer, rope)
    config = flavor(n_layers=2, attn_backend="flex")
    scale_model(config, RopeScaling.from_hf(rope), max_seq_len=SEQ)
    attention = config.layers[layer].attention.build()
    missing, unexpected = attention.load_state_dict({
        "qkv_linear.wq.weight": hf.q_proj.weight, "qkv_linear.wq.bias": hf.q_proj.bias,
        "qkv_linear.wk.weight": hf.k_proj.weight, "qkv_linear.wk.bias": hf.k_proj.bias,
        "qkv_linear.wv.weight": hf.v_proj.weight, "qkv_linear.wv.bias": hf.v_proj.bias,
        "wo.weight": hf.o_proj.weight, "wo.bias": hf.o_proj.bias, "sinks": hf.sinks}, strict=False)
    assert not unexpected and missing == [], (missing, unexpected)

    mask_mods = [get_causal_mask_mod()] + ([get_sliding_window_mask_mod(WINDOW)] if hf.sliding_window else [])
    mask_mod = and_masks(*mask_mods)
    block_mask = create_block_mask(mask_mod, None, None, SEQ, SEQ, device="cpu")
    idx = torch.arange(SEQ)
    allowed = mask_mod(torch.tensor(0), torch.tensor(0), idx[:, None], idx[None, :])
    additive = torch.zeros(SEQ, SEQ).masked_fill(~allowed, float("-inf"))[None, None]

    x = torch.randn(2, SEQ, 256, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # transformers' attention in float64 (its float32 cos/sin times the factor) is the reference
        cos, sin = rotary(x, torch.arange(SEQ)[None])
        expected, _ = hf.double()(x.double(), (cos.double(), sin.double()), additive.double())
        out = attention(x, block_mask, None).double()
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)  # measured: at most 2.7e-6 apart
        gap = (out - expected).abs().max()
        # the factor dropped, or applied a second time, moves the output far past that agreement
        folded = attention.softmax_scale * math.sqrt(HEAD_DIM)  # m**2 where stock's rule applied it, else 1
        af = rope.get("attention_factor")
        for wrong_scale in ([1.0 / math.sqrt(HEAD_DIM), attention.softmax_scale * folded] if af is None
                            else [attention.softmax_scale / af ** 2, attention.softmax_scale * af ** 2]):
            attention.softmax_scale = wrong_scale
            assert (attention(x, block_mask, None).double() - expected).abs().max() > 100 * gap
