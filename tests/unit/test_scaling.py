"""Each rope type against values worked out by hand from the published formulas.

Setting: head_dim 8, theta 10000, so plain RoPE is exactly inv_freq = [1, 0.1, 0.01, 0.001]
(10000 ** (-2i/8)) and wavelengths 2*pi/inv_freq = [6.28, 62.8, 628, 6283]. The expected
numbers below are derived in the comments from that and the paper formulas, not from the
implementation.
"""

import math

import pytest
import torch

from titan_rope_ext import RopeScaling, rope_frequencies, ROPE_FUNCTIONS, ROPE_TYPES
from titan_rope_ext.scaling import method_keys

D, THETA = 8, 10000.0
DEFAULT = [1.0, 0.1, 0.01, 0.001]


def freqs(seq_len=256, **section):
    inv_freq, attention_factor = rope_frequencies(RopeScaling(**section), D, THETA, seq_len)
    assert inv_freq.dtype == torch.float32 and inv_freq.shape == (D // 2,)
    return inv_freq.tolist(), attention_factor


def close(actual, expected):
    assert actual == pytest.approx(expected, rel=2e-6), (actual, expected)


def test_registry_keys_are_the_config_values():
    assert set(ROPE_TYPES) == set(ROPE_FUNCTIONS)


def test_default():
    inv, af = freqs(rope_type="default")
    close(inv, DEFAULT)
    assert af == 1.0


def test_theta_override_changes_the_base():
    # theta 160000 with d=8: inv_freq_i = 160000 ** (-i/4) = 20 ** (-i) for i=0..3
    inv, _ = freqs(rope_type="default", theta=160000.0)
    close(inv, [1.0, 1 / 20, 1 / 400, 1 / 8000])


def test_linear():
    inv, af = freqs(rope_type="linear", factor=4.0)
    close(inv, [0.25, 0.025, 0.0025, 0.00025])
    assert af == 1.0


def test_ntk():
    # base' = theta * 4 ** (8/6); inv_i = theta**(-i/4) * 4 ** (-(i/4) * (8/6)) = DEFAULT_i * 4 ** (-i/3)
    inv, af = freqs(rope_type="ntk", factor=4.0)
    close(inv, [1.0, 0.1 * 4 ** (-1 / 3), 0.01 * 4 ** (-2 / 3), 0.001 / 4])
    assert af == 1.0


def test_dynamic_past_the_trained_length():
    # scale = factor * L / L_orig - (factor - 1) = 2 * 256/64 - 1 = 7; inv_i = DEFAULT_i * 7 ** (-i/3)
    inv, af = freqs(256, rope_type="dynamic", factor=2.0, original_max_position_embeddings=64)
    close(inv, [1.0, 0.1 * 7 ** (-1 / 3), 0.01 * 7 ** (-2 / 3), 0.001 / 7])
    assert af == 1.0


@pytest.mark.parametrize("seq_len", [32, 64])
def test_dynamic_within_the_trained_length_is_plain_rope(seq_len):
    inv, _ = freqs(seq_len, rope_type="dynamic", factor=2.0, original_max_position_embeddings=64)
    close(inv, DEFAULT)


def test_llama3():
    # L = 1000, factors (8, 1, 4): high_freq_wavelen 250, low_freq_wavelen 1000.
    # wavelens 6.28 and 62.8 < 250: kept. 6283 > 1000: / 8. 628.3 in between:
    # s = (1000 / 628.3185 - 1) / 3 = 0.1971831; inv = (1 - s) * 0.01 / 8 + s * 0.01
    s = (1000 / (2 * math.pi * 100) - 1) / 3
    inv, af = freqs(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=1000)
    close(inv, [1.0, 0.1, (1 - s) * 0.01 / 8 + s * 0.01, 0.001 / 8])
    close([(1 - s) * 0.01 / 8 + s * 0.01], [0.00297535])
    assert af == 1.0


def test_llama3_equal_freq_factors_is_a_hard_cutoff():
    # Llama 4: low = high = 1, L = 1000: wavelens 6.28, 62.8, 628 < 1000 kept; 6283 > 1000 divided by 16
    inv, af = freqs(rope_type="llama3", factor=16.0, low_freq_factor=1.0, high_freq_factor=1.0,
                    original_max_position_embeddings=1000)
    close(inv, [1.0, 0.1, 0.01, 0.001 / 16])
    assert af == 1.0


def test_yarn_truncated_ramp():
    # correction dim for r rotations: d * ln(L / (2 pi r)) / (2 ln theta), L = 64:
    # r = 32 -> -0.497 -> floor -1 -> clamp 0; r = 1 -> 1.008 -> ceil 2.
    # ramp over bands j: clamp(j / 2) = [0, .5, 1, 1]; extrapolation weight 1 - ramp = [1, .5, 0, 0]
    # inv_j = DEFAULT_j * (w_j + (1 - w_j) / 4); attention factor 0.1 ln 4 + 1
    inv, af = freqs(rope_type="yarn", factor=4.0, original_max_position_embeddings=64)
    close(inv, [1.0, 0.1 * (0.5 + 0.5 / 4), 0.01 / 4, 0.001 / 4])
    close([af], [1.1386294361])


def test_yarn_untruncated_ramp():
    # same bounds without rounding: low = max(-0.497, 0) = 0, high = 1.0080001 (d * ln(64 / 2pi) / (2 ln 1e4))
    high = 8 * math.log(64 / (2 * math.pi)) / (2 * math.log(1e4))
    close([high], [1.0080001])
    w1 = 1 - min(1 / high, 1.0)
    inv, _ = freqs(rope_type="yarn", factor=4.0, original_max_position_embeddings=64, truncate=False)
    close(inv, [1.0, 0.1 * (w1 + (1 - w1) / 4), 0.01 / 4, 0.001 / 4])


def test_yarn_arithmetic_orders_round_differently_by_at_most_one_ulp():
    # DeepSeek-V3's rope dims: qk_rope_head_dim 64, theta 1e4, factor 40 over 4096. Ramp ends:
    # floor(64 ln(4096 / (2 pi 32)) / (2 ln 1e4)) = floor(10.47) = 10, ceil(64 ln(4096 / 2 pi) / (2 ln 1e4)) = 23
    kw = dict(rope_type="yarn", factor=40.0, original_max_position_embeddings=4096)
    hf, _ = rope_frequencies(RopeScaling(**kw), 64, 1e4, 8192)
    ds, _ = rope_frequencies(RopeScaling(**kw, arithmetic="deepseek"), 64, 1e4, 8192)
    assert torch.equal(rope_frequencies(RopeScaling(**kw, arithmetic="transformers"), 64, 1e4, 8192)[0], hf)
    # the two published orders, written out here in float32
    wavelen = 1e4 ** (torch.arange(0, 64, 2).float() / 64)
    for inv, interpolated in ((hf, 1.0 / (40.0 * wavelen)), (ds, (1.0 / wavelen) / 40.0)):
        assert torch.equal(inv[:11], 1.0 / wavelen[:11])  # ramp 0: kept
        assert torch.equal(inv[23:], interpolated[23:])  # ramp 1: interpolated
    assert (hf - ds).abs().le(torch.finfo(torch.float32).eps * hf).all()
    assert 0 < int((hf != ds).sum()) < 32  # some bands really differ: the switch is not a no-op


def test_yarn_torchtitan_arithmetic_blends_with_the_ramp_itself():
    # torchtitan 0.3's models/common/rope.py order, written out in float32: interpolated * ramp +
    # kept * (1 - ramp); "deepseek" blends with 1 - (1 - ramp), which rounds differently in the ramp
    kw = dict(rope_type="yarn", factor=40.0, original_max_position_embeddings=4096)
    tt, _ = rope_frequencies(RopeScaling(**kw, arithmetic="torchtitan"), 64, 1e4, 8192)
    ds, _ = rope_frequencies(RopeScaling(**kw, arithmetic="deepseek"), 64, 1e4, 8192)
    inv = 1.0 / (1e4 ** (torch.arange(0, 64, 2).float() / 64))
    ramp = ((torch.arange(32, dtype=torch.float32) - 10) / (23 - 10)).clamp(0, 1)
    assert torch.equal(tt, inv / 40.0 * ramp + inv * (1 - ramp))
    assert torch.equal(tt[:11], ds[:11]) and torch.equal(tt[23:], ds[23:])  # outside the ramp: equal
    assert (tt - ds).abs().le(torch.finfo(torch.float32).eps * tt).all()


def test_yarn_attention_factor_variants():
    # DeepSeek: (0.1 * 1 * ln 4 + 1) / (0.1 * 0.5 * ln 4 + 1) = 1.1386294 / 1.0693147
    _, af = freqs(rope_type="yarn", factor=4.0, original_max_position_embeddings=64, mscale=1.0, mscale_all_dim=0.5)
    close([af], [1.0648217])
    _, af = freqs(rope_type="yarn", factor=4.0, original_max_position_embeddings=64, attention_factor=0.9)
    assert af == 0.9
    # mscale alone does not switch to the DeepSeek ratio (transformers' rule)
    _, af = freqs(rope_type="yarn", factor=4.0, original_max_position_embeddings=64, mscale=1.0)
    close([af], [1.1386294361])
    _, af = freqs(rope_type="yarn", factor=1.0, original_max_position_embeddings=64)
    assert af == 1.0


def test_yarn_custom_betas_move_the_ramp():
    # beta_fast 4: 8 ln(64 / 8pi) / (2 ln 1e4) = 0.4058 -> floor 0; beta_slow 0.25 -> 1.6101 -> ceil 2: same ramp
    # beta_slow 0.01: 8 ln(64 / 0.02pi) / 18.42 = 3.0081 -> ceil 4 -> min(4, 7) = 4: ramp j/4 = [0, .25, .5, .75]
    inv, _ = freqs(rope_type="yarn", factor=4.0, original_max_position_embeddings=64, beta_fast=4.0, beta_slow=0.01)
    w = [1.0, 0.75, 0.5, 0.25]
    close(inv, [DEFAULT[j] * (w[j] + (1 - w[j]) / 4) for j in range(4)])


def test_longrope_long_and_short():
    short, long = [1.0, 1.0, 1.0, 2.0], [1.0, 2.0, 4.0, 8.0]
    section = dict(rope_type="longrope", short_factor=short, long_factor=long, original_max_position_embeddings=64)
    inv, af = freqs(256, factor=4.0, **section)
    close(inv, [1.0, 0.05, 0.0025, 0.000125])
    # sqrt(1 + ln 4 / ln 64) = sqrt(4 / 3)
    close([af], [math.sqrt(4 / 3)])
    inv, af = freqs(64, factor=1.0, **section)
    close(inv, [1.0, 0.1, 0.01, 0.0005])
    assert af == 1.0  # factor 1
    # the pure function without factor: seq_len / original (transformers' rule with seq_len as max_position_embeddings)
    _, af = ROPE_FUNCTIONS["longrope"](8, 10000.0, 256, None, short_factor=short, long_factor=long,
                                       original_max_position_embeddings=64)
    close([af], [math.sqrt(4 / 3)])
    _, af = freqs(64, factor=16.0, **section)
    close([af], [math.sqrt(1 + 4 / 6)])  # ln 16 / ln 64 = 4/6
    _, af = freqs(256, attention_factor=1.25, **section)
    assert af == 1.25


# ---- properties --------------------------------------------------------------------------------

@pytest.mark.parametrize("factor", [1.5, 4.0, 32.0])
def test_linear_is_default_over_factor(factor):
    default, _ = rope_frequencies(RopeScaling(), 128, 500000.0, 4096)
    linear, _ = rope_frequencies(RopeScaling(rope_type="linear", factor=factor), 128, 500000.0, 4096)
    assert torch.equal(linear, default / factor)


def test_ntk_keeps_the_fastest_band_and_divides_the_slowest():
    default, _ = rope_frequencies(RopeScaling(), 128, 500000.0, 4096)
    ntk, _ = rope_frequencies(RopeScaling(rope_type="ntk", factor=8.0), 128, 500000.0, 4096)
    assert ntk[0] == default[0]
    close([ntk[-1].item()], [default[-1].item() / 8])
    assert torch.all(ntk <= default) and torch.all(ntk >= default / 8 * (1 - 1e-6))


def test_yarn_lies_between_interpolation_and_extrapolation():
    default, _ = rope_frequencies(RopeScaling(), 128, 500000.0, 32768)
    yarn, _ = rope_frequencies(
        RopeScaling(rope_type="yarn", factor=8.0, original_max_position_embeddings=4096), 128, 500000.0, 32768)
    assert torch.all(yarn <= default * (1 + 1e-6)) and torch.all(yarn >= default / 8 * (1 - 1e-6))
    assert yarn[0] == default[0]  # fastest band extrapolates
    close([yarn[-1].item()], [default[-1].item() / 8])  # slowest band interpolates
    assert torch.all(yarn[1:] <= yarn[:-1])  # still monotone in band index


def test_llama3_factor_one_is_default():
    default, _ = rope_frequencies(RopeScaling(), 128, 500000.0, 8192)
    llama3, _ = rope_frequencies(
        RopeScaling(rope_type="llama3", factor=1.0, low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=8192), 128, 500000.0, 8192)
    torch.testing.assert_close(llama3, default, rtol=1e-6, atol=0)


def test_longrope_unit_factors_are_default():
    ones = [1.0] * 64
    default, _ = rope_frequencies(RopeScaling(), 128, 500000.0, 8192)
    lr, _ = rope_frequencies(RopeScaling(rope_type="longrope", short_factor=ones, long_factor=ones,
                                         original_max_position_embeddings=4096, factor=2.0), 128, 500000.0, 8192)
    assert torch.equal(lr, default)


# ---- meta, devices, compile ---------------------------------------------------------------------

def sections_for(head_dim: int) -> dict[str, dict]:
    """A valid [rope_scaling] section per rope type for a model with ``head_dim`` (longrope lists fit it)."""
    bands = head_dim // 2
    return {
        "default": {},
        "linear": dict(factor=4.0),
        "ntk": dict(factor=4.0),
        "dynamic": dict(factor=4.0, original_max_position_embeddings=64),
        "yarn": dict(factor=4.0, original_max_position_embeddings=64, mscale=0.707, mscale_all_dim=0.707),
        "llama3": dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192),
        "longrope": dict(short_factor=[1.0] * bands, long_factor=[1.0 + i / bands * 4 for i in range(bands)],
                         original_max_position_embeddings=64, factor=4.0),
    }


