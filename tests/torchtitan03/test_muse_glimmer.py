"""muse_glimmer on torchtitan 0.3 (GQAttention subclass, iRoPE): RoPE layers get the scaled cache, NoPE layers stay
exactly stock's; the attention block against a float64 reference with the factor once."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchtitan.models.common.rope import ComplexRoPE
from torchtitan.models.muse_glimmer import model_registry

from tests.reference import rotate_pairs_reference
from tests.torchtitan03.helpers import build, section, SECTIONS, with_sdpa
from titan_rope_ext import RopeScaling, rope_frequencies
from titan_rope_ext.cache import complex_cache
from titan_rope_ext.torchtitan03.models import scale_model
from titan_rope_ext.torchtitan03.rope import ScaledComplexRoPE

HEAD_DIM = 64
THETA = 500000.0
NOPE = 3  # of the debug flavor's 8 layers, 3 and 7 are NoPE (every fourth counted back from the last)


def flavor(name: str = "debugmodel", n_layers: int = 4):
    config = model_registry(name).model
    config.layers = config.layers[:n_layers]
    return config


@pytest.mark.parametrize("method", list(SECTIONS))
def test_rope_layers_scaled_nope_layers_untouched(method):
    config = flavor()
    assert [layer.attention.use_rope for layer in config.layers] == [True, True, True, False]
    nope_attention = config.layers[NOPE].attention
    cfg = section(method, HEAD_DIM)
    scale_model(config, cfg, max_seq_len=256)
    assert config.layers[NOPE].attention is nope_attention and type(nope_attention.rope) is ComplexRoPE.Config
    model = build(config)
    inv_freq, af = rope_frequencies(cfg, HEAD_DIM, THETA, 256)
    expected = complex_cache(inv_freq, af, 256)
    for i, layer in model.layers.items():
        rope = layer.attention.rope
        if int(i) == NOPE:  # the module stock builds (a plain cache it never applies), at its own length
            assert type(rope) is ComplexRoPE and rope.cache.shape == (4096, HEAD_DIM // 2)
            assert torch.equal(rope.cache, nope_attention.rope.build().cache)
        else:
            assert type(config.layers[int(i)].attention.rope) is ScaledComplexRoPE.Config
            assert torch.equal(rope.cache, expected)
            assert torch.equal(rope.cache, config.layers[int(i)].attention.rope.build().cache)
        assert layer.attention.scaling == HEAD_DIM ** -0.5
    assert not any("rope" in key for key in model.state_dict())


@pytest.mark.parametrize("name", ["debugmodel", "30B"])
def test_stock_equivalent_section_is_default(name):
    # stock muse_glimmer has plain RoPE: rope_type "default" is its cache bit for bit, softmax scale untouched
    stock = flavor(name, n_layers=1).layers[0].attention
    config = flavor(name, n_layers=1)
    scale_model(config, RopeScaling(rope_type="default"))
    ours = config.layers[0].attention
    assert stock.rope.scaling == "none" and ours.rope.max_seq_len == stock.rope.max_seq_len
    assert torch.equal(ours.rope.build().cache, stock.rope.build().cache)
    with torch.device("meta"):
        assert ours.build().scaling == stock.build().scaling == stock.head_dim ** -0.5


def _reference(attention, x, inv_freq, af, use_rope):
    """float64 muse_glimmer attention over the module's own projections and norms: q-norm times scale_query_by,
    k-norm, RoPE with ``af`` on cos and sin (q and k once each) where ``use_rope``, causal softmax at head_dim**-0.5,
    sigmoid output gate."""
    with torch.no_grad():
        q, k, v = attention.qkv_linear(x)
        q, k = attention.q_norm(q) * attention.scale_query_by, attention.k_norm(k)
        gate = torch.sigmoid(attention.o_gate(x)).double()
    q, k, v = q.double(), k.double(), v.double()
    if use_rope:
        q, k = (rotate_pairs_reference(t, inv_freq, af, "pairs") for t in (q, k))
    rep = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    s = x.shape[1]
    scores = torch.einsum("blhd,bmhd->bhlm", q, k) * HEAD_DIM ** -0.5
    scores = scores.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf"))
    o = torch.einsum("bhlm,bmhd->blhd", F.softmax(scores, dim=-1), v).flatten(2) * gate
    return F.linear(o, attention.wo.weight.double())


def test_attention_factor_reaches_the_scores_exactly_once_and_nope_layers_never():
    torch.manual_seed(0)
    config = with_sdpa(flavor())  # SDPA, causal: the global-attention path (the window is a mask this test leaves out)
    stock = build(with_sdpa(flavor()), seed=1)
    cfg = RopeScaling(rope_type="yarn", factor=16.0, original_max_position_embeddings=32)
    scale_model(config, cfg, max_seq_len=128)
    model = build(config, seed=1)  # the same weights as stock
    inv_freq, af = rope_frequencies(cfg, HEAD_DIM, THETA, 128)
    assert af == pytest.approx(0.1 * math.log(16) + 1)
    x = torch.randn(2, 128, 256)
    attention = model.layers["0"].attention
    with torch.no_grad():
        out = attention(x, None, None).double()
    once = _reference(attention, x, inv_freq, af, True)
    torch.testing.assert_close(out, once, rtol=1e-4, atol=1e-5)
    for wrong in (_reference(attention, x, inv_freq, 1.0, True), _reference(attention, x, inv_freq, af * af, True)):
        assert (out - wrong).abs().max() > 100 * (out - once).abs().max()  # the factor dropped; applied twice
    nope = model.layers[str(NOPE)].attention
    with torch.no_grad():
        nope_out = nope(x, None, None)
        assert torch.equal(nope_out, stock.layers[str(NOPE)].attention(x, None, None))  # stock's own forward
    torch.testing.assert_close(nope_out.double(), _reference(nope, x, inv_freq, af, False), rtol=1e-4, atol=1e-5)


def test_override_leaves_nope_layers_alone():
    from torchtitan.config import OverrideConfig, apply_overrides
    from torchtitan.trainer import Trainer

    trainer = Trainer.Config(model_spec=model_registry("debugmodel"))
    before = list(trainer.model_spec.model.layers)
    nope = [i for i, layer in enumerate(before) if not layer.attention.use_rope]
    stock_attentions = {i: before[i].attention for i in nope}
    apply_overrides(OverrideConfig(imports=[("titan_rope_ext.torchtitan03.override.rope_scaling", {"rope_type": "linear", "factor": 2})]),
                    trainer)
    assert nope == [3, 7]
    for i, layer in enumerate(trainer.model_spec.model.layers):
        rope = layer.attention.rope
        if i in nope:
            assert layer.attention is stock_attentions[i]
            assert type(rope) is ComplexRoPE.Config
        else:
            assert type(rope) is ScaledComplexRoPE.Config and rope.rope_scaling.factor == 2.0


@pytest.fixture
def without_spmd_type_checks():
    """The model's forward asserts spmd_types placements, which need the device mesh a Trainer sets; a plain CPU
    forward runs with torchtitan's partial_dtensor backend (its own setter), restored afterwards."""
    from torchtitan.distributed import utils as dist_utils

    previous = dist_utils.get_spmd_backend()
    dist_utils.set_spmd_backend("partial_dtensor")
    yield
    dist_utils.set_spmd_backend(previous)


