"""Which torchtitan 0.3 attention and RoPE configs the package handles, and the swap to ours.

One module per model declares an ``Adapter``: the exact attention config class and stock RoPE
config class that model builds, our RoPE config class for that cache layout, and where the
attention factor goes. An attention is matched by its exact (attention config, RoPE config)
classes, because where the attention factor must go is a property of the attention module: a
subclass (muse_glimmer's attention), another attention (deepseek_v3's and kimi_k2_7's MLA,
gpt_oss's sink attention, which fold YaRN into their softmax scale) or another RoPE (qwen3_5's
MRoPE) is refused with the supported list, before any model is built.

Adding a model is one module here and one line in ``_ADAPTER_MODULES``.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass

import torch
from torchtitan.config import derive

from titan_rope_ext.config import rope_frequencies, RopeScaling
from titan_rope_ext.torchtitan03.cache_share import CacheSharing

# torchtitan model name -> adapter module
_ADAPTER_MODULES = {
    "llama3": "titan_rope_ext.torchtitan03.models.llama3",
    "qwen3": "titan_rope_ext.torchtitan03.models.qwen3",
}


@dataclass(frozen=True)
class Adapter:
    """What the swap needs to know about one torchtitan 0.3 model's attention."""

    name: str
    """torchtitan model name (``model_spec.name``)."""
    attention: type
    """Exact attention config class of the model's layers."""
    stock_rope: type
    """Exact stock RoPE config class the model builds."""
    rope: type
    """Our RoPE config class with the same cache layout (a subclass of ``stock_rope``)."""
    factor_site: str
    """Where the attention factor reaches the scores, for the log line."""

    def describe(self) -> str:
        return f"{self.name} ({self.attention.__qualname__} + {self.stock_rope.__qualname__})"


def adapters() -> list[Adapter]:
    return [importlib.import_module(m).ADAPTER for m in _ADAPTER_MODULES.values()]


def supported() -> str:
    """``llama3 (GQAttention.Config + ComplexRoPE.Config), qwen3 (...)``: for error messages."""
    return ", ".join(a.describe() for a in adapters())


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def adapter_for(attention_config, where: str) -> Adapter:
    """The adapter whose exact classes are ``attention_config``'s and its ``rope``'s.

    Raises ValueError naming ``where`` (e.g. ``layers.0.attention``), what it found and the
    supported models; a RoPE that is already ours is refused as converted twice.
    """
    rope = getattr(attention_config, "rope", None)
    for adapter in adapters():
        if type(attention_config) is adapter.attention and type(rope) is adapter.rope:
            raise ValueError(
                f"rope_scaling: {where}.rope is already {rope.__class__.__qualname__} "
                f"({rope.rope_scaling.describe()}); apply rope_scaling once (section, override or converter)"
            )
        if type(attention_config) is adapter.attention and type(rope) is adapter.stock_rope:
            return adapter
    found = _name(type(attention_config)) + (f" with {_name(type(rope))}" if rope is not None else " without a RoPE")
    raise ValueError(f"rope_scaling on torchtitan 0.3 supports {supported()}; {where} is {found}")


def check_section(section: RopeScaling) -> None:
    """What the section asks that this torchtitan line does not offer yet."""
    if section.apply != "torchtitan":
        raise ValueError(f"rope_scaling.apply = {section.apply!r} is not available on torchtitan 0.3 yet; "
                         "use 'torchtitan' (the RoPE module's own apply_rotary_emb)")


