"""``titan_rope.rotary`` on CPU: its torch implementation against the float64 formula, the op's
registration (opcheck: schema, fake, autograd, compile), and the Triton kernel itself through
Triton's CPU interpreter (a subprocess with TRITON_INTERPRET=1)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch.library import opcheck

from tests.reference import rotate_pairs_reference
from titan_rope_ext.kernels.rotary import rotary, rotary_reference

B, S, HQ, HK, D = 2, 12, 4, 2, 16
FACTOR = 1.3


def cache(rows: int = 32, head_dim: int = D, dtype=torch.float64):
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angle = torch.arange(rows, dtype=torch.float64)[:, None] * inv_freq[None]
    return inv_freq, (angle.cos() * FACTOR).to(dtype), (angle.sin() * FACTOR).to(dtype)


def inputs(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, S, HQ, D, generator=g, dtype=dtype), torch.randn(B, S, HK, D, generator=g, dtype=dtype))


@pytest.mark.parametrize("pairs", [True, False])
def test_reference_is_the_published_rotation(pairs):
    inv_freq, cos, sin = cache()
    q, k = inputs()
    q_out, k_out = rotary_reference(q, k, cos, sin, None, pairs, False)
    layout = "pairs" if pairs else "half"
    torch.testing.assert_close(q_out, rotate_pairs_reference(q, inv_freq, FACTOR, layout), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(k_out, rotate_pairs_reference(k, inv_freq, FACTOR, layout), rtol=1e-12, atol=1e-12)
    # the two layouts are different rotations of the same numbers
    other = rotary_reference(q, k, cos, sin, None, not pairs, False)[0]
    assert (other - q_out).abs().max() > 0.1


@pytest.mark.parametrize("pairs", [True, False])
def test_positions_pick_cache_rows_per_token(pairs):
    _, cos, sin = cache()
    q, k = inputs()
    positions = torch.stack([torch.arange(S) + 7, torch.arange(S).flip(0)])  # (batch, seq)
    q_out, k_out = rotary_reference(q, k, cos, sin, positions, pairs, False)
    for b in range(B):
        qb, kb = rotary_reference(q[b:b + 1], k[b:b + 1], cos[positions[b]], sin[positions[b]], None, pairs, False)
        torch.testing.assert_close(q_out[b:b + 1], qb, rtol=0, atol=0)
        torch.testing.assert_close(k_out[b:b + 1], kb, rtol=0, atol=0)
    shared = rotary_reference(q, k, cos, sin, positions[:1], pairs, False)[0]  # (1, seq) serves every row
    torch.testing.assert_close(shared[1], rotary_reference(q[1:], k[1:], cos, sin, positions[:1], pairs, False)[0][0])


@pytest.mark.parametrize("pairs", [True, False])
def test_conjugate_undoes_the_rotation_up_to_the_factor_squared(pairs):
    _, cos, sin = cache()
    q, k = inputs()
    there = rotary_reference(q, k, cos, sin, None, pairs, False)
    back = rotary_reference(*there, cos, sin, None, pairs, True)
    torch.testing.assert_close(back[0], q * FACTOR**2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(back[1], k * FACTOR**2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pairs", [True, False])
@pytest.mark.parametrize("with_positions", [False, True])
def test_opcheck_and_gradcheck(pairs, with_positions):
    _, cos, sin = cache()
    q, k = (x.requires_grad_() for x in inputs())
    positions = torch.randint(0, 32, (B, S), generator=torch.Generator().manual_seed(1)) if with_positions else None
    opcheck(torch.ops.titan_rope.rotary.default, (q, k, cos, sin, positions, pairs, False))
    assert torch.autograd.gradcheck(lambda a, b: rotary(a, b, cos, sin, positions, pairs, False), (q, k))


def test_one_tensor_with_an_empty_k_and_its_gradient():
    _, cos, sin = cache()
    q = inputs()[0].requires_grad_()
    k = q.new_empty(B, S, 0, D)
    q_out, k_out = rotary(q, k, cos, sin, None, True, False)
    assert k_out.shape == (B, S, 0, D)
    q_out.sum().backward()  # k_out unused: its gradient is None, the backward must still run
    expected = rotary_reference(torch.ones_like(q), k, cos, sin, None, True, True)[0]
    torch.testing.assert_close(q.grad, expected)


@pytest.mark.parametrize("pairs", [True, False])
def test_fullgraph_compile_and_meta(pairs):
    _, cos, sin = cache(dtype=torch.float32)
    q, k = inputs(torch.float32)
    compiled = torch.compile(lambda a, b: rotary(a, b, cos, sin, None, pairs, False), fullgraph=True)
    for got, want in zip(compiled(q, k), rotary(q, k, cos, sin, None, pairs, False)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    meta = rotary(q.to("meta"), k.to("meta"), cos.to("meta"), sin.to("meta"), None, pairs, False)
    assert [m.shape for m in meta] == [q.shape, k.shape] and meta[0].is_meta


@pytest.mark.parametrize("bad, message", [
    (dict(k=torch.zeros(B, S + 1, HK, D)), "q and k must be"),
    (dict(cos=torch.zeros(32, D)), "cos and sin must be"),
    (dict(cos=torch.zeros(S - 1, D // 2), sin=torch.zeros(S - 1, D // 2)), "the cache has 11 rows for 12"),
    (dict(positions=torch.zeros(3, S, dtype=torch.long)), "positions must be"),
])
def test_bad_shapes_are_named(bad, message):
    _, cos, sin = cache()
    q, k = inputs()
    args = dict(q=q, k=k, cos=cos, sin=sin, positions=None) | bad
    with pytest.raises(ValueError, match=message):
        rotary(args["q"], args["k"], args["cos"], args["sin"], args["positions"], True, False)


_INTERPRETED = r"""
import json, sys, torch
from titan_rope_ext.kernels.rotary import launch, rotary_reference
torch.manual_seed(0)
out = []
# (batch, seq, q heads, k heads, head_dim): llama-like, odd head counts and a head_dim whose half is
# not a power of two (masked lanes), deepseek's one-tensor case (k_heads 0)
for batch, seq, hq, hk, d in [(2, 9, 4, 2, 16), (1, 7, 6, 3, 20), (2, 5, 3, 0, 8)]:
    for pairs in (True, False):
        for pos in ("none", "shared", "batch"):
            for conj in (False, True):
                for dtype in (torch.float32, torch.bfloat16):
                    big = torch.randn(batch, seq, hq, d + 4, dtype=dtype)
                    q = big[..., 2:2 + d]  # a strided slice (deepseek's q_pe), unit last stride
                    k = torch.randn(batch, seq, hk, d, dtype=dtype)
                    ang = torch.rand(3 * seq, d // 2) * 6
                    freqs = torch.polar(torch.full_like(ang, 1.3), ang)
                    real = torch.view_as_real(freqs)  # read in place, as the llama3 cache is
                    cos, sin = real[..., 0], real[..., 1]
                    positions = {"none": None, "shared": torch.randint(0, 3 * seq, (1, seq)),
                                 "batch": torch.randint(0, 3 * seq, (batch, seq))}[pos]
                    got = launch(q, k, cos, sin, positions, pairs, conj)
                    ref = rotary_reference(q.double(), k.double(), cos.double(), sin.double(), positions, pairs, conj)
                    for g, r in zip(got, ref):
                        assert g.shape == r.shape and g.is_contiguous()
                        if not r.numel():
                            err = 0.0
                        elif dtype == torch.float32:  # float32 arithmetic, relative to the tensor's scale
                            err = ((g.double() - r).abs().max() / r.abs().max()).item()
                        else:  # one rounding to bf16 (plus float32 slack); the interpreter truncates,
                            # so the bound is one bf16 ulp (2**-7 relative) instead of half of one
                            bound = 2.0**-7 * r.abs() + 1e-6 * r.abs().max()
                            err = ((g.double() - r).abs() / bound).max().item()
                        out.append([batch, seq, hq, hk, d, pairs, pos, conj, str(dtype), err])
# the eager entry's autograd.Function: forward = a direct kernel launch (float32 math, so its bound
# is float32's), backward = its formula (on CPU the op's torch path) against the reference's gradient
from titan_rope_ext.kernels.rotary import _EagerRotary
for pairs in (True, False):
    q = torch.randn(2, 5, 3, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 5, 1, 8, dtype=torch.float64, requires_grad=True)
    cos, sin = torch.rand(9, 4, dtype=torch.float64), torch.rand(9, 4, dtype=torch.float64)
    positions = torch.randint(0, 9, (2, 5))
    up = torch.randn_like(q), torch.randn_like(k)
    results = []
    for fn in (_EagerRotary.apply, rotary_reference):
        outs = fn(q, k, cos, sin, positions, pairs, False)
        results.append([*outs, *torch.autograd.grad(outs, (q, k), up)])
    err = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(*results))
    out.append([2, 5, 3, 1, 8, pairs, "eager entry", False, "torch.float32", err])
