"""``[rope_scaling] apply = "fused"`` on CPU: which modules change, that the fused drop-in takes each
model's own ``apply_rotary_emb`` arguments and gives its numbers, the CPU fallback, DTensors.

On CPU the op runs its float32 torch implementation; tests that need the fused path on CPU add
"cpu" to ``FUSED_DEVICES``. The Triton kernel itself is tested in tests/unit/kernels (interpreter)
and tests/torchtitan02/gpu/test_fused_rotary.py (CUDA).
"""

from __future__ import annotations

import copy
import importlib
import inspect

import pytest
import torch

from tests.oplog import OpLog
from titan_rope_ext import RopeScaling
from titan_rope_ext.torchtitan02.models import _fused
from titan_rope_ext.torchtitan02.models import adapter_for
from titan_rope_ext.torchtitan02.models._fused import fused_apply, FUSED_DEVICES

MODELS = ["llama3", "llama4", "qwen3", "deepseek_v3", "gpt_oss"]
YARN = dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64)


@pytest.fixture
def fused_on_cpu(monkeypatch):
    monkeypatch.setattr(_fused, "FUSED_DEVICES", FUSED_DEVICES + ("cpu",))


def model_module(name: str):
    from torchtitan.protocols.train_spec import get_train_spec

    try:
        spec = get_train_spec(name)
    except Exception as err:  # gpt_oss: absent in torchtitan 0.2.0
        pytest.skip(f"this torchtitan has no {name}: {err}")
    return spec, importlib.import_module(adapter_for(spec.model_cls).model_class().__module__)


@pytest.mark.parametrize("name", MODELS)
def test_convert_swaps_only_this_instances_attention(name):
    spec, module = model_module(name)
    args = copy.deepcopy(spec.model_args["debugmodel"])
    args.moe_impl = "standard"  # deepseek_v3: what update_from_config sets without expert parallelism
    stock_fn = module.apply_rotary_emb
    with torch.device("meta"):
        fused, plain, untouched = spec.model_cls(args), spec.model_cls(args), spec.model_cls(args)
    adapter = adapter_for(spec.model_cls)
    summary = adapter.convert(fused, RopeScaling(**YARN, apply="fused"))
    adapter.convert(plain, RopeScaling(**YARN))
    attention = [m for m in fused.modules() if isinstance(m, module.Attention)]
    assert f"apply=fused in {len(attention)} attention modules" in summary
    assert attention and all(type(m).__name__ == "FusedRopeAttention" for m in attention)
    for other in (plain, untouched):
        assert {type(m) for m in other.modules() if isinstance(m, module.Attention)} == {module.Attention}
    assert module.apply_rotary_emb is stock_fn  # torchtitan's module is left alone
    deep = copy.deepcopy(fused)  # pipeline splitting deep-copies the converted model
    assert type(deep.layers["0"].attention) is type(fused.layers["0"].attention)


