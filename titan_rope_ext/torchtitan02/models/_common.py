"""Helpers shared by the model adapters: the cached subclass, installing it, the log summary."""

from __future__ import annotations

import functools
import importlib
from typing import Callable

import torch
from torch import nn

from titan_rope_ext.config import rope_frequencies, RopeScaling
from titan_rope_ext.torchtitan02.models._fused import apply_fused

CONFIG_ATTR = "_rope_scaling"
"""Instance attribute holding the converted model's RopeScaling (a plain attribute: never in a state dict)."""


@functools.cache
def _subclass(base: type, method: str, build: Callable[[nn.Module], torch.Tensor]) -> type:
    # One subclass per (model class, method, builder), so isinstance checks, FSDP2's dynamic
    # subclassing and deepcopy (pipeline split) all keep working.
    return type(f"RopeScaled{base.__name__}", (base,), {method: build, "__module__": base.__module__})


def install(model: nn.Module, config: RopeScaling, make_subclass: Callable[[type], type], buffer: str,
            build: Callable[[nn.Module], torch.Tensor]) -> None:
    """Gives ``model`` (this instance only) the class ``make_subclass(type(model))`` and rebuilds ``buffer``
    with ``build(model)``.

    The buffer is rebuilt on the device it lives on now: on the meta model of torchtitan's
    Trainer that allocates nothing, and the subclass makes ``init_weights(buffer_device)`` later
    build the same cache (``inv_freq`` with ``apply = "fused_cacheless"``) on the real device. Refuses a
    model that was already converted.
    """
    if getattr(model, CONFIG_ATTR, None) is not None:
        raise RuntimeError(
            f"rope_scaling: this {type(model).__name__} was already converted "
            f"({getattr(model, CONFIG_ATTR).describe()}); list the converter once in model.converters"
        )
    setattr(model, CONFIG_ATTR, config)
    model.__class__ = make_subclass(type(model))
    with torch.device(getattr(model, buffer).device):
        setattr(model, buffer, build(model))


def config_of(model: nn.Module) -> RopeScaling:
    return getattr(model, CONFIG_ATTR)


def scaled_cache(model: nn.Module, head_dim: int,
                 cache_fn: Callable[[torch.Tensor, float, int], torch.Tensor]) -> torch.Tensor:
    """The rotary buffer the converted ``model``'s section gives it, on the current default device:
    ``cache_fn(inv_freq, attention_factor, max_seq_len)``, or with ``apply = "fused_cacheless"`` the float32
    ``inv_freq`` itself, ``(head_dim // 2,)`` (the attention computes cos and sin from it: ``_fused.py``)."""
    args, config = model.model_args, config_of(model)
    inv_freq, attention_factor = rope_frequencies(config, head_dim, args.rope_theta, args.max_seq_len)
    if config.apply == "fused_cacheless":
        return inv_freq.to(torch.float32)
    return cache_fn(inv_freq, attention_factor, args.max_seq_len)


def summary(config: RopeScaling, head_dim: int, args, head_dim_name: str, factor_site: str) -> str:
    """The converter's log summary: effective dims, theta and where it came from, length, and where the
    attention factor went (``factor_site``; with ``apply = "fused_cacheless"``, the kernel's cos and sin)."""
    with torch.device("meta"):
        _, attention_factor = rope_frequencies(config, head_dim, args.rope_theta, args.max_seq_len)
    theta_source = config.theta_source or "the flavor's rope_theta"
    if config.apply == "fused_cacheless":
        factor_site = "on the cacheless kernel's cos and sin"
    return (
        f"{head_dim_name}={head_dim} theta={config.effective_theta(args.rope_theta)} ({theta_source}) "
        f"seq_len={args.max_seq_len} "
        f"attention_factor={attention_factor:.6g} ({factor_site})"
    )


class MethodAdapter:
    """Adapter for a model whose rotary cache is a buffer that one of its methods rebuilds.

    Such a model calls ``self.<method>()`` at construction and in ``init_weights``; the
    converter gives the instance a subclass whose ``<method>`` builds the cache from
    ``[rope_scaling]`` with ``cache_fn(inv_freq, attention_factor, max_seq_len)`` (``scaled_cache``: the
    cacheless apply's ``inv_freq`` instead). ``pairs``: its
    ``apply_rotary_emb`` rotates adjacent pairs (complex cache), else halves (``[cos | sin]`` cache).
    """

    def __init__(self, name: str, model_class: str, method: str, buffer: str,
                 head_dim: Callable[[object], int], cache_fn: Callable[[torch.Tensor, float, int], torch.Tensor],
                 factor_site: str, pairs: bool):
        self.name, self._model_class, self.method, self.buffer = name, model_class, method, buffer
        self.head_dim, self.factor_site, self.pairs = head_dim, factor_site, pairs

        def precompute(model: nn.Module) -> torch.Tensor:
            return scaled_cache(model, head_dim(model.model_args), cache_fn)

        precompute.__name__ = method
        self._precompute = precompute

    def model_class(self) -> type[nn.Module]:
        """The first of ``model_class``'s ``|``-separated ``module:Class`` paths that this torchtitan
        has (models move between ``torchtitan.models`` and ``torchtitan.experiments`` across 0.2.x).

        Raises ModuleNotFoundError when the installed torchtitan has none of them.
        """
        for path in self._model_class.split("|"):
            module, _, cls = path.partition(":")
            try:
                return getattr(importlib.import_module(module), cls)
            except ModuleNotFoundError:
                continue
        raise ModuleNotFoundError(f"this torchtitan has no {self.name} model ({self._model_class})")

    def stock_cache(self, model: nn.Module) -> torch.Tensor:
        return getattr(self.model_class(), self.method)(model)  # the stock method, even on a converted model

    def convert(self, model: nn.Module, config: RopeScaling) -> str:
        args = model.model_args
        head_dim = self.head_dim(args)
        config.check_head_dim(head_dim)
        install(model, config, lambda base: _subclass(base, self.method, self._precompute), self.buffer,
                self._precompute)
        return summary(config, head_dim, args, "head_dim", self.factor_site) + apply_fused(
            model, config, self.model_class(), self.pairs, head_dim)
