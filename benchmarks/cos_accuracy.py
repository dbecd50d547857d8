"""Accuracy of torch's CUDA float32 cos/sin/polar at large angles, and of the cacheless kernel, against float64.

Usage (one GPU, this repo importable)::

    python benchmarks/cos_accuracy.py

Prints, for 2**20 random float32 angles in ``[0, 2**20)`` (the angles of positions up to 1M times
``inv_freq`` up to 1): the largest and mean absolute error of torch's CUDA ``cos``, ``sin`` and the real part
of ``polar`` (what torchtitan's caches are built with) against float64; then, for q ``(2, 512, 32, 128)`` and
k ``(2, 512, 8, 128)`` in bf16 at positions up to 2**20, how many elements of the cacheless kernel's output lie
beyond one bf16 rounding of the float64 rotation (both layouts). It explains
tests/unit/kernels/test_rotary_cacheless.py's bound (benchmarks/results/cos_accuracy_h200.txt).
"""

import torch
from titan_rope_ext.kernels.rotary import rotate_cacheless, rotary_cacheless_reference
torch.manual_seed(0)
ang = torch.rand(1 << 20, device="cuda") * (2.0 ** 20)
d = ang.double()
for name, f32, f64 in (("cos", ang.cos(), d.cos()), ("sin", ang.sin(), d.sin())):
    err = (f32.double() - f64).abs()
    print(f"torch {torch.__version__} cuda float32 {name} vs float64 on angles in [0, 2**20): max abs err {err.max().item():.3e}, "
          f"mean {err.mean().item():.3e}")
for name, f32 in (("cos", ang.cos()), ("sin", ang.sin())):
    small = ang[: 1 << 16] % 100
    print(name, "small-angle max abs err", (getattr(small, name)().double() - getattr(small.double(), name)()).abs().max().item())
# the same values through torch.polar (what the complex cache uses)
p = torch.polar(torch.ones_like(ang), ang)
print("polar real vs float64 cos max abs err", (p.real.double() - d.cos()).abs().max().item())
# the cacheless kernel against float64, bf16 q/k, positions up to 2**20
inv = 1.0 / (500000.0 ** (torch.arange(0, 128, 2, device="cuda").float() / 128))
q = torch.randn(2, 512, 32, 128, device="cuda", dtype=torch.bfloat16)
k = torch.randn(2, 512, 8, 128, device="cuda", dtype=torch.bfloat16)
pos = torch.randint(0, 1 << 20, (2, 512), device="cuda")
for pairs in (True, False):
    out = rotate_cacheless(q, k, inv, 1.0, pos, pairs, False)
    ex = rotary_cacheless_reference(q.double(), k.double(), inv, 1.0, pos, pairs, False)
    r = max(((a.double() - e).abs() / e.abs().clamp_min(1e-3)).max().item() for a, e in zip(out, ex))
    bad = sum(((a.double() - e).abs() > 2.0**-8 * e.abs() + 1e-6 * e.abs().max()).sum().item() for a, e in zip(out, ex))
    print(f"cacheless pairs={pairs}: elements beyond one bf16 rounding of float64: {bad}")
