"""RoPE frequency math: one pure function per rope type, collected in ``ROPE_FUNCTIONS``.

Every function has the signature ``fn(head_dim, theta, seq_len, device=None, *, <keys>)``
and returns ``(inv_freq, attention_factor)``:

* ``inv_freq``: float32 tensor of shape ``(head_dim // 2,)``; band ``i`` rotates by
  ``position * inv_freq[i]`` radians; unscaled it is ``theta ** (-2i / head_dim)``.
* ``attention_factor``: Python float that multiplies both cos and sin (so q and k each
  carry it once and the attention logits carry its square), as in Hugging Face
  transformers. 1.0 for every method but YaRN and LongRoPE.

The keyword-only ``<keys>`` are the ``[rope_scaling]`` keys the method accepts, named as
in transformers' ``rope_scaling`` dicts; a keyword without a default is required. The
config derives its per-method key checks from these signatures, so a key is documented,
defaulted and validated in one place.

Conventions: all math in float32 (aranges, powers, ramps); Python branches only on
config scalars, never on tensor values, so the same code runs on meta tensors, on any
device and under ``torch.compile(fullgraph=True)``. ``device=None`` follows the ambient
``torch.device(...)`` context (torchtitan's ``init_weights`` relies on this). ``seq_len``
is the length the cache is built for (torchtitan's ``max_seq_len``, i.e. the run's
``training.seq_len``); only ``dynamic`` and ``longrope`` read it.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable

import torch

RopeFn = Callable[..., tuple[torch.Tensor, float]]


def _band_exponents(head_dim: int, device) -> torch.Tensor:
    """``2i / head_dim`` for i in [0, head_dim // 2), float32, shape ``(head_dim // 2,)``."""
    return torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim


def default_rope(head_dim: int, theta: float, seq_len: int, device=None) -> tuple[torch.Tensor, float]:
    """Plain RoPE (Su et al. 2021, https://arxiv.org/abs/2104.09864): ``theta ** (-2i/d)``."""
    return 1.0 / (theta ** _band_exponents(head_dim, device)), 1.0


def linear_rope(
    head_dim: int, theta: float, seq_len: int, device=None, *, factor: float
) -> tuple[torch.Tensor, float]:
    """Position interpolation (Chen et al. 2023, https://arxiv.org/abs/2306.15595).

    Positions are divided by ``factor``; dividing every frequency instead is the same
    rotation: ``inv_freq = default / factor``.
    """
    inv_freq, _ = default_rope(head_dim, theta, seq_len, device)
    return inv_freq / factor, 1.0


def _ntk_theta(theta: float, head_dim: int, scale: float) -> float:
    """NTK-aware base change: ``theta * scale ** (d / (d - 2))`` keeps the highest band and
    divides the lowest band's frequency by exactly ``scale``."""
    return theta * scale ** (head_dim / (head_dim - 2))


def ntk_rope(
    head_dim: int, theta: float, seq_len: int, device=None, *, factor: float
) -> tuple[torch.Tensor, float]:
    """Static NTK-aware scaling (bloc97, 2023; YaRN paper section 3.1,
    https://arxiv.org/abs/2309.00071): RoPE with base ``theta * factor ** (d / (d - 2))``.

    Not a transformers ``rope_type``; it is ``dynamic`` frozen at one scale.
    """
    return default_rope(head_dim, _ntk_theta(theta, head_dim, factor), seq_len, device)


def dynamic_rope(
    head_dim: int,
    theta: float,
    seq_len: int,
    device=None,
    *,
    factor: float,
    original_max_position_embeddings: int,
) -> tuple[torch.Tensor, float]:
    """Dynamic NTK (emozilla, 2023; transformers' ``dynamic``).

    With ``L = max(seq_len, original_max_position_embeddings)`` the base becomes
    ``theta * (factor * L / L_orig - (factor - 1)) ** (d / (d - 2))``: plain RoPE up to the
    trained length, growing NTK scaling past it. Here ``seq_len`` is the run's sequence
    length, fixed per run, so the cache is built once.
    """
    length = max(seq_len, original_max_position_embeddings)
    scale = factor * length / original_max_position_embeddings - (factor - 1)
    return default_rope(head_dim, _ntk_theta(theta, head_dim, scale), seq_len, device)


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's magnitude correction ``0.1 * mscale * ln(scale) + 1`` (1.0 when scale <= 1)."""
    if scale <= 1.0:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def yarn_correction_dim(num_rotations: float, head_dim: int, theta: float, original_length: int) -> float:
    """Band index (in units of dimensions, ``i`` of ``2i/d``) that completes
    ``num_rotations`` full turns over ``original_length`` positions."""
    return head_dim * math.log(original_length / (num_rotations * 2 * math.pi)) / (2 * math.log(theta))


def yarn_rope(
    head_dim: int,
    theta: float,
    seq_len: int,
    device=None,
    *,
    factor: float,
    original_max_position_embeddings: int,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    mscale: float | None = None,
    mscale_all_dim: float | None = None,
    attention_factor: float | None = None,
    truncate: bool = True,
    arithmetic: str = "transformers",
) -> tuple[torch.Tensor, float]:
    """YaRN, "NTK-by-parts" interpolation plus attention scaling (Peng et al. 2023,
    https://arxiv.org/abs/2309.00071, eq. 17-20).

    Bands that turn more than ``beta_fast`` times over the original context keep their
    frequency (extrapolate); bands that turn fewer than ``beta_slow`` times are divided by
    ``factor`` (interpolate); a linear ramp over band index joins them. ``beta_fast`` bounds
    the high-frequency end, ``beta_slow`` the low-frequency end. ``truncate`` floors/ceils
    the ramp's end points to whole dimensions as the reference code does.

    ``arithmetic`` picks the floating-point order of the interpolated frequencies, which
    reference implementations round differently (by at most 1 ulp, in some bands):
    ``"transformers"`` computes ``1 / (factor * theta ** (2i/d))`` (transformers, the YaRN
    authors' code); ``"deepseek"`` computes ``(1 / theta ** (2i/d)) / factor`` (DeepSeek-V3's
    reference code, and so torchtitan 0.2's ``deepseek_v3``, which it reproduces bit for bit);
    ``"torchtitan"`` also divides by ``factor`` after the power but blends with the ramp itself,
    ``interpolated * ramp + extrapolated * (1 - ramp)``, as torchtitan 0.3's shared
    ``models/common/rope.py`` does (bit for bit its ``scaling = "yarn"`` frequencies).

    Attention factor: ``attention_factor`` if given; else, with both ``mscale`` and
    ``mscale_all_dim`` (DeepSeek), ``mscale(factor, mscale) / mscale(factor, mscale_all_dim)``;
    else ``0.1 * ln(factor) + 1``.
    """
    if attention_factor is None:
        if mscale is not None and mscale_all_dim is not None:
            attention_factor = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = yarn_mscale(factor)

    low = yarn_correction_dim(beta_fast, head_dim, theta, original_max_position_embeddings)
    high = yarn_correction_dim(beta_slow, head_dim, theta, original_max_position_embeddings)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # a zero-width ramp would divide by zero

    wavelen_scale = theta ** _band_exponents(head_dim, device)  # 1 / inv_freq
    inv_freq_extrapolation = 1.0 / wavelen_scale
    if arithmetic == "transformers":
        inv_freq_interpolation = 1.0 / (factor * wavelen_scale)
    elif arithmetic in ("deepseek", "torchtitan"):
        inv_freq_interpolation = inv_freq_extrapolation / factor
    else:
        raise ValueError(f"arithmetic must be 'transformers', 'deepseek' or 'torchtitan', got {arithmetic!r}")
    band = torch.arange(head_dim // 2, dtype=torch.float32, device=device)
    ramp = torch.clamp((band - low) / (high - low), 0, 1)
    if arithmetic == "torchtitan":
        return inv_freq_interpolation * ramp + inv_freq_extrapolation * (1 - ramp), float(attention_factor)
    extrapolation_weight = 1 - ramp  # 1 for fast (high-frequency) bands, 0 for slow ones
    inv_freq = (
        inv_freq_interpolation * (1 - extrapolation_weight) + inv_freq_extrapolation * extrapolation_weight
    )
    return inv_freq, float(attention_factor)


def llama3_rope(
    head_dim: int,
    theta: float,
    seq_len: int,
    device=None,
    *,
    factor: float,
    low_freq_factor: float,
    high_freq_factor: float,
    original_max_position_embeddings: int,
) -> tuple[torch.Tensor, float]:
    """Llama 3.1 frequency scaling (Meta, "The Llama 3 Herd of Models", 2024; reference
    ``apply_scaling`` in meta-llama/llama-models).

    With ``wavelen = 2*pi / inv_freq`` and ``L = original_max_position_embeddings``:
    bands with ``wavelen < L / high_freq_factor`` are kept, bands with
    ``wavelen > L / low_freq_factor`` are divided by ``factor``, and bands in between mix
    the two with ``smooth_factor = (L / wavelen - low_freq_factor) / (high_freq_factor -
    low_freq_factor)``. torchtitan's built-in llama3 values are (8, 1, 4, 8192). Llama 4 uses
    ``low_freq_factor == high_freq_factor`` (16, 1, 1, 8192): an empty middle band, i.e. a hard
    cutoff at ``wavelen = L / low_freq_factor``, computed here without the 0/0 blend.
    """
    inv_freq, _ = default_rope(head_dim, theta, seq_len, device)
    wavelen = 2 * math.pi / inv_freq
    low_freq_wavelen = original_max_position_embeddings / low_freq_factor
    high_freq_wavelen = original_max_position_embeddings / high_freq_factor

    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    if high_freq_factor == low_freq_factor:
        return scaled, 1.0
    smooth_factor = (original_max_position_embeddings / wavelen - low_freq_factor) / (
        high_freq_factor - low_freq_factor
    )
    smoothed = (1 - smooth_factor) * scaled / factor + smooth_factor * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled), 1.0


def longrope_attention_factor(factor: float, original_max_position_embeddings: int) -> float:
    """LongRoPE / Phi-3 attention factor ``sqrt(1 + ln(factor) / ln(L_orig))`` (1.0 if factor <= 1)."""
    if factor <= 1.0:
        return 1.0
    return math.sqrt(1 + math.log(factor) / math.log(original_max_position_embeddings))


def longrope_rope(
    head_dim: int,
    theta: float,
    seq_len: int,
    device=None,
    *,
    short_factor: list[float],
    long_factor: list[float],
    original_max_position_embeddings: int,
    factor: float | None = None,
    attention_factor: float | None = None,
) -> tuple[torch.Tensor, float]:
    """LongRoPE (Ding et al. 2024, https://arxiv.org/abs/2402.13753; Phi-3 / transformers'
    ``longrope``): a searched per-band rescale, ``inv_freq = default / ext_factor[i]``.

    ``long_factor`` is used when the run's ``seq_len`` exceeds
    ``original_max_position_embeddings``, else ``short_factor``; each has ``head_dim // 2``
    entries (checked by the config against the model). ``factor`` only feeds the default
    attention factor; when unset it is ``seq_len / original_max_position_embeddings``, transformers'
    rule with ``seq_len`` in the place of ``max_position_embeddings``. The ``[rope_scaling]`` section
    never leaves it unset (it would follow ``training.seq_len``): it requires ``factor`` or
    ``attention_factor``, or reads ``max_position_embeddings`` from a config.json.
    """
    if factor is None:
        factor = seq_len / original_max_position_embeddings
    if attention_factor is None:
        attention_factor = longrope_attention_factor(factor, original_max_position_embeddings)
    chosen = long_factor if seq_len > original_max_position_embeddings else short_factor
    ext_factors = torch.tensor(chosen, dtype=torch.float32, device=device)
    return 1.0 / (ext_factors * theta ** _band_exponents(head_dim, device)), float(attention_factor)


ROPE_FUNCTIONS: dict[str, RopeFn] = {
    "default": default_rope,
    "linear": linear_rope,
    "ntk": ntk_rope,
    "dynamic": dynamic_rope,
    "yarn": yarn_rope,
    "llama3": llama3_rope,
    "longrope": longrope_rope,
}
"""rope_type -> pure function. The keys are exactly the values ``[rope_scaling].rope_type`` accepts."""


def method_keys(rope_type: str) -> tuple[frozenset[str], frozenset[str]]:
    """(required, optional) config keys of ``rope_type``, read from its function's signature."""
    params = inspect.signature(ROPE_FUNCTIONS[rope_type]).parameters.values()
    kw = [p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    return (
        frozenset(p.name for p in kw if p.default is inspect.Parameter.empty),
        frozenset(p.name for p in kw if p.default is not inspect.Parameter.empty),
    )
