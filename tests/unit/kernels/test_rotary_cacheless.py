"""``titan_rope.rotary_cacheless``: q and k rotated from ``inv_freq``, the attention factor and the positions,
with no cache. On CPU: its torch implementation against the float64 formula and against the cached op on
the caches torchtitan would hold (every method, positions up to 2**20), the op's registration (opcheck,
gradients, compile, meta), and the Triton kernel itself in Triton's CPU interpreter. On CUDA (marked gpu):
the kernel against the cached kernel on caches built on the GPU, and against a float64 reference."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch.library import opcheck

from tests.reference import rotate_pairs_reference
from titan_rope_ext import RopeScaling, rope_frequencies
from titan_rope_ext.kernels.rotary import (
    cacheless_tables,
    rotary_cacheless,
    rotary_cacheless_reference,
    rotary_reference,
)

B, S, HQ, HK, D = 2, 12, 4, 2, 16
FACTOR = 1.3
FAR = 2**20  # positions up to 1M, as long-context runs reach

# one section per method at 8x a 4096-token original (the registry's numbers, float32 inv_freq)
METHODS = {
    "default": RopeScaling(rope_type="default"),
    "linear": RopeScaling(rope_type="linear", factor=8.0),
    "ntk": RopeScaling(rope_type="ntk", factor=8.0),
    "dynamic": RopeScaling(rope_type="dynamic", factor=8.0, original_max_position_embeddings=4096),
    "yarn": RopeScaling(rope_type="yarn", factor=8.0, original_max_position_embeddings=4096),
    "llama3": RopeScaling(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=4096),
    "longrope": RopeScaling(rope_type="longrope", factor=8.0, original_max_position_embeddings=4096,
                            short_factor=[1.0] * 64, long_factor=[1.0 + i / 16 for i in range(64)]),
}


def frequencies(name: str, head_dim: int = 128) -> tuple[torch.Tensor, float]:
    inv_freq, factor = rope_frequencies(METHODS[name], head_dim, 500000.0, 8 * 4096)
    return inv_freq.float(), float(factor)


def inputs(dtype=torch.float64, seed=0, head_dim=D):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, S, HQ, head_dim, generator=g, dtype=dtype),
            torch.randn(B, S, HK, head_dim, generator=g, dtype=dtype))


def inv_freq_of(head_dim: int = D) -> torch.Tensor:
    return (1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))).float()


@pytest.mark.parametrize("pairs", [True, False])
def test_reference_is_the_published_rotation(pairs):
    inv_freq = inv_freq_of()
    q, k = inputs()
    q_out, k_out = rotary_cacheless_reference(q, k, inv_freq, FACTOR, None, pairs, False)
    layout = "pairs" if pairs else "half"
    # float64 math on the float32 angle: the float64 formula's angle differs by float32 rounding of p * inv_freq
    torch.testing.assert_close(q_out, rotate_pairs_reference(q, inv_freq, FACTOR, layout), rtol=0, atol=1e-5)
    torch.testing.assert_close(k_out, rotate_pairs_reference(k, inv_freq, FACTOR, layout), rtol=0, atol=1e-5)
    other = rotary_cacheless_reference(q, k, inv_freq, FACTOR, None, not pairs, False)[0]
    assert (other - q_out).abs().max() > 0.1


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("pairs", [True, False])
def test_equals_the_cached_op_on_torchtitans_cache_rows_up_to_1m(method, pairs):
    """The angle is the caches' float32 product and cos/sin are the caches' functions, so the cacheless
    result equals the cached op reading the rows a cache of 2**20 positions would hold (built here for the
    positions used only: ``torch.outer`` of float32 positions, as ``titan_rope_ext.cache`` builds it)."""
    from titan_rope_ext.cache import cache_views

    inv_freq, factor = frequencies(method)
    q, k = (t.to(torch.bfloat16) for t in inputs(torch.float32, head_dim=128))
    g = torch.Generator().manual_seed(1)
    positions = torch.randint(0, FAR, (B, S), generator=g)
    positions[0, -1] = FAR - 1
    rows = positions.flatten()
    angle = torch.outer(rows.to(torch.float32), inv_freq)
    if pairs:
        cache = torch.polar(torch.full_like(angle, factor), angle)  # complex_cache's rows
    else:
        both = torch.cat([angle, angle], dim=-1)
        cache = torch.cat([both.cos() * factor, both.sin() * factor], dim=-1)  # cos_sin_cache's rows
    cos, sin = cache_views(cache, 128, pairs)
    local = torch.arange(rows.numel()).view(B, S)  # token (b, s) reads row b * S + s of these rows
    cached = rotary_reference(q, k, cos, sin, local, pairs, False)
    cacheless = rotary_cacheless_reference(q, k, inv_freq, factor, positions, pairs, False)
    for a, b in zip(cacheless, cached):
        # both round once to bf16 from float32 math on cos/sin within one float32 ulp of each other
        ulp = torch.finfo(torch.bfloat16).eps * b.float().abs().clamp_min(2**-100)
        assert ((a.float() - b.float()).abs() <= ulp).all(), (a.float() - b.float()).abs().max()
    # and against float64 at those positions: one bf16 rounding of the exact rotation (angle from float32)
    exact = rotary_cacheless_reference(q.double(), k.double(), inv_freq, factor, positions, pairs, False)
    for a, e in zip(cacheless, exact):
        assert ((a.double() - e).abs() <= 2.0**-8 * e.abs() + 1e-6 * e.abs().max()).all()


def test_tables_are_per_token_and_take_positions_per_row():
    inv_freq = inv_freq_of()
    positions = torch.stack([torch.arange(S) + 7, torch.arange(S).flip(0)])
    cos, sin = cacheless_tables(inv_freq, FACTOR, positions, S)
    assert cos.shape == sin.shape == (B, S, D // 2)
    angle = positions[1, 3].float() * inv_freq
    torch.testing.assert_close(cos[1, 3], angle.cos() * FACTOR, rtol=0, atol=0)
    torch.testing.assert_close(sin[1, 3], angle.sin() * FACTOR, rtol=0, atol=0)
    none_cos, _ = cacheless_tables(inv_freq, FACTOR, None, S)
    assert none_cos.shape == (1, S, D // 2)
    torch.testing.assert_close(none_cos[0, 5], (5.0 * inv_freq).cos() * FACTOR, rtol=0, atol=0)


@pytest.mark.parametrize("pairs", [True, False])
def test_conjugate_undoes_the_rotation_up_to_the_factor_squared(pairs):
    inv_freq = inv_freq_of()
    q, k = inputs()
    positions = torch.randint(0, 1000, (B, S))
    once = rotary_cacheless_reference(q, k, inv_freq, FACTOR, positions, pairs, False)
    back = rotary_cacheless_reference(*once, inv_freq, FACTOR, positions, pairs, True)
    torch.testing.assert_close(back[0], q * FACTOR**2, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(back[1], k * FACTOR**2, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("pairs", [True, False])
@pytest.mark.parametrize("with_positions", [False, True])
def test_opcheck_and_gradcheck(pairs, with_positions):
    inv_freq = inv_freq_of()
    q, k = (t.requires_grad_() for t in inputs())
    positions = torch.randint(0, 50, (1, S)) if with_positions else None
    opcheck(rotary_cacheless, (q, k, inv_freq, FACTOR, positions, pairs, False))
    assert torch.autograd.gradcheck(lambda a, b: rotary_cacheless(a, b, inv_freq, FACTOR, positions, pairs, False),
                                    (q, k))


@pytest.mark.parametrize("pairs", [True, False])
def test_fullgraph_compile_and_meta(pairs):
    inv_freq = inv_freq_of()
    q, k = inputs(torch.float32)
    positions = torch.randint(0, 4096, (B, S))
    fn = torch.compile(lambda a, b, p: rotary_cacheless(a, b, inv_freq, FACTOR, p, pairs, False),
                       fullgraph=True, backend="aot_eager")
    got = fn(q, k, positions)
    want = rotary_cacheless_reference(q, k, inv_freq, FACTOR, positions, pairs, False)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    mq, mk = (t.to("meta") for t in (q, k))
    out = rotary_cacheless(mq, mk, inv_freq.to("meta"), FACTOR, positions.to("meta"), pairs, False)
    assert [t.shape for t in out] == [q.shape, k.shape] and all(t.device.type == "meta" for t in out)


@pytest.mark.parametrize("bad, message", [
    (dict(inv_freq=torch.ones(D // 2, dtype=torch.float64)), "inv_freq must be float32"),
    (dict(inv_freq=torch.ones(D, dtype=torch.float32)), "inv_freq must be float32 \\(head_dim // 2 = 8,\\)"),
    (dict(positions=torch.zeros(3, S, dtype=torch.long)), "positions must be \\(1 or batch, seq\\)"),
])
def test_bad_inputs_are_named(bad, message):
    q, k = inputs(torch.float32)
    args = dict(inv_freq=inv_freq_of(), positions=None) | bad
    with pytest.raises(ValueError, match=message):
        rotary_cacheless_reference(q, k, args["inv_freq"], FACTOR, args["positions"], True, False)


_INTERPRETED = r"""
import json, sys, torch
from titan_rope_ext.kernels.rotary import launch_cacheless, rotary_cacheless_reference, _EagerRotaryCacheless
torch.manual_seed(0)
out = []
for batch, seq, hq, hk, d in [(2, 9, 4, 2, 16), (1, 7, 6, 3, 20), (2, 5, 3, 0, 8)]:
    inv_freq = (1.0 / (500000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))).float()
    for pairs in (True, False):
        for pos in ("none", "shared", "far"):
            for conj in (False, True):
                for dtype in (torch.float32, torch.bfloat16):
                    big = torch.randn(batch, seq, hq, d + 4, dtype=dtype)
                    q = big[..., 2:2 + d]
                    k = torch.randn(batch, seq, hk, d, dtype=dtype)
                    positions = {"none": None, "shared": torch.randint(0, 3 * seq, (1, seq)),
                                 "far": torch.randint(0, 2**20, (batch, seq))}[pos]
                    got = launch_cacheless(q, k, inv_freq, 1.3, positions, pairs, conj)
                    ref = rotary_cacheless_reference(q.double(), k.double(), inv_freq, 1.3, positions, pairs, conj)
                    for g, r in zip(got, ref):
                        assert g.shape == r.shape and g.is_contiguous()
                        if not r.numel():
                            err = 0.0
                        elif dtype == torch.float32:
                            err = ((g.double() - r).abs().max() / r.abs().max()).item()
                        else:
                            bound = 2.0**-7 * r.abs() + 1e-6 * r.abs().max()
                            err = ((g.double() - r).abs() / bound).max().item()
                        out.append([batch, seq, hq, hk, d, pairs, pos, conj, str(dtype), err])
