"""Glue for torchtitan 0.2.x (the TOML line): the ``rope_scaling`` model converter and its section.

* ``converter.py``: the converter, registered with torchtitan's converter registry on import
  (``[model] converters = ["rope_scaling"]``);
* ``job_config.py``: the ``[rope_scaling]`` TOML section for torchtitan's ConfigManager (users name it
  ``titan_rope_ext.job_config``, which re-exports it), checked against ``model.converters``;
* ``models/``: one adapter per torchtitan 0.2 model, knowing its cache layout, dims and where its
  attention factor goes; ``models/_fused.py``: ``apply = "fused"`` on 0.2's attention modules;
* ``launch/``: the 0.2 side of ``titan-rope train`` (pre-launch check, rank entry);
* ``tools/``: ``titan-rope inspect``, ``eval`` and ``export`` on 0.2 jobs (their line-agnostic parts
  are in ``titan_rope_ext.tools``).

Everything here imports torchtitan 0.2; the core (``titan_rope_ext.config``, ``scaling``, ``cache``,
``hf``, ``hf_export``, ``kernels``) imports no torchtitan.
"""

from titan_rope_ext._torchtitan import require_line

require_line("0.2", __name__)
