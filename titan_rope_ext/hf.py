"""Reading a Hugging Face ``config.json`` the way transformers (5.x) reads its RoPE settings.

Pure Python; returns ``[rope_scaling]`` keys. The rules, from transformers'
``standardize_rope_params`` and ``_compute_*_parameters``:

* the rope dict is ``rope_parameters`` (transformers 5) or ``rope_scaling`` (4.x); absent or null
  means plain RoPE; its type is ``rope_type``, or the legacy ``type``; a file with both (as
  ``titan-rope export`` writes) must give the same dict, ``rope_theta`` aside;
* ``rope_theta`` sits in that dict (5.x) or at the top level (4.x); a file with neither (Llama-1/2-era
  files) gets the config class's default, ``default_theta`` (10000.0 for llama and qwen3; see
  ``TRANSFORMERS_DEFAULT_THETA``), never the torchtitan flavor's theta;
* llama3, yarn and longrope take ``original_max_position_embeddings`` from the top level first
  (Phi-3 keeps it there), else from the dict, else ``max_position_embeddings``;
* longrope without ``factor`` (and ``attention_factor``, the one thing factor sets) uses
  ``max_position_embeddings / original_max_position_embeddings``
  (yarn without ``factor`` is refused, as transformers' validation refuses it);
* dynamic NTK's trained length is ``max_position_embeddings``.

What transformers would read differently in two places (two rope dicts, two thetas, two types)
is an error, as is what this package cannot honour (``partial_rotary_factor`` other than 1,
per-layer-type rope dicts).
"""

from __future__ import annotations

import json
import os
from typing import Any

_LENGTH_FROM_CONFIG = ("llama3", "yarn", "longrope")

TRANSFORMERS_DEFAULT_THETA: dict[str, float] = {
    "llama": 10000.0,
    "mistral": 10000.0,
    "qwen2": 10000.0,
    "qwen3": 10000.0,
    "qwen3_moe": 10000.0,
    "deepseek_v3": 10000.0,
    "phi3": 10000.0,
    "llama4_text": 500000.0,
    "gpt_oss": 150000.0,
}
"""The rope_theta transformers 5.24.0 uses for a config.json without one, by ``model_type``: the config
class's ``default_theta`` (``RotaryEmbeddingConfigMixin.default_theta = 10000.0`` unless the class
overrides it). Only the model types of torchtitan's models and close relatives; tests/unit/test_hf.py
checks every entry against transformers. A file of another type without rope_theta is an error unless
``[rope_scaling] theta`` is set."""


def load_config_json(path: str) -> dict[str, Any]:
    """The JSON object in ``path``; ValueError naming the path when it is missing or not a JSON object."""
    if not os.path.isfile(path):
        raise ValueError(f"rope_scaling.hf_config: no such file {path!r}")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"rope_scaling.hf_config: {path!r} is not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"rope_scaling.hf_config: {path!r} holds a {type(data).__name__}, not a config object")
    return data


def _one_of(source: str, what: str, a: Any, b: Any) -> Any:
    if a is not None and b is not None and a != b:
        raise ValueError(f"{source}: {what} is given twice with different values: {a!r} and {b!r}")
    return a if a is not None else b


def _without_theta(rope: Any) -> Any:
    # transformers 5 reads rope_scaling (4.x files, and exports written for both) with the top-level theta
    return {k: v for k, v in rope.items() if k != "rope_theta"} if isinstance(rope, dict) else rope


def theta_from_hf(hf: dict[str, Any], source: str = "config.json") -> tuple[float | None, str]:
    """``(theta, where it came from)`` as transformers reads ``hf``: ``rope_theta`` in the rope dict or at the
    top level, else the default of the file's ``model_type``; ``(None, why)`` when neither is known."""
    hf = _text_model(hf, source)
    nested = [rope.get("rope_theta") for rope in (hf.get("rope_parameters"), hf.get("rope_scaling"))
              if isinstance(rope, dict)]
    theta = hf.get("rope_theta")
    for value in nested:
        theta = _one_of(source, "rope_theta", value, theta)
    if theta is not None:
        return theta, f"rope_theta of {source}"
    model_type = hf.get("model_type")
    if model_type in TRANSFORMERS_DEFAULT_THETA:
        return (TRANSFORMERS_DEFAULT_THETA[model_type],
                f"transformers' default for model_type {model_type!r}: {source} has no rope_theta")
    return None, (f"{source} has no rope_theta and transformers' default for its model_type {model_type!r} is "
                  f"not known here (known: {', '.join(sorted(TRANSFORMERS_DEFAULT_THETA))})")


