"""llama3 adapter: stock parity, the trainer's meta -> init_weights phases, attention factor placement."""

import copy
from types import SimpleNamespace

import pytest
import torch
from torchtitan.models.llama3 import llama3_args, Transformer
from torchtitan.models.llama3.model.args import RoPEScalingArgs
from torchtitan.models.llama3.model.model import precompute_freqs_cis

from titan_rope_ext import RopeScaling, rope_frequencies
from titan_rope_ext.cache import complex_cache
from titan_rope_ext.torchtitan02.converter import check_job, RopeScalingConverter
from titan_rope_ext.torchtitan02.models import adapter_for, supported_models
from titan_rope_ext.torchtitan02.models.llama3 import ADAPTER
from tests.torchtitan02.models import helpers
from tests.unit.test_scaling import SECTIONS

STOCK_LLAMA3 = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=8192)


def debug_args(seq_len=256, **overrides):
    args = copy.deepcopy(llama3_args["debugmodel"])
    args.max_seq_len = seq_len
    for k, v in overrides.items():
        setattr(args, k, v)
    return args


def build(cfg: RopeScaling | None, device="cpu", seq_len=256):
    return helpers.build(Transformer, debug_args(seq_len), ADAPTER, cfg, device)


def test_stock_equivalent_llama3_is_bitwise_stock():
    cfg = RopeScaling(**STOCK_LLAMA3)
    assert torch.equal(build(cfg).freqs_cis, build(None).freqs_cis)
    # 8B dims at 128K positions: head_dim 128, theta 500000
    ours = complex_cache(*rope_frequencies(cfg, 128, 500000.0, 131072), 131072)
    stock = precompute_freqs_cis(128, 131072, 500000.0, RoPEScalingArgs())
    assert ours.dtype == stock.dtype == torch.complex64 and torch.equal(ours, stock)


def test_default_is_bitwise_stock_without_scaling():
    # stock llama3 with factor 1 leaves every band as is: plain RoPE
    stock = precompute_freqs_cis(16, 256, 500000.0, RoPEScalingArgs(scaling_factor=1.0))
    assert torch.equal(build(RopeScaling()).freqs_cis, stock)


@pytest.mark.parametrize("rope_type", sorted(SECTIONS))
def test_meta_convert_init_weights_equals_eager(rope_type):
    cfg = RopeScaling(rope_type=rope_type, **SECTIONS[rope_type])
    meta_model = build(cfg, device="meta")
    eager = build(cfg)
    assert meta_model.freqs_cis.dtype == torch.complex64 and meta_model.freqs_cis.shape == (256, 8)
    assert torch.equal(meta_model.freqs_cis, eager.freqs_cis)
    inv_freq, af = rope_frequencies(cfg, 16, 500000.0, 256)
    assert torch.equal(eager.freqs_cis, complex_cache(inv_freq, af, 256))


@pytest.mark.parametrize("rope_type", ["yarn", "linear"])
def test_scaled_cache_differs_from_stock(rope_type):
    cfg = RopeScaling(rope_type=rope_type, **SECTIONS[rope_type])
    assert not torch.equal(build(cfg).freqs_cis, build(None).freqs_cis)


def test_cache_is_non_persistent_and_out_of_the_state_dict():
    stock, converted = build(None), build(RopeScaling(rope_type="yarn", **SECTIONS["yarn"]))
    assert "freqs_cis" in converted._non_persistent_buffers_set
    assert set(converted.state_dict()) == set(stock.state_dict())
    assert not any("freqs" in k or "rope" in k for k in converted.state_dict())
    # weights load both ways with strict key matching
    converted.load_state_dict(stock.state_dict(), strict=True)
    stock.load_state_dict(converted.state_dict(), strict=True)


def test_convert_twice_is_refused():
    model = build(RopeScaling())
    with pytest.raises(RuntimeError, match="already converted"):
        ADAPTER.convert(model, RopeScaling())


def test_deepcopy_and_dynamic_subclasses_keep_the_scaled_cache():
    cfg = RopeScaling(rope_type="linear", factor=4.0)
    model = build(cfg)
    part = copy.deepcopy(model)  # what torchtitan's pipeline split does
    with torch.no_grad():
        part.init_weights(buffer_device=torch.device("cpu"))
    assert torch.equal(part.freqs_cis, model.freqs_cis)
    wrapped_cls = type("FSDPWrapped", (type(model),), {})  # FSDP2 subclasses the module's class
    model.__class__ = wrapped_cls
    with torch.no_grad():
        model.init_weights(buffer_device=None)
    assert torch.equal(model.freqs_cis, part.freqs_cis)
    assert isinstance(model, Transformer)


