"""torchtitan 0.3 ``kimi_k2_7`` (model name ``kimi_k2_5``): DeepSeek-V3's MLA text tower, so deepseek_v3's adapter.

Layout (``torchtitan/models/kimi_k2_7/__init__.py``): the text layers are built by deepseek_v3's
``build_mla_moe_layers``, i.e. the same ``deepseek_v3.model.Attention.Config`` with a ``ComplexRoPE.Config``
on ``qk_rope_head_dim = 64``; the model config is ``KimiK25Model.Config``. Flavors: debugmodel (as
deepseek_v3's: YaRN 40 over 4096, mscale 0.70), Kimi-K2.5 (YaRN 64 over 4096, theta 5e4, mscale 1.0,
262144 positions), moonlight-16B-A3B and Kimi-VL-A3B (plain RoPE, mscale 1.0).

Everything about the attention factor is deepseek_v3's (``models/deepseek_v3.py``): the cache carries
the section's factor, the softmax scale transformers' ``mscale(f, mscale_all_dim) ** 2`` through
stock's own rule. Stock-equivalent section: deepseek_v3's, with the flavor's values (for plain-RoPE
flavors ``rope_type = "default"``). The vision tower's 2-D RoPE (``VisionAttention``) is image
positions, not context length: it is not part of this swap and stays stock.
"""

import dataclasses

from torchtitan.models.kimi_k2_7.model import KimiK25Model

from titan_rope_ext.torchtitan03.models import deepseek_v3

ADAPTER = dataclasses.replace(deepseek_v3.ADAPTER, name="kimi_k2_5", model=KimiK25Model.Config)
