"""torchtitan ``deepseek_v3`` (MLA): complex ``freqs_cis`` over ``qk_rope_head_dim`` only.

Layout: ``DeepSeekV3Model.freqs_cis`` is a non-persistent complex64 buffer of shape
``(max_seq_len, qk_rope_head_dim // 2)``, applied to adjacent pairs of the rope part of q
(``q_pe``) and of the shared rope key (``k_pe``); the ``qk_nope_head_dim`` part has no RoPE.
The model builds it with the module-level ``precompute_freqs_cis(model_args)``, called from
``__init__`` and ``init_weights``, so there is no method to hook: the converted instance's
subclass overrides ``init_weights`` to run the stock one and then rebuild the cache from
``[rope_scaling]`` on the same device (with ``apply = "fused_cacheless"``: ``inv_freq``, ``qk_rope_head_dim // 2``
floats; the stock ``init_weights`` still builds its own cache first, which is dropped at once).

Attention factor, as transformers' DeepSeek-V3 places it: the cache magnitude carries
``rope_frequencies``' factor (for YaRN with ``mscale`` and ``mscale_all_dim`` set, the ratio
``mscale(f, mscale) / mscale(f, mscale_all_dim)``), and each attention's ``softmax_scale`` is
``qk_head_dim ** -0.5 * mscale(f, mscale_all_dim) ** 2`` when ``mscale_all_dim`` is set, else
``qk_head_dim ** -0.5``. The converter sets ``softmax_scale`` itself, replacing the stock rule
(``mscale(rope_factor, model_args.mscale) ** 2``, applied only when ``max_seq_len >
original_seq_len``), so the factor is applied once and never silently dropped.

Stock 0.2.2 quirk fixed under the converter: stock applies YaRN (and its softmax mscale) only when
the training ``seq_len`` exceeds ``original_seq_len``; the converter applies what the section says.
Stock equivalence at ``seq_len > original_seq_len``, bit for bit: ``rope_type = "yarn"``,
``factor = rope_factor``, ``original_max_position_embeddings = original_seq_len``,
``beta_fast``/``beta_slow`` as the model args, ``mscale = mscale_all_dim = model_args.mscale``,
``arithmetic = "deepseek"`` (stock divides ``1/theta^x`` by the factor; transformers' order,
the default, computes ``1/(factor*theta^x)``, 1 ulp off stock in some bands).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from titan_rope_ext.cache import complex_cache
from titan_rope_ext.config import RopeScaling
from titan_rope_ext.torchtitan02.models._common import install, scaled_cache, summary
from titan_rope_ext.torchtitan02.models._fused import apply_fused
from titan_rope_ext.scaling import yarn_mscale


def _precompute(model: nn.Module) -> torch.Tensor:
    return scaled_cache(model, model.model_args.qk_rope_head_dim, complex_cache)


@functools.cache
def _subclass(base: type) -> type:
    class RopeScaled(base):
        def init_weights(self, buffer_device: torch.device | None = None) -> None:
            super().init_weights(buffer_device=buffer_device)
            with torch.device(self.freqs_cis.device):
                self.freqs_cis = _precompute(self)

    RopeScaled.__name__ = RopeScaled.__qualname__ = f"RopeScaled{base.__name__}"
    RopeScaled.__module__ = base.__module__
    return RopeScaled


def softmax_scale(qk_head_dim: int, config: RopeScaling) -> float:
    """``qk_head_dim ** -0.5``, times ``mscale(factor, mscale_all_dim)`` twice when mscale_all_dim is set
    (multiplied in stock's order, so the stock-equivalent section gives stock's float exactly)."""
    scale = qk_head_dim**-0.5
    if config.mscale_all_dim is None:
        return scale
    mscale = yarn_mscale(config.factor, config.mscale_all_dim)
    return scale * mscale * mscale


class DeepSeekV3Adapter:
    name = "deepseek_v3"
    buffer = "freqs_cis"

    def model_class(self) -> type[nn.Module]:
        from torchtitan.models.deepseek_v3.model.model import DeepSeekV3Model

        return DeepSeekV3Model

    def head_dim(self, model_args) -> int:
        return model_args.qk_rope_head_dim

    def stock_cache(self, model: nn.Module) -> torch.Tensor:
        from torchtitan.models.deepseek_v3.model.model import precompute_freqs_cis

        return precompute_freqs_cis(model.model_args)

    def convert(self, model: nn.Module, config: RopeScaling) -> str:
        args = model.model_args
        config.check_head_dim(args.qk_rope_head_dim)
        install(model, config, _subclass, self.buffer, _precompute)
        scale = softmax_scale(args.qk_nope_head_dim + args.qk_rope_head_dim, config)
        for layer in model.layers.values():
            layer.attention.softmax_scale = scale
        factor = scale * (args.qk_nope_head_dim + args.qk_rope_head_dim) ** 0.5
        return summary(config, args.qk_rope_head_dim, args, "qk_rope_head_dim",
                       "in the complex cache") + f", softmax_scale x{factor:.6g}" + apply_fused(
            model, config, self.model_class(), pairs=True, head_dim=args.qk_rope_head_dim, single=True)


ADAPTER = DeepSeekV3Adapter()
