"""Our RoPE modules for torchtitan 0.3: stock ``ComplexRoPE`` / ``CosSinRoPE`` with the cache from ``[rope_scaling]``.

torchtitan 0.3 gives each attention layer a RoPE module built from a ``RoPE.Config``
(``torchtitan/models/common/rope.py``). The module registers its cache as a non-persistent buffer
from ``_precompute_cache()`` at construction (on meta in the Trainer) and rebuilds it through
``init_states`` -> ``_init_self_buffers`` on the real device. Our modules change only
``_precompute_cache``: the cache is ``titan_rope_ext.cache``'s layout of ``rope_frequencies(section,
dim, theta, max_seq_len)``, so its rows, shape, dtype, positions handling and ``apply_rotary_emb``
stay stock's, and the cache never reaches a checkpoint.

With ``rope_scaling.apply = "fused"``, ``forward`` rotates q and k on CUDA with the fused Triton op,
reading this cache in place (``fused.py``); elsewhere it is stock's ``forward``. With ``"fused_cacheless"``
the ``cache`` buffer is empty (zero rows): the module holds ``inv_freq`` (``dim // 2`` floats,
non-persistent) and ``cacheless_factor``, and ``forward`` always rotates through the cacheless op (the
kernel on CUDA, its torch implementation elsewhere).

Attention factor: the cache's magnitude (complex) or a factor on cos and sin, as transformers
scales cos and sin; q and k each carry it once, so the logits carry its square, exactly once. Where
a model's attention applies it in its softmax scale instead (gpt_oss with YaRN's own factor), its
adapter sets ``factor_in_cache = False`` and the cache is a pure rotation.

The inherited stock scaling fields never shape our cache: the section alone decides it. They are
``scaling = "none"`` unless a model's adapter sets ``scaling = "yarn"`` and ``rope_factor`` to tell
an attention that folds a YaRN factor into its softmax scale from them (deepseek_v3's MLA, gpt_oss)
which factor to fold: the adapter's ``convert`` says which, and why it is transformers' number.

The configs subclass the stock ones, so ``isinstance`` checks (e.g. the HF state-dict adapters'
``_validate_hf_rope_config``) and ``dataclasses.replace`` (``update_from_config`` resizes
``max_seq_len``) keep working.

One cache per model: a config converted by ``scale_model`` carries a ``CacheSharing``
(``cache_share.py``); every RoPE module built from it still registers its own ``cache`` buffer, but
all of them (per model, or per pipeline stage) hold the same tensor, where stock 0.3 holds one per
layer. ``_precompute_cache`` takes it from the model's ``SharedCache`` (which builds it once with
``_build_cache``, the formula), and ``_apply`` (``to_empty``, ``.to``) transforms it once for all
layers. A config without one (built directly, ``cache_sharing=None``) gives each module its own, as
stock.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torchtitan.models.common.rope import ComplexRoPE, CosSinRoPE

from titan_rope_ext.cache import complex_cache, cos_sin_cache
from titan_rope_ext.config import rope_frequencies, RopeScaling
from titan_rope_ext.torchtitan03.cache_share import CacheSharing, SharedCache
from titan_rope_ext.torchtitan03.fused import fused_forward


def _check(config) -> None:
    if config.scaling not in ("none", "yarn"):
        raise ValueError(
            f"{type(config).__qualname__}.scaling must be 'none' or 'yarn' (rope_scaling decides the cache; "
            f"'yarn' only tells an attention which factor to fold into its softmax scale), got {config.scaling!r}"
        )
    if config.rope_scaling.rope_type is None:
        raise ValueError("rope_scaling.from_hf_assets is not resolved: build the config through "
                         "titan_rope_ext.torchtitan03.models.scale_model")
    config.rope_scaling.check_head_dim(config.dim)


def frequencies(config) -> tuple[torch.Tensor, float]:
    """``(inv_freq, attention_factor)`` of one of our RoPE configs, for ``max_seq_len`` positions."""
    return rope_frequencies(config.rope_scaling, config.dim, config.theta, config.max_seq_len)


def cache_frequencies(config) -> tuple[torch.Tensor, float]:
    """``(inv_freq, factor the cache carries)``: the attention factor, or 1 where the attention applies it."""
    inv_freq, attention_factor = frequencies(config)
    return inv_freq, attention_factor if config.factor_in_cache else 1.0


def _build(config, stock_config: type, **kwargs):
    """``config.build()``: stock's, plus this model's ``SharedCache`` for the module (``cache_sharing`` set)."""
    if config.cache_sharing is not None and "cache_owner" not in kwargs:
        kwargs["cache_owner"] = config.cache_sharing.owner_for(config)
    module = stock_config.build(config, **kwargs)  # slots dataclasses have no zero-argument super()
    sharding = module._sharding_config  # set by build() from the config, where the model's sharding put it
    if module.cacheless and sharding is not None and "inv_freq" not in sharding.state_shardings:
        cache_layout = sharding.state_shardings.get("cache")
        if cache_layout is not None:  # inv_freq is placed as the cache it replaces (replicated on every axis)
            module._sharding_config = dataclasses.replace(
                sharding, state_shardings={**sharding.state_shardings, "inv_freq": cache_layout})
    return module


class _OneCachePerModel:
    """What both our RoPE modules add to the stock module: the model's one cache instead of one per layer.

    The buffer stays stock's (``RoPE.__init__`` registers ``cache``, non-persistent, from
    ``_precompute_cache``; ``_init_self_buffers`` reassigns it after ``to_empty``); only which tensor
    it is changes: every module of one model gets the same one from ``self._cache_owner``.
    """

    _cache_owner: SharedCache | None = None

    def __init__(self, config, *, cache_owner: SharedCache | None = None):
        self._cache_owner = cache_owner  # before RoPE.__init__ registers the buffer from _precompute_cache
        super().__init__(config)
        if self.cacheless:
            # the kernel's inputs instead of a cache: inv_freq (dim // 2 floats, non-persistent like the
            # cache) and the factor the cache would carry (a config scalar, computed on meta)
            with torch.device("meta"):
                self.cacheless_factor = float(cache_frequencies(config)[1])
            self.register_buffer("inv_freq", self._build_inv_freq(), persistent=False)

    @property
    def cacheless(self) -> bool:
        """``rope_scaling.apply = "fused_cacheless"``: ``cache`` is empty, q and k are rotated from ``inv_freq``."""
        return self.config.rope_scaling.apply == "fused_cacheless"

    def _build_inv_freq(self) -> torch.Tensor:
        return cache_frequencies(self.config)[0].to(torch.float32)

    def _init_self_buffers(self, *, buffer_device: torch.device | None = None) -> None:
        super()._init_self_buffers(buffer_device=buffer_device)
        if self.cacheless:
            with torch.device(buffer_device if buffer_device is not None else self.inv_freq.device):
                self.inv_freq = self._build_inv_freq()

    def cache_key(self) -> tuple:
        """What decides the cache's values: modules with equal keys may hold one tensor."""
        c = self.config
        return type(self).__qualname__, c.dim, c.max_seq_len, c.theta, c.factor_in_cache, repr(c.rope_scaling)

    def _precompute_cache(self) -> torch.Tensor:
        # on the current default device: meta at construction in the Trainer, buffer_device in init_states
        if self._cache_owner is None:
            return self._build_cache()
        return self._cache_owner.cache(self, self._build_cache)

    _pairs: bool
    """The layout: adjacent pairs (``ComplexRoPE``) or rotate-half (``CosSinRoPE``)."""
    _layout = None
    """``titan_rope_ext.cache``'s function for this layout: ``(inv_freq, factor, rows) -> cache``."""

    def forward(self, query, key, positions=None):
        # rope_scaling.apply = "fused" / "fused_cacheless": the Triton op (fused.py); otherwise stock's
        rotated = fused_forward(self, query, key, positions, pairs=self._pairs)
        return rotated if rotated is not None else super().forward(query, key, positions)

    def _build_cache(self) -> torch.Tensor:
        """The formula's cache: ``max_seq_len`` rows, or none (stock's width and dtype) for the cacheless apply."""
        inv_freq, attention_factor = cache_frequencies(self.config)
        return self._layout(inv_freq, attention_factor, 0 if self.cacheless else self.config.max_seq_len)

    def _apply(self, fn, recurse=True):
        cache = self._buffers.get("cache")
        if self._cache_owner is None or cache is None:
            return super()._apply(fn, recurse=recurse)
        # nn.Module._apply would give each layer its own fn(cache) (to_empty: one empty cache per layer);
        # the owner computes it once for every module holding this cache
        with self._preserve_buffer_spmd_types():
            self._buffers["cache"] = None  # skipped by nn.Module._apply
            try:
                super()._apply(fn, recurse=recurse)
            finally:
                self._buffers["cache"] = cache
            self._buffers["cache"] = self._cache_owner.apply(fn, self, cache)
        return self


