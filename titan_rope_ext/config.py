"""The ``[rope_scaling]`` section: a plain dataclass, validated when it is built.

torchtitan's ConfigManager builds this dataclass from the TOML section and again with the
CLI overrides, so every check in ``__post_init__`` fails at config-parse time, before any
model or device work. Key names and defaults follow Hugging Face transformers'
``rope_scaling`` dicts; ``RopeScaling.from_hf`` reads such a dict.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch

from titan_rope_ext.hf import load_config_json, rope_keys_from_hf, theta_from_hf
from titan_rope_ext.scaling import method_keys, ROPE_FUNCTIONS

RopeType = Literal["default", "linear", "ntk", "dynamic", "yarn", "llama3", "longrope"]
_Arithmetic = Literal["transformers", "deepseek", "torchtitan"]
_Apply = Literal["torchtitan", "fused", "fused_cacheless"]

# keys that are not arguments of the rope function
_NON_METHOD_KEYS = frozenset({"rope_type", "theta", "hf_config", "from_hf_assets", "apply"})
# methods whose factor scales original_max_position_embeddings to a target window
_WINDOWED = frozenset({"yarn", "llama3", "longrope"})
# transformers' spellings that mean one of our keys
_HF_ALIASES = {"type": "rope_type", "rope_theta": "theta"}


@dataclass
class RopeScaling:
    """RoPE settings of the ``rope_scaling`` model converter (the ``[rope_scaling]`` TOML section).

    Unset keys (``None``) take the method's default; a key that the chosen ``rope_type``
    does not use is an error, not ignored.
    """

    rope_type: RopeType | None = None
    """Scaling method: default (plain RoPE), linear (position interpolation), ntk (static
    NTK-aware base change), dynamic (dynamic NTK), yarn, llama3 (Llama 3.1) or longrope.
    Unset: the config.json's type when hf_config / from_hf_assets is given, else default."""

    factor: float | None = None
    """Context extension ratio (new length / trained length), >= 1. Required by linear, ntk,
    dynamic, yarn and llama3. longrope: sets only the attention factor; required unless
    attention_factor is set (a config.json gives max_position_embeddings / original, as transformers)."""

    original_max_position_embeddings: int | None = None
    """Length the model was (pre)trained at. Required by dynamic, yarn, llama3 and longrope."""

    theta: float | None = None
    """RoPE base frequency; overrides the model's ``rope_theta`` (base-frequency extension). With
    hf_config / from_hf_assets: the file's rope_theta, or transformers' default for its model_type."""

    low_freq_factor: float | None = None
    """llama3: bands with wavelength > original / low_freq_factor are fully scaled."""

    high_freq_factor: float | None = None
    """llama3: bands with wavelength < original / high_freq_factor are kept; >= low_freq_factor
    (equal, as in Llama 4, makes a hard cutoff with no blended band)."""

    beta_fast: float | None = None
    """yarn: bands turning more than beta_fast times over the original length are kept (default 32)."""

    beta_slow: float | None = None
    """yarn: bands turning fewer than beta_slow times are fully interpolated (default 1)."""

    mscale: float | None = None
    """yarn: DeepSeek-style attention-factor numerator scale (used with mscale_all_dim)."""

    mscale_all_dim: float | None = None
    """yarn: DeepSeek-style attention-factor denominator scale (used with mscale)."""

    attention_factor: float | None = None
    """yarn, longrope: explicit factor on cos/sin; default from the method's formula."""

    truncate: bool | None = None
    """yarn: round the ramp's end points to whole dimensions (default true)."""

    arithmetic: _Arithmetic | None = None
    """yarn: rounding order of the interpolated frequencies (default transformers). "deepseek"
    divides 1/theta^(2i/d) by factor as DeepSeek-V3's code and torchtitan 0.2's deepseek_v3 do,
    reproducing that stock cache bit for bit; "torchtitan" blends as torchtitan 0.3's shared
    RoPE does (its scaling = "yarn" cache bit for bit). They differ by at most 1 ulp per band."""

    short_factor: list[float] | None = None
    """longrope: per-band rescale (head_dim // 2 entries) for runs within the original length."""

    long_factor: list[float] | None = None
    """longrope: per-band rescale (head_dim // 2 entries) for runs past the original length."""

    hf_config: str | None = None
    """Path to a Hugging Face config.json: its rope settings are read as transformers reads
    them (rope_parameters / rope_scaling, rope_theta, lengths); keys set here override it. A
    rope_type set here may replace the file's plain RoPE (extending a base model): the file then
    gives theta and, as original_max_position_embeddings, its max_position_embeddings."""

    from_hf_assets: bool = False
    """Read ``<model.hf_assets_path>/config.json`` like hf_config (resolved when the job is checked)."""

    apply: _Apply = "torchtitan"
    """How the attention modules rotate q and k (any rope_type): "torchtitan", the model's own
    ``apply_rotary_emb``; "fused", one Triton kernel for q and k, forward and backward, on CUDA
    tensors (torchtitan's code on other devices); "fused_cacheless", the same kernel computing cos and
    sin from the frequencies and positions, so no rotary cache is allocated (the op's torch
    implementation off CUDA; no fallback to torchtitan's code); on torchtitan 0.2 not with
    parallelism.context_parallel_degree > 1. See titan_rope_ext/kernels/rotary.py."""

    def __post_init__(self) -> None:
        if self.hf_config is not None and self.from_hf_assets:
            raise ValueError(
                f"rope_scaling.hf_config = {self.hf_config!r} and rope_scaling.from_hf_assets = true "
                "both name a config.json; set one"
            )
        self.hf_overrides: list[str] = []
        """Keys set here that differ from the config.json (reported by the converter)."""
        self.theta_source: str | None = "[rope_scaling] theta" if self.theta is not None else None
        """Where ``theta`` came from (logged by the converter); None: the model's own rope_theta."""
        if self.hf_config is not None:
            self._merge_hf(load_config_json(self.hf_config), self.hf_config)
        if self.rope_type is None and not self.from_hf_assets:
            self.rope_type = "default"
        if self.rope_type is None:  # waits for model.hf_assets_path; check what is set already
            self._check_values()
            return
        if self.rope_type not in ROPE_FUNCTIONS:
            raise ValueError(
                f"rope_scaling.rope_type must be one of {sorted(ROPE_FUNCTIONS)}, got {self.rope_type!r}"
            )
        required, optional = method_keys(self.rope_type)
        set_keys = {k for k, v in self.method_kwargs(include_unset=True).items() if v is not None}
        if foreign := sorted(set_keys - required - optional):
            key = foreign[0]
            allowed = ", ".join(sorted(required | optional)) or "none besides theta"
            raise ValueError(
                f"rope_scaling.{key} = {getattr(self, key)!r} does not apply to rope_type "
                f"{self.rope_type!r} (its keys: {allowed})"
            )
        pending = self.from_hf_assets  # keys may still come from <model.hf_assets_path>/config.json
        if (missing := sorted(required - set_keys)) and not pending:
            raise ValueError(
                f"rope_scaling.{missing[0]} is required for rope_type {self.rope_type!r}, got None"
            )
        if self.rope_type == "longrope" and self.factor is None and self.attention_factor is None and not pending:
            # the function's fallback (seq_len / original) would follow training.seq_len, while
            # transformers follows max_position_embeddings: the same dict, two RoPEs
            raise ValueError(
                "rope_scaling.factor is required for rope_type 'longrope' unless attention_factor is set, got None: "
                "set factor = <extended length> / original_max_position_embeddings (transformers reads "
                "max_position_embeddings / original_max_position_embeddings); it sets the attention factor "
                "sqrt(1 + ln factor / ln original_max_position_embeddings)"
            )
        self._check_values()

    def _merge_hf(self, hf: dict[str, Any], source: str) -> None:
        names = {f.name for f in dataclasses.fields(self)}
        keys = rope_keys_from_hf(hf, source)
        if self.rope_type not in (None, keys["rope_type"]) and keys["rope_type"] == "default":
            # extending a plain-RoPE model: the file gives theta and the original length
            self.hf_overrides.append(f"rope_type={self.rope_type!r} overrides 'default'")
            keys = rope_keys_from_hf(hf, source, rope_type=self.rope_type)
        file_theta, theta_note = theta_from_hf(hf, source)
        if file_theta is not None and self.theta in (None, file_theta):
            self.theta_source = theta_note
        for key, value in keys.items():
            if key not in names:
                raise ValueError(f"{source}: rope key {key!r} (value {value!r}) is not supported; "
                                 f"known keys: {sorted(names - {'hf_config', 'from_hf_assets'})}")
            mine = getattr(self, key)
            if mine is None:
                setattr(self, key, value)
            elif mine != value:
                if key == "rope_type":
                    raise ValueError(
                        f"rope_scaling.rope_type = {mine!r} contradicts {source}, which gives {value!r}; "
                        "remove one")
                self.hf_overrides.append(f"{key}={mine!r} overrides {value!r}")
        if self.theta is None:  # never fall back to the torchtitan flavor's theta silently
            raise ValueError(f"{theta_note}; set rope_scaling.theta to the model's RoPE base")

    def resolve_hf_assets(self, hf_assets_path: str | None) -> "RopeScaling":
        """This section with ``from_hf_assets`` turned into ``hf_config = <hf_assets_path>/config.json``."""
        if not self.from_hf_assets:
            return self
        if not hf_assets_path:
            raise ValueError("rope_scaling.from_hf_assets = true needs model.hf_assets_path, got None")
        return dataclasses.replace(self, hf_config=os.path.join(hf_assets_path, "config.json"),
                                   from_hf_assets=False)

    def _check_values(self) -> None:
        def fail(key: str, rule: str) -> None:
            raise ValueError(f"rope_scaling.{key} must be {rule}, got {getattr(self, key)!r}")

        def finite(key: str) -> float | None:
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not math.isfinite(value)):
                fail(key, "a finite number")
            return value

        for key in ("factor", "theta", "low_freq_factor", "high_freq_factor", "beta_fast",
                    "beta_slow", "mscale", "mscale_all_dim", "attention_factor"):
            finite(key)
        if self.factor is not None and self.factor < 1.0:
            fail("factor", ">= 1.0")
        if self.theta is not None and self.theta <= 1.0:
            fail("theta", "> 1.0")
        omp = self.original_max_position_embeddings
        if omp is not None and (isinstance(omp, bool) or not isinstance(omp, int) or omp <= 0):
            fail("original_max_position_embeddings", "a positive integer")
        for key in ("low_freq_factor", "beta_slow", "mscale", "mscale_all_dim", "attention_factor"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                fail(key, "> 0")
        if self.low_freq_factor is not None and self.high_freq_factor is not None:
            if self.low_freq_factor > self.high_freq_factor:  # equal is Llama 4's hard cutoff
                fail("high_freq_factor", f">= low_freq_factor ({self.low_freq_factor!r})")
        if self.rope_type == "yarn":
            beta_fast = 32.0 if self.beta_fast is None else self.beta_fast
            beta_slow = 1.0 if self.beta_slow is None else self.beta_slow
            if beta_fast <= beta_slow:
                raise ValueError(
                    f"rope_scaling.beta_fast must be > beta_slow ({beta_slow!r}), got {beta_fast!r}"
                )
        if self.truncate is not None and not isinstance(self.truncate, bool):
            fail("truncate", "true or false")
        if self.arithmetic is not None and self.arithmetic not in get_args(_Arithmetic):
            fail("arithmetic", " or ".join(repr(a) for a in get_args(_Arithmetic)))
        if self.apply not in get_args(_Apply):
            fail("apply", " or ".join(repr(a) for a in get_args(_Apply)))
        for key in ("short_factor", "long_factor"):
            values = getattr(self, key)
            if values is None:
                continue
            if not isinstance(values, (list, tuple)) or not values:
                fail(key, "a non-empty list of numbers")
            for v in values:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                    fail(key, "a list of positive finite numbers")
        if (self.rope_type == "longrope" and self.short_factor is not None and self.long_factor is not None
                and len(self.short_factor) != len(self.long_factor)):
            raise ValueError(
                f"rope_scaling.long_factor must have as many entries as short_factor "
                f"({len(self.short_factor)}), got {len(self.long_factor)}"
            )

    def method_kwargs(self, include_unset: bool = False) -> dict[str, Any]:
        """The method's keyword arguments: every set key but rope_type and theta."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in _NON_METHOD_KEYS and (include_unset or getattr(self, f.name) is not None)
        }

    def check_head_dim(self, head_dim: int) -> None:
        """Checks what needs the model's head_dim (longrope list lengths); call before allocating."""
        if head_dim <= 0 or head_dim % 2:
            raise ValueError(f"RoPE needs a positive even head_dim, got {head_dim}")
        for key in ("short_factor", "long_factor"):
            values = getattr(self, key)
            if values is not None and len(values) != head_dim // 2:
                raise ValueError(
                    f"rope_scaling.{key} must have head_dim // 2 = {head_dim // 2} entries "
                    f"for this model, got {len(values)}"
                )

    def scaled_window(self) -> int | None:
        """``original_max_position_embeddings * factor``: the longest context the method scales the trained
        one to, for the methods that are set for a target length (yarn, llama3, longrope with ``factor``);
        None for the others (default and dynamic have none; linear and ntk name no trained length)."""
        if self.rope_type not in _WINDOWED or self.factor is None or self.original_max_position_embeddings is None:
            return None
        return math.floor(self.original_max_position_embeddings * self.factor)

    def extrapolation_warning(self, seq_len: int) -> str | None:
        """A warning when a run of ``seq_len`` positions goes past :meth:`scaled_window` (the positions
        beyond it extrapolate, as the unscaled model does past its trained length); None otherwise."""
        window = self.scaled_window()
        if window is None or seq_len <= window:
            return None
        return (f"training.seq_len = {seq_len} exceeds rope_scaling.original_max_position_embeddings "
                f"({self.original_max_position_embeddings}) x rope_scaling.factor ({self.factor:g}) = {window}: "
                f"positions past {window} extrapolate beyond the scaled window; raise factor to at least "
                f"{seq_len / self.original_max_position_embeddings:g}")

    def effective_theta(self, model_theta: float) -> float:
        """``theta`` if set, else the model's own rope_theta."""
        return model_theta if self.theta is None else self.theta

    @classmethod
    def from_hf(cls, rope_scaling: dict[str, Any], **overrides: Any) -> "RopeScaling":
        """Builds the section from a transformers ``rope_scaling`` / ``rope_parameters`` dict.

        Accepts ``rope_type`` or the legacy ``type``, and ``rope_theta`` as ``theta``.
        ``overrides`` (our key names) win over the dict. Unknown keys are an error.
        """
        values: dict[str, Any] = {}
        names = {f.name for f in dataclasses.fields(cls)}
        for key, value in rope_scaling.items():
            name = _HF_ALIASES.get(key, key)
            if name not in names:
                raise ValueError(
                    f"rope_scaling key {key!r} (value {value!r}) is not supported; known keys: "
                    f"{sorted(names | set(_HF_ALIASES))}"
                )
            if name in values and values[name] != value:
                raise ValueError(
                    f"rope_scaling gives {name!r} twice with different values: {values[name]!r} and {value!r}"
                )
            values[name] = value
        values.update(overrides)
        return cls(**values)

    def describe(self) -> str:
        """``rope_type=yarn factor=4.0 ...``: the set keys, for logs and errors."""
        parts = [f"rope_type={self.rope_type}"]
        if self.hf_config is not None:
            parts.append(f"hf_config={self.hf_config}")
        if self.theta is not None:
            parts.append(f"theta={self.theta}")
        parts += [f"{k}={v}" for k, v in self.method_kwargs().items()]
        if self.apply != "torchtitan":
            parts.append(f"apply={self.apply}")
        return " ".join(parts)


ROPE_TYPES: tuple[str, ...] = get_args(RopeType)
"""The values rope_type accepts (a unit test keeps them equal to ROPE_FUNCTIONS' keys)."""


def rope_frequencies(
    config: RopeScaling,
    head_dim: int,
    theta: float,
    seq_len: int,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, float]:
    """``(inv_freq, attention_factor)`` for ``config`` on a model with ``head_dim`` and
    ``rope_theta = theta`` (overridden by ``config.theta``), built for ``seq_len`` positions.

    ``inv_freq`` is float32 of shape ``(head_dim // 2,)`` on ``device`` (default: the ambient
    device, so ``with torch.device("meta")`` allocates nothing); ``attention_factor`` is a float.
    """
    if config.rope_type is None:
        raise ValueError("rope_scaling.from_hf_assets is not resolved yet: call config.resolve_hf_assets(path)")
    config.check_head_dim(head_dim)
    fn = ROPE_FUNCTIONS[config.rope_type]
    return fn(head_dim, config.effective_theta(theta), seq_len, device, **config.method_kwargs())
