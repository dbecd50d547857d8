"""Rotary caches built from ``(inv_freq, attention_factor)``, one function per layout.

Pure torch. Angles are ``position * inv_freq`` in float32; the attention factor scales the
cache's magnitude, so applying the cache to q and to k carries it into the attention
logits squared, exactly as transformers scales cos and sin.
"""

from __future__ import annotations

import torch


def rotation_angles(inv_freq: torch.Tensor, seq_len: int) -> torch.Tensor:
    """float32 ``(seq_len, head_dim // 2)``: angle of band ``i`` at position ``p`` is ``p * inv_freq[i]``."""
    positions = torch.arange(seq_len, dtype=torch.float32, device=inv_freq.device)
    return torch.outer(positions, inv_freq.float())


def complex_cache(inv_freq: torch.Tensor, attention_factor: float, seq_len: int) -> torch.Tensor:
    """complex64 ``(seq_len, head_dim // 2)`` holding ``attention_factor * exp(i * angle)``.

    The layout of torchtitan's llama3 ``freqs_cis`` (applied to adjacent pairs
    ``(x[2i], x[2i+1])`` viewed as complex numbers). With ``attention_factor == 1`` it is
    bitwise the cache of torchtitan's ``precompute_freqs_cis`` for the same ``inv_freq``.
    """
    angles = rotation_angles(inv_freq, seq_len)
    return torch.polar(torch.full_like(angles, attention_factor), angles)


def cos_sin_cache(inv_freq: torch.Tensor, attention_factor: float, seq_len: int) -> torch.Tensor:
    """float32 ``(seq_len, 2 * head_dim)``: ``[cos | sin]``, each ``attention_factor * f(angle)``
    over ``head_dim`` columns with the bands repeated (``[angles, angles]``).

    The layout of torchtitan's qwen3 ``rope_cache`` (rotate-half: dimension ``i`` pairs with
    ``i + head_dim/2``). With ``attention_factor == 1`` it is bitwise torchtitan's
    ``precompute_rope_cache`` for the same ``inv_freq``.
    """
    angles = rotation_angles(inv_freq, seq_len)
    both_halves = torch.cat([angles, angles], dim=-1)
    return torch.cat([both_halves.cos() * attention_factor, both_halves.sin() * attention_factor], dim=-1)
