"""Which torchtitan 0.3 attention and RoPE configs the package handles, and the swap to ours.

One module per model declares an ``Adapter``: the exact attention config class and stock RoPE
config class that model builds, our RoPE config class for that cache layout, and where the
attention factor goes. An attention is matched by its exact (attention config, RoPE config)
classes, because where the attention factor must go is a property of the attention module:
``GQAttention`` (llama3, qwen3) and muse_glimmer's subclass never apply one (the cache carries it);
deepseek_v3's and kimi_k2_5's MLA and gpt_oss's sink attention fold a YaRN factor into their
softmax scale from config fields, which their adapters set (``Adapter.convert``). Another RoPE
(qwen3_5's MRoPE) or attention is refused with the supported list, before any model is built.

Every way in (the section, the override, the converter) ends in ``Adapter.convert``: a config
transformation, as 0.3's own overrides are; no module code is touched.

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

# torchtitan model name (model_spec.name) -> adapter module
_ADAPTER_MODULES = {
    "llama3": "titan_rope_ext.torchtitan03.models.llama3",
    "qwen3": "titan_rope_ext.torchtitan03.models.qwen3",
    "deepseek_v3": "titan_rope_ext.torchtitan03.models.deepseek_v3",
    "kimi_k2_5": "titan_rope_ext.torchtitan03.models.kimi_k2_7",
    "gpt_oss": "titan_rope_ext.torchtitan03.models.gpt_oss",
    "muse_glimmer": "titan_rope_ext.torchtitan03.models.muse_glimmer",
}


def _short(cls: type) -> str:
    """``GQAttention.Config`` for torchtitan's shared classes, ``deepseek_v3.model.Attention.Config`` for a model's own."""
    module = cls.__module__.removeprefix("torchtitan.models.")
    return cls.__qualname__ if module.startswith("common.") else f"{module}.{cls.__qualname__}"


@dataclass(frozen=True)
class Adapter:
    """What the swap needs to know about one torchtitan 0.3 model's attention.

    The base class is a model whose attention never reads the RoPE config's scaling fields: the
    attention factor is the cache's magnitude. Models whose attention folds a factor into its softmax
    scale subclass it and override ``convert``.
    """

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
    model: type | None = None
    """Exact model config class, where several models share the attention classes (deepseek_v3 and
    kimi_k2_5's MLA): it only picks the name in logs and errors."""

    def describe(self) -> str:
        return f"{self.name} ({_short(self.attention)} + {_short(self.stock_rope)})"

    def uses_rope(self, attention_config) -> bool:
        """Whether this layer applies its RoPE (muse_glimmer's NoPE layers carry one and never apply it)."""
        return True

    def convert(self, attention_config, section: RopeScaling, max_seq_len: int | None = None,
                cache_sharing: CacheSharing | None = None):
        """``attention_config`` with its RoPE config ours, decided by ``section``; a NoPE layer unchanged.
        ``cache_sharing``: the model's one ``CacheSharing`` (all its layers then hold one cache)."""
        if not self.uses_rope(attention_config):
            return attention_config
        rope = scaled_rope(self, attention_config.rope, section, max_seq_len, cache_sharing=cache_sharing)
        return dataclasses.replace(attention_config, rope=rope)

    def softmax_note(self, attention_config) -> str:
        """What the converted attention folds into its softmax scale, for the log line ("" if nothing)."""
        return ""


def adapters() -> list[Adapter]:
    return [importlib.import_module(m).ADAPTER for m in _ADAPTER_MODULES.values()]


def supported() -> str:
    """``llama3 (GQAttention.Config + ComplexRoPE.Config), qwen3 (...)``: for error messages."""
    return ", ".join(a.describe() for a in adapters())


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def adapter_for(attention_config, where: str, model_config=None) -> Adapter:
    """The adapter whose exact classes are ``attention_config``'s and its ``rope``'s.

    Raises ValueError naming ``where`` (e.g. ``layers.0.attention``), what it found and the
    supported models; a RoPE that is already ours is refused as converted twice. Where several
    adapters share the classes, ``model_config``'s exact class picks the name (without it: both names).
    """
    rope = getattr(attention_config, "rope", None)
    matches = [a for a in adapters() if type(attention_config) is a.attention and type(rope) in (a.stock_rope, a.rope)]
    if not matches:
        found = _name(type(attention_config)) + (f" with {_name(type(rope))}" if rope is not None else " without a RoPE")
        raise ValueError(f"rope_scaling on torchtitan 0.3 supports {supported()}; {where} is {found}")
    if type(rope) is matches[0].rope:
        raise ValueError(
            f"rope_scaling: {where}.rope is already {rope.__class__.__qualname__} "
            f"({rope.rope_scaling.describe()}); apply rope_scaling once (section, override or converter)"
        )
    named = [a for a in matches if model_config is not None and a.model is type(model_config)]
    if named or len(matches) == 1:
        return (named or matches)[0]
    return dataclasses.replace(matches[0], name=" or ".join(a.name for a in matches), model=None)


def scaled_rope(adapter: Adapter, rope_config, section: RopeScaling, max_seq_len: int | None = None,
                cache_sharing: CacheSharing | None = None, **stock_fields):
    """Our RoPE config for ``rope_config`` (stock), decided by ``section``; ``max_seq_len`` resizes the cache.

    ``section`` must be resolved (``from_hf_assets`` turned into ``hf_config``). Checks the
    section against the RoPE's dim (longrope list lengths) here, before anything is built.
    ``cache_sharing``: one object for all layers of a model config, so they hold one cache.
    The inherited stock scaling fields never shape our cache: ``scaling = "none"`` unless
    ``stock_fields`` (an adapter) set what an attention that reads them folds into its softmax scale.
    """
    if section.rope_type is None:
        raise ValueError("rope_scaling.from_hf_assets is not resolved: call resolve_hf_assets(hf_assets_path) first")
    section.check_head_dim(rope_config.dim)
    deltas = {"max_seq_len": max_seq_len} if max_seq_len is not None else {}
    if cache_sharing is not None and "cache_sharing" in {f.name for f in dataclasses.fields(adapter.rope)}:
        deltas["cache_sharing"] = cache_sharing  # our RoPE classes with one cache per model (rope.py)
    # every stock field copied (torchtitan's own derive), then ours
    return derive(rope_config, adapter.rope, **{"scaling": "none", "rope_scaling": section, **deltas, **stock_fields})


def attention_factor(rope_config) -> float:
    """The section's attention factor for one of our RoPE configs (computed on meta: no allocation)."""
    with torch.device("meta"):
        return rope_frequencies(rope_config.rope_scaling, rope_config.dim, rope_config.theta, rope_config.max_seq_len)[1]


def attentions(model_config) -> list[tuple[str, object, object]]:
    """``(fqn, layer_config, attention_config)`` for every layer of ``model_config`` that has an attention,
    the decoder's ``layers`` and, where the model has them, its multi-token-prediction ``mtp_layers``."""
    found = []
    for group in ("layers", "mtp_layers"):
        for i, layer in enumerate(getattr(model_config, group, None) or []):
            attention = getattr(layer, "attention", None)
            if attention is not None:
                found.append((f"{group}.{i}.attention", layer, attention))
    return found


def check_model(model_config, section: RopeScaling, model_name: str = "") -> Adapter:
    """Checks that every attention of ``model_config`` is one the package handles and that
    ``section`` fits its RoPE; returns the adapter. Pure: changes nothing."""
    shown = f"model {model_name!r}" if model_name else _name(type(model_config))
    chosen, with_rope = None, 0
    for fqn, _, attention in attentions(model_config):
        adapter = adapter_for(attention, fqn if not model_name else f"{model_name} {fqn}", model_config)
        if chosen is not None and adapter != chosen:
            raise ValueError(f"rope_scaling: {shown} mixes {chosen.describe()} and {adapter.describe()} layers")
        chosen = adapter
        if adapter.uses_rope(attention):
            with_rope += 1
            if section.rope_type is not None:
                section.check_head_dim(attention.rope.dim)
    if not with_rope:
        raise ValueError(f"rope_scaling on torchtitan 0.3 supports {supported()}; {shown} has no attention with a RoPE")
    return chosen


def scale_model(model_config, section: RopeScaling, max_seq_len: int | None = None, model_name: str = "") -> str:
    """Swaps every attention config of ``model_config`` (in place) for ``Adapter.convert``'s: our RoPE,
    decided by ``section``, and what the attention folds into its softmax scale.

    ``max_seq_len`` (the run's ``training.seq_len``) resizes every cache; set, it lifts stock's
    refusal of training past the flavor's RoPE length, whose check reads these configs. Nothing
    is built. Every layer's RoPE of a model built from it holds one cache (``cache_share``). Returns
    the one-line summary to log.
    """
    adapter = check_model(model_config, section, model_name)
    sharing, converted = CacheSharing(), []
    for _, layer, attention in attentions(model_config):
        layer.attention = adapter.convert(attention, section, max_seq_len, cache_sharing=sharing)
        if adapter.uses_rope(attention):
            converted.append(layer.attention)
    return summary(adapter, converted[0])


def summary(adapter: Adapter, attention_config) -> str:
    """``llama3: rope_type=yarn ...; head_dim=16 theta=500000 seq_len=256 attention_factor=1.13863 (in ...)``."""
    rope_config = attention_config.rope
    section = rope_config.rope_scaling
    text = (f"{adapter.name}: {section.describe()}; head_dim={rope_config.dim} "
            f"theta={section.effective_theta(rope_config.theta)} seq_len={rope_config.max_seq_len} "
            f"attention_factor={attention_factor(rope_config):.6g} ({adapter.factor_site})")
    text += adapter.softmax_note(attention_config)
    if section.apply == "fused_cacheless":
        text += "; no cache: the kernel computes the cache's cos and sin per token (they carry the same factor)"
    if section.hf_overrides:
        text += f"; keys set here override {section.hf_config}: " + ", ".join(section.hf_overrides)
    return text
