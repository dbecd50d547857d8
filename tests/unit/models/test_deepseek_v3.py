"""deepseek_v3 adapter: MLA rope part only, init_weights hook, attention factor split like transformers'."""

import copy
import math

import pytest
import torch
from torchtitan.models.deepseek_v3 import deepseekv3_args
from torchtitan.models.deepseek_v3.model.model import apply_rotary_emb, DeepSeekV3Model

from titan_rope_ext import RopeScaling, rope_frequencies, ROPE_TYPES
from titan_rope_ext.cache import complex_cache
from titan_rope_ext.models.deepseek_v3 import ADAPTER
from titan_rope_ext.scaling import yarn_mscale
from tests.unit.models import helpers
from tests.unit.test_scaling import sections_for

ROPE_DIM = 64  # qk_rope_head_dim of the debug flavor
SECTIONS = sections_for(ROPE_DIM)


def args_of(seq_len):
    args = copy.deepcopy(deepseekv3_args["debugmodel"])
    args.max_seq_len = seq_len
    args.moe_impl = "standard"  # what update_from_config sets without expert-parallel comms
    args.moe_args.use_grouped_mm = False  # and on a device without grouped GEMMs
    args.n_layers = 3  # the rope cache depends on the rope fields only: a shorter body keeps the test fast
    return args


def stock_equivalent(args) -> RopeScaling:
    return RopeScaling(rope_type="yarn", factor=float(args.rope_factor), beta_fast=float(args.beta_fast),
                       beta_slow=float(args.beta_slow), original_max_position_embeddings=args.original_seq_len,
                       mscale=args.mscale, mscale_all_dim=args.mscale)


def softmax_scales(model):
    return {layer.attention.softmax_scale for layer in model.layers.values()}


def test_sections_cover_every_rope_type():
    assert set(SECTIONS) == set(ROPE_TYPES)


def test_stock_equivalent_past_the_original_length():
    args = args_of(8192)
    assert args.max_seq_len > args.original_seq_len  # stock applies YaRN here
    stock = helpers.build(DeepSeekV3Model, args, ADAPTER, None)
    ours = helpers.build(DeepSeekV3Model, args_of(8192), ADAPTER, stock_equivalent(args))
    assert ours.freqs_cis.dtype == torch.complex64 and ours.freqs_cis.shape == (8192, ROPE_DIM // 2)
    # stock divides 1/base^x by the factor, transformers computes 1/(factor*base^x): 7 of 32 bands differ by 1 ulp
    torch.testing.assert_close(ours.freqs_cis, stock.freqs_cis, rtol=2e-7, atol=2e-6)
    (stock_scale,), (our_scale,) = softmax_scales(stock), softmax_scales(ours)
    assert our_scale == pytest.approx(stock_scale, rel=1e-15)
    assert stock_scale != pytest.approx(ours.layers["0"].attention.qk_head_dim ** -0.5)  # mscale is in use


def test_stock_quirk_yarn_off_within_the_original_length_is_fixed():
    args = args_of(256)
    stock = helpers.build(DeepSeekV3Model, args, ADAPTER, None)
    plain = helpers.build(DeepSeekV3Model, args_of(256), ADAPTER, RopeScaling())
    assert torch.equal(stock.freqs_cis, plain.freqs_cis)  # stock: no YaRN at 256 <= 4096
    assert softmax_scales(stock) == {stock.layers["0"].attention.qk_head_dim ** -0.5}
    ours = helpers.build(DeepSeekV3Model, args_of(256), ADAPTER, stock_equivalent(args))
    assert not torch.equal(ours.freqs_cis, stock.freqs_cis)  # the section's YaRN applies
    (scale,) = softmax_scales(ours)
    assert scale == pytest.approx(ours.layers["0"].attention.qk_head_dim ** -0.5 * yarn_mscale(40.0, 0.7) ** 2)


@pytest.mark.parametrize("rope_type", sorted(SECTIONS))
def test_meta_convert_init_weights_equals_eager(rope_type):
    cfg = RopeScaling(rope_type=rope_type, **SECTIONS[rope_type])
    meta = helpers.build(DeepSeekV3Model, args_of(256), ADAPTER, cfg, device="meta")
    eager = helpers.build(DeepSeekV3Model, args_of(256), ADAPTER, cfg)
    assert torch.equal(meta.freqs_cis, eager.freqs_cis)
    inv_freq, af = rope_frequencies(cfg, ROPE_DIM, eager.model_args.rope_theta, 256)
    assert torch.equal(eager.freqs_cis, complex_cache(inv_freq, af, 256))
    assert "freqs_cis" not in eager.state_dict()
    assert type(meta).__name__ == "RopeScaledDeepSeekV3Model"


@pytest.mark.parametrize(
    "section, cache_factor, softmax_factor",
    [
        # transformers' DeepSeek-V3: ratio on cos/sin, mscale_all_dim squared on the softmax scale
        (dict(mscale=1.0, mscale_all_dim=0.5), yarn_mscale(4.0, 1.0) / yarn_mscale(4.0, 0.5),
         yarn_mscale(4.0, 0.5) ** 2),
        (dict(mscale=1.0, mscale_all_dim=1.0), 1.0, yarn_mscale(4.0, 1.0) ** 2),
        (dict(), 0.1 * math.log(4.0) + 1, 1.0),  # plain YaRN: the factor on cos/sin only
    ],
)
def test_attention_factor_is_applied_once(section, cache_factor, softmax_factor):
    cfg = RopeScaling(rope_type="yarn", factor=4.0, original_max_position_embeddings=64, **section)
    model = helpers.build(DeepSeekV3Model, args_of(128), ADAPTER, cfg)
    x = torch.randn(2, 128, 4, ROPE_DIM, generator=torch.Generator().manual_seed(3))
    rotated = apply_rotary_emb(x, model.freqs_cis)
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1) * cache_factor, rtol=1e-5, atol=1e-5)
    (scale,) = softmax_scales(model)
    assert scale == pytest.approx(model.layers["0"].attention.qk_head_dim ** -0.5 * softmax_factor, rel=1e-12)
    # logits of the rope part: cache factor on q and on k, times the softmax factor
    total = cache_factor**2 * softmax_factor
    expected = yarn_mscale(4.0, section["mscale"]) ** 2 if section else (0.1 * math.log(4.0) + 1) ** 2
    assert total == pytest.approx(expected, rel=1e-12)
