"""deepseek_v3 adapter: MLA rope part only, init_weights hook, attention factor split like transformers'."""

import copy
import math

import pytest
import torch
from torch.nn.attention import SDPBackend
from torchtitan.models.deepseek_v3 import deepseekv3_args
from torchtitan.models.deepseek_v3.model.model import apply_rotary_emb, DeepSeekV3Model

from titan_rope_ext import RopeScaling, rope_frequencies, ROPE_TYPES
from titan_rope_ext.cache import complex_cache
from titan_rope_ext.torchtitan02.models.deepseek_v3 import ADAPTER
from titan_rope_ext.scaling import yarn_mscale
from tests.torchtitan02.models import helpers
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


def stock_equivalent(args, arithmetic="deepseek") -> RopeScaling:
    return RopeScaling(rope_type="yarn", factor=float(args.rope_factor), beta_fast=float(args.beta_fast),
                       beta_slow=float(args.beta_slow), original_max_position_embeddings=args.original_seq_len,
                       mscale=args.mscale, mscale_all_dim=args.mscale, arithmetic=arithmetic)


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
    assert torch.equal(ours.freqs_cis, stock.freqs_cis)
    assert softmax_scales(ours) == softmax_scales(stock)
    (stock_scale,) = softmax_scales(stock)
    assert stock_scale != pytest.approx(ours.layers["0"].attention.qk_head_dim ** -0.5)  # mscale is in use
    # transformers' order (the default) divides differently: 1 ulp apart in some bands, not bitwise
    hf_order = helpers.build(DeepSeekV3Model, args_of(8192), ADAPTER, stock_equivalent(args, arithmetic=None))
    assert not torch.equal(hf_order.freqs_cis, stock.freqs_cis)
    torch.testing.assert_close(hf_order.freqs_cis, stock.freqs_cis, rtol=2e-7, atol=2e-6)


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


def reference_mla(attn, x, inv_freq, cache_factor, scale):
    """float64 MLA as transformers' DeepSeek-V3 computes it: RoPE (factor on cos and sin) on the rope part
    of each query head and on the one shared rope key, ``scale`` as the softmax scale."""
    bs, seq, _ = x.shape
    nope, rope = attn.qk_nope_head_dim, attn.qk_rope_head_dim
    q = attn.wq(x) if attn.q_lora_rank == 0 else attn.wq_b(attn.q_norm(attn.wq_a(x)))
    q_nope, q_pe = q.view(bs, seq, -1, nope + rope).split([nope, rope], dim=-1)
    q = torch.cat((q_nope.double(), helpers.rotate_pairs_reference(q_pe, inv_freq, cache_factor, "pairs")), dim=-1)
    compressed, k_pe = attn.wkv_a(x).split([attn.kv_lora_rank, rope], dim=-1)
    k_pe = helpers.rotate_pairs_reference(k_pe.unsqueeze(2), inv_freq, cache_factor, "pairs")
    kv = attn.wkv_b(attn.kv_norm(compressed)).view(bs, seq, -1, nope + attn.v_head_dim)
    k_nope, v = kv.split([nope, attn.v_head_dim], dim=-1)
    k = torch.cat((k_nope.double(), k_pe.expand(-1, -1, k_nope.shape[2], -1)), dim=-1)
    return attn.wo(helpers.attend(q, k, v, scale).float())


@pytest.mark.parametrize("section", [dict(mscale=1.0, mscale_all_dim=0.5), dict(mscale=0.7, mscale_all_dim=0.7), {}])
def test_attention_block_matches_a_float64_reference(section):
    cfg = RopeScaling(rope_type="yarn", factor=4.0, original_max_position_embeddings=32, **section)
    model = helpers.build(DeepSeekV3Model, args_of(128), ADAPTER, cfg)
    inv_freq, cache_factor = rope_frequencies(cfg, ROPE_DIM, model.model_args.rope_theta, 128)
    attn = model.layers["0"].attention
    backends = getattr(attn.inner_attention, "sdpa_backends", None)
    if backends is not None and SDPBackend.MATH not in backends:
        # torchtitan 0.2.0's SDPA wrapper lists no math kernel, and CPU's flash kernel needs equal q/v head
        # dims (MLA has 192 / 128): this instance gets the math kernel too (later versions list it themselves)
        attn.inner_attention.sdpa_backends = [*backends, SDPBackend.MATH]
    base_scale = attn.qk_head_dim**-0.5
    # transformers' DeepSeek-V3 rule: mscale(f, mscale_all_dim)^2 on the softmax scale when mscale_all_dim is set
    scale = base_scale * (yarn_mscale(4.0, section["mscale_all_dim"]) ** 2 if section else 1.0)
    x = torch.randn(2, 128, model.model_args.dim, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        out = attn(x, model.freqs_cis, attention_masks=None)
        torch.testing.assert_close(out, reference_mla(attn, x, inv_freq, cache_factor, scale), rtol=1e-4, atol=1e-5)
        # the comparison can fail: either factor dropped, or the whole factor put on the cache as well
        wrongs = [(1.0, scale), (cache_factor, base_scale)] if section else [(1.0, scale), (cache_factor**2, scale)]
        for wrong_factor, wrong_scale in wrongs:
            if (wrong_factor, wrong_scale) == (cache_factor, scale):
                continue  # mscale == mscale_all_dim: the cache factor is 1, dropping it is no change
            assert not torch.allclose(out, reference_mla(attn, x, inv_freq, wrong_factor, wrong_scale),
                                      rtol=1e-4, atol=1e-5)