for pairs in (True, False):
    inv_freq = (1.0 / (10000.0 ** (torch.arange(0, 8, 2, dtype=torch.float64) / 8))).float()
    q = torch.randn(2, 5, 3, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 5, 1, 8, dtype=torch.float64, requires_grad=True)
    positions = torch.randint(0, 9, (2, 5))
    up = torch.randn_like(q), torch.randn_like(k)
    results = []
    for fn in (_EagerRotaryCacheless.apply, rotary_cacheless_reference):
        outs = fn(q, k, inv_freq, 1.3, positions, pairs, False)
        results.append([*outs, *torch.autograd.grad(outs, (q, k), up)])
    err = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(*results))
    out.append([2, 5, 3, 1, 8, pairs, "eager entry", False, "torch.float32", err])
json.dump(out, sys.stdout)
"""


def test_triton_kernel_in_the_cpu_interpreter():
    """The kernel's cacheless branch (float32 angle, cos/sin in registers; the interpreter's tl.cos and tl.sin
    stand in for libdevice's) against the float64 rotation of the same angle, positions up to 2**20."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", _INTERPRETED], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cases = json.loads(proc.stdout)
    assert len(cases) == 3 * 2 * 3 * 2 * 2 * 2 + 2
    for *case, dtype, err in cases:
        assert err <= (1e-6 if dtype == "torch.float32" else 1.0), (case, dtype, err)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("pairs", [True, False])
