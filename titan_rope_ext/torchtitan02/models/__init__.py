"""Model adapters: one module per torchtitan model, each knowing that model's rotary cache.

An adapter is chosen by the model's class (the train spec's ``model_cls``), never by the
user. Adding a model is one new module that defines an ``Adapter`` and one line in
``_ADAPTER_MODULES``.
"""

from __future__ import annotations

import importlib
from typing import Protocol

import torch
from torch import nn

from titan_rope_ext.config import RopeScaling

# torchtitan model name -> adapter module (imported lazily: it imports torchtitan's model)
_ADAPTER_MODULES = {
    "deepseek_v3": "titan_rope_ext.torchtitan02.models.deepseek_v3",
    "gpt_oss": "titan_rope_ext.torchtitan02.models.gpt_oss",
    "llama3": "titan_rope_ext.torchtitan02.models.llama3",
    "llama4": "titan_rope_ext.torchtitan02.models.llama4",
    "qwen3": "titan_rope_ext.torchtitan02.models.qwen3",
}


class Adapter(Protocol):
    """What the converter needs to know about one torchtitan model."""

    name: str

    def model_class(self) -> type[nn.Module]:
        """The torchtitan model class (and its subclasses) this adapter converts."""
        ...

    def head_dim(self, model_args) -> int:
        """Rotary dimension per head for these model args."""
        ...

    def convert(self, model: nn.Module, config: RopeScaling) -> str:
        """Makes ``model`` build its rotary cache from ``config``; returns a log summary."""
        ...

    def stock_cache(self, model: nn.Module) -> torch.Tensor:
        """The cache stock torchtitan builds for this (unconverted) model, on the current default device."""
        ...


def supported_models() -> list[str]:
    return sorted(_ADAPTER_MODULES)


def adapter_for(model_cls: type, model_name: str = "") -> Adapter:
    """The adapter whose model class ``model_cls`` is (or derives from).

    Raises ValueError naming the supported models when none fits.
    """
    for module in _ADAPTER_MODULES.values():
        adapter = importlib.import_module(module).ADAPTER
        try:
            known = adapter.model_class()
        except ModuleNotFoundError:  # a model this torchtitan version does not have
            continue
        if issubclass(model_cls, known):
            return adapter
    shown = model_name or f"{model_cls.__module__}.{model_cls.__qualname__}"
    raise ValueError(
        f"model.name = {shown!r} has no rotary cache that rope_scaling supports; "
        f"supported models: {', '.join(supported_models())}"
    )
