"""torchtitan ``llama3``: complex ``freqs_cis`` on adjacent pairs, attention factor in the cache.

Layout: ``Transformer.freqs_cis`` is a non-persistent complex64 buffer of shape
``(max_seq_len, head_dim // 2)``, ``head_dim = dim // n_heads``, built by the method
``Transformer._precompute_freqs_cis`` (at construction and in ``init_weights``) and applied
by ``apply_rotary_emb`` to pairs ``(x[2i], x[2i+1])`` of q and k. Positions (CP, document
masking) index its rows, so the converter changes only how the rows are computed.

Attention factor: the cache magnitude (``attention_factor * exp(i*angle)``). q and k are
both multiplied by the cache, so each carries the factor once, as transformers applies it to
cos and sin; the model's softmax scale stays ``1/sqrt(head_dim)``.

The converted model ignores ``model_args.rope_scaling_args`` (stock torchtitan 0.2.2 always
applies llama3 scaling with them); ``[rope_scaling]`` alone decides the RoPE.
"""

from titan_rope_ext.cache import complex_cache
from titan_rope_ext.torchtitan02.models._common import MethodAdapter

ADAPTER = MethodAdapter(
    name="llama3",
    model_class="torchtitan.models.llama3.model.model:Transformer",
    method="_precompute_freqs_cis",
    buffer="freqs_cis",
    head_dim=lambda args: args.dim // args.n_heads,
    cache_fn=complex_cache,
    factor_site="in the complex cache",
    pairs=True,
)
