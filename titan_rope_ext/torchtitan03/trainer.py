"""``RopeTrainer``: torchtitan 0.3's ``Trainer`` with a ``rope_scaling`` config section.

torchtitan 0.3 adds a config section by subclassing ``Trainer.Config`` (``docs/extension.md``):
its fields become CLI flags, so ``--rope_scaling.<key>`` works with stock ``torchrun -m
torchtitan.train`` for any config function returning ``RopeTrainer.Config`` (the shipped
``config_registry``, ``jobs`` for any other config function, ``titan-rope train``).

The section alone decides the RoPE of every attention (its default is plain RoPE). It is checked
against the model when the config is built (``__post_init__``: unsupported model, longrope list
lengths, ``from_hf_assets`` without a config.json), i.e. while the job is parsed, before any rank
or device work. ``RopeTrainer.__init__`` swaps the RoPE configs before ``Trainer.__init__`` runs
``update_from_config``, with ``max_seq_len = training.seq_len``: the cache is built for the run's
length, so training past the flavor's RoPE length is not refused. After the model is built and
initialized it logs, per model part, how many RoPE layers share how many cache storages.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torchtitan.tools.logging import logger
from torchtitan.trainer import Trainer

from titan_rope_ext.config import RopeScaling
from titan_rope_ext.torchtitan03.cache_share import report_line, rope_cache_report
from titan_rope_ext.torchtitan03.models import check_model, scale_model


def unset_section() -> RopeScaling:
    """A section with nothing set, ``rope_type`` included: the default of ``RopeTrainer.Config.rope_scaling``.

    tyro takes every CLI default from the config instance, and ``RopeScaling()`` fills in
    ``rope_type = "default"``, which ``--rope_scaling.hf_config`` / ``--rope_scaling.from_hf_assets``
    would then contradict. Left unset, it means plain RoPE (``resolved_rope_scaling``), as on 0.2.
    """
    section = RopeScaling(from_hf_assets=True)  # the one way __post_init__ leaves rope_type unset
    section.from_hf_assets = False
    return section


class RopeTrainer(Trainer):
    @dataclass(kw_only=True, slots=True)
    class Config(Trainer.Config):
        rope_scaling: RopeScaling = field(default_factory=unset_section)
        """RoPE of every attention layer (transformers' rope_scaling keys; see titan_rope_ext.RopeScaling)."""

        def __post_init__(self) -> None:
            Trainer.Config.__post_init__(self)  # slots dataclasses have no zero-argument super()
            if self.model_spec is not None:
                check_model(self.model_spec.model, self.resolved_rope_scaling(), self.model_spec.name)

        def resolved_rope_scaling(self) -> RopeScaling:
            """The section with ``from_hf_assets`` read from ``<hf_assets_path>/config.json``."""
            section = self.rope_scaling.resolve_hf_assets(self.hf_assets_path)
            if section.rope_type is None:  # nothing set: rebuilt, __post_init__ makes it plain RoPE
                section = dataclasses.replace(section)
            return section

    def __init__(self, config: Config):
        line = scale_model(config.model_spec.model, config.resolved_rope_scaling(),
                           max_seq_len=config.training.seq_len, model_name=config.model_spec.name)
        logger.info(f"rope_scaling: {line}")
        super().__init__(config)
        # after init_weights: what each rank's model (each pipeline stage) really holds
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        parts = self.model_parts
        line = f"rope_scaling: rank {rank}: {report_line(rope_cache_report(*parts))}"
        if len(parts) > 1:  # this rank's pipeline stages: one cache each
            line += "; " + ", ".join(f"model part {i}: {r['rope_modules']} layers, {r['unique_storages']} storage(s)"
                                     for i, r in enumerate(rope_cache_report(part) for part in parts))
        logger.info(line)
