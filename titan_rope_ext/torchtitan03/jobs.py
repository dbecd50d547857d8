"""Any torchtitan 0.3 config function, with a ``rope_scaling`` section: ``--config <module>.<function>``.

    torchrun -m torchtitan.train --module titan_rope_ext.torchtitan03.jobs --config llama3.llama3_debugmodel \\
        --rope_scaling.rope_type yarn --rope_scaling.factor 4 --rope_scaling.original_max_position_embeddings 32

``<module>`` is what ``--module`` takes (a short name such as ``llama3``, or a dotted path to a
module or its ``config_registry``), ``<function>`` a config function in it. torchtitan's
ConfigManager looks ``<module>.<function>`` up here as an attribute; the function returned loads
the config as ConfigManager itself would (its ``_load_config``), then returns it as a
``RopeTrainer.Config`` with a default ``rope_scaling`` section, so every ``--rope_scaling.<key>``
flag parses and the section decides the RoPE (default: plain RoPE). ``titan-rope train`` rewrites
``--module M --config F`` to this form.

Two conveniences for the small CPU runs ``titan-rope`` makes, both logged:
* torchtitan's debug configs point at its repository's test assets (``./tests/assets/...``), which
  the wheel does not ship; where the configured tokenizer or dataset path does not exist, the
  package's tiny tokenizer and corpus (``titan_rope_ext/assets``) take its place;
* in a ``titan-rope`` CPU worker (and only there) FlexAttention, which has no backward on CPU,
  becomes SDPA (``titan_rope_ext.torchtitan03.launch.cpu``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
TOKENIZER = str(ASSETS / "tokenizer")
CORPUS = str(ASSETS / "corpus")


def load(module: str, function: str):
    """The config ``--module module --config function`` gives stock torchtitan (ConfigManager's own lookup)."""
    from torchtitan.config import ConfigManager

    config, _ = ConfigManager()._load_config(["--module", module, "--config", function])
    return config


def with_rope_scaling(config):
    """``config`` as a ``RopeTrainer.Config`` (unchanged if it is one already)."""
    from torchtitan.trainer import Trainer

    from titan_rope_ext.torchtitan03.trainer import RopeTrainer

    if isinstance(config, RopeTrainer.Config):
        return config
    if type(config) is not Trainer.Config:
        raise ValueError(
            f"rope_scaling: the config function returns {type(config).__qualname__}, not Trainer.Config; add the field "
            "rope_scaling: RopeScaling to that Config and apply it as RopeTrainer does, or use "
            "--override.imports titan_rope_ext.torchtitan03.override.rope_scaling or RopeScalingConverter"
        )
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}
    return RopeTrainer.Config(**values)


def use_shipped_assets(config) -> None:
    """Points a missing tokenizer / dataset path at the package's tiny assets (logged)."""
    from torchtitan.tools.logging import logger

    if not os.path.exists(config.hf_assets_path):
        logger.info(f"titan-rope: hf_assets_path {config.hf_assets_path} does not exist; using {TOKENIZER}")
        config.hf_assets_path = TOKENIZER
    loader = config.dataloader
    if getattr(loader, "dataset", None) == "c4_test" and not os.path.exists(loader.dataset_path or "tests/assets/c4_test"):
        logger.info(f"titan-rope: dataset c4_test is not here; using {CORPUS}")
        loader.dataset_path = CORPUS


def __getattr__(name: str):
    module, dot, function = name.rpartition(".")
    if not dot or not module or not function or name.startswith("__"):
        raise AttributeError(name)

    def config_function():
        from titan_rope_ext.torchtitan03.launch import cpu

        config = load(module, function)
        use_shipped_assets(config)
        config = with_rope_scaling(config)  # the section's model checks first: a RoPE the package refuses is said
        cpu.use_sdpa_if_cpu_worker(config)  # before an attention CPU runs refuse
        return config

    config_function.__name__ = config_function.__qualname__ = name
    config_function.__doc__ = f"{name} with a rope_scaling section"
    return config_function
