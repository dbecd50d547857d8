"""``rope_scaling.apply = "fused_cacheless"`` on torchtitan 0.3: no RoPE module holds cache rows, and q and k are
rotated from ``inv_freq`` and the factor by ``torch.ops.titan_rope.rotary_cacheless`` (its torch implementation on
CPU, the kernel on CUDA: ``tests/unit/kernels/test_rotary_cacheless.py``), with the cached RoPE's numbers."""

from __future__ import annotations

import pytest
import torch
from torchtitan.models.common.rope import RoPE

from tests.oplog import OpLog
from tests.torchtitan03.helpers import build
from tests.torchtitan03.test_fused import calls, converted, MODELS, POSITIONS, rope_module, stock_forward
from titan_rope_ext.torchtitan03.cache_share import report_line, rope_cache_report
from titan_rope_ext.torchtitan03.rope import cache_frequencies

OP = "titan_rope.rotary_cacheless.default"
N_LAYERS = {"deepseek_v3": 1}
"""Layers kept per debug model: deepseek_v3's later layers are MoE, whose routing asks spmd_types for a "dp" mesh
axis outside a Trainer (stock's own code, either apply; muse_glimmer's forward does so too, so its RoPE is checked
by the module test above)."""


def rope_modules(model) -> list:
    return [m for m in model.modules() if isinstance(m, RoPE)]


@pytest.mark.parametrize("positions", list(POSITIONS))
@pytest.mark.parametrize("model", list(MODELS))
def test_module_rotates_as_the_cached_module_without_a_cache(model, positions):
    """Every 0.3 model's RoPE call (MLA's strided q_pe and one-head k_pe included): the cacheless module gives
    the cached module's stock forward to float32 rounding (cos/sin are the cache's own functions of the same
    float32 angle), reading no cache: its buffer has no rows, the op runs."""
    cached, cacheless = rope_module(model, "torchtitan"), rope_module(model, "fused_cacheless")
    q, k = calls(model, cached)
    assert cacheless.cache.numel() == 0 and cacheless.cache.dtype == cached.cache.dtype
    assert cacheless.cache.shape[1:] == cached.cache.shape[1:]
    inv_freq, factor = cache_frequencies(cacheless.config)
    torch.testing.assert_close(cacheless.inv_freq, inv_freq.float(), rtol=0, atol=0)
    assert cacheless.cacheless_factor == factor
    with OpLog() as log:
        got = cacheless(q, k, POSITIONS[positions])
    assert OP in log.names
    for g, w in zip(got, stock_forward(cached, q, k, POSITIONS[positions])):
        torch.testing.assert_close(g, w, rtol=2e-6, atol=2e-6)


def test_positions_past_the_rope_length_are_refused_as_stock_refuses_them():
    rope = rope_module("llama3", "fused_cacheless")
    q, k = calls("llama3", rope)
    with pytest.raises(RuntimeError):
        rope(q, k, torch.full((1, q.shape[1]), rope.config.max_seq_len))


@pytest.mark.parametrize("model", ["llama3", "qwen3", "deepseek_v3"])
def test_model_forward_and_backward_equal_the_cached_model(model):
    """A debug model built as the Trainer builds it (meta, ``to_empty``, ``init_states``) with the cacheless apply
    computes the cached model's loss and gradients; its RoPE modules hold no rows (0 bytes of cache; the rebuilt
    ``inv_freq`` is ``dim // 2`` floats), and neither goes into the state dict."""
    results = {}
    for apply in ("torchtitan", "fused_cacheless"):
        config = converted(model, apply, n_layers=N_LAYERS.get(model, 2), sdpa=True)
        net = build(config)
        if apply == "torchtitan":
            weights = net.state_dict()
        else:
            net.load_state_dict(weights)
            report = rope_cache_report(net)
            assert report["bytes"] == 0 and report["rope_modules"] == len(rope_modules(net)) > 0
            assert "hold no cache rows (apply = fused_cacheless" in report_line(report)
            for rope in rope_modules(net):
                torch.testing.assert_close(rope.inv_freq, cache_frequencies(rope.config)[0].float(), rtol=0, atol=0)
            assert not [key for key in net.state_dict() if key.endswith(("inv_freq", "cache"))]
        tokens = torch.randint(0, config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
        logits = net(tokens)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.roll(-1, 1).flatten())
        loss.backward()
        results[apply] = loss.item(), [p.grad for p in net.parameters() if p.grad is not None]
    (loss_t, grads_t), (loss_c, grads_c) = results["torchtitan"], results["fused_cacheless"]
    assert loss_c == pytest.approx(loss_t, rel=1e-6)
    for a, b in zip(grads_c, grads_t):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("model", ["llama3", "qwen3"])
def test_fullgraph_compile_traces_the_op(model):
    rope = rope_module(model, "fused_cacheless")
    q, k = calls(model, rope)
    positions = POSITIONS["documents"]
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    got = torch.compile(lambda a, b: rope(a, b, positions), fullgraph=True, backend=backend)(q, k)
    assert any("rotary_cacheless" in g for g in graphs)
    for g, w in zip(got, rope(q, k, positions)):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_dtensor_q_and_k_rotate_locally_or_are_refused():
    """Placements a local rotation serves take the op on the local tensors (results keep q's and k's placements);
    others have no cache for stock's forward to read, so they are an error naming them."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import distribute_tensor, DTensor, Replicate, Shard

    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        rope, cached = rope_module("qwen3", "fused_cacheless"), rope_module("qwen3", "torchtitan")
        q, k = calls("qwen3", rope)
        docs = POSITIONS["documents"]
        want = stock_forward(cached, q, k, docs)
        rope.inv_freq = distribute_tensor(rope.inv_freq, mesh, [Replicate()])
        for placement in (Shard(2), Shard(0), Shard(1)):
            dq, dk = distribute_tensor(q, mesh, [placement]), distribute_tensor(k, mesh, [placement])
            got = rope(dq, dk, docs)
            for g, w in zip(got, want):
                assert isinstance(g, DTensor) and g.placements == (placement,)
                torch.testing.assert_close(g.full_tensor(), w, rtol=2e-6, atol=2e-6)
        dq, dk = distribute_tensor(q, mesh, [Shard(1)]), distribute_tensor(k, mesh, [Shard(1)])
        with pytest.raises(ValueError, match="'fused_cacheless' cannot rotate these q, k and positions shard by shard"):
            rope(dq, dk, None)  # sequence shards without positions: where each token is, is unknown
    finally:
        if created:
            dist.destroy_process_group()


def test_the_converters_log_line_says_there_is_no_cache():
    from titan_rope_ext.torchtitan03.models import summary
    from titan_rope_ext.torchtitan03.models.llama3 import ADAPTER

    attention = converted("llama3", "fused_cacheless").layers[0].attention
    line = summary(ADAPTER, attention)
    assert "apply=fused_cacheless" in line and "no cache: the kernel computes the cache's cos and sin" in line
    cached = converted("llama3", "fused").layers[0].attention
    assert "no cache" not in summary(ADAPTER, cached)
