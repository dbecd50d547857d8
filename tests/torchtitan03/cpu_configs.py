"""Config functions for CPU runs of *stock* ``torchtitan.train`` in the tests (``--module tests.torchtitan03.cpu_configs``).

``titan-rope train`` gives CPU runs SDPA and the package's assets itself; a stock run does not, so these
do it in the config function: torchtitan's llama3 debug config with SDPA (FlexAttention has no CPU
backward) and the tiny tokenizer and corpus. Plain ``Trainer.Config``: the rope comes from the path under
test (``--override.imports`` or the converter).
"""

from __future__ import annotations

import copy

from torchtitan.models.llama3 import model_registry
from torchtitan.models.llama3.config_registry import llama3_debugmodel as stock_llama3_debugmodel

from titan_rope_ext import RopeScaling
from titan_rope_ext.torchtitan03.converter import RopeScalingConverter
from titan_rope_ext.torchtitan03.jobs import use_shipped_assets
from titan_rope_ext.torchtitan03.launch.cpu import use_sdpa

CAP = 128  # llama3_debugmodel_cap128: the flavor's RoPE length, as if the model had been built for 128 positions


def _cpu(config):
    use_shipped_assets(config)
    use_sdpa(config)
    return config


def llama3_debugmodel():
    """Stock llama3 debug on CPU (stock RoPE: Llama 3.1 scaling, cap 131072)."""
    return _cpu(stock_llama3_debugmodel())


def llama3_debugmodel_cap128():
    """llama3 debug whose RoPE configs say max_seq_len = 128: training at 256 is past the cap."""
    config = _cpu(stock_llama3_debugmodel())
    for layer in config.model_spec.model.layers:
        layer.attention.rope = copy.copy(layer.attention.rope)
        layer.attention.rope.max_seq_len = CAP
    return config


def llama3_debugmodel_converter_256():
    """The converter spelling, with max_seq_len = 256 past the 128 cap: YaRN 4x over 64."""
    config = llama3_debugmodel_cap128()
    converter = RopeScalingConverter.Config(
        rope_scaling=RopeScaling(rope_type="yarn", factor=4.0, original_max_position_embeddings=64), max_seq_len=256)
    converter.build().convert(config.model_spec.model)  # what model_registry(..., converters=[...]) does
    return config


def llama3_debugmodel_converter():
    """``model_registry("debugmodel", converters=[RopeScalingConverter.Config(...)])`` as a config function writes it."""
    config = stock_llama3_debugmodel()
    config.model_spec = model_registry("debugmodel", converters=[RopeScalingConverter.Config(
        rope_scaling=RopeScaling(rope_type="yarn", factor=4.0, original_max_position_embeddings=64))])
    return _cpu(config)


def qwen3_5_debugmodel():
    """llama3's debug job with qwen3_5's debug model (MRoPE: refused); qwen3_5's own config functions import
    torchvision for their multimodal data, which the test environments lack (the model needs ``fla``). No SDPA
    swap: the CPU shim refuses qwen3_5 itself, and the refusal under test is the RoPE one."""
    from torchtitan.models.qwen3_5 import model_registry as qwen3_5_registry

    config = stock_llama3_debugmodel()
    config.model_spec = qwen3_5_registry("debugmodel")
    use_shipped_assets(config)
    return config
