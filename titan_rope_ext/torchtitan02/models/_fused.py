"""``[rope_scaling] apply = "fused"`` and ``"fused_cacheless"``: the converted model's attention modules rotate q
and k with one Triton op instead of torchtitan's ``apply_rotary_emb``.

Scope: only the attention modules of the converted instance change. Each gets a cached subclass
whose ``forward`` is torchtitan's own ``forward`` code object bound to the globals of a module of
ours (``titan_rope_ext.torchtitan02.models._fused.scope_<torchtitan module>_<layout>...``, a copy of that
module's globals in which ``apply_rotary_emb`` is ours); torchtitan's module and every other model keep
the stock function.

``"fused"`` (``torch.ops.titan_rope.rotary``) reads the model's rotary cache in place and falls back to
the stock function (same arguments) for tensors not on CUDA and for DTensors it cannot rotate shard by
shard, so CPU runs are stock.

``"fused_cacheless"`` (``torch.ops.titan_rope.rotary_cacheless``): the model's buffer holds float32
``inv_freq`` ``(head_dim // 2,)`` instead of a cache (``_common.scaled_cache``), and the argument stock
passes as the cache is read as ``inv_freq``; the attention factor and ``max_seq_len`` are constants of the
scope (computed at convert time), so models with different sections get different scopes. Stock cannot
read ``inv_freq``, so there is no fallback: every device rotates (the op's torch implementation off
CUDA), and DTensor placements a local rotation cannot serve are a ValueError. Positions must lie in
``[0, max_seq_len)`` (an asynchronous check in eager, as stock's indexing would fail there; skipped under
torch.compile), and without positions the sequence must fit ``max_seq_len``: nothing extrapolates silently.

DTensor inputs (tensor parallelism of deepseek_v3 and gpt_oss, whose q/k projections keep
DTensor outputs and whose plans replicate the cache into attention): with q and k sharded over
batch (dim 0) or heads (dim 2) or replicated, and the cache (or ``inv_freq``) and positions replicated,
a rotation is local to each shard, so the op runs on the local tensors and the result is wrapped with
q's and k's placements.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
import types
from typing import Callable, NamedTuple

import torch
from torch import nn
from torch.distributed.tensor import DTensor, Replicate, Shard

from titan_rope_ext.cache import cache_views
from titan_rope_ext.config import rope_frequencies, RopeScaling

FUSED_DEVICES = ("cuda",)
"""Device types whose tensors take the fused op with ``apply = "fused"``; others call the stock function.
(The CPU tests add "cpu", where the op runs its float32 torch implementation, to check the argument
plumbing.) ``"fused_cacheless"`` rotates on every device."""

STOCK_NAME = "apply_rotary_emb"
"""The module-level function every torchtitan 0.2.x attention ``forward`` calls to rotate q and k."""


class Cacheless(NamedTuple):
    """What the cacheless drop-in needs besides ``inv_freq``: config scalars fixed at convert time."""

    attention_factor: float
    """The factor the section's cache would carry (``rope_frequencies``), on cos and sin."""
    max_seq_len: int
    """The model's ``max_seq_len``: the rows a cache would have; positions must stay below it."""

    def tag(self) -> str:
        """A module-name-safe, exact spelling: ``f1p25_L256`` for factor 1.25 and 256 positions."""
        factor = repr(float(self.attention_factor)).replace(".", "p").replace("-", "m").replace("+", "")
        return f"f{factor}_L{self.max_seq_len}"


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


def _parser(stock: Callable, single: bool) -> Callable:
    """``parse(args, kwargs) -> (xs, table, positions)`` for calls of ``stock``: the rotated tensors (q and k, or
    deepseek_v3's one), what stock passes as the cache, and the positions (None where stock takes none)."""
    names = list(inspect.signature(stock).parameters)
    n_tensors = 1 if single else 2

    def parse(args, kwargs):
        given = dict(zip(names, args), **kwargs)
        positions = given.get(names[n_tensors + 1]) if len(names) > n_tensors + 1 else None
        return [given[n] for n in names[:n_tensors]], given[names[n_tensors]], positions

    return parse