@pytest.mark.parametrize("rope", [
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
    {"rope_type": "linear", "factor": 4.0},
], ids=["yarn", "linear"])
def test_logits_equal_transformers(rope, tmp_path, without_spmd_type_checks):
    # ground truth: a random tiny transformers MuseGlimmerForConditionalGeneration (text tower = the debug flavor's
    # first four layers, NoPE layer 3 included; a one-layer vision tower that text tokens never reach), loaded through
    # torchtitan's own HF adapter. The RoPE keys are given as a section: the released config.json nests them under
    # text_config, which the package's config.json reader does not look into.
    from safetensors.torch import load_file
    from torchtitan.models.muse_glimmer.state_dict_adapter import MuseGlimmerStateDictAdapter
    from transformers import MuseGlimmerConfig, MuseGlimmerForConditionalGeneration

    text = dict(vocab_size=2048, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, head_dim=HEAD_DIM, rms_norm_eps=1e-5, sliding_window=128, final_logit_softcapping=20.0,
                qk_scale_factor=43.7840518911 / math.sqrt(HEAD_DIM), output_multiplier=1.0,
                rope_parameters=dict(rope, rope_theta=THETA))
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4)
    torch.manual_seed(0)
    hf = MuseGlimmerForConditionalGeneration(MuseGlimmerConfig(
        text_config=text, vision_config=vision, out_hidden_size=256, projector_hidden_size=128,
        attn_implementation="eager")).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.1)  # gain-centred norms start at 0: make them count
    hf.save_pretrained(tmp_path)
    tokens = torch.randint(0, 2048, (2, 128), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(input_ids=tokens).logits.float()

    def logits(cfg: RopeScaling) -> torch.Tensor:
        config = with_sdpa(flavor())
        scale_model(config, cfg, max_seq_len=128)
        titan = build(config)
        text_only = {k: v for k, v in load_file(str(tmp_path / "model.safetensors")).items()
                     if k.startswith("model.language_model.") or k == "lm_head.weight"}
        missing, unexpected = titan.load_state_dict(MuseGlimmerStateDictAdapter(config, str(tmp_path)).from_hf(text_only),
                                                    strict=False)
        assert not unexpected and all("rope" in key for key in missing), (missing, unexpected)
        with torch.no_grad():
            return titan(tokens).float()

    torch.testing.assert_close(logits(RopeScaling.from_hf(rope)), expected, rtol=1e-5, atol=1e-5)  # measured: 2.5e-6
    if rope["rope_type"] == "yarn":  # without YaRN's factor the logits move far past that
        assert (logits(RopeScaling.from_hf(rope, attention_factor=1.0)) - expected).abs().max() > 1e-2