class ScaledComplexRoPE(_OneCachePerModel, ComplexRoPE):
    """``ComplexRoPE`` (complex64 ``(max_seq_len, dim // 2)``, adjacent pairs) with the cache from ``rope_scaling``."""

    _pairs = True
    _layout = staticmethod(complex_cache)

    @dataclass(kw_only=True, slots=True)
    class Config(ComplexRoPE.Config):
        rope_scaling: RopeScaling = field(default_factory=RopeScaling)
        """The section that decides this RoPE; ``theta`` above is the model's ``rope_theta``."""

        factor_in_cache: bool = True
        """False: the cache is a pure rotation; the attention applies the factor in its softmax scale."""

        cache_sharing: CacheSharing | None = field(default=None, compare=False, repr=False)
        """One cache for every RoPE module built from this model config (``scale_model`` sets it);
        None: one cache per module, as stock."""

        def __post_init__(self) -> None:
            _check(self)

        def build(self, **kwargs):
            return _build(self, ComplexRoPE.Config, **kwargs)


class ScaledCosSinRoPE(_OneCachePerModel, CosSinRoPE):
    """``CosSinRoPE`` (float32 ``(max_seq_len, 2 * dim)`` = ``[cos | sin]``, rotate-half) with the cache from ``rope_scaling``."""

    _pairs = False
    _layout = staticmethod(cos_sin_cache)

    @dataclass(kw_only=True, slots=True)
    class Config(CosSinRoPE.Config):
        rope_scaling: RopeScaling = field(default_factory=RopeScaling)
        """The section that decides this RoPE; ``theta`` above is the model's ``rope_theta``."""

        factor_in_cache: bool = True
        """False: the cache is a pure rotation; the attention applies the factor in its softmax scale."""

        cache_sharing: CacheSharing | None = field(default=None, compare=False, repr=False)
        """One cache for every RoPE module built from this model config (``scale_model`` sets it);
        None: one cache per module, as stock."""

        def __post_init__(self) -> None:
            _check(self)

        def build(self, **kwargs):
            return _build(self, CosSinRoPE.Config, **kwargs)
