"""``--override.imports``: rope_scaling as a torchtitan 0.3 ``@override``, for stock ``torchrun -m torchtitan.train``.

    --override.imports 'titan_rope_ext.torchtitan03.override.rope_scaling={"rope_type": "yarn", "factor": 4, "original_max_position_embeddings": 32}'

The JSON object holds ``[rope_scaling]`` keys (the ``RopeScaling`` fields, e.g. ``hf_config``),
validated as the section is (``ValueError`` naming the key and the value). torchtitan applies
overrides in ``Trainer.__init__`` after ``update_from_config`` and before building the model
(``torchtitan/trainer.py``), so the model is built with our RoPE on meta and its cache is built
by ``init_states`` on the device.

The override claims attention nodes, not RoPE nodes: where the attention factor must go is the
attention's contract, and only the attention node says which attention it is (MLA and gpt_oss fold
it into their softmax scale from config fields the model's adapter sets). Unsupported attention or
RoPE configs (qwen3_5's MRoPE) are refused with the supported list before the model is built.
Consequences of torchtitan's own override rules: an override on a node inside the attention
(``helion_rope``, an inner-attention swap) is refused as nested, and so is another override of the
same attention node (``fused_mla``: use the section or the converter, which run before overrides);
overrides elsewhere (``fused_swiglu``, MoE dispatch) compose.

Limits of this path, from where torchtitan runs it:
* ``training.seq_len`` cannot exceed the flavor's RoPE ``max_seq_len``: ``update_from_config``
  refuses that before any override runs. To train past it use the ``rope_scaling`` section
  (``titan-rope train``, ``--module titan_rope_ext.torchtitan03.jobs``, the shipped
  ``config_registry``) or ``RopeScalingConverter`` with ``max_seq_len``.
* ``from_hf_assets`` needs the job's ``hf_assets_path``, which an override does not see: pass
  ``hf_config = "<hf_assets_path>/config.json"``.
"""

from __future__ import annotations

import dataclasses
import functools
import json

from torchtitan.config import override
from torchtitan.models.common.attention import BaseAttention
from torchtitan.tools.logging import logger

from titan_rope_ext.config import RopeScaling
from titan_rope_ext.torchtitan03.cache_share import CacheSharing
from titan_rope_ext.torchtitan03.models import adapter_for, summary

_KEYS = tuple(f.name for f in dataclasses.fields(RopeScaling))


@functools.cache
def _section(keys_json: str) -> RopeScaling:
    keys = json.loads(keys_json)
    for key, value in keys.items():
        if key not in _KEYS:
            raise ValueError(f"rope_scaling override: unknown key {key!r} (value {value!r}); keys: {', '.join(_KEYS)}")
    if keys.get("from_hf_assets"):
        raise ValueError("rope_scaling.from_hf_assets = true needs the job's hf_assets_path, which an override "
                         "does not see; pass hf_config = '<hf_assets_path>/config.json' instead")
    # JSON has no float type of its own: 4 means 4.0 where the section takes a float, as on the CLI
    floats = {f.name for f in dataclasses.fields(RopeScaling) if str(f.type).startswith("float")}
    keys = {k: float(v) if k in floats and type(v) is int else v for k, v in keys.items()}
    return RopeScaling(**keys)


@functools.cache
def _sharing(keys_json: str) -> CacheSharing:
    """One ``CacheSharing`` per setting: a factory sees one attention at a time, not its model. It holds no
    tensor; each model built from the overridden configs still gets its own cache (``cache_share``)."""
    return CacheSharing()


_logged: set[str] = set()


@override(target=BaseAttention.Config, description="RoPE context extension (titan_rope_ext rope_scaling)")
def rope_scaling(cfg, **keys):
    """``cfg`` (one attention config) with its RoPE config swapped for ours, decided by ``keys``."""
    keys_json = json.dumps(keys, sort_keys=True)
    section = _section(keys_json)
    adapter = adapter_for(cfg, f"attention {type(cfg).__qualname__}")
    if not adapter.uses_rope(cfg):  # muse_glimmer's NoPE layers stay as they are
        return cfg
    new = adapter.convert(cfg, section, cache_sharing=_sharing(keys_json))
    line = summary(adapter, new)
    if line not in _logged:  # one line per distinct setting, not one per layer
        _logged.add(line)
        logger.info(f"rope_scaling (override): {line}")
    return new
