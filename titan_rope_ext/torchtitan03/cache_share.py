"""One RoPE cache per model (or pipeline stage) on torchtitan 0.3, shared by every layer's RoPE module.

Stock 0.3 gives every attention layer its own RoPE module, and each registers its own cache buffer
(``models/common/rope.py``, ``RoPE.__init__``; rebuilt per layer by ``_init_self_buffers``): n_layers
identical caches. At 131072 positions that is 32 x 64 MiB = 2 GiB for Llama-3-8B (complex64,
head_dim 128) and 28 x 128 MiB = 3.5 GiB for Qwen3-0.6B (float32 [cos | sin]).

Our RoPE modules keep the stock layout: each still registers ``cache`` as a non-persistent buffer
(so ``to_empty``, ``module.to``, FSDP2, TP's DTensor conversion, ``torch.compile`` and activation
checkpointing see an ordinary buffer, and no checkpoint holds it), but every module of one model
holds the same tensor object. Two objects make that so:

* ``CacheSharing``: carried by every converted RoPE config of one model config (set by
  ``scale_model``, one per setting by the override; 0.3's per-layer copies and
  ``update_from_config`` are ``dataclasses.replace``, which shares it). At each RoPE module's build it hands out the ``SharedCache`` of the current
  build, and starts a new one when a config already built is built again or when the current
  model has been materialized: two models built from one config tree do not share.
* ``SharedCache``: held by the RoPE modules of one built model. ``_precompute_cache`` (construction
  and 0.3's ``init_states`` -> ``_init_self_buffers``) asks it for the cache on the current default
  device: the first module of a pass builds it, the others of that pass get the same tensor
  (a module asking twice starts a new pass, so a second ``init_states`` rebuilds once).
  ``_apply`` (``to_empty``, ``.to``, ``.cuda``, ...) goes through it too: one transformation of the
  shared cache per call, so ``to_empty`` allocates one cache, not one per layer, and a cast keeps
  the cache shared. A cast to another dtype moves the cache but keeps its dtype (complex64 /
  float32: ``apply_rotary_emb`` computes in float32 whatever q and k are; a complex64 cache cast to
  bfloat16 would lose its imaginary part).

No tensor outlives its model: ``CacheSharing`` holds no tensor and only a weak reference to the
current ``SharedCache``, which the model's modules hold; the ``SharedCache`` keeps the current pass's
cache (the storage the modules hold) and weak references to ``_apply`` results, so a model's cache
is freed with the model. There is no process-wide tensor cache. ``copy.deepcopy`` (0.3's
pipeline split copies the whole model once per stage: ``distributed/pipeline_parallel.py``
``_split_module``) and pickling give a fresh, empty object; deepcopy's memo keeps one copy per
copied tree, so each pipeline stage gets its own ``SharedCache``, shared by that stage's layers.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch.distributed.tensor import DTensor


def _weak(obj):
    """A weak reference to ``obj``, or a strong one where the type has none (a builtin function)."""
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj


@dataclass
class _Pass:
    """The cache built in one pass over the model's RoPE modules, and the modules that took it.

    ``tensor`` is held strongly: under TP, 0.3's ``init_states`` wraps what ``_init_self_buffers``
    returns in a new DTensor per module (``distribute_tensor`` keeps ``tensor.detach()``, an alias),
    so the modules hold aliases of this storage, not this object. It is the storage the modules
    hold; ``SharedCache`` drops it at the next ``_apply`` or the next pass, and it goes with the owner,
    which only the model's modules hold.
    """

    tensor: torch.Tensor
    device: torch.device
    """Where ``tensor`` was built: FSDP2 moves buffers in place (``tensor.data = tensor.to(device)``)."""
    holders: weakref.WeakSet


class SharedCache:
    """The RoPE cache of one built model (or pipeline stage): built once per pass, handed to every layer."""

    def __init__(self):
        self.materialized = False
        """Set by the first ``_apply`` (``to_empty``, ``.to``): later builds from the same configs are another model."""
        self._passes: dict[tuple, _Pass] = {}
        self._fn = None  # weak reference to the last function ``_apply`` was called with
        self._applied: dict[tuple, weakref.ref] = {}
        self._kept_dtype_logged = False

    def __reduce__(self):
        # deepcopy (a pipeline stage), copy and pickle: a new, empty owner
        return type(self), ()

    def cache(self, module, build) -> torch.Tensor:
        """The cache for ``module`` on the current default device: this pass's, or ``build()`` for a new pass."""
        device = torch.get_default_device()
        key = (module.cache_key(), str(device))
        current = self._passes.get(key)
        if current is None or module in current.holders or current.tensor.device != current.device:
            tensor = build()
            current = _Pass(tensor, tensor.device, weakref.WeakSet())
            # one pass per cache key: the previous pass's tensor (another device) is no longer held here
            self._passes = {k: v for k, v in self._passes.items() if k[0] != key[0]}
            self._passes[key] = current
            if tensor.device.type != "meta" and tensor.numel():  # (fused_cacheless: no rows, nothing to say)
                from torchtitan.tools.logging import logger

                logger.info(f"rope_scaling: RoPE cache built once for this model on {tensor.device}: "
                            f"{describe(tensor)}; every RoPE layer of the model holds this one tensor")
        current.holders.add(module)
        return current.tensor

    def apply(self, fn, module, cache: torch.Tensor) -> torch.Tensor:
        """``fn(cache)`` for ``module._apply(fn)``, computed once per ``fn`` for all modules holding ``cache``."""
        self.materialized = True
        self._passes = {}  # the modules' caches are about to be fn's results
        if self._fn is None or self._fn() is not fn:  # a new transformation (to_empty, .to, ...)
            self._fn, self._applied = _weak(fn), {}
        placements = tuple(cache.placements) if isinstance(cache, DTensor) else None
        key = (module.cache_key(), type(cache), cache.untyped_storage()._cdata if not isinstance(cache, DTensor)
               else cache.to_local().untyped_storage()._cdata, cache.dtype, tuple(cache.shape), placements)
        hit = self._applied.get(key)
        result = hit() if hit is not None else None
        if result is None:
            result = self._transform(fn, cache)
            self._applied[key] = weakref.ref(result)
        return result

    def _transform(self, fn, cache: torch.Tensor) -> torch.Tensor:
        # where fn would take the cache: probed on an empty tensor of the cache's dtype and device
        probe = fn(torch.empty(0, dtype=cache.dtype, device=cache.device))
        if probe.dtype == cache.dtype:
            return fn(cache)
        if not self._kept_dtype_logged:
            from torchtitan.tools.logging import logger

            self._kept_dtype_logged = True
            logger.info(f"rope_scaling: the RoPE cache stays {cache.dtype} under a cast to {probe.dtype} "
                        "(apply_rotary_emb computes in float32)")
        return cache if probe.device == cache.device else cache.to(probe.device)


