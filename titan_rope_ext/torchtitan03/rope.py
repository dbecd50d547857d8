"""Our RoPE modules for torchtitan 0.3: stock ``ComplexRoPE`` / ``CosSinRoPE`` with the cache from ``[rope_scaling]``.

torchtitan 0.3 gives each attention layer a RoPE module built from a ``RoPE.Config``
(``torchtitan/models/common/rope.py``). The module registers its cache as a non-persistent buffer
from ``_precompute_cache()`` at construction (on meta in the Trainer) and rebuilds it through
``init_states`` -> ``_init_self_buffers`` on the real device. Our modules change only
``_precompute_cache``: the cache is ``titan_rope_ext.cache``'s layout of ``rope_frequencies(section,
dim, theta, max_seq_len)``, so its rows, shape, dtype, positions handling and ``apply_rotary_emb``
stay stock's, and the cache never reaches a checkpoint.

With ``rope_scaling.apply = "fused"``, ``forward`` rotates q and k on CUDA with the fused Triton op,
reading this cache in place (``fused.py``); elsewhere it is stock's ``forward``.

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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torchtitan.models.common.rope import ComplexRoPE, CosSinRoPE

from titan_rope_ext.cache import complex_cache, cos_sin_cache
from titan_rope_ext.config import rope_frequencies, RopeScaling
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


class ScaledComplexRoPE(ComplexRoPE):
    """``ComplexRoPE`` (complex64 ``(max_seq_len, dim // 2)``, adjacent pairs) with the cache from ``rope_scaling``."""

    def forward(self, query, key, positions=None):
        # rope_scaling.apply = "fused": q and k in one Triton launch on CUDA (fused.py); otherwise stock's
        rotated = fused_forward(self, query, key, positions, pairs=True)
        return rotated if rotated is not None else super().forward(query, key, positions)

    @dataclass(kw_only=True, slots=True)
    class Config(ComplexRoPE.Config):
        rope_scaling: RopeScaling = field(default_factory=RopeScaling)
        """The section that decides this RoPE; ``theta`` above is the model's ``rope_theta``."""

        factor_in_cache: bool = True
        """False: the cache is a pure rotation; the attention applies the factor in its softmax scale."""

        def __post_init__(self) -> None:
            _check(self)

    def _precompute_cache(self) -> torch.Tensor:
        inv_freq, attention_factor = cache_frequencies(self.config)
        return complex_cache(inv_freq, attention_factor, self.config.max_seq_len)


class ScaledCosSinRoPE(CosSinRoPE):
    """``CosSinRoPE`` (float32 ``(max_seq_len, 2 * dim)`` = ``[cos | sin]``, rotate-half) with the cache from ``rope_scaling``."""

    def forward(self, query, key, positions=None):
        # rope_scaling.apply = "fused": q and k in one Triton launch on CUDA (fused.py); otherwise stock's
        rotated = fused_forward(self, query, key, positions, pairs=False)
        return rotated if rotated is not None else super().forward(query, key, positions)

    @dataclass(kw_only=True, slots=True)
    class Config(CosSinRoPE.Config):
        rope_scaling: RopeScaling = field(default_factory=RopeScaling)
        """The section that decides this RoPE; ``theta`` above is the model's ``rope_theta``."""

        factor_in_cache: bool = True
        """False: the cache is a pure rotation; the attention applies the factor in its softmax scale."""

        def __post_init__(self) -> None:
            _check(self)

    def _precompute_cache(self) -> torch.Tensor:
        inv_freq, attention_factor = cache_frequencies(self.config)
        return cos_sin_cache(inv_freq, attention_factor, self.config.max_seq_len)
