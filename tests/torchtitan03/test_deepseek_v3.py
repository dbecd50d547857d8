"""deepseek_v3 and kimi_k2_5 on torchtitan 0.3 (MLA): the cache on the rope dims, the softmax scale through stock's
own rule, stock parity, the factor reaching the scores once, and transformers' DeepSeek-V3 logits."""

from __future__ import annotations

import dataclasses
import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torchtitan.config import OverrideConfig, apply_overrides
from torchtitan.models.common.rope import ComplexRoPE
from torchtitan.trainer import Trainer

from tests.reference import rotate_pairs_reference
from tests.torchtitan03.helpers import build, model_config, section, SECTIONS, with_sdpa
from titan_rope_ext import RopeScaling, rope_frequencies
from titan_rope_ext.cache import complex_cache
from titan_rope_ext.scaling import yarn_mscale
from titan_rope_ext.torchtitan03.converter import RopeScalingConverter
from titan_rope_ext.torchtitan03.models import adapter_for, scale_model
from titan_rope_ext.torchtitan03.rope import ScaledComplexRoPE

ROPE_DIM = 64  # qk_rope_head_dim of every flavor
QK_HEAD_DIM = 192  # qk_nope_head_dim 128 + qk_rope_head_dim 64
OVERRIDE = "titan_rope_ext.torchtitan03.override.rope_scaling"


def flavor(module: str, name: str, n_layers: int = 1, **registry_kwargs):
    config = importlib.import_module(f"torchtitan.models.{module}").model_registry(name, **registry_kwargs).model
    config.layers = config.layers[:n_layers]
    return config


def stock_equivalent(attention) -> RopeScaling:
    """The section that is stock 0.3's MLA RoPE and softmax scale for this attention config."""
    rope = attention.rope
    if rope.scaling == "none":
        return RopeScaling(rope_type="default")
    assert rope.scaling == "yarn"
    return RopeScaling(rope_type="yarn", factor=float(rope.rope_factor), original_max_position_embeddings=rope.original_seq_len,
                       beta_fast=rope.beta_fast, beta_slow=rope.beta_slow, truncate=rope.truncate,
                       mscale=attention.mscale, mscale_all_dim=attention.mscale, arithmetic="torchtitan")


def softmax_scale(attention_config) -> float:
    with torch.device("meta"):  # stock computes it in __init__: nothing needs allocating
        return attention_config.build().softmax_scale


@pytest.mark.parametrize("method", list(SECTIONS))
def test_meta_then_init_states_equals_eager_and_the_formula(method):
    # one decoder layer and one multi-token-prediction layer: both attentions get the scaled RoPE
    config = flavor("deepseek_v3", "debugmodel", num_mtp_layers=1)
    cfg = section(method, ROPE_DIM)
    scale_model(config, cfg, max_seq_len=256)
    assert [type(a.rope) for a in (config.layers[0].attention, config.mtp_layers[0].attention)] == [ScaledComplexRoPE.Config] * 2
    model = build(config)
    inv_freq, attention_factor = rope_frequencies(cfg, ROPE_DIM, 10000.0, 256)
    expected = complex_cache(inv_freq, attention_factor, 256)
    attentions = [model.layers["0"].attention, model.mtp_layers[0].attention]
    for attention in attentions:
        assert torch.equal(attention.rope.cache, expected)
        assert torch.equal(attention.rope.cache, config.layers[0].attention.rope.build().cache)  # eager, on CPU
        assert attention.softmax_scale == QK_HEAD_DIM ** -0.5  # no mscale_all_dim in these sections
    assert not any("rope" in key for key in model.state_dict())


@pytest.mark.parametrize("module, name, mscale, rope_factor", [
    ("deepseek_v3", "debugmodel", 0.70, 40.0), ("deepseek_v3", "16B", 0.70, 40.0),
    ("deepseek_v3", "671B", 1.0, 40.0), ("kimi_k2_7", "debugmodel", 0.70, 40.0),
    ("kimi_k2_7", "Kimi-K2.5", 1.0, 64.0), ("kimi_k2_7", "moonlight-16B-A3B", 1.0, None),
])
def test_stock_equivalent_section_is_stocks_cache_and_softmax_scale(module, name, mscale, rope_factor):
    stock = flavor(module, name).layers[0].attention
    stock = dataclasses.replace(stock, rope=dataclasses.replace(stock.rope, max_seq_len=8192))  # past original_seq_len
    assert stock.mscale == mscale and (stock.rope.rope_factor if stock.rope.scaling == "yarn" else None) == rope_factor
    config = flavor(module, name)
    scale_model(config, stock_equivalent(stock), max_seq_len=8192)
    ours = config.layers[0].attention
    assert type(ours.rope) is ScaledComplexRoPE.Config
    assert torch.equal(ours.rope.build().cache, stock.rope.build().cache)  # the mscale ratio is exactly 1
    assert softmax_scale(ours) == softmax_scale(stock)
    if rope_factor is not None:  # transformers' rule, frozen: qk_head_dim**-0.5 * mscale(f, mscale_all_dim)**2
        m = 0.1 * mscale * math.log(rope_factor) + 1.0
        assert softmax_scale(ours) == QK_HEAD_DIM ** -0.5 * m * m != QK_HEAD_DIM ** -0.5