def calls(name: str, module, seq: int):
    """``(x args, kwargs)`` in the forms this model's attention passes them, with and without positions."""
    torch.manual_seed(0)
    if name == "deepseek_v3":  # one tensor; q_pe is a strided slice of q
        head_dim = 64
        q = torch.randn(2, seq, 3, 96)[..., 32:]
        cache = torch.polar(torch.full((seq + 8, head_dim // 2), 1.2), torch.rand(seq + 8, head_dim // 2) * 6)
        positions = torch.randint(0, seq + 8, (2, seq))
        # (torchtitan 0.2.0's deepseek_v3 passes a cache of exactly seq rows and no positions)
        return [((q, cache, None), {}), ((q, cache, positions), {}),
                ((torch.randn(2, seq, 1, head_dim), cache[:seq]), {})]
    head_dim = 32
    q, k = torch.randn(2, seq, 4, head_dim), torch.randn(2, seq, 2, head_dim)
    angle = torch.rand(seq + 8, head_dim // 2) * 6
    if name in ("llama3", "llama4"):
        cache = torch.polar(torch.full_like(angle, 1.2), angle)
        positions = torch.randint(0, seq + 8, (1, seq))
        return [((q, k), dict(freqs_cis=cache, positions=None)), ((q, k), dict(freqs_cis=cache, positions=positions)),
                ((q, k, cache), {})]
    both = torch.cat([angle, angle], dim=-1)
    cache = torch.cat([both.cos(), both.sin()], dim=-1) * 1.2
    if name == "gpt_oss":  # (q, k, rope_cache): no positions
        return [((q, k, cache), {})]
    return [((q, k, cache), {}), ((q, k, cache, None), {}), ((q, k, cache, torch.randint(0, seq + 8, (2, seq))), {})]


def own_calls(name: str, module, seq: int):
    """The calls this torchtitan's ``apply_rotary_emb`` accepts (0.2.0 has no ``positions`` argument)."""
    signature = inspect.signature(module.apply_rotary_emb)
    kept = []
    for args, kwargs in calls(name, module, seq):
        try:
            signature.bind(*args, **kwargs)
        except TypeError:
            continue
        kept.append((args, kwargs))
    assert kept
    return kept


@pytest.mark.parametrize("name", MODELS)
def test_drop_in_gives_the_stock_numbers_for_the_models_own_calls(name, fused_on_cpu):
    _, module = model_module(name)
    pairs = name in ("llama3", "llama4", "deepseek_v3")
    fused = fused_apply(module.apply_rotary_emb, pairs, single=name == "deepseek_v3")
    for args, kwargs in own_calls(name, module, seq=10):
        with OpLog() as log:
            got = fused(*args, **kwargs)
        assert "titan_rope.rotary.default" in log.names
        want = module.apply_rotary_emb(*args, **kwargs)
        got, want = (got,) if name == "deepseek_v3" else got, (want,) if name == "deepseek_v3" else want
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and g.shape == w.shape
            torch.testing.assert_close(g, w, rtol=2e-6, atol=2e-6)
    wrong = fused_apply(module.apply_rotary_emb, not pairs, single=name == "deepseek_v3")
    with pytest.raises(ValueError, match="fused rope: expected"):  # the other layout's cache is refused
        wrong(*own_calls(name, module, seq=10)[0][0], **own_calls(name, module, seq=10)[0][1])


def test_cpu_tensors_take_the_stock_function_by_default():
    _, module = model_module("llama3")
    fused = fused_apply(module.apply_rotary_emb, True, False)
    args, kwargs = own_calls("llama3", module, seq=6)[0]
    with OpLog() as log:
        got = fused(*args, **kwargs)
    assert "titan_rope.rotary.default" not in log.names
    for g, w in zip(got, module.apply_rotary_emb(*args, **kwargs)):
        assert torch.equal(g, w)


@pytest.mark.parametrize("name", ["llama3", "qwen3"])
def test_converted_model_forward_and_backward_match_stock_apply(name, fused_on_cpu):
    spec, _ = model_module(name)
    args = copy.deepcopy(spec.model_args["debugmodel"])
    adapter = adapter_for(spec.model_cls)
    losses, grads = {}, {}
    for apply in ("torchtitan", "fused"):
        with torch.device("meta"):
            model = spec.model_cls(args)
        adapter.convert(model, RopeScaling(**YARN, apply=apply))
        model.to_empty(device="cpu")
        torch.manual_seed(0)
        with torch.no_grad():
            model.init_weights(buffer_device=None)
        tokens = torch.randint(0, args.vocab_size, (2, 48), generator=torch.Generator().manual_seed(1))
        with OpLog() as log:
            loss = model(tokens).float().logsumexp(-1).mean()
            loss.backward()
        assert ("titan_rope.rotary.default" in log.names) == (apply == "fused")
        losses[apply] = loss.item()
        grads[apply] = model.layers["0"].attention.wq.weight.grad
    assert losses["fused"] == pytest.approx(losses["torchtitan"], rel=1e-6)
    torch.testing.assert_close(grads["fused"], grads["torchtitan"], rtol=1e-4, atol=1e-6)


def test_dtensors_sharded_over_heads_rotate_locally_others_fall_back(fused_on_cpu):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import distribute_tensor, DTensor, Replicate, Shard

    _, module = model_module("gpt_oss")  # its TP plan keeps DTensor q and k
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        (q, k, cache), _ = calls("gpt_oss", module, seq=8)[0]
        fused = fused_apply(module.apply_rotary_emb, False, False)
        want = module.apply_rotary_emb(q, k, cache)
        replicated_cache = distribute_tensor(cache, mesh, [Replicate()])  # as torchtitan's TP plan passes it
        for placement, uses_op in ((Shard(2), True), (Replicate(), True), (Shard(1), False)):
            dq, dk = (distribute_tensor(x, mesh, [placement]) for x in (q, k))
            with OpLog() as log:
                got = fused(dq, dk, replicated_cache)
            assert ("titan_rope.rotary.default" in log.names) == uses_op, placement
            for g, w in zip(got, want):
                assert isinstance(g, DTensor) and g.placements == (placement,)
                torch.testing.assert_close(g.full_tensor(), w, rtol=2e-6, atol=2e-6)
    finally:
        if created:
            dist.destroy_process_group()


def test_apply_is_validated_and_described():
    with pytest.raises(ValueError, match=r"rope_scaling.apply must be 'torchtitan' or 'fused' or 'fused_cacheless', got 'triton'"):
        RopeScaling(apply="triton")
    assert RopeScaling(**YARN, apply="fused").describe().endswith("apply=fused")
    assert "apply" not in RopeScaling(**YARN).describe()
    assert "apply" not in RopeScaling(**YARN, apply="fused").method_kwargs()


def test_fullgraph_compiled_blocks_trace_the_fused_forward(fused_on_cpu):
    """torch.compile resolves the fused forward's globals by their module name (as it guards them), so
    they must live in an importable module: compiled blocks must give the eager numbers."""
    spec, _ = model_module("llama3")
    args = copy.deepcopy(spec.model_args["debugmodel"])
    with torch.device("meta"):
        model = spec.model_cls(args)
    adapter_for(spec.model_cls).convert(model, RopeScaling(**YARN, apply="fused"))
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        model.init_weights(buffer_device=None)
    tokens = torch.randint(0, args.vocab_size, (2, 32), generator=torch.Generator().manual_seed(1))
    eager = model(tokens)
    for layer_id, block in list(model.layers.named_children()):
        model.layers.register_module(layer_id, torch.compile(block, fullgraph=True))
    compiled = model(tokens)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
