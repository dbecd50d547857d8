"""How closely two models' logits agree: the check behind the HF round-trip tests and demo.

Two float32 computations of the same model differ by rounding, about 1e-5 of the logit scale here; a
wrong RoPE moves logits by a sizeable fraction of it. ``agree`` passes when the largest difference is
within ``rel_tol`` (1e-4) of the reference's largest |logit| and the argmax agrees wherever the
reference's top-2 margin is clear (more than ``margin`` = 1e-3 of that scale; closer calls may flip
under rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Agreement:
    max_abs_diff: float
    """Largest |reference - candidate| over all positions and vocabulary entries."""
    scale: float
    """Largest |reference logit|."""
    argmax_agreement: float
    """Fraction of clear-margin positions whose argmax agrees."""
    clear_positions: int
    """Positions whose reference top-2 margin exceeds ``margin * scale``."""
    rel_tol: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.rel_tol * self.scale and self.argmax_agreement == 1.0

    def __str__(self) -> str:
        return (f"max |diff| {self.max_abs_diff:.3g} ({self.max_abs_diff / self.scale:.2g} of the logit scale "
                f"{self.scale:.3g}), argmax agrees at {100 * self.argmax_agreement:.1f}% of "
                f"{self.clear_positions} clear positions: {'PASS' if self.ok else 'FAIL'}")


def agree(reference: torch.Tensor, candidate: torch.Tensor, rel_tol: float = 1e-4, margin: float = 1e-3) -> Agreement:
    """Compares logits of shape ``(..., vocab)``; see the module docstring."""
    reference, candidate = reference.detach().float(), candidate.detach().float()
    if reference.shape != candidate.shape:
        raise ValueError(f"logits of different shapes: {tuple(reference.shape)} and {tuple(candidate.shape)}")
    scale = reference.abs().max().item()
    top2 = reference.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > margin * scale
    same = reference.argmax(-1) == candidate.argmax(-1)
    return Agreement(max_abs_diff=(reference - candidate).abs().max().item(), scale=scale,
                     argmax_agreement=same[clear].float().mean().item() if clear.any() else 1.0,
                     clear_positions=int(clear.sum()), rel_tol=rel_tol)