def test_only_torchtitans_rounding_order_is_stocks_cache():
    # 0.3's _yarn_inv_freq blends interpolated * ramp + extrapolated * (1 - ramp); DeepSeek's order (0.2's
    # stock) and transformers' round some of the 32 bands 1 ulp differently: caches that are not stock's
    from torchtitan.models.common.rope import _yarn_inv_freq

    stock = flavor("deepseek_v3", "debugmodel").layers[0].attention
    stock_cache = dataclasses.replace(stock.rope, max_seq_len=8192).build().cache
    stock_inv_freq = _yarn_inv_freq(ROPE_DIM, 10000.0, 40.0, 32.0, 1.0, 4096, True)
    for arithmetic in ("torchtitan", "deepseek", "transformers"):
        cfg = dataclasses.replace(stock_equivalent(stock), arithmetic=arithmetic)
        config = flavor("deepseek_v3", "debugmodel")
        scale_model(config, cfg, max_seq_len=8192)
        inv_freq = rope_frequencies(cfg, ROPE_DIM, 10000.0, 8192)[0]
        same = torch.equal(config.layers[0].attention.rope.build().cache, stock_cache)
        assert same == torch.equal(inv_freq, stock_inv_freq) == (arithmetic == "torchtitan")
        ulps = (inv_freq - stock_inv_freq).abs() / torch.finfo(torch.float32).eps / stock_inv_freq
        assert ulps.max() <= 1.0, arithmetic


@pytest.mark.parametrize("mscale, mscale_all_dim", [(0.707, 0.707), (1.0, 0.5), (None, None)])
def test_factor_split_is_transformers_deepseek_v3(mscale, mscale_all_dim):
    # transformers' DeepSeek-V3: cos/sin carry the YaRN attention factor, the softmax scale yarn_apply_mscale's
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import yarn_apply_mscale
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers import DeepseekV3Config

    rope = {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 64, "rope_theta": 10000.0}
    rope.update({k: v for k, v in (("mscale", mscale), ("mscale_all_dim", mscale_all_dim)) if v is not None})
    hf_config = DeepseekV3Config(qk_rope_head_dim=ROPE_DIM, max_position_embeddings=256, rope_parameters=rope)
    _, hf_factor = ROPE_INIT_FUNCTIONS["yarn"](hf_config)
    config = flavor("deepseek_v3", "debugmodel")
    scale_model(config, RopeScaling.from_hf({k: v for k, v in rope.items() if k != "rope_theta"}), max_seq_len=256)
    ours = config.layers[0].attention
    assert softmax_scale(ours) == yarn_apply_mscale(rope, QK_HEAD_DIM ** -0.5)
    cache = ours.rope.build().cache
    assert torch.allclose(cache.abs(), torch.full(cache.shape, hf_factor), rtol=1e-6, atol=0)


def _mla_reference(attention, x, inv_freq, cache_factor, scale):
    """float64 MLA over the module's own projections: RoPE on the rope dims with ``cache_factor`` on cos and sin
    (q_pe and k_pe), causal softmax at ``scale``."""
    b, s, _ = x.shape
    h, nope, rope, v_dim = attention.n_heads, attention.qk_nope_head_dim, attention.qk_rope_head_dim, attention.v_head_dim
    with torch.no_grad():
        q = attention.wq(x).view(b, s, h, nope + rope).double()
        kv, k_pe = torch.split(attention.wkv_a(x), [attention.kv_lora_rank, rope], dim=-1)
        kv = attention.wkv_b(attention.kv_norm(kv)).view(b, s, h, nope + v_dim).double()
    q_nope, q_pe = torch.split(q, [nope, rope], dim=-1)
    k_nope, v = torch.split(kv, [nope, v_dim], dim=-1)
    q_pe = rotate_pairs_reference(q_pe, inv_freq, cache_factor, "pairs")
    k_pe = rotate_pairs_reference(k_pe.double()[:, :, None, :], inv_freq, cache_factor, "pairs").expand(-1, -1, h, -1)
    q, k = torch.cat([q_nope, q_pe], dim=-1), torch.cat([k_nope, k_pe], dim=-1)
    scores = torch.einsum("blhd,bmhd->bhlm", q, k) * scale
    scores = scores.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf"))
    o = torch.einsum("bhlm,bmhd->blhd", F.softmax(scores, dim=-1), v).flatten(2)
    return F.linear(o, attention.wo.weight.double())


