"""Helpers shared by adapters whose model rebuilds its cache through a method."""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import nn

from titan_rope_ext.config import RopeScaling

CONFIG_ATTR = "_rope_scaling"
"""Instance attribute holding the converted model's RopeScaling (a plain attribute: never in a state dict)."""


@functools.cache
def _subclass(base: type, method: str, build: Callable[[nn.Module], torch.Tensor]) -> type:
    # One subclass per (model class, method, builder), so isinstance checks, FSDP2's dynamic
    # subclassing and deepcopy (pipeline split) all keep working.
    return type(f"RopeScaled{base.__name__}", (base,), {method: build, "__module__": base.__module__})


def install(model: nn.Module, config: RopeScaling, method: str, build: Callable[[nn.Module], torch.Tensor],
            buffer: str) -> None:
    """Gives ``model`` (this instance only) a scaled ``method`` and rebuilds ``buffer`` with it.

    The buffer is rebuilt on the device it lives on now: on the meta model of torchtitan's
    Trainer that allocates nothing, and ``init_weights(buffer_device)`` later calls the same
    method on the real device. Refuses a model that was already converted.
    """
    if getattr(model, CONFIG_ATTR, None) is not None:
        raise RuntimeError(
            f"rope_scaling: this {type(model).__name__} was already converted "
            f"({getattr(model, CONFIG_ATTR).describe()}); list the converter once in model.converters"
        )
    setattr(model, CONFIG_ATTR, config)
    model.__class__ = _subclass(type(model), method, build)
    current = getattr(model, buffer)
    with torch.device(current.device):
        setattr(model, buffer, getattr(model, method)())


def config_of(model: nn.Module) -> RopeScaling:
    return getattr(model, CONFIG_ATTR)
