"""CPU-only shims for torchtitan 0.3 runs of ``titan-rope train``.

The process-level shims are the same as for 0.2 and live in ``titan_rope_ext.launch.cpu``
(torch-level only; applied by the package import in a ``titan-rope`` CPU worker): torch reports
device type ``cpu`` so torchtitan uses ``torch.cpu`` and gloo, ``torch.cpu`` answers the memory
statistics torchtitan's metrics ask for, and FSDP2 reduces with a plain SUM (gloo has no
``PREMUL_SUM``). They change nothing on a host with an accelerator.

One more for 0.3, applied to the job's config and only in those workers: torchtitan 0.3's
language models default to FlexAttention, which has no backward on CPU, so every
``FlexAttention.Config`` becomes torchtitan's ``ScaledDotProductAttention.Config``. SDPA takes no
masks: attention is causal over the whole window (no per-document masking), while RoPE still
gets the dataloader's per-document positions. GPU runs never pass through here.
"""

from __future__ import annotations

import dataclasses
import os


def cpu_worker() -> bool:
    """True in a ``titan-rope`` worker whose CPU shims are active (set only by the launcher on CPU-only hosts)."""
    if os.environ.get("TITAN_ROPE_CPU_WORKER") != "1":
        return False
    from titan_rope_ext.launch.cpu import apply_cpu_shims

    return apply_cpu_shims()  # idempotent: True where applied (at package import), False on an accelerator host


def use_sdpa(config) -> int:
    """Replaces every ``FlexAttention.Config`` inner attention of ``config.model_spec.model`` by SDPA; returns how many."""
    from torchtitan.models.common.attention import FlexAttention, ScaledDotProductAttention

    swapped = 0
    for layer in getattr(config.model_spec.model, "layers", None) or []:
        attention = getattr(layer, "attention", None)
        if attention is not None and isinstance(getattr(attention, "inner_attention", None), FlexAttention.Config):
            layer.attention = dataclasses.replace(attention, inner_attention=ScaledDotProductAttention.Config())
            swapped += 1
    return swapped


def use_sdpa_if_cpu_worker(config) -> None:
    if not cpu_worker() or config.model_spec is None:
        return
    from torchtitan.tools.logging import logger

    if swapped := use_sdpa(config):
        logger.info(f"titan-rope (CPU): FlexAttention has no backward on CPU; SDPA (causal) in {swapped} layers")
