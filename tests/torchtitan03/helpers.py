"""What the torchtitan 0.3 tests share: stock flavors' model configs, our section, CPU attention."""

from __future__ import annotations

import copy
import dataclasses

import torch
from torchtitan.models.common.attention import FlexAttention, ScaledDotProductAttention

from titan_rope_ext import RopeScaling

# one section per method, on the debug flavors' head dims (llama3: 16, qwen3: 128); longrope lists per head_dim
SECTIONS = {
    "default": dict(rope_type="default"),
    "linear": dict(rope_type="linear", factor=4.0),
    "ntk": dict(rope_type="ntk", factor=4.0),
    "dynamic": dict(rope_type="dynamic", factor=4.0, original_max_position_embeddings=64),
    "yarn": dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64),
    "llama3": dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=64),
    "longrope": dict(rope_type="longrope", original_max_position_embeddings=64, factor=4.0),
}


def section(method: str, head_dim: int, **extra) -> RopeScaling:
    keys = dict(SECTIONS[method], **extra)
    if method == "longrope":
        keys.update(short_factor=[1.0 + 0.01 * i for i in range(head_dim // 2)],
                    long_factor=[1.0 + 0.25 * i for i in range(head_dim // 2)])
    return RopeScaling(**keys)


def model_config(model: str, flavor: str = "debugmodel", n_layers: int | None = None):
    """A fresh model config of a stock flavor (``model_registry(flavor).model``), optionally truncated."""
    import importlib

    config = importlib.import_module(f"torchtitan.models.{model}").model_registry(flavor).model
    if n_layers is not None:
        config.layers = config.layers[:n_layers]
    return config


def with_sdpa(config):
    """``config`` with FlexAttention (no CPU backward, compiled) replaced by SDPA, for CPU forwards."""
    config = copy.deepcopy(config)
    for layer in config.layers:
        if isinstance(layer.attention.inner_attention, FlexAttention.Config):
            layer.attention = dataclasses.replace(layer.attention, inner_attention=ScaledDotProductAttention.Config())
    return config


def build(config, device: str = "cpu", seed: int = 0):
    """``config.build()`` as torchtitan's Trainer does it: on meta, then ``to_empty`` and ``init_states``."""
    with torch.device("meta"):
        model = config.build()
    model.to_empty(device=device)
    torch.manual_seed(seed)
    with torch.no_grad():
        model.init_states(buffer_device=None)
    return model
