"""``rope_scaling.apply = "fused"`` on torchtitan 0.3: our RoPE modules rotate q and k with
``torch.ops.titan_rope.rotary`` (one Triton launch for both, forward and backward) from their own cache.

On 0.3 the RoPE module owns the apply: every attention calls ``self.rope(query, key, positions)``
once per forward with both tensors (``GQAttention`` for llama3, qwen3 and muse_glimmer's RoPE
layers; gpt_oss's attention; MLA with ``q_pe`` and the one-head ``k_pe.unsqueeze(2)``), so one call
is one launch, and no attention code changes. ``ScaledComplexRoPE`` / ``ScaledCosSinRoPE``
(``rope.py``) override ``forward`` with ``fused_forward`` and fall back to stock's ``forward``
wherever it returns ``None``. ``forward`` and not ``apply_rotary_emb``: stock's ``forward`` first
gathers the cache rows of the positions into a new ``(1 or batch, seq, 1, width)`` tensor
(``_reshape_cache``) and ``apply_rotary_emb`` only sees that; the kernel reads the rows of the
module's buffer in place by position (``titan_rope_ext.cache.cache_views``), as torchtitan's own
``overrides/helion_rope.py`` does by overriding ``forward``.

Where stock's ``forward`` runs instead (same numbers as without ``apply = "fused"``): tensors on a
device not in ``FUSED_DEVICES`` (CPU runs are stock), and DTensor placements a local rotation
cannot serve (below).

DTensor q/k (the ``partial_dtensor`` and ``full_dtensor`` backends; TP plans that keep DTensor
q/k): a rotation is local to each token, so the op runs on the local tensors when every mesh
dimension shards q and k over the same token dimension (batch: ``Shard(0)``, sequence:
``Shard(1)``) or over none (heads ``Shard(2)``, ``Replicate``), the cache is replicated, and each
local token's position is known: positions given (a plain tensor is the local shard, as stock's
``_maybe_wrap_positions`` takes it; a DTensor must be sharded over q's token dimensions), or no
mesh dimension shards the sequence. The results keep q's and k's placements. ``Partial`` or
anything else takes stock's ``forward``. Under ``spmd_types`` type checking (``debug.spmd_typechecking``)
the op runs unchecked and each result gets its input's SPMD type (a rotation keeps it).

Positions are bounds-checked as stock does (``_maybe_check_max_pos``: an asynchronous assert in
eager, skipped under torch.compile), so a position past the cache fails cleanly rather than as an
illegal memory access in the kernel.
"""

from __future__ import annotations

import spmd_types as spmd
import torch
from torch.distributed.tensor import DTensor, Replicate, Shard
from torchtitan.models.common.rope import _maybe_check_max_pos

from titan_rope_ext.cache import cache_views

FUSED_DEVICES = ("cuda",)
"""Device types whose tensors take the fused op; others take stock's ``forward``. (The CPU tests add
"cpu", where the op runs its float32 torch implementation, to check the plumbing.)"""


def _token_placement(placement):
    """What a placement of q or k does to its ``(batch, seq)`` grid of tokens (heads are not tokens)."""
    return placement if isinstance(placement, Shard) and placement.dim in (0, 1) else Replicate()


def _replicated(t):
    """The local tensor of a replicated DTensor, a plain tensor (or None) itself; False for any other DTensor."""
    if not isinstance(t, DTensor):
        return t
    return t.to_local() if all(isinstance(p, Replicate) for p in t.placements) else False


def _local_positions(positions, query: DTensor):
    """The local positions of the tokens of ``query``'s local shard; False where they are not known."""
    tokens = tuple(_token_placement(p) for p in query.placements)
    if positions is None:  # token s of the local shard is position s unless the sequence is sharded
        return None if not any(isinstance(p, Shard) and p.dim == 1 for p in tokens) else False
    if not isinstance(positions, DTensor):  # the local shard, as stock's _maybe_wrap_positions takes it
        return positions
    if positions.device_mesh != query.device_mesh or tuple(positions.placements) != tokens:
        return False
    return positions.to_local()


def _contiguous_stride(shape) -> tuple[int, ...]:
    stride, step = [], 1
    for size in reversed(shape):
        stride.append(step)
        step *= max(size, 1)
    return tuple(reversed(stride))


