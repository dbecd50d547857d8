"""``[rope_scaling] apply = "fused_cacheless"`` on torchtitan 0.2: the model's rotary buffer holds ``inv_freq`` and
the attention modules rotate q and k with ``torch.ops.titan_rope.rotary_cacheless``, which runs on every device (its
torch implementation on CPU, so these tests drive the real plumbing), with the cached model's numbers.

The op itself: tests/unit/kernels/test_rotary_cacheless.py. A Trainer run: tests/torchtitan02/integration/test_training.py.
"""

from __future__ import annotations

import copy
import inspect
from types import SimpleNamespace

import pytest
import torch
from torch.nn.attention import SDPBackend

from tests.oplog import OpLog
from tests.torchtitan02.models import helpers
from tests.torchtitan02.models.test_fused import model_module, MODELS
from titan_rope_ext import RopeScaling, rope_frequencies
from titan_rope_ext.cache import complex_cache, cos_sin_cache
from titan_rope_ext.torchtitan02.converter import check_job, RopeScalingConverter
from titan_rope_ext.torchtitan02.models import adapter_for
from titan_rope_ext.torchtitan02.models._fused import Cacheless, cacheless_apply

OP = "titan_rope.rotary_cacheless.default"
YARN = dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=16)
SEQ = 32
"""Tokens per forward and the models' max_seq_len (0.2.0's deepseek_v3 applies its whole cache, so they are equal)."""


def setup(name: str, seq_len: int = SEQ):
    """``(model class, args, adapter, rotated head_dim)`` of a small debug model of ``name``."""
    spec, _ = model_module(name)
    args = copy.deepcopy(spec.model_args["debugmodel"])
    args.max_seq_len = seq_len
    args.n_layers = 2  # the rotary buffer is the model's: two layers show its use by every layer
    if name == "deepseek_v3":
        args.moe_impl = "standard"  # what update_from_config sets without expert-parallel comms
        args.moe_args.use_grouped_mm = False  # and on a device without grouped GEMMs
        args.n_layers = args.n_dense_layers  # dense layers only: MoE routing calls histc, which CPU lacks for ints
    adapter = adapter_for(spec.model_cls)
    return spec.model_cls, args, adapter, adapter.head_dim(args)


def build(name: str, apply: str, device: str = "cpu", seq_len: int = SEQ, **section):
    model_cls, args, adapter, _ = setup(name, seq_len)
    model = helpers.build(model_cls, args, adapter, RopeScaling(**(section or YARN), apply=apply), device)
    for module in model.modules():
        backends = getattr(module, "sdpa_backends", None)
        if backends is not None and SDPBackend.MATH not in backends:
            # torchtitan 0.2.0's SDPA wrapper lists no math kernel, and CPU's flash kernel needs equal q/v head
            # dims (deepseek_v3's MLA has 192 / 128): as in test_deepseek_v3.py
            module.sdpa_backends = [*backends, SDPBackend.MATH]
    return model


