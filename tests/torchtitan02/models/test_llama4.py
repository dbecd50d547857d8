"""llama4 adapter: stock parity with its built-in scaling (16, 1, 1, 8192), meta phases, irope layers."""

import copy

import pytest
import torch
from torchtitan.models.llama4 import llama4_args
from torchtitan.models.llama4.model.args import RoPEScalingArgs
from torchtitan.models.llama4.model.model import precompute_freqs_cis, Transformer

from titan_rope_ext import RopeScaling, rope_frequencies
from titan_rope_ext.cache import complex_cache
from titan_rope_ext.torchtitan02.models.llama4 import ADAPTER
from tests.torchtitan02.models import helpers
from tests.unit.test_scaling import SECTIONS

STOCK_LLAMA4 = dict(rope_type="llama3", factor=16.0, low_freq_factor=1.0, high_freq_factor=1.0,
                    original_max_position_embeddings=8192)


def args_of(flavor="debugmodel", seq_len=256):
    args = copy.deepcopy(llama4_args[flavor])
    args.max_seq_len = seq_len
    return args


@pytest.mark.parametrize("flavor", ["debugmodel", "debugmodel_irope"])
def test_stock_equivalent_is_bitwise_stock(flavor):
    ours = helpers.build(Transformer, args_of(flavor), ADAPTER, RopeScaling(**STOCK_LLAMA4))
    stock = helpers.build(Transformer, args_of(flavor), ADAPTER, None)
    assert ours.freqs_cis.dtype == torch.complex64 and torch.equal(ours.freqs_cis, stock.freqs_cis)
    # 17B dims (head_dim 128, theta 500000) at 256K positions
    cfg = RopeScaling(**STOCK_LLAMA4)
    big = complex_cache(*rope_frequencies(cfg, 128, 500000.0, 262144), 262144)
    assert torch.equal(big, precompute_freqs_cis(128, 262144, 500000.0, RoPEScalingArgs()))


@pytest.mark.parametrize("rope_type", sorted(SECTIONS))
def test_meta_convert_init_weights_equals_eager(rope_type):
    cfg = RopeScaling(rope_type=rope_type, **SECTIONS[rope_type])
    meta = helpers.build(Transformer, args_of("debugmodel_irope"), ADAPTER, cfg, device="meta")
    eager = helpers.build(Transformer, args_of("debugmodel_irope"), ADAPTER, cfg)
    assert torch.equal(meta.freqs_cis, eager.freqs_cis)
    assert torch.equal(eager.freqs_cis, complex_cache(*rope_frequencies(cfg, 16, 500000.0, 256), 256))
    assert "freqs_cis" not in eager.state_dict()


def test_attention_factor_reaches_the_scores_once():
    cfg = RopeScaling(rope_type="yarn", factor=4.0, original_max_position_embeddings=16)
    model = helpers.build(Transformer, args_of("debugmodel", 64), ADAPTER, cfg)
    inv_freq, af = rope_frequencies(cfg, 16, 500000.0, 64)
    x = torch.randn(2, 64, 256, generator=torch.Generator().manual_seed(2))
    attn = model.layers["0"].attention
    assert attn.use_rope and af > 1.1
    with torch.no_grad():
        out = attn(x, model.freqs_cis, attention_masks=None)
        torch.testing.assert_close(out, helpers.reference_attention(attn, x, inv_freq, af), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(out, helpers.reference_attention(attn, x, inv_freq, 1.0), rtol=1e-4, atol=1e-5)


def test_irope_keeps_its_nope_layers():
    model = helpers.build(Transformer, args_of("debugmodel_irope"), ADAPTER,
                          RopeScaling(rope_type="linear", factor=4.0), device="meta")
    use_rope = [layer.attention.use_rope for layer in model.layers.values()]
    assert True in use_rope and False in use_rope  # the converter touches the cache, not the layer kinds