def test_cuda_kernel_equals_the_cached_kernel_on_a_gpu_built_cache(method, pairs):
    """The cacheless output equals the cached kernel's on rows built on the GPU at positions up to 2**20,
    forward and backward, within one bf16 rounding plus a floor of 2**-20 of the largest output (outputs
    near zero are differences of products, so the few-ulp float32 difference between two cos/sin
    implementations can move them by more than one of their own ulps), and stays within one bf16 rounding
    of the float64 rotation. With torch 2.11 (CUDA 13.0) torch's CUDA cos/sin/polar are libdevice's
    cosf/sinf and the outputs agreed bit for bit; torch 2.14's CUDA cos/sin are not (both within 8.6e-8 of
    float64 on angles up to 2**20: benchmarks/results/cos_accuracy_h200.txt), and a bound of one bf16 ulp
    of each element failed the halves layout there."""
    from titan_rope_ext.cache import cache_views
    from titan_rope_ext.kernels.rotary import rotate, rotate_cacheless

    inv_freq, factor = (t.cuda() if torch.is_tensor(t) else t for t in frequencies(method))
    g = torch.Generator().manual_seed(2)
    q = torch.randn(2, 512, 32, 128, generator=g).to("cuda", torch.bfloat16).requires_grad_()
    k = torch.randn(2, 512, 8, 128, generator=g).to("cuda", torch.bfloat16).requires_grad_()
    positions = torch.randint(0, FAR, (2, 512), generator=g).cuda()
    rows = positions.flatten()
    angle = torch.outer(rows.to(torch.float32), inv_freq)
    if pairs:
        cache = torch.polar(torch.full_like(angle, factor), angle)
    else:
        both = torch.cat([angle, angle], dim=-1)
        cache = torch.cat([both.cos() * factor, both.sin() * factor], dim=-1)
    cos, sin = cache_views(cache, 128, pairs)
    local = torch.arange(rows.numel(), device="cuda").view(2, 512)
    up = torch.randn_like(q), torch.randn_like(k)
    cached = rotate(q, k, cos, sin, local, pairs, False)
    cacheless = rotate_cacheless(q, k, inv_freq, factor, positions, pairs, False)
    grads = [torch.autograd.grad(out, (q, k), up) for out in (cached, cacheless)]
    for a, b in [*zip(cacheless, cached), *zip(grads[1], grads[0])]:
        bound = torch.finfo(torch.bfloat16).eps * b.float().abs() + 2.0**-20 * b.float().abs().max()
        assert ((a.float() - b.float()).abs() <= bound).all()
    exact = rotary_cacheless_reference(q.detach().double(), k.detach().double(), inv_freq, factor, positions,
                                       pairs, False)
    for a, e in zip(cacheless, exact):
        assert ((a.double() - e).abs() <= 2.0**-8 * e.abs() + 1e-6 * e.abs().max()).all()


@pytest.mark.gpu
@cuda
def test_cuda_opcheck_and_compile():
    inv_freq = inv_freq_of().cuda()
    q = torch.randn(2, 64, 4, D, device="cuda", requires_grad=True)
    k = torch.randn(2, 64, 2, D, device="cuda", requires_grad=True)
    positions = torch.randint(0, 2**20, (2, 64), device="cuda")
    opcheck(rotary_cacheless, (q, k, inv_freq, FACTOR, positions, True, False))
    fn = torch.compile(lambda a, b: rotary_cacheless(a, b, inv_freq, FACTOR, positions, False, False), fullgraph=True)
    got = fn(q, k)
    want = rotary_cacheless_reference(q.detach().double(), k.detach().double(), inv_freq, FACTOR, positions,
                                      False, False)
    for a, e in zip(got, want):
        assert ((a.double() - e).abs().max() / e.abs().max()).item() < 1e-6
