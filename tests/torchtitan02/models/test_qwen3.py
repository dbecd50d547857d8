"""qwen3 adapter: [cos | sin] rotate-half cache, stock parity, meta phases, attention factor at the apply."""

import copy

import pytest
import torch
from torchtitan.models.qwen3 import qwen3_args
from torchtitan.models.qwen3.model.model import apply_rotary_emb, precompute_rope_cache, Qwen3Model

from titan_rope_ext import RopeScaling, rope_frequencies, ROPE_TYPES
from titan_rope_ext.cache import cos_sin_cache
from titan_rope_ext.torchtitan02.models.qwen3 import ADAPTER
from tests.torchtitan02.models.helpers import build, rotate_pairs_reference
from tests.unit.test_scaling import sections_for

HEAD_DIM = 128  # every qwen3 flavor
SECTIONS = sections_for(HEAD_DIM)


def debug_args(seq_len=256):
    args = copy.deepcopy(qwen3_args["debugmodel"])
    args.max_seq_len = seq_len
    return args


def test_sections_cover_every_rope_type():
    assert set(SECTIONS) == set(ROPE_TYPES)


def test_default_is_bitwise_stock():
    stock = build(Qwen3Model, debug_args(), ADAPTER, None)
    ours = build(Qwen3Model, debug_args(), ADAPTER, RopeScaling())
    assert ours.rope_cache.dtype == torch.float32 and ours.rope_cache.shape == (256, 2 * HEAD_DIM)
    assert torch.equal(ours.rope_cache, stock.rope_cache)
    # Qwen3-32K-like dims at 32768 positions
    ours = cos_sin_cache(*rope_frequencies(RopeScaling(), HEAD_DIM, 1e6, 32768), 32768)
    assert torch.equal(ours, precompute_rope_cache(HEAD_DIM, 32768, 1e6))


@pytest.mark.parametrize("rope_type", sorted(SECTIONS))
def test_meta_convert_init_weights_equals_eager(rope_type):
    cfg = RopeScaling(rope_type=rope_type, **SECTIONS[rope_type])
    meta = build(Qwen3Model, debug_args(), ADAPTER, cfg, device="meta")
    eager = build(Qwen3Model, debug_args(), ADAPTER, cfg)
    assert torch.equal(meta.rope_cache, eager.rope_cache)
    inv_freq, af = rope_frequencies(cfg, HEAD_DIM, 1e6, 256)
    assert torch.equal(eager.rope_cache, cos_sin_cache(inv_freq, af, 256))
    assert "rope_cache" in eager._non_persistent_buffers_set and "rope_cache" not in eager.state_dict()


@pytest.mark.parametrize("rope_type", ["yarn", "default"])
def test_attention_factor_reaches_q_and_k_once(rope_type):
    section = dict(factor=4.0, original_max_position_embeddings=64) if rope_type == "yarn" else {}
    cfg = RopeScaling(rope_type=rope_type, **section)
    model = build(Qwen3Model, debug_args(64), ADAPTER, cfg)
    inv_freq, af = rope_frequencies(cfg, HEAD_DIM, 1e6, 64)
    gen = torch.Generator().manual_seed(0)
    xq, xk = torch.randn(2, 64, 4, HEAD_DIM, generator=gen), torch.randn(2, 64, 2, HEAD_DIM, generator=gen)
    q, k = apply_rotary_emb(xq, xk, model.rope_cache)
    for out, x in ((q, xq), (k, xk)):
        torch.testing.assert_close(out.double(), rotate_pairs_reference(x, inv_freq, af, "half"), rtol=1e-5, atol=1e-5)
        if rope_type == "yarn":
            assert af > 1.1
            assert not torch.allclose(out.double(), rotate_pairs_reference(x, inv_freq, 1.0, "half"), atol=1e-3)
    assert model.layers["0"].attention.scaling == HEAD_DIM**-0.5  # softmax scale untouched
