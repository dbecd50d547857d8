"""Rotary caches built from ``(inv_freq, attention_factor)``, one function per layout, and
``cache_views``, which reads either layout in place as the ``(cos, sin)`` the fused op takes.

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


def cache_views(cache: torch.Tensor, head_dim: int, pairs: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)``, each ``(rows, head_dim // 2)``, as views of the model's rotary buffer: the
    complex ``freqs_cis`` / ``ComplexRoPE`` cache (``pairs``) or the float32 ``[cos | sin]`` cache with
    repeated halves (torchtitan 0.2's qwen3 and gpt_oss, 0.3's ``CosSinRoPE``). No copy."""
    if pairs:
        if not cache.is_complex() or cache.shape[-1] != head_dim // 2:
            raise ValueError(f"fused rope: expected a complex (rows, {head_dim // 2}) cache, got "
                             f"{cache.dtype} {tuple(cache.shape)}")
        real = torch.view_as_real(cache)
        return real[..., 0], real[..., 1]
    if cache.is_complex() or cache.shape[-1] != 2 * head_dim:
        raise ValueError(f"fused rope: expected a float (rows, {2 * head_dim}) [cos | sin] cache, got "
                         f"{cache.dtype} {tuple(cache.shape)}")
    half = head_dim // 2
    return cache[:, :half], cache[:, head_dim:head_dim + half]
