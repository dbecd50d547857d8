"""Writing the trained RoPE into a Hugging Face ``config.json`` that transformers reads back exactly.

Pure Python and torch (no torchtitan, no transformers): the export tools of each torchtitan line call
it. ``hf_rope_keys(config, head_dim, theta, seq_len)`` returns the config.json keys that make
transformers 5 compute, for every input length, the ``(inv_freq, attention_factor)`` the run trained
with (``rope_frequencies(config, head_dim, theta, seq_len)``, with ``seq_len = training.seq_len``), or
raises ValueError saying why no HF form does. ``merge_config`` puts them into a base config.json.

The HF form per method (transformers 5.24.0, ``modeling_rope_utils.py``):

* ``default``, ``linear``, ``llama3``, ``yarn``: the same ``rope_type`` and keys; transformers' functions
  give the same bits (tests/unit/test_transformers_parity.py). yarn's ``arithmetic = "deepseek"`` and
  ``"torchtitan"`` (torchtitan 0.3's own rounding) have no transformers key: written as yarn only where
  they give the same bits, refused otherwise.
* ``ntk`` (no transformers type): ``default`` with ``rope_theta = theta * factor ** (d / (d - 2))``,
  which is what ntk is; transformers computes ``base ** (2i/d)`` with the same float32 ops.
* ``dynamic``: torchtitan builds its cache once per run, at ``training.seq_len``, so the trained model
  has one base at every position: ``default`` with that base. transformers' ``dynamic`` would give
  plain RoPE up to ``max_position_embeddings`` and recompute the base from each input's length past it.
* ``longrope``: transformers uses ``short_factor`` for inputs up to
  ``original_max_position_embeddings`` tokens and ``long_factor`` past it, per forward; the run used one
  list (long when ``seq_len > original``) at every position: both keys get that list, and
  ``attention_factor`` is written explicitly (transformers keeps it fixed; it never switches it).

Keys written (``merge_config``): ``rope_parameters`` (the transformers 5 form, ``rope_theta`` inside);
``rope_scaling``, the same dict without ``rope_theta`` (``null`` for plain RoPE), and a top-level
``rope_theta``: transformers 4.x and vLLM versions that predate ``rope_parameters`` read only these (a
4.x reader of a ``rope_parameters``-only file runs plain RoPE with theta 10000, silently); transformers 5
reads ``rope_scaling`` first and fills its theta from the top level, so both forms say the same.
``max_position_embeddings``: the trained length. ``dtype`` and its 4.x name ``torch_dtype``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from titan_rope_ext.config import RopeScaling, rope_frequencies
from titan_rope_ext.hf import rope_keys_from_hf
from titan_rope_ext.scaling import _ntk_theta

# transformers' rope_type for each of ours when written as-is
_SAME_TYPE = ("default", "linear", "yarn", "llama3", "longrope")
# keys of ours that transformers has no key for (they change the numbers only where the check below sees it)
_NO_HF_KEY = ("arithmetic",)
# yarn roundings transformers has no key for: exported where their bits equal transformers', refused otherwise
_NON_HF_ARITHMETIC = ("deepseek", "torchtitan")


@dataclass(frozen=True)
class HfRope:
    """The HF form of a trained RoPE."""

    rope_parameters: dict[str, Any]
    """transformers 5's ``rope_parameters`` (``rope_type``, ``rope_theta``, method keys)."""

    max_position_embeddings: int
    """The trained length (``training.seq_len``)."""

    note: str
    """How the method was written, for logs (e.g. ``ntk -> default with rope_theta = ...``)."""

    @property
    def rope_theta(self) -> float:
        return self.rope_parameters["rope_theta"]

    def config_keys(self) -> dict[str, Any]:
        """The top-level config.json keys: ``rope_parameters``, ``rope_scaling``, ``rope_theta``,
        ``max_position_embeddings`` (see the module docstring for why each)."""
        legacy = {k: v for k, v in self.rope_parameters.items() if k != "rope_theta"}
        return {
            "rope_parameters": copy.deepcopy(self.rope_parameters),
            "rope_scaling": None if legacy["rope_type"] == "default" else legacy,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
        }


def hf_rope_keys(config: RopeScaling, head_dim: int, theta: float, seq_len: int) -> HfRope:
    """The HF form of the RoPE ``rope_frequencies(config, head_dim, theta, seq_len)`` gives.

    ``theta``: the model's rope_theta (``config.theta`` overrides it, as in training); ``seq_len``: the
    length the run built its cache for (``training.seq_len``). Raises ValueError when no transformers
    ``rope_parameters`` reproduces the trained ``inv_freq`` bitwise and its attention factor exactly.
    """
    if config.rope_type is None:
        raise ValueError("rope_scaling.from_hf_assets is not resolved yet: call config.resolve_hf_assets(path)")
    config.check_head_dim(head_dim)
    base = float(config.effective_theta(theta))
    keys = config.method_kwargs()
    for key in _NO_HF_KEY:
        keys.pop(key, None)
    rope_type = config.rope_type
    note = f"{rope_type} written as {rope_type}"
    if rope_type == "ntk":
        base = _ntk_theta(base, head_dim, config.factor)
        keys, rope_type = {}, "default"
        note = f"ntk written as default with rope_theta = theta * factor ** (d / (d - 2)) = {base!r}"
    elif rope_type == "dynamic":
        original = config.original_max_position_embeddings
        scale = config.factor * max(seq_len, original) / original - (config.factor - 1)
        base = _ntk_theta(base, head_dim, scale)
        keys, rope_type = {}, "default"
        note = (f"dynamic frozen at the trained length {seq_len} written as default with rope_theta = {base!r} "
                "(transformers' dynamic would recompute the base from each input's length)")
    elif rope_type == "longrope":
        inv_freq, attention_factor = rope_frequencies(config, head_dim, theta, seq_len, device="cpu")
        used = "long_factor" if seq_len > config.original_max_position_embeddings else "short_factor"
        keys["short_factor"] = keys["long_factor"] = list(getattr(config, used))
        keys["attention_factor"] = attention_factor
        note = (f"longrope written with short_factor = long_factor = the run's {used} and attention_factor = "
                f"{attention_factor!r} (transformers switches lists by input length)")
    assert rope_type in _SAME_TYPE
    hf = HfRope({"rope_type": rope_type, "rope_theta": base, **keys}, seq_len, note)
    _check_exact(config, head_dim, theta, seq_len, hf)
    return hf