@pytest.mark.parametrize("name", ["llama3", "qwen3", "deepseek_v3"])
def test_buffer_is_the_sections_inv_freq_non_persistent_and_meta_until_init_weights(name):
    model_cls, args, adapter, head_dim = setup(name)
    with torch.device("meta"):
        model = model_cls(args)
    line = adapter.convert(model, RopeScaling(**YARN, apply="fused_cacheless"))
    buffer = getattr(model, adapter.buffer)
    assert buffer.is_meta and buffer.shape == (head_dim // 2,) and buffer.dtype == torch.float32
    assert "apply=fused_cacheless" in line and "no rotary cache is allocated" in line
    model.to_empty(device="cpu")
    with torch.no_grad():
        model.init_weights(buffer_device=None)
    inv_freq, _ = rope_frequencies(RopeScaling(**YARN), head_dim, args.rope_theta, args.max_seq_len)
    assert torch.equal(getattr(model, adapter.buffer), inv_freq.float())
    assert adapter.buffer in model._non_persistent_buffers_set
    stock = helpers.build(model_cls, args, adapter, None)
    assert set(model.state_dict()) == set(stock.state_dict())  # checkpoints are unchanged
    model.load_state_dict(stock.state_dict(), strict=True)


def forward_positions(name: str, batch: int):
    """Per-document positions (restarting inside each row), where this torchtitan's model takes them."""
    model_cls, *_ = setup(name)
    if "positions" not in inspect.signature(model_cls.forward).parameters:  # torchtitan 0.2.0
        return [None]
    docs = torch.stack([torch.arange(SEQ) % 11, (torch.arange(SEQ) + 3) % SEQ])[:batch]
    return [None, docs]


@pytest.mark.parametrize("name", ["llama3", "qwen3", "deepseek_v3"])
def test_forward_and_backward_equal_the_cached_model(name):
    """Same weights: the cacheless model's logits and gradients are the stock apply's on the section's cache."""
    cached, cacheless = build(name, "torchtitan"), build(name, "fused_cacheless", device="meta")
    cacheless.load_state_dict(cached.state_dict())
    tokens = torch.randint(0, cached.model_args.vocab_size, (2, SEQ), generator=torch.Generator().manual_seed(1))
    for positions in forward_positions(name, 2):
        kwargs = {} if positions is None else dict(positions=positions)
        grads = []
        for model in (cached, cacheless):
            model.zero_grad()
            with OpLog() as log:
                logits = model(tokens, **kwargs)
                logits.float().logsumexp(-1).mean().backward()
            assert (OP in log.names) == (model is cacheless)
            grads.append((logits.detach(), [p.grad for p in model.parameters() if p.grad is not None]))
        (want, want_grads), (got, got_grads) = grads
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert len(got_grads) == len(want_grads) > 0
        for g, w in zip(got_grads, want_grads):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_models_with_different_factors_keep_their_own_constants():
    """Each section's factor and length are constants of its attention class's scope: a second model with another
    factor gets another scope (and its own numbers); an equal section shares the first one's."""
    yarn4, yarn8 = build("llama3", "fused_cacheless"), build("llama3", "fused_cacheless", factor=8.0, rope_type="yarn",
                                                               original_max_position_embeddings=16)
    again = build("llama3", "fused_cacheless")
    scopes = [type(m.layers["0"].attention).forward.__globals__["__name__"] for m in (yarn4, yarn8, again)]
    assert scopes[0] != scopes[1] and scopes[0] == scopes[2]
    assert type(yarn4.layers["0"].attention) is type(again.layers["0"].attention)
    assert type(yarn4.layers["0"].attention) is not type(yarn8.layers["0"].attention)
    assert type(yarn4.layers["0"].attention).__name__ == "CachelessRopeAttention"
    tokens = torch.randint(0, yarn4.model_args.vocab_size, (1, SEQ), generator=torch.Generator().manual_seed(2))
    for model, factor in ((yarn4, 4.0), (yarn8, 8.0)):
        cached = build("llama3", "torchtitan", rope_type="yarn", factor=factor, original_max_position_embeddings=16)
        with torch.no_grad():
            torch.testing.assert_close(model(tokens), cached(tokens), rtol=1e-5, atol=1e-5)


def test_positions_and_lengths_past_max_seq_len_are_refused():
    def stock(xq, xk, rope_cache, positions=None):  # 0.2.2's qwen3 signature (the drop-in reads only its names)
        raise AssertionError("the cacheless drop-in never calls stock")

    apply = cacheless_apply(stock, False, False, Cacheless(1.25, 16))
    q, k = torch.randn(2, 8, 4, 32), torch.randn(2, 8, 2, 32)
    inv_freq = torch.rand(16)
    with pytest.raises(RuntimeError, match=r"positions must lie in \[0, max_seq_len = 16\)"):
        apply(q, k, inv_freq, torch.full((2, 8), 16))
    with pytest.raises(ValueError, match="20 tokens without positions exceed the model's max_seq_len = 16"):
        apply(torch.randn(2, 20, 4, 32), torch.randn(2, 20, 2, 32), inv_freq)
    apply(q, k, inv_freq, torch.full((2, 8), 15))  # the last row a cache would have


@pytest.mark.parametrize("name", MODELS)
def test_drop_in_gives_the_stock_numbers_on_the_sections_cache(name):
    """Stock's argument order with ``inv_freq`` where the cache goes (deepseek_v3: one strided tensor), positions
    none, shared or per row where this torchtitan takes them: stock's numbers on the section's cache."""
    _, module = model_module(name)
    stock, pairs, single = module.apply_rotary_emb, name in ("llama3", "llama4", "deepseek_v3"), name == "deepseek_v3"
    takes_positions = len(inspect.signature(stock).parameters) > (2 if single else 3)
    seq, rows = 10, 18 if takes_positions else 10  # 0.2.0's deepseek_v3 applies every row it is given
    gen = torch.Generator().manual_seed(0)
    xs = ([torch.randn(2, seq, 3, 96, generator=gen)[..., 32:]] if single
          else [torch.randn(2, seq, 4, 32, generator=gen), torch.randn(2, seq, 2, 32, generator=gen)])
    inv_freq, factor = rope_frequencies(RopeScaling(**YARN), xs[0].shape[-1], 10000.0, rows)
    cache = (complex_cache if pairs else cos_sin_cache)(inv_freq, factor, rows)
    drop_in = cacheless_apply(stock, pairs, single, Cacheless(factor, rows))
    forms = [()]
    if takes_positions:
        forms += [(None,), (torch.randint(0, rows, (1, seq), generator=gen),),
                  (torch.randint(0, rows, (2, seq), generator=gen),)]
    for extra in forms:
        with OpLog() as log:
            got = drop_in(*xs, inv_freq, *extra)
        assert OP in log.names
        want = stock(*xs, cache, *extra)
        for g, w in zip((got,) if single else got, (want,) if single else want):
            assert g.dtype == w.dtype and g.shape == w.shape
            torch.testing.assert_close(g, w, rtol=2e-6, atol=2e-6)


def test_dtensors_sharded_over_heads_rotate_locally_others_are_refused():
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import distribute_tensor, DTensor, Replicate, Shard

    _, module = model_module("qwen3")
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        q, k = torch.randn(2, 8, 4, 32), torch.randn(2, 8, 2, 32)
        inv_freq, factor = rope_frequencies(RopeScaling(**YARN), 32, 10000.0, 16)
        drop_in = cacheless_apply(module.apply_rotary_emb, False, False, Cacheless(factor, 16))
        want = drop_in(q, k, inv_freq)
        replicated = distribute_tensor(inv_freq, mesh, [Replicate()])  # as torchtitan's TP plans pass the buffer
        for placement in (Shard(2), Replicate()):
            dq, dk = (distribute_tensor(x, mesh, [placement]) for x in (q, k))
            for g, w in zip(drop_in(dq, dk, replicated), want):
                assert isinstance(g, DTensor) and g.placements == (placement,)
                torch.testing.assert_close(g.full_tensor(), w, rtol=0, atol=0)
        dq, dk = (distribute_tensor(x, mesh, [Shard(1)]) for x in (q, k))
        with pytest.raises(ValueError, match=r"'fused_cacheless' cannot rotate these tensors shard by shard "
                                             r"\(placements of q, k, inv_freq, positions: \[\(Shard\(dim=1\),\), "
                                             r"\(Shard\(dim=1\),\), \(Replicate\(\),\), None\]\); use apply = 'fused'"):
            drop_in(dq, dk, replicated)
    finally:
        if created:
            dist.destroy_process_group()


def job(apply: str, cp: int):
    return SimpleNamespace(model=SimpleNamespace(name="llama3", flavor="debugmodel", hf_assets_path=None),
                           training=SimpleNamespace(seq_len=SEQ),
                           parallelism=SimpleNamespace(context_parallel_degree=cp),
                           rope_scaling=RopeScaling(**YARN, apply=apply))


def test_context_parallelism_is_refused_before_anything_is_built():
    with pytest.raises(ValueError, match=r"rope_scaling.apply = 'fused_cacheless' cannot run with "
                                         r"parallelism.context_parallel_degree = 2 .*use apply = 'fused'"):
        RopeScalingConverter(job("fused_cacheless", 2), parallel_dims=None)
    check_job(job("fused", 2))
    converter = RopeScalingConverter(job("fused_cacheless", 1), parallel_dims=None)
    model_cls, args, *_ = setup("llama3")
    with torch.device("meta"):
        model = model_cls(args)
    converter.convert(model)
    assert model.freqs_cis.shape == (args.dim // args.n_heads // 2,)


def test_fullgraph_compile_traces_the_op():
    """torch.compile guards the scope module's globals by name: a compiled block of a cacheless model runs the op
    in its graph and gives the eager numbers."""
    model = build("llama3", "fused_cacheless")
    block = model.layers["0"]
    x = torch.randn(2, SEQ, model.model_args.dim, generator=torch.Generator().manual_seed(3))
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    with torch.no_grad():
        eager = block(x, model.freqs_cis, None)
        compiled = torch.compile(block, fullgraph=True, backend=backend)(x, model.freqs_cis, None)
    assert any("rotary_cacheless" in g for g in graphs)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