def _wrap_like(local: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(like, DTensor):
        return local
    return DTensor.from_local(local, like.device_mesh, like.placements, run_check=False, shape=like.shape,
                              stride=_contiguous_stride(like.shape))


def _locals(query, key, cache, positions):
    """``(q, k, cache, positions)`` as local tensors a local rotation serves, or None (stock's forward)."""
    cache = _replicated(cache)
    if cache is False:
        return None
    if not isinstance(query, DTensor) and not isinstance(key, DTensor):
        positions = _replicated(positions)
        return None if positions is False else (query, key, cache, positions)
    if not (isinstance(query, DTensor) and isinstance(key, DTensor)) or query.device_mesh != key.device_mesh:
        return None
    for q_p, k_p in zip(query.placements, key.placements):
        if not all(isinstance(p, Replicate) or (isinstance(p, Shard) and p.dim in (0, 1, 2)) for p in (q_p, k_p)):
            return None
        if _token_placement(q_p) != _token_placement(k_p):
            return None
    positions = _local_positions(positions, query)
    if positions is False:
        return None
    return query.to_local(), key.to_local(), cache, positions


def fused_forward(module, query: torch.Tensor, key: torch.Tensor,
                  positions: torch.Tensor | None, pairs: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``module``'s rotation of ``query`` and ``key`` (``(batch, seq, heads, head_dim)``) by the fused op,
    with stock ``RoPE.forward``'s arguments and results; ``None`` where stock's ``forward`` must run:
    ``apply`` is not "fused", the device is not in ``FUSED_DEVICES``, or the placements need it.

    ``pairs``: the module's layout (``ComplexRoPE``: adjacent pairs; ``CosSinRoPE``: rotate-half).
    """
    apply = module.config.rope_scaling.apply
    if apply == "fused_cacheless":
        return cacheless_forward(module, query, key, positions, pairs)
    if apply != "fused" or query.device.type not in FUSED_DEVICES:
        return None
    local = _locals(query, key, module.cache, positions)
    if local is None:
        return None
    from titan_rope_ext.kernels.rotary import rotate  # imports triton: only where the fused apply runs

    q, k, cache, pos = local
    if pos is not None:
        _maybe_check_max_pos(pos, max_valid_pos=cache.shape[0] - 1)
    cos, sin = cache_views(cache, q.shape[-1], pairs)
    return _rotated(lambda: rotate(q, k, cos, sin, pos, pairs, False), q, k, query, key)


def cacheless_forward(module, query: torch.Tensor, key: torch.Tensor,
                      positions: torch.Tensor | None, pairs: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``apply = "fused_cacheless"``: q and k rotated from ``module.inv_freq``, ``module.cacheless_factor`` and the
    positions by ``rotate_cacheless`` (the kernel on CUDA, the op's torch implementation on other devices).
    There is no cache for stock's ``forward`` to fall back on, so DTensor placements a local rotation cannot
    serve are an error naming them (``apply = "fused"`` serves them through stock's forward)."""
    from titan_rope_ext.kernels.rotary import rotate_cacheless

    local = _locals(query, key, module.inv_freq, positions)
    if local is None:
        placements = [getattr(t, "placements", None) for t in (query, key, positions)]
        raise ValueError(f"rope_scaling.apply = 'fused_cacheless' cannot rotate these q, k and positions shard by "
                         f"shard (placements {placements}); use apply = 'fused'")
    q, k, inv_freq, pos = local
    if pos is not None:
        _maybe_check_max_pos(pos, max_valid_pos=module.config.max_seq_len - 1)
    factor = module.cacheless_factor
    return _rotated(lambda: rotate_cacheless(q, k, inv_freq, factor, pos, pairs, False), q, k, query, key)


def _rotated(run, q, k, query, key) -> tuple[torch.Tensor, torch.Tensor]:
    """``run()``'s rotated local q and k, with their inputs' SPMD types when type checking, wrapped as
    ``query`` and ``key`` are."""
    if spmd.is_type_checking():
        with spmd.no_typecheck():
            q_out, k_out = run()
        spmd.assert_type_like(q_out, q)
        spmd.assert_type_like(k_out, k)
    else:
        q_out, k_out = run()
    return _wrap_like(q_out, query), _wrap_like(k_out, key)