@pytest.mark.parametrize("mscale, mscale_all_dim", [(0.707, 0.707), (1.0, 0.5), (None, None)])
def test_attention_factor_reaches_the_scores_exactly_once(mscale, mscale_all_dim):
    # the MLA block against a float64 reference with the cache factor on q_pe and k_pe once each and the softmax
    # mscale once; dropping either, or applying the softmax mscale twice, moves the output far past the tolerance
    torch.manual_seed(0)
    config = with_sdpa(flavor("deepseek_v3", "debugmodel"))
    keys = {k: v for k, v in (("mscale", mscale), ("mscale_all_dim", mscale_all_dim)) if v is not None}
    cfg = RopeScaling(rope_type="yarn", factor=40.0, original_max_position_embeddings=32, **keys)
    scale_model(config, cfg, max_seq_len=128)
    attention = build(config).layers["0"].attention
    inv_freq, af = rope_frequencies(cfg, ROPE_DIM, 10000.0, 128)
    m2 = yarn_mscale(40.0, mscale_all_dim) ** 2 if mscale_all_dim else 1.0
    assert af == (yarn_mscale(40.0, mscale) / yarn_mscale(40.0, mscale_all_dim) if keys else 0.1 * math.log(40) + 1)
    x = torch.randn(2, 128, 256)
    with torch.no_grad():
        out = attention(x, None, None).double()
    once = _mla_reference(attention, x, inv_freq, af, QK_HEAD_DIM ** -0.5 * m2)
    torch.testing.assert_close(out, once, rtol=1e-4, atol=1e-5)
    wrong = [_mla_reference(attention, x, inv_freq, 1.0 if af != 1.0 else 2.0, QK_HEAD_DIM ** -0.5 * m2)]  # cache factor
    if m2 != 1.0:
        wrong += [_mla_reference(attention, x, inv_freq, af, QK_HEAD_DIM ** -0.5),  # softmax mscale dropped
                  _mla_reference(attention, x, inv_freq, af, QK_HEAD_DIM ** -0.5 * m2 * m2)]  # applied twice
    for w in wrong:
        assert (out - w).abs().max() > 100 * (out - once).abs().max()


def test_the_three_ways_in_give_the_same_attention_configs():
    cfg = RopeScaling(rope_type="yarn", factor=40.0, original_max_position_embeddings=4096, mscale=0.707, mscale_all_dim=0.707)
    section_path = flavor("deepseek_v3", "debugmodel", n_layers=2)
    scale_model(section_path, cfg)
    converter_path = RopeScalingConverter.Config(rope_scaling=cfg).build().convert(flavor("deepseek_v3", "debugmodel", n_layers=2))
    trainer = Trainer.Config(model_spec=importlib.import_module("torchtitan.models.deepseek_v3").model_registry("debugmodel"))
    trainer.model_spec.model.layers = trainer.model_spec.model.layers[:2]
    apply_overrides(OverrideConfig(imports=[(OVERRIDE, {"rope_type": "yarn", "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
                                                        "original_max_position_embeddings": 4096})]), trainer)
    for model in (section_path, converter_path, trainer.model_spec.model):
        for layer in model.layers:
            a = layer.attention
            assert (type(a.rope), a.rope.scaling, a.rope.rope_factor, a.mscale, a.rope.rope_scaling) == (
                ScaledComplexRoPE.Config, "yarn", 40.0, 0.707, cfg)
            m = yarn_mscale(40.0, 0.707)
            assert softmax_scale(a) == QK_HEAD_DIM ** -0.5 * m * m  # stock's and transformers' order


