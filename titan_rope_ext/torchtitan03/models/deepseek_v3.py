"""torchtitan 0.3 ``deepseek_v3``: multi-head latent attention (MLA) with a ``ComplexRoPE`` on the rope dims only.

Layout (``torchtitan/models/deepseek_v3/__init__.py``, ``model.py``): each layer's (and each
multi-token-prediction layer's) ``Attention.Config.rope`` is a ``ComplexRoPE.Config`` with
``dim = qk_rope_head_dim`` (64); the complex64 cache ``(max_seq_len, qk_rope_head_dim // 2)`` rotates
adjacent pairs of ``q_pe`` and of the one key ``k_pe`` shared by all heads; the ``qk_nope_head_dim``
part of q and k has no RoPE. Every flavor is stock YaRN: ``rope_factor = 40``, ``original_seq_len =
4096``, beta 32/1, ``theta = 1e4``; the YaRN frequencies come from 0.3's shared ``_yarn_inv_freq``.

Where the attention factor goes, as transformers' DeepSeek-V3 places it:
* the cache's magnitude carries the section's attention factor (for YaRN with ``mscale`` and
  ``mscale_all_dim`` set, ``mscale(f, mscale) / mscale(f, mscale_all_dim)``), on the rope dims only;
* the softmax scale is ``qk_head_dim ** -0.5 * mscale(f, mscale_all_dim) ** 2`` when the section sets
  ``mscale_all_dim`` (yarn), else ``qk_head_dim ** -0.5``.
Stock MLA computes its softmax scale in ``__init__`` from config fields: ``qk_head_dim ** -0.5 * m * m``
with ``m = 0.1 * Attention.Config.mscale * ln(rope.rope_factor) + 1`` when ``rope.scaling == "yarn"``
and ``rope_factor > 1``. That is transformers' rule with ``mscale_all_dim`` in ``mscale``'s place, in
the same order of operations, so ``convert`` sets exactly those fields (``Attention.Config.mscale =
mscale_all_dim``, our RoPE config's ``scaling = "yarn"`` and ``rope_factor = factor``; our cache ignores
both) or leaves ``scaling = "none"`` (softmax scale ``qk_head_dim ** -0.5``). The stock rule itself then
folds the factor in once; nothing else does. Because the factor lives in config fields every MLA
subclass reads, it also survives a later ``derive`` of the attention config (``fused_mla``).

Stock-equivalent section (every 0.3.0 flavor; the model's ``theta``): ``rope_type = "yarn"``,
``factor = rope_factor`` (40), ``original_max_position_embeddings = original_seq_len`` (4096),
``beta_fast = 32``, ``beta_slow = 1``, ``mscale = mscale_all_dim = Attention.Config.mscale``,
``arithmetic = "torchtitan"``: the cache is stock's bit for bit (the mscale ratio is exactly 1, and
``"torchtitan"`` is ``_yarn_inv_freq``'s rounding order; ``"deepseek"``, 0.2's stock order, and
transformers' are 1 ulp off it in some bands) and the softmax scale is stock's float. ``mscale`` here
is the cache's numerator, ``mscale_all_dim`` the softmax scale's: the flavors' ``Attention.Config.mscale``
is 0.70 (debugmodel, 16B) or 1.0 (236B, 671B); DeepSeek-V2-Lite's config.json (the 16B flavor's
checkpoint) says 0.707 for both, so a section read from it gives a softmax scale ~0.4% above stock's
and the same cache.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torchtitan.models.common.rope import ComplexRoPE
from torchtitan.models.deepseek_v3.model import Attention, DeepSeekV3Model

from titan_rope_ext.config import RopeScaling
from titan_rope_ext.scaling import yarn_mscale
from titan_rope_ext.torchtitan03.models import Adapter, scaled_rope
from titan_rope_ext.torchtitan03.rope import ScaledComplexRoPE


def softmax_mscale_all_dim(section: RopeScaling) -> float | None:
    """transformers' DeepSeek-V3 softmax rule: ``mscale_all_dim`` where set (and non-zero), else no factor."""
    if section.rope_type != "yarn" or not section.mscale_all_dim:
        return None
    return section.mscale_all_dim


@dataclass(frozen=True)
class MLAAdapter(Adapter):
    """MLA: the cache carries the section's factor; the softmax scale is set through stock's own rule."""

    def convert(self, attention_config, section: RopeScaling, max_seq_len: int | None = None, cache_sharing=None):
        mscale_all_dim = softmax_mscale_all_dim(section)
        if mscale_all_dim is None:
            return super().convert(attention_config, section, max_seq_len, cache_sharing)
        rope = scaled_rope(self, attention_config.rope, section, max_seq_len, cache_sharing,
                           scaling="yarn", rope_factor=section.factor)
        return dataclasses.replace(attention_config, rope=rope, mscale=mscale_all_dim)

    def softmax_note(self, attention_config) -> str:
        rope = attention_config.rope
        if rope.scaling != "yarn":
            return "; softmax_scale qk_head_dim**-0.5"
        m = yarn_mscale(rope.rope_factor, attention_config.mscale)
        return f"; softmax_scale qk_head_dim**-0.5 x {m:.6g}**2 (mscale_all_dim={attention_config.mscale})"


ADAPTER = MLAAdapter(
    name="deepseek_v3",
    attention=Attention.Config,
    stock_rope=ComplexRoPE.Config,
    rope=ScaledComplexRoPE.Config,
    factor_site="in the complex cache on the rope dims: q_pe and k_pe carry it once",
    model=DeepSeekV3Model.Config,
)
