"""Our torchtitan 0.3 RoPE modules on llama3 (ComplexRoPE) and qwen3 (CosSinRoPE): the numbers, stock parity,
0.3's own init path, checkpoints, and the attention factor reaching the scores once."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchtitan.models.common.rope import ComplexRoPE, CosSinRoPE

from tests.torchtitan03.helpers import build, model_config, section, SECTIONS, with_sdpa
from titan_rope_ext import RopeScaling, rope_frequencies
from titan_rope_ext.cache import complex_cache, cos_sin_cache
from titan_rope_ext.torchtitan03.models import scale_model
from titan_rope_ext.torchtitan03.rope import ScaledComplexRoPE, ScaledCosSinRoPE

HEAD_DIM = {"llama3": 16, "qwen3": 128}
LAYOUT = {"llama3": complex_cache, "qwen3": cos_sin_cache}


def caches(model) -> list[torch.Tensor]:
    return [layer.attention.rope.cache for layer in model.layers.values()]


@pytest.mark.parametrize("model", ["llama3", "qwen3"])
@pytest.mark.parametrize("method", list(SECTIONS))
def test_meta_then_init_states_equals_eager_and_the_formula(model, method):
    config = model_config(model, n_layers=2)
    cfg = section(method, HEAD_DIM[model])
    scale_model(config, cfg, max_seq_len=512)
    built = build(config)  # meta, to_empty, init_states: 0.3's own path rebuilds the cache
    eager = config.layers[0].attention.rope.build()  # built directly on CPU
    theta = config.layers[0].attention.rope.theta
    inv_freq, attention_factor = rope_frequencies(cfg, HEAD_DIM[model], theta, 512)
    expected = LAYOUT[model](inv_freq, attention_factor, 512)
    for cache in caches(built):
        assert cache.device.type == "cpu"
        assert torch.equal(cache, eager.cache)
        assert torch.equal(cache, expected)
    assert not any("rope" in key for key in built.state_dict())  # a non-persistent buffer: never in a checkpoint


def test_qwen3_yarn_x4_cache_carries_1_1386_on_cos_and_sin():
    # 0.1 ln 4 + 1 = 1.1386294; at position 0 cos = 1 and sin = 0, so the row is [af]*128 + [0]*128
    config = model_config("qwen3", n_layers=1)
    scale_model(config, RopeScaling(rope_type="yarn", factor=4.0, original_max_position_embeddings=1024),
                max_seq_len=64)
    cache = build(config).layers["0"].attention.rope.cache
    assert cache.shape == (64, 256) and cache.dtype == torch.float32
    assert torch.equal(cache[0, :128], torch.full((128,), 0.1 * math.log(4) + 1, dtype=torch.float32))
    assert torch.equal(cache[0, 128:], torch.zeros(128))


def test_llama3_section_with_stock_values_is_stocks_cache_bit_for_bit():
    # stock 0.3 llama3 applies scaling = "llama" (8, 1, 4, 8192) to every flavor
    stock = model_config("llama3", "8B").layers[0].attention.rope
    assert (stock.scaling, stock.scaling_factor, stock.low_freq_factor, stock.high_freq_factor,
            stock.original_max_position_embeddings) == ("llama", 8.0, 1.0, 4.0, 8192)
    config = model_config("llama3", "8B", n_layers=1)
    scale_model(config, RopeScaling(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                    original_max_position_embeddings=8192))
    ours = config.layers[0].attention.rope
    assert type(ours) is ScaledComplexRoPE.Config and ours.max_seq_len == stock.max_seq_len == 131072
    assert torch.equal(ours.build().cache, stock.build().cache)


@pytest.mark.parametrize("layout", [ComplexRoPE, CosSinRoPE])
@pytest.mark.parametrize("dims", [(16, 500000.0, 4.0, 64), (128, 1e6, 4.0, 32768), (64, 1e4, 40.0, 4096)])
def test_yarn_frequencies_are_stocks_bit_for_bit(layout, dims):
    # stock 0.3 yarn has no attention factor: with attention_factor = 1 the whole cache is stock's
    dim, theta, factor, original = dims
    stock = layout.Config(dim=dim, max_seq_len=4096, theta=theta, scaling="yarn", rope_factor=factor,
                          original_seq_len=original).build()
    ours = {ComplexRoPE: ScaledComplexRoPE, CosSinRoPE: ScaledCosSinRoPE}[layout].Config(
        dim=dim, max_seq_len=4096, theta=theta, rope_scaling=RopeScaling(
            rope_type="yarn", factor=factor, original_max_position_embeddings=original, attention_factor=1.0,
            arithmetic="torchtitan")).build()
    assert torch.equal(ours.cache, stock.cache)


def test_default_is_stock_unscaled_qwen3():
    config = model_config("qwen3", n_layers=1)
    stock = config.layers[0].attention.rope.build().cache
    scale_model(config, RopeScaling())
    assert torch.equal(config.layers[0].attention.rope.build().cache, stock)


def test_our_config_refuses_stock_scaling_fields_and_unresolved_sections():
    with pytest.raises(ValueError, match=r"scaling must be 'none' .*got 'llama'"):
        ScaledComplexRoPE.Config(dim=16, max_seq_len=8, scaling="llama", rope_scaling=RopeScaling())
    with pytest.raises(ValueError, match="from_hf_assets is not resolved"):
        ScaledCosSinRoPE.Config(dim=16, max_seq_len=8, rope_scaling=RopeScaling(from_hf_assets=True))
    with pytest.raises(ValueError, match=r"short_factor must have head_dim // 2 = 8 entries .*got 2"):
        ScaledComplexRoPE.Config(dim=16, max_seq_len=8, rope_scaling=RopeScaling(
            rope_type="longrope", short_factor=[1.0, 1.0], long_factor=[1.0, 1.0], original_max_position_embeddings=4, factor=2.0))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pairs: bool) -> torch.Tensor:
    """float64 reference rotation of ``x`` (B, L, H, D) by per-position cos/sin (L, D/2)."""
    if pairs:  # (x[2i], x[2i+1])
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)
    half = x.shape[-1] // 2  # (x[i], x[i + D/2])
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


@pytest.mark.parametrize("model", ["llama3", "qwen3"])
def test_attention_factor_reaches_the_scores_exactly_once(model):
    # The attention block against a float64 reference that scales q and k by the factor once each
    # (transformers' rule: logits * af^2) with softmax scale head_dim^-0.5. Dropping the factor, or
    # applying it again in the softmax scale, moves the output far beyond the tolerance (checked below).
    torch.manual_seed(0)
    config = with_sdpa(model_config(model, n_layers=1))
    cfg = RopeScaling(rope_type="yarn", factor=16.0, original_max_position_embeddings=64)
    scale_model(config, cfg, max_seq_len=128)
    attention = build(config).layers["0"].attention
    head_dim, theta = HEAD_DIM[model], config.layers[0].attention.rope.theta
    inv_freq, af = rope_frequencies(cfg, head_dim, theta, 128)
    assert af == pytest.approx(0.1 * math.log(16) + 1)

    x = torch.randn(2, 128, config.dim)
    with torch.no_grad():
        out = attention(x, None, None).double()
        q, k, v = attention.qkv_linear(x)
        if attention.q_norm is not None:
            q, k = attention.q_norm(q), attention.k_norm(k)
    angles = torch.outer(torch.arange(128, dtype=torch.float64), inv_freq.double())[None, :, None, :]
    cos, sin = angles.cos(), angles.sin()
    pairs = model == "llama3"

    def reference(factor_in_qk: float, extra_scale: float) -> torch.Tensor:
        qr = _rotate(q.double(), cos, sin, pairs) * factor_in_qk
        kr = _rotate(k.double(), cos, sin, pairs) * factor_in_qk
        rep = qr.shape[2] // kr.shape[2]
        kr, vv = kr.repeat_interleave(rep, dim=2), v.double().repeat_interleave(rep, dim=2)
        scores = torch.einsum("blhd,bmhd->bhlm", qr, kr) * head_dim ** -0.5 * extra_scale
        scores = scores.masked_fill(torch.ones(128, 128, dtype=torch.bool).triu(1), float("-inf"))
        o = torch.einsum("bhlm,bmhd->blhd", F.softmax(scores, dim=-1), vv).flatten(2)
        return F.linear(o, attention.wo.weight.double())

    once = reference(af, 1.0)
    torch.testing.assert_close(out, once, rtol=1e-4, atol=1e-5)
    for wrong in (reference(1.0, 1.0), reference(af, af * af)):  # dropped; applied twice
        assert (out - wrong).abs().max() > 100 * (out - once).abs().max()
