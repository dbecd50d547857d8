"""transformers' Llama and Qwen3 as export targets, for either torchtitan line.

Each line's ``tools/export.py`` reads its own model config (0.2's model args, 0.3's config objects) into the
``expected`` keys (``hidden_size``, ``num_key_value_heads``, ...); this module adds what is transformers'
alone: the value transformers 5.24.0's ``LlamaConfig`` / ``Qwen3Config`` take when a base config.json leaves
a key out (``tests/unit/test_hf_architectures.py`` checks them against ``AutoConfig``) and the start of a
config.json made from the flavor when the job has none.
"""

from __future__ import annotations

from typing import Any

from titan_rope_ext.hf_export import Architecture


def llama(expected: dict[str, Any]) -> Architecture:
    """``LlamaForCausalLM`` (``model_type = "llama"``) with the dims ``expected``."""
    return Architecture(
        model_types=("llama",),
        expected=expected,
        defaults=dict(num_key_value_heads=lambda base: base.get("num_attention_heads"),
                      head_dim=lambda base: base["hidden_size"] // base["num_attention_heads"],
                      rms_norm_eps=1e-6, tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
                      hidden_act="silu"),
        new_config=dict(model_type="llama", architectures=["LlamaForCausalLM"]),
    )


def qwen3(expected: dict[str, Any]) -> Architecture:
    """``Qwen3ForCausalLM`` (``model_type = "qwen3"``, dense, full attention in every layer) with the dims ``expected``."""
    return Architecture(
        model_types=("qwen3",),
        expected=expected,
        defaults=dict(num_key_value_heads=32, head_dim=128, rms_norm_eps=1e-6, tie_word_embeddings=False,
                      attention_bias=False, hidden_act="silu", use_sliding_window=False,
                      layer_types=lambda base: ["full_attention"] * base.get("num_hidden_layers", 0)),
        new_config=dict(model_type="qwen3", architectures=["Qwen3ForCausalLM"]),
    )
