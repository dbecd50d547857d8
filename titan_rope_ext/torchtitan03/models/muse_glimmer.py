"""torchtitan 0.3 ``muse_glimmer``: ``GQAttention`` subclass with iRoPE (NoPE every fourth layer), ``ComplexRoPE``.

Layout (``torchtitan/models/muse_glimmer/__init__.py``, ``model.py``): every layer's
``Attention.Config`` (a ``GQAttention.Config`` subclass: q/k RMSNorm, q scaled by ``scale_query_by``,
sigmoid output gate, per-layer sliding window) carries a plain ``ComplexRoPE.Config`` (``dim = head_dim``,
``theta = 5e5``, no scaling); layers with ``use_rope = False`` (counted back from the last layer, every
fourth: layers 3 and 7 of the debug flavor) build it and never apply it. Softmax scale
``head_dim ** -0.5``, never read from the RoPE config.

Attention factor: the cache's magnitude, as llama3: q and k carry it once, after q's
``scale_query_by``. NoPE layers stay NoPE: their attention config, its stock RoPE config and so
their module are left exactly as stock builds them. Stock-equivalent section: ``rope_type = "default"``.
The multimodal flavors' vision tower (``VisionRopeFreq``) is image positions and stays stock.
"""

from __future__ import annotations

from dataclasses import dataclass

from torchtitan.models.common.rope import ComplexRoPE
from torchtitan.models.muse_glimmer.model import Attention

from titan_rope_ext.torchtitan03.models import Adapter
from titan_rope_ext.torchtitan03.rope import ScaledComplexRoPE


@dataclass(frozen=True)
class IRoPEAdapter(Adapter):
    def uses_rope(self, attention_config) -> bool:
        return attention_config.use_rope


ADAPTER = IRoPEAdapter(
    name="muse_glimmer",
    attention=Attention.Config,
    stock_rope=ComplexRoPE.Config,
    rope=ScaledComplexRoPE.Config,
    factor_site="in the complex cache of the RoPE layers: q and k carry it once; NoPE layers untouched",
)
