"""Glue for torchtitan 0.3.x: the ``rope_scaling`` section through 0.3's own config system.

torchtitan 0.3 builds every module from a config object, so the glue is config objects:

* ``rope.py``: our RoPE modules, subclasses of 0.3's ``ComplexRoPE`` / ``CosSinRoPE`` whose
  ``_precompute_cache`` builds the cache from a ``RopeScaling``; 0.3's own init path
  (``init_states`` -> ``_init_self_buffers``) rebuilds it after meta init;
* ``models/``: which attention and RoPE configs belong to which model, and where the attention
  factor goes (one file per model); swaps a model config's RoPE configs for ours;
* three ways in: ``trainer.py`` (``RopeTrainer.Config``: a ``rope_scaling`` CLI section, used by
  ``titan-rope`` and the shipped ``config_registry``), ``override.py`` (``--override.imports``) and
  ``converter.py`` (a ``ModelConfigConverter`` for ``model_registry(..., converters=[...])``);
* ``jobs.py``: any config function with a ``rope_scaling`` section; ``config_registry.py``: recipes;
* ``launch/``: the 0.3 side of ``titan-rope train`` (pre-launch check, rank entry, CPU-only shims).

Everything here imports torchtitan 0.3; the core (``titan_rope_ext.config``, ``scaling``, ``cache``,
``hf``) imports no torchtitan.
"""

from titan_rope_ext._torchtitan import require_line

require_line("0.3", __name__)