class CacheSharing:
    """Carried by every converted RoPE config of one model config; gives each build of it one ``SharedCache``.

    A field of ``ScaledComplexRoPE.Config`` / ``ScaledCosSinRoPE.Config`` (``cache_sharing``), shared by
    reference through 0.3's ``dataclasses.replace`` copies, fresh on ``copy.deepcopy``.
    """

    def __init__(self):
        self._owner = None  # weak reference to the current build's SharedCache: the model's modules hold it
        self._built: dict[int, object] = {}  # configs built into the current owner's model (kept: ids stay unique)

    def __reduce__(self):
        return type(self), ()

    def owner_for(self, config) -> SharedCache:
        """The ``SharedCache`` for a RoPE module built from ``config`` (one layer's RoPE config)."""
        owner = self._owner() if self._owner is not None else None
        if owner is None or owner.materialized or id(config) in self._built:
            owner, self._built = SharedCache(), {}
            self._owner = weakref.ref(owner)
        self._built[id(config)] = config
        return owner

    def to_dict(self) -> dict:
        """For torchtitan's ``Config.to_dict`` (the job's config log and ``debug.save_config_file``)."""
        return {"one_cache_per_model": True}

    def __repr__(self) -> str:
        return "CacheSharing()"


def _storage_id(tensor: torch.Tensor) -> tuple:
    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    # meta tensors all have data_ptr 0: their storage objects tell them apart
    return str(local.device), local.untyped_storage()._cdata


def describe(tensor: torch.Tensor) -> str:
    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return f"{local.dtype} {tuple(local.shape)}, {_mib(local.untyped_storage().nbytes())}"


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes} bytes"


def rope_cache_report(*models) -> dict:
    """Every RoPE buffer of ``models`` (a model, or one rank's pipeline stages): modules, unique storages, bytes.

    Storages are told apart by their storage object (so meta tensors count right), a DTensor by its
    local tensor. ``per_layer_bytes`` is one module's cache; ``stock_bytes`` what one cache per layer,
    stock 0.3's layout, would hold. ``inv_freq_bytes``: the cacheless apply's frequency buffers (``dim // 2``
    floats per module), which replace the cache.
    """
    from torchtitan.models.common.rope import RoPE

    storages, modules, first, placements, inv_freq = {}, 0, None, None, {}
    for model in models:
        for module in model.modules():
            if isinstance(module, RoPE) and module.cache is not None:
                modules += 1
                cache = module.cache
                local = cache.to_local() if isinstance(cache, DTensor) else cache
                if first is None:
                    first = local
                    placements = str(tuple(cache.placements)) if isinstance(cache, DTensor) else None
                storages[_storage_id(cache)] = local.untyped_storage().nbytes()
                freqs = module._buffers.get("inv_freq")
                if freqs is not None:
                    local_freqs = freqs.to_local() if isinstance(freqs, DTensor) else freqs
                    inv_freq[_storage_id(freqs)] = local_freqs.untyped_storage().nbytes()
    per_layer = first.untyped_storage().nbytes() if first is not None else 0
    return {"rope_modules": modules, "unique_storages": len(storages), "bytes": sum(storages.values()),
            "per_layer_bytes": per_layer, "stock_bytes": modules * per_layer,
            "inv_freq_bytes": sum(inv_freq.values()),
            "shape": list(first.shape) if first is not None else None,
            "dtype": str(first.dtype).removeprefix("torch.") if first is not None else None,
            "device": str(first.device) if first is not None else None, "dtensor_placements": placements}


def report_line(report: dict) -> str:
    """``28 RoPE layers share 1 cache storage(s): float32 [131072, 256] on cuda:0, 134217728 bytes (...)``."""
    if report["rope_modules"] and not report["bytes"]:
        return (f"{report['rope_modules']} RoPE layers hold no cache rows (apply = fused_cacheless: cos and sin are "
                f"computed in the kernel from inv_freq, {report.get('inv_freq_bytes', 0)} bytes in all)")
    dtensor = f" (DTensor {report['dtensor_placements']})" if report["dtensor_placements"] else ""
    return (f"{report['rope_modules']} RoPE layers share {report['unique_storages']} cache storage(s): "
            f"{report['dtype']} {report['shape']} on {report['device']}{dtensor}, {report['bytes']} bytes "
            f"(one cache per layer, stock 0.3: {report['stock_bytes']} bytes)")