FACTOR_SECTIONS = {
    "yarn": dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=16),
    "longrope": dict(rope_type="longrope", **dict(SECTIONS["longrope"], original_max_position_embeddings=16)),
    "default": {},
}


@pytest.mark.parametrize("rope_type", sorted(FACTOR_SECTIONS))
def test_attention_factor_reaches_the_scores_once(rope_type):
    cfg = RopeScaling(**FACTOR_SECTIONS[rope_type])
    model = build(cfg, seq_len=64)
    inv_freq, af = rope_frequencies(cfg, 16, 500000.0, 64)
    if rope_type != "default":
        assert af > 1.05
    attn = model.layers["0"].attention
    x = torch.randn(2, 64, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = attn(x, model.freqs_cis, attention_masks=None)
        expected = helpers.reference_attention(attn, x, inv_freq, af)
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
        if rope_type != "default":  # the check can fail: factor dropped or squared are both different
            for wrong in (1.0, af * af):
                assert not torch.allclose(out, helpers.reference_attention(attn, x, inv_freq, wrong), rtol=1e-4, atol=1e-5)


def test_check_job_and_converter():
    job = SimpleNamespace(model=SimpleNamespace(name="llama3", flavor="debugmodel", hf_assets_path=None),
                          training=SimpleNamespace(seq_len=2048),
                          rope_scaling=RopeScaling(rope_type="longrope", short_factor=[1.0] * 4,
                                                   long_factor=[1.0] * 4, original_max_position_embeddings=64,
                                                   factor=4.0))
    with pytest.raises(ValueError, match="short_factor must have head_dim // 2 = 8 entries"):
        check_job(job)
    job.rope_scaling = RopeScaling(rope_type="linear", factor=2.0)
    converter = RopeScalingConverter(job, parallel_dims=None)
    with torch.device("meta"):
        model = Transformer(debug_args())
    converter.convert(model)
    assert model.freqs_cis.is_meta and type(model).__name__ == "RopeScaledTransformer"
    # flux has no rotary cache of the kinds the adapters know
    job.model.name, job.model.flavor = "flux", "flux-debug"
    with pytest.raises(ValueError, match=rf"model.name = 'flux' .*supported models: {', '.join(supported_models())}$"):
        check_job(job)
    with pytest.raises(ValueError, match="no \\[rope_scaling\\] section"):
        check_job(SimpleNamespace(model=job.model))
    # the cacheless apply is refused only with context parallelism (tests/torchtitan02/models/test_cacheless.py)
    job.model.name, job.model.flavor = "llama3", "debugmodel"
    job.parallelism = SimpleNamespace(context_parallel_degree=1)
    job.rope_scaling = RopeScaling(rope_type="linear", factor=2.0, apply="fused_cacheless")
    assert check_job(job)[1].apply == "fused_cacheless"
    job.parallelism.context_parallel_degree = 2
    with pytest.raises(ValueError, match="parallelism.context_parallel_degree = 2"):
        check_job(job)


def test_adapter_is_chosen_by_model_class():
    assert adapter_for(Transformer) is ADAPTER
    assert adapter_for(type("MyLlama", (Transformer,), {})) is ADAPTER
    with pytest.raises(ValueError, match="'torch.nn.modules.linear.Linear' has no rotary cache"):
        adapter_for(torch.nn.Linear)


def test_converter_log_says_where_theta_came_from(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama", "max_position_embeddings": 64}')  # no rope_theta
    with torch.device("meta"):
        stock_theta, from_file = Transformer(debug_args()), Transformer(debug_args())
    line = ADAPTER.convert(stock_theta, RopeScaling(rope_type="linear", factor=2.0))
    assert "theta=500000 (the flavor's rope_theta)" in line
    line = ADAPTER.convert(from_file, RopeScaling(hf_config=str(tmp_path / "config.json")))
    assert (f"theta=10000.0 (transformers' default for model_type 'llama': {tmp_path / 'config.json'} "
            "has no rope_theta)") in line
