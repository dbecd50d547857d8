"""Shared by the per-model tests: build a model the way torchtitan's Trainer does."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from titan_rope_ext import RopeScaling
from tests.reference import rotate_pairs_reference  # noqa: F401  (the per-model tests import it from here)


def build(model_cls, args, adapter, cfg: RopeScaling | None, device: str = "cpu", seed: int = 0):
    """Construct on ``device``, convert (if ``cfg``), then for meta ``to_empty`` + ``init_weights``."""
    with torch.device(device):
        model = model_cls(args)
    if cfg is not None:
        adapter.convert(model, cfg)
        if device == "meta":
            assert getattr(model, adapter.buffer).is_meta  # the converter allocated nothing real
    if device == "meta":
        model.to_empty(device="cpu")
    torch.manual_seed(seed)
    with torch.no_grad():
        model.init_weights(buffer_device=None)
    return model


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, *, window: int | None = None,
           sinks: torch.Tensor | None = None) -> torch.Tensor:
    """float64 causal softmax attention on (bs, seq, heads, dim) tensors; returns (bs, seq, heads * v_dim).

    k and v may have fewer heads than q (grouped-query: each kv head serves consecutive q heads).
    ``window``: a query sees itself and the ``window - 1`` positions before it (sliding window).
    ``sinks`` (one logit per q head, gpt-oss): an extra softmax column that takes probability
    mass and contributes no value.
    """
    bs, seq, heads, _ = q.shape
    q, k, v = (t.double().transpose(1, 2) for t in (q, k, v))
    k, v = (t.repeat_interleave(heads // t.shape[1], dim=1) for t in (k, v))
    scores = q @ k.transpose(-1, -2) * scale
    pos = torch.arange(seq)
    hidden = pos[None, :] > pos[:, None]
    if window is not None:
        hidden |= pos[:, None] - pos[None, :] >= window
    scores = scores.masked_fill(hidden, float("-inf"))
    if sinks is not None:
        sink = sinks.double().view(1, heads, 1, 1).expand(bs, heads, seq, 1)
        probs = F.softmax(torch.cat((scores, sink), dim=-1), dim=-1)[..., :-1]
    else:
        probs = F.softmax(scores, dim=-1)
    return (probs @ v).transpose(1, 2).reshape(bs, seq, -1)


def reference_attention(attn, x: torch.Tensor, inv_freq: torch.Tensor, attention_factor: float,
                        layout: str = "pairs", window: int | None = None,
                        sinks: torch.Tensor | None = None) -> torch.Tensor:
    """float64 attention of a ``wq/wk/wv/wo`` module as transformers would compute it: the factor on
    cos and sin, softmax scale 1/sqrt(head_dim), grouped-query heads; ``window`` and ``sinks`` as in
    ``attend``."""
    bs, seq, _ = x.shape
    q, k, v = (w(x).view(bs, seq, -1, attn.head_dim) for w in (attn.wq, attn.wk, attn.wv))
    q = rotate_pairs_reference(q, inv_freq, attention_factor, layout)
    k = rotate_pairs_reference(k, inv_freq, attention_factor, layout)
    out = attend(q, k, v, attn.head_dim**-0.5, window=window, sinks=sinks)
    return attn.wo(out.to(x.dtype))
