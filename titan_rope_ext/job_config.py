"""torchtitan custom config module: adds the ``[rope_scaling]`` section.

``[job] custom_config_module = "titan_rope_ext.job_config"`` makes torchtitan's
ConfigManager merge this JobConfig into its own (TOML and ``--rope_scaling.<key>`` CLI
overrides), and importing it registers the ``rope_scaling`` converter.
"""

from dataclasses import dataclass, field

import titan_rope_ext.converter  # noqa: F401  (registers the converter)
from titan_rope_ext.config import RopeScaling


@dataclass
class JobConfig:
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    """RoPE method applied by the ``rope_scaling`` model converter."""
