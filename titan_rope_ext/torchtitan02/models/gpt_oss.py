"""torchtitan ``gpt_oss``: float32 ``[cos | sin]`` cache, rotate-half, YaRN built in, factor on cos and sin.

Layout: as qwen3 — ``GptOssModel.rope_cache`` is a non-persistent float32 buffer of shape
``(max_seq_len, 2 * head_dim)``, rebuilt by the method ``GptOssModel._precompute_rope_cache``
and applied as ``x * cos + rotate_half(x) * sin``.

Attention factor: stock gpt_oss already multiplies its cos and sin by YaRN's
``0.1 * ln(rope_factor) + 1`` and keeps the softmax scale at ``1/sqrt(head_dim)``. The converter's
cache replaces the stock one whole (its own factor on cos and sin), so the factor is applied
once, never on top of the stock one, and the softmax scale is left alone.

Stock equivalence: ``rope_type = "yarn"``, ``factor = rope_factor`` (32), ``beta_fast = ntk_beta``
(32), ``beta_slow = ntk_alpha`` (1), ``original_max_position_embeddings = original_seq_len``
(4096), ``truncate = false`` — the values of gpt-oss's own config.json.
In torchtitan 0.2.1 the model lives under ``torchtitan.experiments``; 0.2.0 has none.
"""

from titan_rope_ext.cache import cos_sin_cache
from titan_rope_ext.torchtitan02.models._common import MethodAdapter

ADAPTER = MethodAdapter(
    name="gpt_oss",
    model_class="torchtitan.models.gpt_oss.model.model:GptOssModel"
                "|torchtitan.experiments.gpt_oss.model.model:GptOssModel",
    method="_precompute_rope_cache",
    buffer="rope_cache",
    head_dim=lambda args: args.head_dim,
    cache_fn=cos_sin_cache,
    factor_site="on cos and sin, replacing the stock YaRN cache",
    pairs=False,
)
