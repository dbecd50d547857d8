"""float64 references shared by the core tests and each torchtitan line's tests (torch only)."""

from __future__ import annotations

import torch


def rotate_pairs_reference(x: torch.Tensor, inv_freq: torch.Tensor, attention_factor: float, layout: str):
    """float64 RoPE on ``x`` (bs, seq, heads, head_dim), cos and sin times the factor (transformers' rule).

    layout "pairs": dims (2i, 2i+1) rotate together; "half": dims (i, i + head_dim/2).
    """
    seq = x.shape[1]
    angle = torch.arange(seq, dtype=torch.float64)[:, None] * inv_freq.double()[None, :]
    cos = (torch.cos(angle) * attention_factor)[None, :, None, :]
    sin = (torch.sin(angle) * attention_factor)[None, :, None, :]
    x = x.double()
    if layout == "pairs":
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)
