"""titan_rope_ext: RoPE context extension for torchtitan.

Public API::

    from titan_rope_ext import RopeScaling, rope_frequencies

The core (the section dataclass, the math, HF reading, cache layouts) imports no torchtitan, so
the package imports with torchtitan 0.2.x, 0.3.x or none installed. With torchtitan 0.2.x,
importing the package also registers the ``rope_scaling`` model converter
(``[experimental] custom_import = "titan_rope_ext"`` works for that reason); the
``[rope_scaling]`` TOML section comes from ``titan_rope_ext.job_config``.
"""

import os

if os.environ.get("TITAN_ROPE_CPU_WORKER") == "1":
    # Set only by `titan-rope train` for its own worker processes: adapt this process for a
    # CPU-only run before anything imports torchtitan (see titan_rope_ext/launch/cpu.py).
    from titan_rope_ext.launch.cpu import apply_cpu_shims

    apply_cpu_shims()

from titan_rope_ext.config import RopeScaling, rope_frequencies, ROPE_TYPES
from titan_rope_ext.scaling import ROPE_FUNCTIONS

__all__ = ["RopeScaling", "rope_frequencies", "ROPE_FUNCTIONS", "ROPE_TYPES"]
__version__ = "0.1.0"

from titan_rope_ext._torchtitan import torchtitan_line  # noqa: E402

if torchtitan_line() == "0.2":
    import titan_rope_ext.torchtitan02.converter  # noqa: F401  (registers the converter)
