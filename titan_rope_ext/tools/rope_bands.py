"""What a RoPE does per frequency band: the table and plot of ``titan-rope inspect``, for either torchtitan line.

Per frequency band ``i`` (dimensions ``2i, 2i+1`` or ``i, i + d/2``): the wavelength (tokens per full
turn, ``2 pi / inv_freq``) of plain RoPE at the model's theta ("default"), of stock torchtitan and of
the converted model; the scale (converted wavelength / default wavelength: 1 = band kept, ``factor`` =
fully interpolated); and the context the band covers, ``trained length x scale``: the positions over
which the band turns no further than it did in training. Each torchtitan line's ``tools/inspect_rope.py``
resolves a job into an :class:`Inspection`.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Callable

import torch

from titan_rope_ext.config import rope_frequencies, RopeScaling


@dataclasses.dataclass
class Inspection:
    model: str
    flavor: str
    head_dim: int
    theta: float
    seq_len: int
    config: RopeScaling
    trained_length: int
    default: torch.Tensor  # inv_freq of plain RoPE at the model's theta
    stock: torch.Tensor  # inv_freq stock torchtitan uses for this job
    stock_factor: float  # magnitude of stock's cache
    converted: torch.Tensor  # inv_freq of the converted model
    attention_factor: float



def trained_length(config: RopeScaling, seq_len: int) -> int:
    """The length the model was trained at: the section's original length, else seq_len / factor."""
    if config.original_max_position_embeddings is not None:
        return config.original_max_position_embeddings
    if config.factor is not None:
        return max(1, round(seq_len / config.factor))
    return seq_len



def decode(cache: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, float]:
    """(inv_freq, magnitude) read from position 1 of a complex or ``[cos | sin]`` cache."""
    row = cache[1].detach().cpu()
    if row.is_complex():
        return row.angle().double(), float(row.abs().mean())
    half = head_dim // 2
    cos, sin = row[:half].double(), row[head_dim:head_dim + half].double()
    return torch.atan2(sin, cos), float(torch.hypot(cos, sin).mean())



def regime(scale: float, factor: float | None) -> str:
    if abs(scale - 1.0) < 1e-4:
        return "kept"
    if factor is not None and abs(scale - factor) < 1e-4 * factor:
        return "interpolated"
    return "blended" if scale > 1.0 else "sped up"



def table(ins: Inspection) -> str:
    wave = lambda inv: 2 * math.pi / inv  # noqa: E731
    cfg = ins.config
    lines = [
        f"model {ins.model} ({ins.flavor}): rotary head_dim {ins.head_dim}, theta {ins.theta:g}, "
        f"training seq_len {ins.seq_len}",
        f"rope_scaling: {cfg.describe()}",
        f"trained length {ins.trained_length} -> {ins.seq_len} ({ins.seq_len / ins.trained_length:g}x); "
        f"attention factor {ins.attention_factor:.6g} (stock torchtitan's cache: {ins.stock_factor:.6g})",
        "",
        f"{'band':>4} {'dims':>9} {'wavelength: default':>20} {'stock':>12} {'converted':>12} "
        f"{'scale':>8} {'covers (tokens)':>16}  regime",
    ]
    if warning := cfg.extrapolation_warning(ins.seq_len):
        lines.insert(3, f"WARNING: {warning}")
    for i in range(ins.head_dim // 2):
        scale = float(ins.default[i] / ins.converted[i])
        lines.append(
            f"{i:>4} {f'{2 * i},{2 * i + 1}':>9} {float(wave(ins.default[i])):>20.6g} {float(wave(ins.stock[i])):>12.6g} "
            f"{float(wave(ins.converted[i])):>12.6g} {scale:>8.4g} {ins.trained_length * scale:>16.6g}  "
            f"{regime(scale, cfg.factor)}"
            + ("" if float(wave(ins.converted[i])) <= ins.seq_len else "  (no full turn within seq_len)"))
    return "\n".join(lines)



def alternatives(ins: Inspection) -> dict[str, torch.Tensor]:
    """The other methods at the same factor and trained length, for the plot."""
    factor = ins.seq_len / ins.trained_length if ins.config.factor is None else ins.config.factor
    if factor <= 1.0:
        return {}
    sections = {
        "linear": dict(factor=factor),
        "ntk": dict(factor=factor),
        "yarn": dict(factor=factor, original_max_position_embeddings=ins.trained_length),
        "llama3": dict(factor=factor, low_freq_factor=1.0, high_freq_factor=4.0,
                       original_max_position_embeddings=ins.trained_length),
    }
    out = {}
    for rope_type, section in sections.items():
        if rope_type != ins.config.rope_type:
            inv, _ = rope_frequencies(RopeScaling(rope_type=rope_type, **section), ins.head_dim, ins.theta, ins.seq_len)
            out[f"{rope_type} (x{factor:g})"] = inv.double()
    return out



def plot(ins: Inspection, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bands = torch.arange(ins.head_dim // 2) * 2
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, inv in alternatives(ins).items():
        ax.plot(bands, 2 * math.pi / inv, lw=1, alpha=0.6, label=name)
    ax.plot(bands, 2 * math.pi / ins.default, "k:", lw=1.5, label="default (unscaled)")
    ax.plot(bands, 2 * math.pi / ins.stock, "--", color="gray", lw=1.5, label="stock torchtitan")
    ax.plot(bands, 2 * math.pi / ins.converted, color="C3", lw=2.5, label=f"converted: {ins.config.rope_type}")
    ax.axhline(ins.trained_length, color="C0", lw=0.8, ls="-.", label=f"trained length {ins.trained_length}")
    ax.axhline(ins.seq_len, color="C1", lw=0.8, ls="-.", label=f"seq_len {ins.seq_len}")
    ax.set_yscale("log")
    ax.set_xlabel("dimension (band start)")
    ax.set_ylabel("wavelength (tokens per turn)")
    ax.set_title(f"{ins.model} {ins.flavor}: {ins.config.describe()}", fontsize=7, wrap=True)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(resolve: Callable[[], Inspection], plot_path: str | None, errors: type[Exception]) -> int:
    """``titan-rope inspect``'s output for either line: the table (and the plot) of ``resolve()``, or one line
    and status 2 when it raises ``errors`` (that line's ConfigError)."""
    try:
        ins = resolve()
    except errors as e:
        print(f"titan-rope: error: {e}", file=sys.stderr)
        return 2
    print(table(ins))
    if plot_path:
        plot(ins, plot_path)
        print(f"plot: {plot_path}")
    return 0
