"""torchtitan ``qwen3``: float32 ``[cos | sin]`` cache, rotate-half, attention factor on cos and sin.

Layout: ``Qwen3Model.rope_cache`` is a non-persistent float32 buffer of shape
``(max_seq_len, 2 * head_dim)`` (``head_dim`` is its own model arg, 128 in every flavor), built
by the method ``Qwen3Model._precompute_rope_cache`` and applied by ``apply_rotary_emb`` as
``x * cos + rotate_half(x) * sin`` (dimension ``i`` pairs with ``i + head_dim/2``), after q/k
RMSNorm. Positions index its rows.

Attention factor: multiplies the cos and the sin columns (transformers' rule), so q and k each
carry it once; the model's softmax scale ``head_dim ** -0.5`` is left alone.
"""

from titan_rope_ext.cache import cos_sin_cache
from titan_rope_ext.torchtitan02.models._common import MethodAdapter

ADAPTER = MethodAdapter(
    name="qwen3",
    model_class="torchtitan.models.qwen3.model.model:Qwen3Model",
    method="_precompute_rope_cache",
    buffer="rope_cache",
    head_dim=lambda args: args.head_dim,
    cache_fn=cos_sin_cache,
    factor_site="on cos and sin",
    pairs=False,
)
