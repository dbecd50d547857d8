"""Tiny random-weight Hugging Face models whose dims match torchtitan flavors (tests and the HF round-trip demo).

Made by transformers itself (``from_config`` + ``save_pretrained``; nothing is downloaded; needs the
``test`` extra), with the shipped tokenizer (2048 ids) copied in, so the folder is a complete
``model.hf_assets_path`` for torchtitan's ``checkpoint.initial_load_in_hf``.

Random initialization (std 0.02) leaves attention nearly uniform, where a wrong RoPE hardly changes the
logits. ``sharpen`` makes it peaked and the logits large: q and k projections (llama) or q/k norm weights
(qwen3, whose q and k are RMS-normalized) multiplied by ``qk_gain``, and the final norm's weight by
``logit_gain``. The default gains give attention scores with a standard deviation of a few units.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

TOKENIZER = Path(__file__).parent / "tokenizer"

FLAVORS: dict[str, dict] = {
    # torchtitan llama3 "debugmodel": dim 256, 6 layers, 16 heads (head_dim 16), ffn 768, vocab 2048, eps 1e-5
    "llama3": dict(model_type="llama", hidden_size=256, intermediate_size=768, num_hidden_layers=6,
                   num_attention_heads=16, num_key_value_heads=16, head_dim=16, vocab_size=2048, rms_norm_eps=1e-5,
                   tie_word_embeddings=False),
    # torchtitan qwen3 "debugmodel": dim 256, 8 layers, 16 heads / 8 kv heads of 128, ffn 3072, tied, eps 1e-6
    "qwen3": dict(model_type="qwen3", hidden_size=256, intermediate_size=3072, num_hidden_layers=8,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=2048, rms_norm_eps=1e-6,
                  tie_word_embeddings=True),
}
"""torchtitan model name -> the transformers config of its debug flavor."""


def sharpen(model: torch.nn.Module, qk_gain: float, logit_gain: float) -> None:
    """Peaked attention and large logits (see the module docstring); in place."""
    with torch.no_grad():
        for layer in model.model.layers:
            attn = layer.self_attn
            if hasattr(attn, "q_norm"):  # qwen3: q and k are RMS-normalized per head after the projection
                attn.q_norm.weight.mul_(qk_gain ** 0.5)
                attn.k_norm.weight.mul_(qk_gain ** 0.5)
            else:
                attn.q_proj.weight.mul_(qk_gain)
                attn.k_proj.weight.mul_(qk_gain)
        model.model.norm.weight.mul_(logit_gain)


def make_tiny_hf_model(path: str | Path, model: str = "llama3", max_position_embeddings: int = 64,
                       rope_theta: float | None = None, seed: int = 0, qk_gain: float = 6.0, logit_gain: float = 8.0,
                       **dims) -> Path:
    """Writes a float32 random-weight HF model for torchtitan model ``model`` (its debug flavor's dims, or
    ``dims`` overriding them) with plain RoPE and the shipped tokenizer into ``path``; returns ``path``.

    ``rope_theta=None`` writes no rope keys at all, as Llama-1/2-era config.json files (transformers then
    uses its default theta, 10000.0).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    spec = {**FLAVORS[model], **dims}
    config = AutoConfig.for_model(**spec, max_position_embeddings=max_position_embeddings,
                                  rope_parameters={"rope_type": "default", "rope_theta": rope_theta or 10000.0},
                                  bos_token_id=0, eos_token_id=1)
    torch.manual_seed(seed)
    hf_model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    sharpen(hf_model, qk_gain, logit_gain)
    hf_model.save_pretrained(path)
    if rope_theta is None:
        written = json.loads((path / "config.json").read_text())
        for key in ("rope_parameters", "rope_scaling", "rope_theta"):
            written.pop(key, None)
        (path / "config.json").write_text(json.dumps(written, indent=2) + "\n")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(TOKENIZER / name, path / name)
    return path