def scaled_rope(adapter: Adapter, rope_config, section: RopeScaling, max_seq_len: int | None = None,
                cache_sharing: CacheSharing | None = None):
    """Our RoPE config for ``rope_config`` (stock), decided by ``section``; ``max_seq_len`` resizes the cache.

    ``section`` must be resolved (``from_hf_assets`` turned into ``hf_config``). Checks the
    section against the RoPE's dim (longrope list lengths) here, before anything is built.
    ``cache_sharing``: one object for all layers of a model config, so they hold one cache.
    """
    check_section(section)
    if section.rope_type is None:
        raise ValueError("rope_scaling.from_hf_assets is not resolved: call resolve_hf_assets(hf_assets_path) first")
    section.check_head_dim(rope_config.dim)
    deltas = {"max_seq_len": max_seq_len} if max_seq_len is not None else {}
    if cache_sharing is not None and "cache_sharing" in {f.name for f in dataclasses.fields(adapter.rope)}:
        deltas["cache_sharing"] = cache_sharing  # our RoPE classes with one cache per model (rope.py)
    # every stock field copied (torchtitan's own derive); the stock scaling fields stop meaning anything
    return derive(rope_config, adapter.rope, scaling="none", rope_scaling=section, **deltas)


def attentions(model_config) -> list[tuple[str, object, object]]:
    """``(fqn, layer_config, attention_config)`` for every layer of ``model_config`` that has an attention."""
    found = []
    for i, layer in enumerate(getattr(model_config, "layers", None) or []):
        attention = getattr(layer, "attention", None)
        if attention is not None:
            found.append((f"layers.{i}.attention", layer, attention))
    return found


def check_model(model_config, section: RopeScaling, model_name: str = "") -> Adapter:
    """Checks that every attention of ``model_config`` is one the package handles and that
    ``section`` fits its RoPE; returns the adapter. Pure: changes nothing."""
    check_section(section)
    found = attentions(model_config)
    shown = f"model {model_name!r}" if model_name else _name(type(model_config))
    if not found:
        raise ValueError(f"rope_scaling on torchtitan 0.3 supports {supported()}; {shown} has no attention with a RoPE")
    chosen = None
    for fqn, _, attention in found:
        adapter = adapter_for(attention, fqn if not model_name else f"{model_name} {fqn}")
        if chosen is not None and adapter is not chosen:
            raise ValueError(f"rope_scaling: {shown} mixes {chosen.describe()} and {adapter.describe()} layers")
        chosen = adapter
        if section.rope_type is not None:
            section.check_head_dim(attention.rope.dim)
    return chosen


def scale_model(model_config, section: RopeScaling, max_seq_len: int | None = None, model_name: str = "") -> str:
    """Swaps every attention's RoPE config in ``model_config`` (in place) for ours, decided by ``section``.

    ``max_seq_len`` (the run's ``training.seq_len``) resizes every cache; set, it lifts stock's
    refusal of training past the flavor's RoPE length, whose check reads these configs. Nothing
    is built. Every layer's RoPE of a model built from it holds one cache (``cache_share``). Returns
    the one-line summary to log.
    """
    adapter = check_model(model_config, section, model_name)
    sharing = CacheSharing()
    for _, layer, attention in attentions(model_config):
        layer.attention = dataclasses.replace(
            attention, rope=scaled_rope(adapter, attention.rope, section, max_seq_len, cache_sharing=sharing))
    return summary(adapter, attentions(model_config)[0][2].rope)


def summary(adapter: Adapter, rope_config) -> str:
    """``llama3: rope_type=yarn ...; head_dim=16 theta=500000 seq_len=256 attention_factor=1.13863 (in ...)``."""
    with torch.device("meta"):
        _, attention_factor = rope_frequencies(rope_config.rope_scaling, rope_config.dim, rope_config.theta,
                                               rope_config.max_seq_len)
    section = rope_config.rope_scaling
    text = (f"{adapter.name}: {section.describe()}; head_dim={rope_config.dim} "
            f"theta={section.effective_theta(rope_config.theta)} seq_len={rope_config.max_seq_len} "
            f"attention_factor={attention_factor:.6g} ({adapter.factor_site})")
    if section.hf_overrides:
        text += f"; keys set here override {section.hf_config}: " + ", ".join(section.hf_overrides)
    return text
