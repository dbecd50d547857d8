"""Fused rotary application: one Triton launch rotates q and k, forward and backward.

The op ``torch.ops.titan_rope.rotary(q, k, cos, sin, positions, pairs, conjugate) -> (q_out, k_out)``
is a ``torch.library.triton_op`` (``torch.compile(fullgraph=True)`` traces into the kernel) with a
fake implementation, an autograd formula, and a float32 torch implementation for tensors not on CUDA.
Callers use ``rotate`` (same arguments), which launches the kernel directly in eager calls on CUDA.

Convention (RoFormer, Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary Position
Embedding"): band ``i`` of a head is the pair ``(x0, x1)`` rotated to
``(x0 * cos - x1 * sin, x1 * cos + x0 * sin)`` with the cache's row for the token's position.

Shapes:

* ``q``: ``(batch, seq, q_heads, head_dim)``, ``k``: ``(batch, seq, k_heads, head_dim)``; any float
  dtype, any strides with a unit stride in the last dimension; ``k_heads`` may be 0 (one tensor).
* ``cos``, ``sin``: float32 ``(rows, head_dim // 2)``, any strides: row ``p`` holds
  ``attention_factor * cos(p * inv_freq[i])`` (and sin). Both torchtitan cache layouts are read in
  place — the complex ``freqs_cis`` through ``view_as_real`` (``[..., 0]``, ``[..., 1]``), the
  ``[cos | sin]`` cache through column slices — so a step copies no cache.
* ``positions``: ``None`` (token ``s`` uses row ``s``) or integer ``(1, seq)`` / ``(batch, seq)``
  rows (context parallelism, document masking); each must be ``< rows``, as torchtitan's indexing needs.
* ``pairs``: true for the adjacent-pair layout of llama3, llama4 and deepseek_v3 (band ``i`` is
  ``x[2i], x[2i+1]``); false for the rotate-half layout of qwen3 and gpt_oss (``x[i], x[i + head_dim/2]``).
* ``conjugate``: rotate by ``-angle``. The backward is this: the transpose of a rotation scaled by
  ``a`` is the rotation by the opposite angle scaled by ``a``.

Cacheless form, ``torch.ops.titan_rope.rotary_cacheless(q, k, inv_freq, attention_factor, positions,
pairs, conjugate)`` (callers use ``rotate_cacheless``): no cache at all. ``inv_freq`` is float32
``(head_dim // 2,)`` (what ``titan_rope_ext.scaling`` returns for every method) and the kernel computes,
per token and band, the angle as the caches are built -- the float32 product ``p * inv_freq[i]`` of the
position converted to float32 (exact below 2**24), one rounding -- then ``attention_factor *
cos(angle)`` and ``attention_factor * sin(angle)`` with CUDA's precise ``cosf``/``sinf`` (libdevice,
with full range reduction; not ``tl.cos``, which lowers to the ``cos.approx`` intrinsic), which is what
torch's CUDA ``cos``/``sin``/``polar`` compute for a cache built on the GPU. It reads q, k, the
positions and ``head_dim // 2`` floats, and writes q and k.

Each output element is computed in float32 and rounded once to the input dtype (torchtitan's
complex path also computes in float32; its cos/sin path rounds cos and sin to the input dtype first).
Outputs are new contiguous tensors.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton
from triton.language.extra import libdevice

OP = "titan_rope::rotary"
OP_CACHELESS = "titan_rope::rotary_cacheless"

_TILE = 1024
"""Elements of q or k one program rotates per step (tokens x heads x head_dim)."""

_NUM_WARPS = 4
"""Warps per program (benchmarks/rope_apply.py --sweep times other tiles and warp counts)."""

_TILE_CACHELESS = 1024
"""``_TILE`` of the cacheless kernel, which also computes cos and sin per token (swept separately)."""

_NUM_WARPS_CACHELESS = 4
"""``_NUM_WARPS`` of the cacheless kernel."""


@triton.jit
def _rotate_tile(x_ptr, o_ptr, cos, sin, b, s, t, tmask, h_block, n_heads, sx_b, sx_s, sx_h,
                 PAIRS: tl.constexpr, HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_T: tl.constexpr,
                 BLOCK_H: tl.constexpr):
    """Rotates heads ``h_block * BLOCK_H ...`` of tokens ``t`` (``(BLOCK_T,)``: batch ``b``, sequence
    index ``s``) of x into the contiguous o, with ``cos`` and ``sin`` ``(BLOCK_T, BLOCK_HALF)`` float32.

    Band ``i`` is ``(x0, x1) -> (x0 * cos - x1 * sin, x1 * cos + x0 * sin)``. Every load and store is
    of contiguous runs of a head row: pairs load the whole row and split it into even and odd
    elements in registers (reshape to ``(..., BLOCK_HALF, 2)``), halves load the two half rows.
    q and k are streamed (read once: evict first; stores bypass L2 retention), the cache rows stay.
    """
    h = h_block * BLOCK_H + tl.arange(0, BLOCK_H)
    rows = tmask[:, None, None] & (h < n_heads)[None, :, None]
    x_row = (b * sx_b + s * sx_s)[:, None, None] + (h * sx_h)[None, :, None]
    o_row = (t * (n_heads * 2 * HALF))[:, None, None] + (h * (2 * HALF))[None, :, None]
    if PAIRS:
        d = tl.arange(0, 2 * BLOCK_HALF)[None, None, :]
        mask = rows & (d < 2 * HALF)
        x = tl.load(x_ptr + x_row + d, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
        x0, x1 = tl.split(tl.reshape(x, (BLOCK_T, BLOCK_H, BLOCK_HALF, 2)))
    else:
        i = tl.arange(0, BLOCK_HALF)[None, None, :]
        mask = rows & (i < HALF)
        x0 = tl.load(x_ptr + x_row + i, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
        x1 = tl.load(x_ptr + x_row + HALF + i, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
    c = cos[:, None, :]
    sn = sin[:, None, :]
    y0 = (x0 * c - x1 * sn).to(o_ptr.dtype.element_ty)
    y1 = (x1 * c + x0 * sn).to(o_ptr.dtype.element_ty)
    if PAIRS:
        y = tl.reshape(tl.join(y0, y1), (BLOCK_T, BLOCK_H, 2 * BLOCK_HALF))
        tl.store(o_ptr + o_row + d, y, mask=mask, cache_modifier=".cs")
    else:
        tl.store(o_ptr + o_row + i, y0, mask=mask, cache_modifier=".cs")
        tl.store(o_ptr + o_row + HALF + i, y1, mask=mask, cache_modifier=".cs")


@triton.jit
def _rotary_kernel(q_ptr, k_ptr, qo_ptr, ko_ptr, cos_ptr, sin_ptr, pos_ptr,
                   n_tokens, seq_len, q_heads, k_heads,
                   sq_b, sq_s, sq_h, sk_b, sk_s, sk_h, sc_p, sc_i, ss_p, ss_i, sp_b, sp_s, factor,
                   HAS_POS: tl.constexpr, PAIRS: tl.constexpr, CONJ: tl.constexpr, HALF: tl.constexpr,
                   BLOCK_HALF: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
                   CACHELESS: tl.constexpr, LIBDEVICE: tl.constexpr):
    # CACHELESS: cos_ptr is inv_freq ((HALF,), stride sc_i), sin_ptr unused, factor the attention factor;
    # LIBDEVICE: CUDA's precise cosf/sinf (False only in Triton's CPU interpreter, which has no libdevice
    # and computes tl.cos / tl.sin with numpy's precise float32 functions)
    # grid: token blocks; a program loads its tokens' cache rows once and rotates all their q and
    # k heads, BLOCK_H at a time (0.086 ms against 0.087-0.089 for a program per head block at
    # llama3-8B heads, seq 8192, H200: docs/gpu_runs/kernel_dev_probes_h200.txt)
    t = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    tmask = t < n_tokens
    b = t // seq_len
    s = t % seq_len
    if HAS_POS:
        p = tl.load(pos_ptr + b * sp_b + s * sp_s, mask=tmask, other=0).to(tl.int64)
    else:
        p = s
    i = tl.arange(0, BLOCK_HALF)
    cmask = tmask[:, None] & (i < HALF)[None, :]
    if CACHELESS:
        inv_freq = tl.load(cos_ptr + i * sc_i, mask=i < HALF, other=0.0, eviction_policy="evict_last")
        angle = p.to(tl.float32)[:, None] * inv_freq[None, :]  # one float32 rounding, as the caches' outer product
        if LIBDEVICE:
            cos = libdevice.cos(angle) * factor
            sin = libdevice.sin(angle) * factor
        else:
            cos = tl.cos(angle) * factor
            sin = tl.sin(angle) * factor
    else:
        cos = tl.load(cos_ptr + p[:, None] * sc_p + i[None, :] * sc_i, mask=cmask, other=0.0,
                      eviction_policy="evict_last")
        sin = tl.load(sin_ptr + p[:, None] * ss_p + i[None, :] * ss_i, mask=cmask, other=0.0,
                      eviction_policy="evict_last")
    if CONJ:
        sin = -sin
    for hb in range(0, tl.cdiv(q_heads, BLOCK_H)):
        _rotate_tile(q_ptr, qo_ptr, cos, sin, b, s, t, tmask, hb, q_heads, sq_b, sq_s, sq_h,
                     PAIRS, HALF, BLOCK_HALF, BLOCK_T, BLOCK_H)
    for hb in range(0, tl.cdiv(k_heads, BLOCK_H)):
        _rotate_tile(k_ptr, ko_ptr, cos, sin, b, s, t, tmask, hb, k_heads, sk_b, sk_s, sk_h,
                     PAIRS, HALF, BLOCK_HALF, BLOCK_T, BLOCK_H)


def _unit_last(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _check_qk(q: torch.Tensor, k: torch.Tensor, positions) -> None:
    """What both ops require of q, k and the positions."""
    if q.dim() != 4 or k.dim() != 4 or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"rotary: q and k must be (batch, seq, heads, head_dim) alike, got {tuple(q.shape)} "
                         f"and {tuple(k.shape)}")
    if positions is not None and (positions.dim() != 2 or positions.shape[0] not in (1, q.shape[0])
                                  or positions.shape[1] != q.shape[1]):
        raise ValueError(f"rotary: positions must be (1 or batch, seq) = (1 or {q.shape[0]}, {q.shape[1]}), "
                         f"got {tuple(positions.shape)}")


def _check(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions) -> None:
    _check_qk(q, k, positions)
    half = q.shape[-1] // 2
    if q.shape[-1] % 2 or cos.shape != sin.shape or cos.dim() != 2 or cos.shape[1] != half:
        raise ValueError(f"rotary: cos and sin must be (rows, head_dim // 2 = {half}), got "
                         f"{tuple(cos.shape)} and {tuple(sin.shape)}")
    if positions is None and cos.shape[0] < q.shape[1]:
        raise ValueError(f"rotary: the cache has {cos.shape[0]} rows for {q.shape[1]} positions")


def _check_cacheless(q: torch.Tensor, k: torch.Tensor, inv_freq: torch.Tensor, positions) -> None:
    _check_qk(q, k, positions)
    half = q.shape[-1] // 2
    if q.shape[-1] % 2 or inv_freq.dim() != 1 or inv_freq.shape[0] != half or inv_freq.dtype != torch.float32:
        raise ValueError(f"rotary: inv_freq must be float32 (head_dim // 2 = {half},), got {inv_freq.dtype} "
                         f"{tuple(inv_freq.shape)}")


def _blocks(head_dim: int, q_heads: int, k_heads: int, tile: int | None = None) -> tuple[int, int, int]:
    """``(BLOCK_HALF, BLOCK_H, BLOCK_T)``: heads per step from the smaller nonzero head count (so
    k's steps are not mostly masked), tokens to fill ``tile`` (default ``_TILE``) elements. The sizes are the kernel's
    compile-time constants, so symbolic ones (a dynamic-shape trace of the op's body) are specialized
    to their values here: the cache cannot hash them, and sympy took minutes over the division."""
    return _blocks_for(int(head_dim), int(q_heads), int(k_heads), int(_TILE if tile is None else tile))


@functools.lru_cache(maxsize=256)
def _blocks_for(head_dim: int, q_heads: int, k_heads: int, tile: int) -> tuple[int, int, int]:
    # cached: a model has a handful of shapes, and uncached this cost 13 us per call on the CI machine's CPU
    block_half = triton.next_power_of_2(max(1, head_dim // 2))
    heads = min(h for h in (q_heads, k_heads) if h > 0) if q_heads or k_heads else 1
    block_h = min(triton.next_power_of_2(heads), max(1, tile // (2 * block_half)))
    block_t = max(1, tile // (2 * block_half * block_h))
    return block_half, block_h, block_t


def launch(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
           positions: torch.Tensor | None, pairs: bool, conjugate: bool,
           traceable: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs the Triton kernel on these tensors (the op's CUDA body; CPU tensors under TRITON_INTERPRET=1).

    ``traceable``: launch through ``wrap_triton`` (the op body: torch.compile traces the kernel; in
    eager the op turns the wrapper off). False launches the kernel directly, for callers that know
    they are not traced (the wrapper's dispatch outside the op cost 0.42 ms of host time per call on
    an H200 host: docs/gpu_runs/kernel_dev_probes_h200.txt).
    """
    _check(q, k, cos, sin, positions)
    return _launch(q, k, cos, sin, 1.0, positions, pairs, conjugate, traceable, cacheless=False)


def launch_cacheless(q: torch.Tensor, k: torch.Tensor, inv_freq: torch.Tensor, attention_factor: float,
                     positions: torch.Tensor | None, pairs: bool, conjugate: bool,
                     traceable: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``launch`` without a cache: the kernel computes cos and sin from ``inv_freq`` and the positions."""
    _check_cacheless(q, k, inv_freq, positions)
    return _launch(q, k, inv_freq[None], inv_freq[None], float(attention_factor), positions, pairs, conjugate,
                   traceable, cacheless=True)


def _launch(q, k, cos, sin, factor: float, positions, pairs: bool, conjugate: bool, traceable: bool,
            cacheless: bool) -> tuple[torch.Tensor, torch.Tensor]:
    q, k = _unit_last(q), _unit_last(k)
    batch, seq, q_heads, head_dim = q.shape
    k_heads = k.shape[2]
    qo = torch.empty_like(q, memory_format=torch.contiguous_format)
    ko = torch.empty_like(k, memory_format=torch.contiguous_format)
    n_tokens = batch * seq
    if n_tokens == 0:
        return qo, ko
    tile, warps = (_TILE_CACHELESS, _NUM_WARPS_CACHELESS) if cacheless else (_TILE, _NUM_WARPS)
    block_half, block_h, block_t = _blocks(head_dim, q_heads, k_heads, tile)
    grid = (triton.cdiv(n_tokens, block_t),)
    if positions is None:
        pos, sp_b, sp_s = q, 0, 0  # unused pointer
    else:
        pos, sp_b, sp_s = positions, (positions.stride(0) if positions.shape[0] > 1 else 0), positions.stride(1)
    kernel = wrap_triton(_rotary_kernel) if traceable else _rotary_kernel
    kernel[grid](
        q, k, qo, ko, cos, sin, pos, n_tokens, seq, q_heads, k_heads,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        cos.stride(0), cos.stride(1), sin.stride(0), sin.stride(1), sp_b, sp_s, factor,
        HAS_POS=positions is not None, PAIRS=pairs, CONJ=conjugate, HALF=head_dim // 2,
        BLOCK_HALF=block_half, BLOCK_T=block_t, BLOCK_H=block_h, CACHELESS=cacheless,
        LIBDEVICE=q.is_cuda, num_warps=warps,
    )
    return qo, ko


@triton_op(OP, mutates_args=())
def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
           positions: torch.Tensor | None, pairs: bool, conjugate: bool) -> tuple[torch.Tensor, torch.Tensor]:
    # the device is static under tracing, so compiled graphs on CPU trace the torch implementation
    if q.device.type != "cuda":
        return rotary_reference(q, k, cos, sin, positions, pairs, conjugate)
    return launch(q, k, cos, sin, positions, pairs, conjugate)


def rotary_reference(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     positions: torch.Tensor | None, pairs: bool, conjugate: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The op in plain torch, float32 math (float64 for float64 inputs) and one rounding: the
    implementation for tensors not on CUDA and the tests' reference."""
    _check(q, k, cos, sin, positions)
    math_dtype = torch.promote_types(q.dtype, torch.float32)
    rows = torch.arange(q.shape[1], device=q.device)[None] if positions is None else positions
    c, s = (t.to(math_dtype)[rows] for t in (cos, sin))  # (1|batch, seq, half)
    return _rotate_by(q, k, c, s, pairs, conjugate)


def _rotate_by(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pairs: bool,
               conjugate: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k rotated by per-token ``cos``/``sin`` ``(1|batch, seq, half)`` in their dtype (the math dtype),
    each output rounded once to its input's dtype: both references' rotation."""
    c, s = cos[:, :, None, :], (-sin if conjugate else sin)[:, :, None, :]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        xf = x.to(c.dtype)
        x0, x1 = (xf[..., 0::2], xf[..., 1::2]) if pairs else xf.chunk(2, dim=-1)
        y0, y1 = x0 * c - x1 * s, x1 * c + x0 * s
        y = torch.stack([y0, y1], dim=-1).flatten(-2) if pairs else torch.cat([y0, y1], dim=-1)
        return y.to(x.dtype).contiguous()

    return rotate(q), rotate(k)


@rotary.register_fake
def _(q, k, cos, sin, positions, pairs, conjugate):
    _check(q, k, cos, sin, positions)
    return q.new_empty(q.shape), k.new_empty(k.shape)


def _setup_context(ctx, inputs, output) -> None:
    _, _, cos, sin, positions, pairs, conjugate = inputs
    ctx.save_for_backward(cos, sin, positions)
    ctx.pairs, ctx.conjugate = pairs, conjugate
    ctx.shapes = [(x.shape, x.dtype) for x in inputs[:2]]


def _backward(ctx, grad_q, grad_k):
    cos, sin, positions = ctx.saved_tensors
    # an output nobody used has no gradient: rotate zeros (shape and dtype of its input)
    grad_q, grad_k = (g if g is not None else torch.zeros(shape, dtype=dtype, device=cos.device)
                      for g, (shape, dtype) in zip((grad_q, grad_k), ctx.shapes))
    dq, dk = rotate(grad_q, grad_k, cos, sin, positions, ctx.pairs, not ctx.conjugate)
    return dq, dk, None, None, None, None, None


rotary.register_autograd(_backward, setup_context=_setup_context)


class _EagerRotary(torch.autograd.Function):
    """The op's autograd formula around a direct kernel launch, for eager calls (see ``rotate``).

    ``forward`` takes ``ctx`` (no separate ``setup_context``): ``Function.apply`` binds the arguments
    through ``inspect.signature`` on every call of a class that defines ``setup_context`` (150 against
    73 us per call on the CI machine's CPU). That style is what functorch transforms need, and
    ``_direct_path`` keeps their calls on the op.
    """

    @staticmethod
    def forward(ctx, q, k, cos, sin, positions, pairs, conjugate):
        _setup_context(ctx, (q, k, cos, sin, positions, pairs, conjugate), None)
        return launch(q, k, cos, sin, positions, pairs, conjugate, traceable=False)

    backward = staticmethod(_backward)


def _direct_path(q: torch.Tensor, k: torch.Tensor) -> bool:
    """True where ``rotate`` launches the kernel itself: plain CUDA tensors outside torch.compile, with
    no dispatch mode active (fake tensors, make_fx, selective activation checkpointing all take the
    op) and no functorch transform (vmap, grad: their wrapped tensors look like plain ones)."""
    return (not torch.compiler.is_compiling() and type(q) is torch.Tensor and type(k) is torch.Tensor
            and q.is_cuda and not torch._C._len_torch_dispatch_stack()
            and not torch._C._are_functorch_transforms_active())


def rotate(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
           positions: torch.Tensor | None = None, pairs: bool = True,
           conjugate: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.ops.titan_rope.rotary`` with the same arguments and results; the entry point callers use.

    Eager calls on plain CUDA tensors skip the custom op's dispatcher layers and launch the kernel
    directly: under the op's autograd formula (an ``autograd.Function``) when q or k needs a
    gradient, bare otherwise (the backward's own rotation, inference). Host time per call on an H200
    host (docs/gpu_runs/kernel_dev_probes_h200.txt, before the cuts in ``_EagerRotary`` and
    ``_blocks``): the op 139 us with autograd, the ``autograd.Function`` 115 us; without autograd the
    op 95 us, a bare launch 53 us (benchmarks/rope_apply.py's host columns give the current figures).
    Everything else (torch.compile, fake tensors, dispatch modes, functorch transforms, other devices)
    calls the op.
    """
    if _direct_path(q, k):
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
            return _EagerRotary.apply(q, k, cos, sin, positions, pairs, conjugate)
        return launch(q, k, cos, sin, positions, pairs, conjugate, traceable=False)
    return rotary(q, k, cos, sin, positions, pairs, conjugate)


# ----------------------------------------------------------------------------------------- no cache


@triton_op(OP_CACHELESS, mutates_args=())
def rotary_cacheless(q: torch.Tensor, k: torch.Tensor, inv_freq: torch.Tensor, attention_factor: float,
                     positions: torch.Tensor | None, pairs: bool,
                     conjugate: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if q.device.type != "cuda":
        return rotary_cacheless_reference(q, k, inv_freq, attention_factor, positions, pairs, conjugate)
    return launch_cacheless(q, k, inv_freq, attention_factor, positions, pairs, conjugate)


def cacheless_tables(inv_freq: torch.Tensor, attention_factor: float, positions: torch.Tensor | None,
                     seq: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)``, each ``(1 | batch, seq, head_dim // 2)``: what the cacheless kernel computes per token.

    The angle is the float32 product ``p * inv_freq`` (the caches' ``torch.outer`` of float32 positions),
    then ``attention_factor * cos`` / ``sin`` in ``dtype`` (float32; float64 for a float64 reference)."""
    rows = torch.arange(seq, device=inv_freq.device)[None] if positions is None else positions
    angle = rows.to(torch.float32)[..., None] * inv_freq.to(torch.float32)
    angle = angle.to(dtype)
    return angle.cos() * attention_factor, angle.sin() * attention_factor


def rotary_cacheless_reference(q: torch.Tensor, k: torch.Tensor, inv_freq: torch.Tensor, attention_factor: float,
                               positions: torch.Tensor | None, pairs: bool,
                               conjugate: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The cacheless op in plain torch (the implementation for tensors not on CUDA): the same rotation as
    ``rotary_reference`` with cos and sin computed for the tokens' positions only, no table of all rows."""
    _check_cacheless(q, k, inv_freq, positions)
    math_dtype = torch.promote_types(q.dtype, torch.float32)
    cos, sin = cacheless_tables(inv_freq, attention_factor, positions, q.shape[1], math_dtype)
    return _rotate_by(q, k, cos, sin, pairs, conjugate)


@rotary_cacheless.register_fake
def _(q, k, inv_freq, attention_factor, positions, pairs, conjugate):
    _check_cacheless(q, k, inv_freq, positions)
    return q.new_empty(q.shape), k.new_empty(k.shape)


def _setup_context_cacheless(ctx, inputs, output) -> None:
    _, _, inv_freq, attention_factor, positions, pairs, conjugate = inputs
    ctx.save_for_backward(inv_freq, positions)
    ctx.attention_factor, ctx.pairs, ctx.conjugate = attention_factor, pairs, conjugate
    ctx.shapes = [(x.shape, x.dtype) for x in inputs[:2]]


def _backward_cacheless(ctx, grad_q, grad_k):
    inv_freq, positions = ctx.saved_tensors
    grad_q, grad_k = (g if g is not None else torch.zeros(shape, dtype=dtype, device=inv_freq.device)
                      for g, (shape, dtype) in zip((grad_q, grad_k), ctx.shapes))
    dq, dk = rotate_cacheless(grad_q, grad_k, inv_freq, ctx.attention_factor, positions, ctx.pairs,
                              not ctx.conjugate)
    return dq, dk, None, None, None, None, None


rotary_cacheless.register_autograd(_backward_cacheless, setup_context=_setup_context_cacheless)


class _EagerRotaryCacheless(torch.autograd.Function):
    """``_EagerRotary`` for the cacheless op: its autograd formula around a direct kernel launch."""

    @staticmethod
    def forward(ctx, q, k, inv_freq, attention_factor, positions, pairs, conjugate):
        _setup_context_cacheless(ctx, (q, k, inv_freq, attention_factor, positions, pairs, conjugate), None)
        return launch_cacheless(q, k, inv_freq, attention_factor, positions, pairs, conjugate, traceable=False)

    backward = staticmethod(_backward_cacheless)


def rotate_cacheless(q: torch.Tensor, k: torch.Tensor, inv_freq: torch.Tensor, attention_factor: float = 1.0,
                     positions: torch.Tensor | None = None, pairs: bool = True,
                     conjugate: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.ops.titan_rope.rotary_cacheless``: q and k rotated from ``inv_freq`` (float32 ``(head_dim // 2,)``),
    the attention factor and the positions, no cache; routed as ``rotate`` routes (a direct launch for
    eager calls on plain CUDA tensors, the op everywhere else)."""
    if _direct_path(q, k):
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
            return _EagerRotaryCacheless.apply(q, k, inv_freq, attention_factor, positions, pairs, conjugate)
        return launch_cacheless(q, k, inv_freq, attention_factor, positions, pairs, conjugate, traceable=False)
    return rotary_cacheless(q, k, inv_freq, attention_factor, positions, pairs, conjugate)