json.dump(out, sys.stdout)
"""


def test_triton_kernel_in_the_cpu_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", _INTERPRETED], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cases = json.loads(proc.stdout)
    assert len(cases) == 3 * 2 * 3 * 2 * 2 * 2 + 2
    for *case, dtype, err in cases:
        assert err <= (1e-6 if dtype == "torch.float32" else 1.0), (case, dtype, err)
    assert math.isfinite(max(c[-1] for c in cases))


def test_rotate_routes_eager_calls_by_gradient(monkeypatch):
    """Where ``rotate`` launches the kernel itself: inside the autograd.Function when q or k needs a
    gradient, bare otherwise (also the backward's own rotation); elsewhere it calls the op."""
    from titan_rope_ext.kernels import rotary as kernel

    calls = []

    def fake_launch(q, k, cos, sin, positions, pairs, conjugate, traceable=True):
        calls.append(("launch", traceable))
        return rotary_reference(q, k, cos, sin, positions, pairs, conjugate)

    function = kernel._EagerRotary

    class Recorded(function):
        @staticmethod
        def forward(*args):
            calls.append("function")
            return function.forward(*args)

    monkeypatch.setattr(kernel, "launch", fake_launch)
    monkeypatch.setattr(kernel, "_EagerRotary", Recorded)
    monkeypatch.setattr(kernel, "_direct_path", lambda q, k: True)
    _, cos, sin = cache()
    q, k = inputs()
    kernel.rotate(q, k, cos, sin)
    assert calls == [("launch", False)]
    qg = q.clone().requires_grad_()
    out = kernel.rotate(qg, k, cos, sin)
    assert calls[1:] == ["function", ("launch", False)] and out[0].grad_fn is not None
    out[0].sum().backward()  # the backward's rotation needs no gradient: a bare launch
    assert calls[3:] == [("launch", False)]
    torch.testing.assert_close(qg.grad, rotary_reference(torch.ones_like(q), k, cos, sin, None, True, True)[0])
    monkeypatch.setattr(kernel, "_direct_path", lambda q, k: False)
    kernel.rotate(q, k, cos, sin)  # the op: on CPU its torch implementation, no launch
    assert len(calls) == 4


def test_block_sizes_of_symbolic_shapes():
    """The op's CUDA body runs on symbolic sizes under dynamic-shape tracing (opcheck's
    aot_dispatch_dynamic, torch.compile(dynamic=True)): the block sizes specialize them to their values
    (the per-shape cache cannot hash a SymInt; opcheck on CUDA failed so)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from titan_rope_ext.kernels.rotary import _blocks

    seen = []

    def body(q, k):
        seen.append(_blocks(q.shape[-1], q.shape[-2], k.shape[-2]))
        return q

    make_fx(body, tracing_mode="symbolic")(torch.zeros(1, 3, 32, 128), torch.zeros(1, 3, 8, 128))
    assert [tuple(int(v) for v in b) for b in seen] == [_blocks(128, 32, 8)] == [(64, 8, 1)]
