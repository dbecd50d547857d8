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
gets the dataloader's per-document positions. That is the same attention only for models whose
FlexAttention is plain causal attention: llama3 and qwen3 (``CPU_SDPA_MODELS``). Other models'
FlexAttention carries what SDPA would drop silently (gpt_oss's sinks and sliding window,
muse_glimmer's sliding window), or their CPU runs are untested (deepseek_v3 and kimi's MLA and MoE), so a
CPU run of them is refused before any work. GPU runs never pass through here. ``titan-rope eval`` on CPU
makes the same swap (``use_sdpa``), with the same refusals.
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


CPU_SDPA_MODELS = ("llama3", "qwen3")
"""Models whose FlexAttention is plain causal attention, so causal SDPA computes the same on CPU."""


def use_sdpa(config, command: str = "train") -> int:
    """Replaces every ``FlexAttention.Config`` inner attention of ``config.model_spec.model`` by SDPA; returns how many.

    Raises ValueError for a model outside ``CPU_SDPA_MODELS`` (SDPA would drop, silently, what its attention does
    beyond causal masking, or its attention needs CUDA), naming ``command`` (``titan-rope train``, ``eval``)."""
    from torchtitan.models.common.attention import FlexAttention, ScaledDotProductAttention

    name = config.model_spec.name
    layers = getattr(config.model_spec.model, "layers", None) or []
    if name not in CPU_SDPA_MODELS:
        raise ValueError(f"titan-rope {command} on CPU runs {', '.join(CPU_SDPA_MODELS)} (causal SDPA in place of "
                         f"FlexAttention); {name}'s attention does more than causal masking (sinks, sliding "
                         "windows), needs CUDA (varlen) or is untested on CPU: run it on a GPU")

    swapped = 0
    for layer in layers:
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