# what a multimodal config.json keeps in its text_config (transformers' text model reads them there)
_TEXT_MODEL_KEYS = ("rope_scaling", "rope_parameters", "rope_theta", "partial_rotary_factor", "max_position_embeddings",
                    "original_max_position_embeddings", "model_type")


def _text_model(hf: dict[str, Any], source: str) -> dict[str, Any]:
    """``hf`` with its ``text_config``'s RoPE keys in place, for multimodal files (Llama 4, Kimi, Muse Glimmer...):
    their language model's RoPE is there, and reading only the top level would give plain RoPE silently. A
    key given at both levels with different values is an error."""
    text = hf.get("text_config")
    if not isinstance(text, dict):
        return hf
    merged = dict(hf)
    for key in _TEXT_MODEL_KEYS:
        if key not in text:
            continue
        if key != "model_type" and hf.get(key) is not None and text[key] is not None and hf[key] != text[key]:
            raise ValueError(f"{source}: {key} is {hf[key]!r} at the top level and {text[key]!r} in text_config; "
                             "set rope_scaling keys explicitly")
        merged[key] = text[key]
    return merged


def rope_keys_from_hf(hf: dict[str, Any], source: str = "config.json", rope_type: str | None = None) -> dict[str, Any]:
    """``[rope_scaling]`` keys (rope_type, theta, method keys) that ``hf`` means to transformers.

    ``rope_type``: read a file whose RoPE is plain (``default``) as the start of that method (a section
    extending a plain-RoPE model): the file gives the theta and the original length
    (``max_position_embeddings``, as transformers' ``standardize_rope_params`` fills it), not ``factor``.
    """
    hf = _text_model(hf, source)
    scaling, params = hf.get("rope_scaling"), hf.get("rope_parameters")
    if scaling and params and _without_theta(scaling) != _without_theta(params):
        raise ValueError(f"{source}: rope_scaling {scaling!r} and rope_parameters {params!r} disagree")
    rope = dict(params or scaling or {})
    if rope and all(isinstance(v, dict) for v in rope.values()):
        raise ValueError(f"{source}: per-layer-type rope parameters ({sorted(rope)}) are not supported")

    file_type = _one_of(source, "the rope type", rope.pop("rope_type", None), rope.pop("type", None)) or "default"
    if rope_type is not None and file_type != "default":
        raise ValueError(f"{source}: only a plain-RoPE file can start another method, this one is {file_type!r}")
    extending = rope_type is not None and rope_type != file_type
    rope_type = rope_type or file_type
    rope.pop("rope_theta", None)
    theta, _ = theta_from_hf(hf, source)
    partial = _one_of(source, "partial_rotary_factor", rope.pop("partial_rotary_factor", None),
                      hf.get("partial_rotary_factor"))
    if partial is not None and partial != 1.0:
        raise ValueError(f"{source}: partial_rotary_factor = {partial!r} is not supported (only 1.0)")

    max_pos = hf.get("max_position_embeddings")
    if rope_type in _LENGTH_FROM_CONFIG:
        if hf.get("original_max_position_embeddings") is not None:
            rope["original_max_position_embeddings"] = hf["original_max_position_embeddings"]
        elif rope.get("original_max_position_embeddings") is None and max_pos is not None:
            rope["original_max_position_embeddings"] = max_pos
        original = rope.get("original_max_position_embeddings")
        if (rope_type == "longrope" and not extending and rope.get("factor") is None
                and rope.get("attention_factor") is None and max_pos is not None and original):
            rope["factor"] = max_pos / original
    elif rope_type == "dynamic":
        rope["original_max_position_embeddings"] = _one_of(
            source, "dynamic's trained length (max_position_embeddings vs rope original_max_position_embeddings)",
            max_pos, rope.get("original_max_position_embeddings"))

    keys = {"rope_type": rope_type, "theta": theta, **rope}
    return {k: v for k, v in keys.items() if v is not None}