def test_softmax_factor_survives_fused_mla_after_the_section():
    # the factor is in config fields every MLA subclass reads, so torchtitan's fused_mla override (a derive of the
    # attention config, run after the section's swap) keeps it; as an override of the same node ours is refused
    cfg = RopeScaling(rope_type="yarn", factor=40.0, original_max_position_embeddings=4096, mscale=1.0, mscale_all_dim=0.5)
    trainer = Trainer.Config(model_spec=importlib.import_module("torchtitan.models.deepseek_v3").model_registry("debugmodel"))
    trainer.model_spec.model.layers = trainer.model_spec.model.layers[:1]
    scale_model(trainer.model_spec.model, cfg)
    apply_overrides(OverrideConfig(imports=["torchtitan.overrides.fused_mla.fused_mla"]), trainer)
    fused = trainer.model_spec.model.layers[0].attention
    assert type(fused).__qualname__ == "FusedMLAAttention.Config" and type(fused.rope) is ScaledComplexRoPE.Config
    m = yarn_mscale(40.0, 0.5)
    assert softmax_scale(fused) == QK_HEAD_DIM ** -0.5 * m * m
    with pytest.raises(ValueError, match="both claim node 'model_spec.model.layers.0.attention'"):
        apply_overrides(OverrideConfig(imports=[(OVERRIDE, {"rope_type": "default"}),
                                                "torchtitan.overrides.fused_mla.fused_mla"]),
                        Trainer.Config(model_spec=importlib.import_module("torchtitan.models.deepseek_v3")
                                       .model_registry("debugmodel")))


def test_kimi_shares_deepseeks_adapter_under_its_own_name():
    kimi = flavor("kimi_k2_7", "debugmodel")
    assert scale_model(kimi, RopeScaling(), model_name="kimi_k2_5").startswith("kimi_k2_5: rope_type=default")
    stock = flavor("deepseek_v3", "debugmodel").layers[0].attention
    assert adapter_for(stock, "x", flavor("deepseek_v3", "debugmodel")).name == "deepseek_v3"
    assert adapter_for(stock, "x").name == "deepseek_v3 or kimi_k2_5"  # an override sees the attention only
    assert type(stock.rope) is ComplexRoPE.Config


SEQ = 128


@pytest.mark.parametrize("rope", [
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "mscale": 0.707, "mscale_all_dim": 0.707},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
    {"rope_type": "linear", "factor": 4.0},
], ids=["yarn-mscale", "yarn", "linear"])
def test_logits_equal_transformers(rope, tmp_path):
    # ground truth: a random one-layer (dense) transformers DeepSeek-V3 with the debug flavor's dims, loaded through
    # torchtitan's own HF state-dict adapter; RoPE and softmax scale read from its config.json
    from torchtitan.models.deepseek_v3.state_dict_adapter import DeepSeekV3StateDictAdapter
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    torch.manual_seed(0)
    hf = DeepseekV3ForCausalLM(DeepseekV3Config(
        vocab_size=2048, hidden_size=256, intermediate_size=1024, num_hidden_layers=1, first_k_dense_replace=1,
        num_attention_heads=16, num_key_value_heads=16, q_lora_rank=None, kv_lora_rank=512, qk_nope_head_dim=128,
        qk_rope_head_dim=ROPE_DIM, v_head_dim=128, rms_norm_eps=1e-5, tie_word_embeddings=False,
        max_position_embeddings=SEQ, rope_parameters=dict(rope, rope_theta=10000.0), attn_implementation="eager")).eval()
    hf.save_pretrained(tmp_path)
    tokens = torch.randint(0, 2048, (2, SEQ), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(tokens).logits.float()

    config = with_sdpa(flavor("deepseek_v3", "debugmodel"))
    for layer in config.layers:  # transformers' kv_a_layernorm has eps 1e-6 whatever the config says
        layer.attention = dataclasses.replace(layer.attention, kv_norm=dataclasses.replace(layer.attention.kv_norm, eps=1e-6))
    scale_model(config, RopeScaling(hf_config=str(tmp_path / "config.json")), max_seq_len=SEQ)
    titan = build(config)
    state = DeepSeekV3StateDictAdapter(config, str(tmp_path)).from_hf(load_file(str(tmp_path / "model.safetensors")))
    missing, unexpected = titan.load_state_dict(state, strict=False)
    assert not unexpected and all("rope" in key for key in missing), (missing, unexpected)
    attention = titan.layers["0"].attention
    assert attention.softmax_scale == hf.model.layers[0].self_attn.scaling
    with torch.no_grad():
        logits = titan(tokens).float()
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)  # measured: at most 7.2e-7 apart
    if "mscale_all_dim" in rope:  # the softmax mscale dropped, or applied twice: far off
        m2 = attention.softmax_scale / QK_HEAD_DIM ** -0.5
        for wrong in (QK_HEAD_DIM ** -0.5, attention.softmax_scale * m2):
            attention.softmax_scale = wrong
            with torch.no_grad():
                assert (titan(tokens).float() - expected).abs().max() > 1e-3
