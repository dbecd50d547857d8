"""torchtitan ``llama4`` (incl. irope flavors): complex ``freqs_cis``, attention factor in the cache.

Layout: as llama3 — a non-persistent complex64 ``Transformer.freqs_cis`` of shape
``(max_seq_len, head_dim // 2)``, ``head_dim = dim // n_heads``, rebuilt by the method
``Transformer._precompute_freqs_cis`` and applied to adjacent pairs. In irope flavors
(``every_n_layers_nope``) the NoPE layers never read the cache, so they are unaffected.

Attention factor: the cache magnitude, so q and k of the RoPE layers each carry it once; the
softmax scale stays ``1/sqrt(head_dim)``.

Stock torchtitan llama4 scales with its ``rope_scaling_args`` (llama3 method with factor 16,
low 1, high 1, original 8192 in its flavors); ``[rope_scaling]`` with those values reproduces it.
"""

from titan_rope_ext.cache import complex_cache
from titan_rope_ext.torchtitan02.models._common import MethodAdapter

ADAPTER = MethodAdapter(
    name="llama4",
    model_class="torchtitan.models.llama4.model.model:Transformer",
    method="_precompute_freqs_cis",
    buffer="freqs_cis",
    head_dim=lambda args: args.dim // args.n_heads,
    cache_fn=complex_cache,
    factor_site="in the complex cache",
    pairs=True,
)