def transformers_reading(hf: HfRope, input_len: int, head_dim: int) -> tuple[torch.Tensor, float]:
    """``(inv_freq, attention_factor)`` transformers 5 uses for an input of ``input_len`` tokens with ``hf``
    written to config.json, computed with this package's functions (bitwise transformers', tested) as
    transformers reads the file (``rope_keys_from_hf``). Only the types ``hf_rope_keys`` writes: longrope
    picks its list by ``input_len``, the others ignore it."""
    keys = rope_keys_from_hf(hf.config_keys(), "the exported config.json")
    return rope_frequencies(RopeScaling(**keys), head_dim, hf.rope_theta, input_len, device="cpu")


def _check_exact(config: RopeScaling, head_dim: int, theta: float, seq_len: int, hf: HfRope) -> None:
    trained_inv_freq, trained_factor = rope_frequencies(config, head_dim, theta, seq_len, device="cpu")
    original = config.original_max_position_embeddings or seq_len
    for input_len in sorted({1, original, original + 1, seq_len}):
        inv_freq, attention_factor = transformers_reading(hf, input_len, head_dim)
        if not torch.equal(inv_freq, trained_inv_freq):
            differ = int((inv_freq != trained_inv_freq).sum())
            ulps = ((inv_freq - trained_inv_freq).abs() / torch.finfo(torch.float32).eps
                    / trained_inv_freq.abs()).max().item()
            why = (f"rope_scaling.arithmetic = {config.arithmetic!r} rounds the interpolated bands unlike "
                   "transformers' yarn, which has no key for it; train with arithmetic = 'transformers' (the "
                   "default) for a model meant for transformers" if config.arithmetic in _NON_HF_ARITHMETIC else
                   "this is a bug: please report the section")
            raise ValueError(
                f"no transformers config.json reproduces the trained RoPE ({config.describe()}) exactly: as "
                f"written ({hf.rope_parameters['rope_type']}), {differ} of {len(inv_freq)} bands of inv_freq differ "
                f"(up to {ulps:.2g} ulp) for {input_len}-token inputs; {why}. Nothing was written.")
        if attention_factor != trained_factor:
            raise ValueError(
                f"no transformers config.json reproduces the trained RoPE ({config.describe()}) exactly: as written "
                f"the attention factor is {attention_factor!r}, trained {trained_factor!r}. Nothing was written.")


# ---- the whole config.json ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Architecture:
    """What a base config.json must say for the torchtitan model's weights to mean the same in transformers."""

    model_types: tuple[str, ...]
    """Accepted ``model_type`` values (the first is written when there is no base file)."""

    expected: dict[str, Any]
    """HF key -> the value the torchtitan model implies (e.g. ``hidden_size``, ``num_key_value_heads``)."""

    defaults: dict[str, Any]
    """HF key -> transformers' value when a config.json leaves it out, or a function of the base config.json
    giving it (Llama's ``num_key_value_heads`` is ``num_attention_heads``)."""

    new_config: dict[str, Any]
    """The config.json to start from when the job has no base one (``architectures``, token ids, ...)."""


def check_base_config(base: dict[str, Any], arch: Architecture, source: str) -> None:
    """ValueError naming the file and the key when ``base`` describes another model than ``arch``."""
    model_type = base.get("model_type")
    if model_type not in arch.model_types:
        raise ValueError(f"{source}: model_type = {model_type!r} is not this model's "
                         f"({' or '.join(repr(t) for t in arch.model_types)})")
    for key, expected in arch.expected.items():
        default = arch.defaults.get(key)
        value = base[key] if base.get(key) is not None else (default(base) if callable(default) else default)
        if value != expected:
            shown = "missing" if key not in base else f"{base[key]!r}"
            raise ValueError(f"{source}: {key} = {shown} contradicts the torchtitan model, which has {expected!r}")


def merge_config(base: dict[str, Any] | None, arch: Architecture, rope: HfRope, dtype: str,
                 source: str = "config.json") -> dict[str, Any]:
    """The exported config.json: ``base`` (checked against ``arch``) or ``arch.new_config``, with the
    trained RoPE (``rope.config_keys()``), the trained length and ``dtype`` written over it.

    A top-level ``original_max_position_embeddings`` (Phi-3 style; transformers prefers it to the rope
    dict's) is set to the exported one, or dropped when the exported type has none.
    """
    if base is not None:
        check_base_config(base, arch, source)
        out = copy.deepcopy(base)
    else:
        out = {**copy.deepcopy(arch.new_config), **arch.expected}
    out.pop("rope_parameters", None)
    out.update(rope.config_keys())
    if "original_max_position_embeddings" in out:
        original = rope.rope_parameters.get("original_max_position_embeddings")
        if original is None:
            del out["original_max_position_embeddings"]
        else:
            out["original_max_position_embeddings"] = original
    out["dtype"] = out["torch_dtype"] = dtype
    return dict(sorted(out.items()))