def _localize(xs, table, positions):
    """``(q, k, table, positions, wrap_q, wrap_k)`` as local tensors when a local rotation serves them (a
    zero-head k for one tensor), else None."""
    locals_ = [_local(x) for x in xs]
    table, positions = _replicated(table), _replicated(positions)
    if any(lx is None for lx in locals_) or table is _NOT_LOCAL or positions is _NOT_LOCAL:
        return None
    (q, wrap_q), *rest = locals_
    k, wrap_k = rest[0] if rest else (q.new_empty(*q.shape[:2], 0, q.shape[3]), None)
    return q, k, table, positions, wrap_q, wrap_k


def fused_apply(stock: Callable, pairs: bool, single: bool) -> Callable:
    """A drop-in for the model's ``stock`` ``apply_rotary_emb``, taking the same arguments.

    ``single``: stock rotates one tensor (deepseek_v3's ``(x, freqs_cis, positions)``), else q and k
    (``(xq, xk, cache[, positions])``).
    """
    from titan_rope_ext.kernels.rotary import rotate

    parse = _parser(stock, single)

    def apply_rotary_emb(*args, **kwargs):
        xs, cache, positions = parse(args, kwargs)
        local = _localize(xs, cache, positions) if xs[0].device.type in FUSED_DEVICES else None
        if local is None:
            return stock(*args, **kwargs)
        q, k, cache, positions, wrap_q, wrap_k = local
        cos, sin = cache_views(cache, q.shape[-1], pairs)
        q_out, k_out = rotate(q, k, cos, sin, positions, pairs, False)
        return wrap_q(q_out) if single else (wrap_q(q_out), wrap_k(k_out))

    apply_rotary_emb.__doc__ = f"Fused drop-in for {stock.__module__}.{stock.__qualname__}."
    return apply_rotary_emb


def _check_positions(positions: torch.Tensor, max_seq_len: int) -> None:
    """Asynchronous: every position in ``[0, max_seq_len)`` (fails at a later sync; a no-op under torch.compile)."""
    if torch.compiler.is_compiling():
        return
    torch._assert_async(((positions >= 0) & (positions < max_seq_len)).all(),
                        f"rope_scaling.apply = 'fused_cacheless': positions must lie in [0, max_seq_len = "
                        f"{max_seq_len})")


def cacheless_apply(stock: Callable, pairs: bool, single: bool, cacheless: Cacheless) -> Callable:
    """A drop-in for the model's ``stock`` ``apply_rotary_emb`` whose cache argument is the float32 ``inv_freq``
    ``(head_dim // 2,)``: q and k rotated by ``rotate_cacheless`` with ``cacheless.attention_factor``, on every
    device. Raises ValueError for placements a local rotation cannot serve (stock cannot read ``inv_freq``)."""
    from titan_rope_ext.kernels.rotary import rotate_cacheless

    parse = _parser(stock, single)
    factor, max_seq_len = float(cacheless.attention_factor), int(cacheless.max_seq_len)

    def apply_rotary_emb(*args, **kwargs):
        xs, inv_freq, positions = parse(args, kwargs)
        local = _localize(xs, inv_freq, positions)
        if local is None:
            placements = [getattr(t, "placements", None) for t in (*xs, inv_freq, positions)]
            raise ValueError(f"rope_scaling.apply = 'fused_cacheless' cannot rotate these tensors shard by shard "
                             f"(placements of {'x' if single else 'q, k'}, inv_freq, positions: {placements}); "
                             "use apply = 'fused'")
        q, k, inv_freq, positions, wrap_q, wrap_k = local
        if positions is None and q.shape[1] > max_seq_len:
            raise ValueError(f"rope_scaling.apply = 'fused_cacheless': {q.shape[1]} tokens without positions "
                             f"exceed the model's max_seq_len = {max_seq_len}")
        if positions is not None:
            _check_positions(positions, max_seq_len)
        q_out, k_out = rotate_cacheless(q, k, inv_freq, factor, positions, pairs, False)
        return wrap_q(q_out) if single else (wrap_q(q_out), wrap_k(k_out))

    apply_rotary_emb.__doc__ = (f"Cacheless drop-in for {stock.__module__}.{stock.__qualname__} (attention factor "
                                f"{factor!r}, max_seq_len {max_seq_len}).")
    return apply_rotary_emb


