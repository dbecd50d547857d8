"""The fused rotary op on CUDA (marker ``gpu``; skipped without a CUDA device).

Tolerance: the kernel computes in float32 and rounds once, so a bf16 output is within half a bf16
ulp of the exact rotation plus float32 slack: ``|fused - exact| <= 2**-8 * |exact| + 1e-6 * max|exact|``
elementwise (exact = float64 on the same bf16 inputs and float32 cache). float32 outputs are within
``1e-6 * max|exact|``. Model-level checks compare against torchtitan's own apply code, which rounds
differently (its cos/sin path multiplies in bf16), so they use a looser, stated bound.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.library import opcheck

from titan_rope_ext import RopeScaling
from titan_rope_ext.kernels.rotary import _direct_path, rotary, rotary_reference, rotate

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def cache(rows: int, head_dim: int):
    angle = torch.rand(rows, head_dim // 2, device="cuda") * 1000
    return (angle.cos() * 1.1).float(), (angle.sin() * 1.1).float()


def within_rounding(got: torch.Tensor, exact: torch.Tensor) -> float:
    """Largest ratio of the error to the bound above (<= 1 passes)."""
    if got.dtype == torch.float32:
        return ((got.double() - exact).abs().max() / (1e-6 * exact.abs().max())).item()
    bound = 2.0**-8 * exact.abs() + 1e-6 * exact.abs().max()
    return ((got.double() - exact).abs() / bound).max().item()


@pytest.mark.parametrize("shape", [(2, 2048, 32, 8, 128), (3, 77, 5, 0, 80)])
@pytest.mark.parametrize("pairs", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("positions", ["none", "batch"])
def test_kernel_rounds_the_exact_rotation_once(shape, pairs, dtype, positions):
    batch, seq, hq, hk, d = shape
    torch.manual_seed(0)
    q = torch.randn(batch, seq, hq, d + 16, device="cuda", dtype=dtype)[..., 8:8 + d]  # strided
    k = torch.randn(batch, seq, hk, d, device="cuda", dtype=dtype)
    cos, sin = cache(2 * seq, d)
    pos = {"none": None, "shared": torch.randint(0, 2 * seq, (1, seq), device="cuda"),
           "batch": torch.randint(0, 2 * seq, (batch, seq), device="cuda")}[positions]
    for conjugate in (False, True):
        got = rotary(q, k, cos, sin, pos, pairs, conjugate)
        exact = rotary_reference(q.double(), k.double(), cos.double(), sin.double(), pos, pairs, conjugate)
        for g, e, eager in zip(got, exact, rotate(q, k, cos, sin, pos, pairs, conjugate)):
            assert g.dtype == dtype and g.is_contiguous()
            assert torch.equal(eager, g)  # the eager entry launches the same kernel
            if e.numel():
                assert within_rounding(g, e) <= 1.0


@pytest.mark.parametrize("pairs", [True, False])
def test_eager_entry_has_the_ops_gradient(pairs):
    """``rotate`` on plain CUDA tensors skips the op's dispatch; forward and backward equal the op's."""
    torch.manual_seed(0)
    q = torch.randn(2, 33, 6, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(2, 33, 2, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    cos, sin = cache(40, 64)
    pos = torch.randint(0, 40, (2, 33), device="cuda")
    grads = torch.randn_like(q), torch.randn_like(k)
    assert _direct_path(q, k)
    results = []
    for fn in (rotate, rotary):
        out = fn(q, k, cos, sin, pos, pairs, False)
        results.append((*out, *torch.autograd.grad(out, (q, k), grads)))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_functorch_transforms_take_the_op():
    """Tensors inside vmap look like plain CUDA tensors; the eager entry must not launch on them."""
    q = torch.randn(3, 1, 4, 2, 64, device="cuda")
    seen = []

    def probe(x):
        seen.append(_direct_path(x, x))
        return x

    torch.func.vmap(probe)(q)
    assert seen == [False] and _direct_path(q[0], q[0])


@pytest.mark.parametrize("pairs", [True, False])
def test_opcheck_on_cuda(pairs):
    q = torch.randn(2, 64, 4, 64, device="cuda", requires_grad=True)
    k = torch.randn(2, 64, 2, 64, device="cuda", requires_grad=True)
    cos, sin = cache(128, 64)
    for pos in (None, torch.randint(0, 128, (2, 64), device="cuda")):
        opcheck(torch.ops.titan_rope.rotary.default, (q, k, cos, sin, pos, pairs, False))


@pytest.mark.parametrize("pairs", [True, False])
def test_fullgraph_compile_equals_eager_forward_and_backward(pairs):
    q = torch.randn(2, 512, 8, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(2, 512, 2, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    cos, sin = cache(512, 128)

    def f(a, b):
        qo, ko = rotary(a * 2, b, cos, sin, None, pairs, False)
        return (qo.float().square().sum() + ko.float().sum())

    eager = torch.autograd.grad(f(q, k), (q, k))
    compiled = torch.autograd.grad(torch.compile(f, fullgraph=True)(q, k), (q, k))
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)


def build(name: str, apply: str, ac: bool = False, compile_blocks: bool = False):
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
    from torchtitan.protocols.train_spec import get_train_spec

    from titan_rope_ext.torchtitan02.models import adapter_for

    spec = get_train_spec(name)
    args = copy.deepcopy(spec.model_args["debugmodel"])
    with torch.device("meta"):
        model = spec.model_cls(args)
    adapter_for(spec.model_cls).convert(model, RopeScaling(rope_type="yarn", factor=4.0,
                                                            original_max_position_embeddings=256, apply=apply))
    model.to_empty(device="cuda")
    torch.manual_seed(0)
    with torch.no_grad():
        model.init_weights(buffer_device=torch.device("cuda"))
    for layer_id, block in list(model.layers.named_children()):
        if ac:
            block = checkpoint_wrapper(block, preserve_rng_state=False)
        if compile_blocks:
            block = torch.compile(block, fullgraph=True)
        model.layers.register_module(layer_id, block)
    return model, args


@pytest.mark.parametrize("name", ["llama3", "qwen3"])
@pytest.mark.parametrize("variant", ["eager", "compile", "ac+compile"])
def test_model_step_with_fused_apply_matches_torchtitan_apply(name, variant):
    """bf16 autocast forward + backward of the debug model: fused vs torchtitan's apply, same weights.
    Bound: loss within 2e-3 relative and the first attention's wq gradient within 3% of its norm (the
    two apply paths round differently in bf16; a wrong rotation or a missing backward is far off)."""
    results = {}
    for apply in ("torchtitan", "fused"):
        model, args = build(name, apply, ac="ac" in variant, compile_blocks="compile" in variant)
        tokens = torch.randint(0, args.vocab_size, (2, 256), device="cuda",
                               generator=torch.Generator("cuda").manual_seed(1))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(tokens)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tokens.roll(-1, 1).flatten())
        loss.backward()
        wq = next(m.wq for m in model.modules() if isinstance(getattr(m, "wq", None), torch.nn.Linear))
        results[apply] = (loss.item(), wq.weight.grad.float())
    (loss_t, g_t), (loss_f, g_f) = results["torchtitan"], results["fused"]
    assert loss_f == pytest.approx(loss_t, rel=2e-3)
    assert ((g_f - g_t).norm() / g_t.norm()).item() < 0.03
