"""torchtitan 0.3 ``llama3``: ``GQAttention`` with a ``ComplexRoPE``, attention factor in the cache.

Layout (``torchtitan/models/llama3/__init__.py``, ``models/common/rope.py``): each layer's
``GQAttention.Config.rope`` is a ``ComplexRoPE.Config`` with ``dim = dim // n_heads``,
``max_seq_len = 131072`` and ``theta = 500000`` in every flavor; its module holds a complex64
``cache`` of shape ``(max_seq_len, dim // 2)`` applied to adjacent pairs ``(x[2i], x[2i+1])``.

Stock 0.3 applies Llama 3.1 scaling (``scaling = "llama"``: factor 8, low 1, high 4, original 8192)
to every flavor, the debug model included. With rope_scaling the section alone decides the RoPE:
``rope_type = "llama3"`` with those four values is stock's cache bit for bit, ``"default"`` is plain RoPE.

Attention factor: the cache's magnitude; q and k each carry it once. ``GQAttention``'s softmax scale
is ``head_dim ** -0.5`` (or SDPA's default, the same) and never reads the RoPE config, so nothing
else applies it.
"""

from torchtitan.models.common.attention import GQAttention
from torchtitan.models.common.rope import ComplexRoPE

from titan_rope_ext.torchtitan03.models import Adapter
from titan_rope_ext.torchtitan03.rope import ScaledComplexRoPE

ADAPTER = Adapter(
    name="llama3",
    attention=GQAttention.Config,
    stock_rope=ComplexRoPE.Config,
    rope=ScaledComplexRoPE.Config,
    factor_site="in the complex cache: q and k carry it once",
)