@functools.cache
def _fused_scope(module_name: str, pairs: bool, single: bool, cacheless: Cacheless | None = None) -> types.ModuleType:
    """A module holding a copy of ``module_name``'s globals with our ``apply_rotary_emb`` (cacheless with these
    constants, else fused), registered in ``sys.modules`` under this package: torch.compile looks an inlined
    function's globals up by their ``__name__`` (to guard them), so they must be an importable module."""
    source = importlib.import_module(module_name)
    layout = f"{'pairs' if pairs else 'halves'}{'_one' if single else ''}"
    kind = "fused" if cacheless is None else "cacheless"
    name = f"{__name__}.scope_{module_name.replace('.', '_')}_{layout}"
    if cacheless is not None:
        name += f"_cacheless_{cacheless.tag()}"
    scope = types.ModuleType(name, f"{module_name} with the {kind} {STOCK_NAME} (titan_rope_ext)")
    scope.__dict__.update({k: v for k, v in vars(source).items() if k not in ("__name__", "__doc__", "__spec__",
                                                                            "__loader__", "__package__")})
    stock = getattr(source, STOCK_NAME)
    ours = fused_apply(stock, pairs, single) if cacheless is None else cacheless_apply(stock, pairs, single, cacheless)
    setattr(scope, STOCK_NAME, ours)
    sys.modules[name] = scope
    return scope


@functools.cache
def fused_subclass(base: type, pairs: bool, single: bool, cacheless: Cacheless | None = None) -> type:
    """``base`` with a ``forward`` whose ``apply_rotary_emb`` is ours (cached per class, layout and constants)."""
    forward = base.forward
    scope = _fused_scope(forward.__module__, pairs, single, cacheless)
    fused_forward = types.FunctionType(forward.__code__, vars(scope), forward.__name__, forward.__defaults__,
                                       forward.__closure__)
    fused_forward.__kwdefaults__ = forward.__kwdefaults__
    fused_forward.__qualname__ = forward.__qualname__
    prefix = "FusedRope" if cacheless is None else "CachelessRope"
    return type(f"{prefix}{base.__name__}", (base,), {"forward": fused_forward, "__module__": base.__module__})


def apply_fused(model: nn.Module, config: RopeScaling, model_class: type, pairs: bool, head_dim: int,
                single: bool = False) -> str:
    """With ``apply = "fused"`` or ``"fused_cacheless"``, gives every ``Attention`` module of ``model`` (the class
    defined beside ``model_class``) our subclass; returns the converter's log-summary addition ("" otherwise).

    ``head_dim``: the rotated dimension (the section's factor for it is the cacheless constant)."""
    if config.apply not in ("fused", "fused_cacheless"):
        return ""
    cacheless = None
    if config.apply == "fused_cacheless":
        args = model.model_args
        with torch.device("meta"):
            _, attention_factor = rope_frequencies(config, head_dim, args.rope_theta, args.max_seq_len)
        cacheless = Cacheless(float(attention_factor), int(args.max_seq_len))
    attention = importlib.import_module(model_class.__module__).Attention
    count = 0
    for module in model.modules():
        if isinstance(module, attention):
            module.__class__ = fused_subclass(type(module), pairs, single, cacheless)
            count += 1
    if count == 0:
        raise RuntimeError(f"fused rope: {type(model).__name__} has no {attention.__name__} module")
    if cacheless is None:
        return f", apply=fused in {count} attention modules (Triton on CUDA, stock elsewhere)"
    return (f", apply=fused_cacheless in {count} attention modules: no rotary cache is allocated (the buffer holds "
            f"inv_freq, {head_dim // 2} floats; Triton on CUDA, torch elsewhere)")
