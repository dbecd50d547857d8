"""torchtitan 0.3 ``gpt_oss``: sink attention with a ``CosSinRoPE``; YaRN's factor in the softmax scale or in cos/sin.

Layout (``torchtitan/models/gpt_oss/__init__.py``, ``model.py``): each layer's ``Attention.Config.rope``
is a ``CosSinRoPE.Config`` with ``dim = head_dim`` (64), ``theta = 150000`` and stock YaRN (``rope_factor
= 32``, ``original_seq_len = 4096``, beta 32/1, ``truncate = False``: gpt-oss's own values) in every
flavor; float32 cache ``(max_seq_len, 2 * head_dim)`` = ``[cos | sin]``, rotate-half, on all of q and k.
Even layers attend in a 128-token sliding window; every layer has per-head sinks.

Where the attention factor goes: q.k must carry its square once, as transformers' GPT-OSS does by
scaling cos and sin. Stock 0.3 instead folds YaRN's ``0.1 ln f + 1`` into the softmax scale in
``Attention.__init__``: ``1 / sqrt(head_dim)``, then ``*= m * m`` with ``m = 0.1 * ln(rope.rope_factor) + 1``
when ``rope.scaling == "yarn"`` and ``rope_factor > 1``. ``convert`` keeps that place whenever stock's
rule gives the section's factor exactly (YaRN with its default factor, the checkpoints' own): our
RoPE config gets ``scaling = "yarn"``, ``rope_factor = factor`` and ``factor_in_cache = False`` (a pure
rotation), so stock's rule applies the factor once and the cache does not. Any other factor (longrope,
yarn with ``attention_factor`` or DeepSeek's ``mscale`` keys) cannot be written in stock's rule: it goes
into cos and sin (``factor_in_cache``, ``scaling = "none"``), softmax scale ``1 / sqrt(head_dim)``.
Factor 1 (default, linear, ntk, dynamic, llama3): both places are the same.

Stock-equivalent section: ``rope_type = "yarn"``, ``factor = 32``, ``original_max_position_embeddings =
4096``, ``beta_fast = 32``, ``beta_slow = 1``, ``truncate = false``, ``arithmetic = "torchtitan"``:
the cache is stock's bit for bit and the softmax scale stock's float (the same rule on the same numbers).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from torchtitan.models.common.rope import CosSinRoPE
from torchtitan.models.gpt_oss.model import Attention

from titan_rope_ext.config import RopeScaling
from titan_rope_ext.torchtitan03.models import Adapter, attention_factor, scaled_rope
from titan_rope_ext.torchtitan03.rope import ScaledCosSinRoPE


def stock_rule_factor(rope_factor: float) -> float:
    """The factor stock 0.3 gpt_oss folds into its softmax scale for ``scaling = "yarn"`` (1 when it folds none)."""
    return 0.1 * math.log(rope_factor) + 1.0 if rope_factor > 1.0 else 1.0


@dataclass(frozen=True)
class GptOssAdapter(Adapter):
    """gpt_oss: YaRN's own factor through stock's softmax rule; any other factor in cos and sin."""

    def convert(self, attention_config, section: RopeScaling, max_seq_len: int | None = None, cache_sharing=None):
        converted = super().convert(attention_config, section, max_seq_len, cache_sharing)
        factor = attention_factor(converted.rope)
        if section.rope_type != "yarn" or factor == 1.0 or factor != stock_rule_factor(section.factor):
            return converted  # factor (or none) in cos and sin, scaling "none": softmax 1/sqrt(head_dim)
        rope = scaled_rope(self, attention_config.rope, section, max_seq_len,
                           cache_sharing, scaling="yarn", rope_factor=section.factor, factor_in_cache=False)
        return dataclasses.replace(converted, rope=rope)

    def softmax_note(self, attention_config) -> str:
        rope = attention_config.rope
        if rope.scaling != "yarn":
            return "; softmax_scale head_dim**-0.5"
        return f"; not in cos/sin: softmax_scale head_dim**-0.5 x {stock_rule_factor(rope.rope_factor):.6g}**2 (stock's rule)"


ADAPTER = GptOssAdapter(
    name="gpt_oss",
    attention=Attention.Config,
    stock_rope=CosSinRoPE.Config,
    rope=ScaledCosSinRoPE.Config,
    factor_site="YaRN's own in the softmax scale, any other on cos and sin: q.k carries it once",
)
