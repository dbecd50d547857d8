"""torchtitan 0.3 ``qwen3``: ``GQAttention`` with q/k RMSNorm and a ``CosSinRoPE``, attention factor on cos and sin.

Layout (``torchtitan/models/qwen3/__init__.py``, ``models/common/rope.py``): each layer's
``GQAttention.Config.rope`` is a ``CosSinRoPE.Config`` with ``dim = head_dim = 128`` and
``theta = 1e6``; ``max_seq_len`` is 4096 for the debug flavors and larger for the real ones. Its
module holds a float32 ``cache`` of shape ``(max_seq_len, 2 * head_dim)`` = ``[cos | sin]``, applied
rotate-half (dimension ``i`` pairs with ``i + head_dim/2``) after the q/k RMSNorm. Stock 0.3 has no
scaling on qwen3 and cannot apply ``scaling = "llama"`` to a cos/sin cache at all.

Attention factor: multiplies the cos and the sin columns (transformers' rule), so q and k each carry
it once; ``GQAttention``'s softmax scale ``head_dim ** -0.5`` is left alone. Stock YaRN on a
``CosSinRoPE`` has no factor anywhere: for YaRN x4 its logits lack transformers' (0.1 ln 4 + 1)^2 = 1.2965.
"""

from torchtitan.models.common.attention import GQAttention
from torchtitan.models.common.rope import CosSinRoPE

from titan_rope_ext.torchtitan03.models import Adapter
from titan_rope_ext.torchtitan03.rope import ScaledCosSinRoPE

ADAPTER = Adapter(
    name="qwen3",
    attention=GQAttention.Config,
    stock_rope=CosSinRoPE.Config,
    rope=ScaledCosSinRoPE.Config,
    factor_site="on cos and sin: q and k carry it once",
)
