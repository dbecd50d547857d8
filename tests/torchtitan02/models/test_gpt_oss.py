"""gpt_oss adapter: its built-in YaRN cache reproduced, the factor applied once, meta phases."""

import copy
import functools
import math

import pytest
import torch
from torch.nn.attention.flex_attention import flex_attention
from torchtitan.models.attention import FlexAttentionWrapper

try:  # torchtitan 0.2.2
    from torchtitan.models.gpt_oss import gptoss_configs
    from torchtitan.models.gpt_oss.model.model import apply_rotary_emb, GptOssModel
except ModuleNotFoundError:  # 0.2.1 keeps it under experiments; 0.2.0 has no gpt_oss (skipped there)
    pytest.importorskip("torchtitan.experiments.gpt_oss", reason="this torchtitan version has no gpt_oss")
    from torchtitan.experiments.gpt_oss import gptoss_configs
    from torchtitan.experiments.gpt_oss.model.model import apply_rotary_emb, GptOssModel

from titan_rope_ext import RopeScaling, rope_frequencies
from titan_rope_ext.cache import cos_sin_cache
from titan_rope_ext.torchtitan02.models.gpt_oss import ADAPTER
from tests.torchtitan02.models import helpers
from tests.unit.test_scaling import sections_for

HEAD_DIM = 64
SECTIONS = sections_for(HEAD_DIM)


def args_of(seq_len=256):
    args = copy.deepcopy(gptoss_configs["debugmodel"])
    args.max_seq_len = seq_len
    args.moe_args.use_grouped_mm = False  # no grouped GEMMs on CPU
    # the rope cache depends on head_dim and the rope fields only: a smaller body keeps the test fast
    args.vocab_size, args.n_layers, args.moe_inter_dim = 2048, 2, 256
    return args


def stock_equivalent(args) -> RopeScaling:
    if not hasattr(args, "ntk_beta"):  # torchtitan 0.2.1: gpt_oss had plain RoPE
        return RopeScaling()
    return RopeScaling(rope_type="yarn", factor=float(args.rope_factor), beta_fast=args.ntk_beta,
                       beta_slow=args.ntk_alpha, original_max_position_embeddings=args.original_seq_len,
                       truncate=False)


def test_stock_equivalent_reproduces_the_built_in_yarn_cache():
    args = args_of()
    stock = helpers.build(GptOssModel, args, ADAPTER, None)
    ours = helpers.build(GptOssModel, args_of(), ADAPTER, stock_equivalent(args))
    assert ours.rope_cache.dtype == torch.float32 and ours.rope_cache.shape == (256, 2 * HEAD_DIM)
    assert torch.equal(ours.rope_cache, stock.rope_cache)
    # the stock cache already carries 0.1 ln 32 + 1 on cos and sin; ours carries it once, not squared
    mscale = 0.1 * math.log(32) + 1 if hasattr(args, "ntk_beta") else 1.0
    cos_sin_norm = (ours.rope_cache[:, :HEAD_DIM] ** 2 + ours.rope_cache[:, HEAD_DIM:] ** 2).sqrt()
    torch.testing.assert_close(cos_sin_norm, torch.full_like(cos_sin_norm, mscale))


@pytest.mark.parametrize("rope_type", sorted(SECTIONS))
def test_meta_convert_init_weights_equals_eager(rope_type):
    cfg = RopeScaling(rope_type=rope_type, **SECTIONS[rope_type])
    meta = helpers.build(GptOssModel, args_of(), ADAPTER, cfg, device="meta")
    eager = helpers.build(GptOssModel, args_of(), ADAPTER, cfg)
    assert torch.equal(meta.rope_cache, eager.rope_cache)
    inv_freq, af = rope_frequencies(cfg, HEAD_DIM, eager.model_args.rope_theta, 256)
    assert torch.equal(eager.rope_cache, cos_sin_cache(inv_freq, af, 256))
    assert "rope_cache" not in eager.state_dict()


def test_default_removes_the_built_in_scaling():
    model = helpers.build(GptOssModel, args_of(), ADAPTER, RopeScaling())
    inv_freq, af = rope_frequencies(RopeScaling(), HEAD_DIM, 150000.0, 256)
    assert af == 1.0 and torch.equal(model.rope_cache, cos_sin_cache(inv_freq, 1.0, 256))


def test_attention_factor_reaches_q_and_k_once():
    args = args_of(64)
    cfg = RopeScaling(rope_type="yarn", factor=32.0, original_max_position_embeddings=4096, truncate=False)
    model = helpers.build(GptOssModel, args, ADAPTER, cfg)
    inv_freq, af = rope_frequencies(cfg, HEAD_DIM, args.rope_theta, 64)
    gen = torch.Generator().manual_seed(4)
    xq, xk = torch.randn(2, 64, 4, HEAD_DIM, generator=gen), torch.randn(2, 64, 1, HEAD_DIM, generator=gen)
    q, k = apply_rotary_emb(xq, xk, model.rope_cache)
    for out, x in ((q, xq), (k, xk)):
        torch.testing.assert_close(out.double(), helpers.rotate_pairs_reference(x, inv_freq, af, "half"),
                                   rtol=1e-5, atol=1e-5)
    # softmax scale untouched: 1/sqrt(head_dim) (0.2.1's attention has no attribute: the kernel default)
    scales = {getattr(layer.attention, "softmax_scale", None) for layer in model.layers.values()}
    assert scales <= {1.0 / math.sqrt(HEAD_DIM), None} and len(scales) == 1


def test_attention_block_matches_a_float64_reference(monkeypatch):
    # torchtitan compiles flex_attention; compiled flex on CPU cannot return the log-sum-exp that the
    # sinks need, so the kernel runs eagerly here (same math). Everything else is the model's own forward.
    monkeypatch.setattr(FlexAttentionWrapper, "_compiled_flex_attn", flex_attention)
    args = args_of(256)
    cfg = RopeScaling(rope_type="yarn", factor=4.0, original_max_position_embeddings=64)
    model = helpers.build(GptOssModel, args, ADAPTER, cfg)
    inv_freq, af = rope_frequencies(cfg, HEAD_DIM, args.rope_theta, 256)
    assert af > 1.1
    masks = model.get_attention_masks(torch.zeros(1, 256, dtype=torch.long), tokenizer=None)
    x = torch.randn(2, 256, args.dim, generator=torch.Generator().manual_seed(5))
    # even layers: sliding window (128 < 256, so it hides keys); odd layers: full causal
    for layer_id, mask, window in (("0", "sliding_window_mask", args.sliding_window_size), ("1", "basic_mask", None)):
        attn = model.layers[layer_id].attention.float()  # the model keeps its layers in bf16
        with torch.no_grad():
            attn.sinks.copy_(torch.linspace(-2.0, 3.0, attn.sinks.numel()))  # sinks large enough to matter
            out = attn(x, model.rope_cache, masks[mask])
            reference = functools.partial(helpers.reference_attention, attn, x, inv_freq, layout="half")
            torch.testing.assert_close(out, reference(af, window=window, sinks=attn.sinks), rtol=1e-4, atol=1e-5)
            # the comparison can fail: the factor dropped or squared, the window or the sinks ignored
            wrongs = [reference(1.0, window=window, sinks=attn.sinks), reference(af * af, window=window, sinks=attn.sinks),
                      reference(af, window=window)]
            if window is not None:
                wrongs.append(reference(af, sinks=attn.sinks))
            for wrong in wrongs:
                assert not torch.allclose(out, wrong, rtol=1e-4, atol=1e-5)
