"""``RopeScalingConverter``: rope_scaling as a torchtitan 0.3 ``ModelConfigConverter``, for config functions.

    from titan_rope_ext import RopeScaling
    from titan_rope_ext.torchtitan03.converter import RopeScalingConverter
    from torchtitan.models.llama3 import model_registry

    model_spec = model_registry("8B", converters=[RopeScalingConverter.Config(
        rope_scaling=RopeScaling(rope_type="yarn", factor=8.0, original_max_position_embeddings=8192),
        max_seq_len=65536)])

``model_registry`` builds the converter and calls ``convert(model_config)`` on the flavor's config
before the Trainer exists (``torchtitan/models/llama3/__init__.py``); this one swaps every
attention's RoPE config for ours and refuses what the package cannot handle right there.
``max_seq_len``, set to the job's ``training.seq_len``, resizes the caches, so training past the
flavor's RoPE length passes ``update_from_config``'s check; unset, the flavor's length stays the cap.
``from_hf_assets`` is refused (the converter does not see the job's ``hf_assets_path``): pass
``hf_config``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torchtitan.protocols.model import ModelConfigConverter
from torchtitan.tools.logging import logger

from titan_rope_ext.config import RopeScaling
from titan_rope_ext.torchtitan03.models import scale_model


class RopeScalingConverter(ModelConfigConverter):
    """Swaps the model config's attention configs through each model's adapter (``models/``); refuses to run twice."""

    @dataclass(kw_only=True, slots=True)
    class Config(ModelConfigConverter.Config):
        rope_scaling: RopeScaling = field(default_factory=RopeScaling)
        """The section that decides the RoPE."""

        max_seq_len: int | None = None
        """Cache length; set it to ``training.seq_len`` to train past the flavor's RoPE max_seq_len."""

        def __post_init__(self) -> None:
            if self.rope_scaling.from_hf_assets:
                raise ValueError("rope_scaling.from_hf_assets = true needs the job's hf_assets_path, which a "
                                 "model converter does not see; pass hf_config = '<hf_assets_path>/config.json'")
            if self.max_seq_len is not None and (isinstance(self.max_seq_len, bool) or self.max_seq_len <= 0):
                raise ValueError(f"RopeScalingConverter.max_seq_len must be a positive integer, got {self.max_seq_len!r}")

    def __init__(self, config: Config):
        self.config = config

    def convert(self, model_config):
        line = scale_model(model_config, self.config.rope_scaling, self.config.max_seq_len)
        logger.info(f"rope_scaling (converter): {line}")
        return model_config