SECTIONS = sections_for(16)


def test_sections_cover_every_rope_type():
    assert set(SECTIONS) == set(ROPE_FUNCTIONS)


@pytest.mark.parametrize("rope_type", sorted(SECTIONS))
def test_meta_allocates_nothing_and_matches_eager_shapes(rope_type):
    cfg = RopeScaling(rope_type=rope_type, **SECTIONS[rope_type])
    with torch.device("meta"):
        meta, af_meta = rope_frequencies(cfg, 16, 500000.0, 256)
    eager, af_eager = rope_frequencies(cfg, 16, 500000.0, 256)
    assert meta.is_meta and meta.shape == eager.shape == (8,) and meta.dtype == eager.dtype == torch.float32
    assert af_meta == af_eager


@pytest.mark.parametrize("rope_type", sorted(SECTIONS))
def test_compiles_fullgraph_without_graph_breaks(rope_type):
    from titan_rope_ext.cache import complex_cache

    cfg = RopeScaling(rope_type=rope_type, **SECTIONS[rope_type])

    def build():
        inv_freq, af = rope_frequencies(cfg, 16, 500000.0, 256)
        return complex_cache(inv_freq, af, 256)

    torch._dynamo.reset()
    compiled = torch.compile(build, fullgraph=True, backend="eager")
    assert torch.equal(compiled(), build())


def test_method_keys_come_from_the_signatures():
    assert method_keys("default") == (frozenset(), frozenset())
    assert method_keys("llama3")[0] == {"factor", "low_freq_factor", "high_freq_factor",
                                        "original_max_position_embeddings"}
    required, optional = method_keys("yarn")
    assert required == {"factor", "original_max_position_embeddings"}
    assert optional == {"beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor", "truncate",
                        "arithmetic"}
