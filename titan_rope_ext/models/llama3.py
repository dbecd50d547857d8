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

from __future__ import annotations

import torch
from torch import nn

from titan_rope_ext.cache import complex_cache
from titan_rope_ext.config import rope_frequencies, RopeScaling
from titan_rope_ext.models._common import config_of, install


def _head_dim(model_args) -> int:
    return model_args.dim // model_args.n_heads


def _precompute_freqs_cis(self) -> torch.Tensor:
    args = self.model_args
    inv_freq, attention_factor = rope_frequencies(config_of(self), _head_dim(args), args.rope_theta, args.max_seq_len)
    return complex_cache(inv_freq, attention_factor, args.max_seq_len)


class Llama3Adapter:
    name = "llama3"

    def model_class(self) -> type[nn.Module]:
        from torchtitan.models.llama3.model.model import Transformer

        return Transformer

    def head_dim(self, model_args) -> int:
        return _head_dim(model_args)

    def convert(self, model: nn.Module, config: RopeScaling) -> str:
        args = model.model_args
        config.check_head_dim(_head_dim(args))
        install(model, config, "_precompute_freqs_cis", _precompute_freqs_cis, buffer="freqs_cis")
        with torch.device("meta"):
            _, attention_factor = rope_frequencies(config, _head_dim(args), args.rope_theta, args.max_seq_len)
        return (
            f"head_dim={_head_dim(args)} theta={config.effective_theta(args.rope_theta)} "
            f"seq_len={args.max_seq_len} attention_factor={attention_factor:.6g} (in the complex cache)"
        )


ADAPTER = Llama3Adapter()
