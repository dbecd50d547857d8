"""``[rope_scaling] apply = "fused"``: the converted model's attention modules rotate q and k with
``torch.ops.titan_rope.rotary`` (one Triton launch) instead of torchtitan's ``apply_rotary_emb``.

Scope: only the attention modules of the converted instance change. Each gets a cached subclass
whose ``forward`` is torchtitan's own ``forward`` code object bound to the globals of a module of
ours (``titan_rope_ext.torchtitan02.models._fused.scope_<torchtitan module>_<layout>``, a copy of that
module's globals in which ``apply_rotary_emb`` is the fused function); torchtitan's module and
every other model keep the stock function. The fused function falls back to the stock one (same arguments)
for tensors not on CUDA and for DTensors it cannot rotate shard by shard, so CPU runs are stock.

DTensor inputs (tensor parallelism of deepseek_v3 and gpt_oss, whose q/k projections keep
DTensor outputs and whose plans replicate the cache into attention): with q and k sharded over
batch (dim 0) or heads (dim 2) or replicated, and the cache and positions replicated, a rotation is
local to each shard, so the op runs on the local tensors and the result is wrapped with q's and
k's placements. Other placements take the stock function.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
import types
from typing import Callable

import torch
from torch import nn
from torch.distributed.tensor import DTensor, Replicate, Shard

from titan_rope_ext.cache import cache_views
from titan_rope_ext.config import RopeScaling

FUSED_DEVICES = ("cuda",)
"""Device types whose tensors take the fused op; others call the stock function. (The CPU tests add
"cpu", where the op runs its float32 torch implementation, to check the argument plumbing.)"""

STOCK_NAME = "apply_rotary_emb"
"""The module-level function every torchtitan 0.2.x attention ``forward`` calls to rotate q and k."""


def _local(x: torch.Tensor):
    """``(local tensor, rewrap)`` when ``x`` can be rotated shard by shard (plain, or a DTensor sharded
    over batch or heads or replicated); ``None`` otherwise."""
    if not isinstance(x, DTensor):
        return x, lambda y: y
    if not all(isinstance(p, Replicate) or (isinstance(p, Shard) and p.dim in (0, 2)) for p in x.placements):
        return None
    mesh, placements, shape = x.device_mesh, x.placements, x.shape
    stride = torch.empty(shape, device="meta").stride()
    return x.to_local(), lambda y: DTensor.from_local(y, mesh, placements, run_check=False, shape=shape,
                                                      stride=stride)


_NOT_LOCAL = object()


def _replicated(t):
    """The local value of a replicated DTensor (torchtitan's TP plans replicate the cache and the
    positions into attention); ``t`` itself if it is a plain tensor or None; ``_NOT_LOCAL`` for a
    DTensor with any other placement."""
    if not isinstance(t, DTensor):
        return t
    if all(isinstance(p, Replicate) for p in t.placements):
        return t.to_local()
    return _NOT_LOCAL


def fused_apply(stock: Callable, pairs: bool, single: bool) -> Callable:
    """A drop-in for the model's ``stock`` ``apply_rotary_emb``, taking the same arguments.

    ``single``: stock rotates one tensor (deepseek_v3's ``(x, freqs_cis, positions)``), else q and k
    (``(xq, xk, cache[, positions])``).
    """
    from titan_rope_ext.kernels.rotary import rotate

    names = list(inspect.signature(stock).parameters)
    n_tensors = 1 if single else 2

    def apply_rotary_emb(*args, **kwargs):
        given = dict(zip(names, args), **kwargs)
        xs = [given[n] for n in names[:n_tensors]]
        cache = given[names[n_tensors]]
        positions = given.get(names[n_tensors + 1]) if len(names) > n_tensors + 1 else None
        if xs[0].device.type not in FUSED_DEVICES:
            return stock(*args, **kwargs)
        locals_ = [_local(x) for x in xs]
        cache, positions = _replicated(cache), _replicated(positions)
        if any(lx is None for lx in locals_) or cache is _NOT_LOCAL or positions is _NOT_LOCAL:
            return stock(*args, **kwargs)
        (q, wrap_q), *rest = locals_
        k, wrap_k = rest[0] if rest else (q.new_empty(*q.shape[:2], 0, q.shape[3]), None)
        cos, sin = cache_views(cache, q.shape[-1], pairs)
        q_out, k_out = rotate(q, k, cos, sin, positions, pairs, False)
        return wrap_q(q_out) if single else (wrap_q(q_out), wrap_k(k_out))

    apply_rotary_emb.__doc__ = f"Fused drop-in for {stock.__module__}.{stock.__qualname__}."
    return apply_rotary_emb


@functools.cache
def _fused_scope(module_name: str, pairs: bool, single: bool) -> types.ModuleType:
    """A module holding a copy of ``module_name``'s globals with the fused ``apply_rotary_emb``,
    registered in ``sys.modules`` under this package: torch.compile looks an inlined function's
    globals up by their ``__name__`` (to guard them), so they must be an importable module."""
    source = importlib.import_module(module_name)
    name = f"{__name__}.scope_{module_name.replace('.', '_')}_{'pairs' if pairs else 'halves'}{'_one' if single else ''}"
    scope = types.ModuleType(name, f"{module_name} with the fused {STOCK_NAME} (titan_rope_ext)")
    scope.__dict__.update({k: v for k, v in vars(source).items() if k not in ("__name__", "__doc__", "__spec__",
                                                                            "__loader__", "__package__")})
    setattr(scope, STOCK_NAME, fused_apply(getattr(source, STOCK_NAME), pairs, single))
    sys.modules[name] = scope
    return scope


@functools.cache
def fused_subclass(base: type, pairs: bool, single: bool) -> type:
    """``base`` with a ``forward`` whose ``apply_rotary_emb`` is the fused one (cached per class)."""
    forward = base.forward
    scope = _fused_scope(forward.__module__, pairs, single)
    fused_forward = types.FunctionType(forward.__code__, vars(scope), forward.__name__, forward.__defaults__,
                                       forward.__closure__)
    fused_forward.__kwdefaults__ = forward.__kwdefaults__
    fused_forward.__qualname__ = forward.__qualname__
    return type(f"FusedRope{base.__name__}", (base,), {"forward": fused_forward, "__module__": base.__module__})


def apply_fused(model: nn.Module, config: RopeScaling, model_class: type, pairs: bool,
                single: bool = False) -> str:
    """With ``apply = "fused"``, gives every ``Attention`` module of ``model`` (the class defined beside
    ``model_class``) the fused subclass; returns the converter's log-summary addition ("" otherwise)."""
    if config.apply != "fused":
        return ""
    attention = importlib.import_module(model_class.__module__).Attention
    count = 0
    for module in model.modules():
        if isinstance(module, attention):
            module.__class__ = fused_subclass(type(module), pairs, single)
            count += 1
    if count == 0:
        raise RuntimeError(f"fused rope: {type(model).__name__} has no {attention.__name__} module")
    return f", apply=fused in {count} attention modules (Triton on CUDA, stock elsewhere)"
