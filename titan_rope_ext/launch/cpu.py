"""Process-local shims that let torchtitan 0.2.x's Trainer run on a CPU-only host.

torchtitan picks its device at import time (``torch._utils._get_available_device_type()``,
falling back to "cuda") and its metrics ask the device module for memory statistics.
On a host without an accelerator the launcher, and only the launcher, adapts its own
worker process before torchtitan is imported:

1. ``torch._utils._get_available_device_type`` answers "cpu", so torchtitan uses
   ``torch.cpu`` as its device module and ``gloo`` as its process-group backend;
2. ``torch.cpu`` gains the memory-statistics calls torchtitan's ``DeviceMemoryMonitor``
   makes (``get_device_name``, ``get_device_properties``, ``memory_stats``,
   ``reset_peak_memory_stats``, ``empty_cache``): the capacity is host RAM and the peak is the
   process's peak resident memory (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``), so
   the metrics line's ``memory:`` is this rank's peak RSS, not a device number; and
   ``current_device`` answers index 0 (torchtitan passes it to ``barrier(device_ids=...)``);
3. FSDP2 modules reduce gradients with a plain SUM (``set_force_sum_reduction_for_comms``)
   whenever torchtitan sets their gradient divide factor, because gloo has no
   ``PREMUL_SUM``. torchtitan already disables FSDP's division (factor 1.0) and
   rescales the loss itself, so a plain SUM gives the same gradients;
4. messages that only say the host is no GPU are dropped from this process's log: torchtitan's
   "Error running lspci" and "Peak flops undefined ... fallback to A100" warnings (its MFU
   column is then against an A100's peak, meaningless on CPU), and torch's "In CPU autocast, but
   the target dtype is not supported" warning for the float32 runs the launcher asks for;
5. ranks leave together: ``torch.distributed.destroy_process_group()`` (the whole world, as
   torchtitan's ``main`` calls it after training) first waits on a barrier when there are several
   ranks. torchtitan's rank 0 sleeps two seconds after the last step while the other ranks tear
   their gloo groups down at once; a rank shutting gloo down while a peer is still connected was
   seen to die of SIGABRT (exit -6) once in a few hundred 2-rank CPU runs, after a complete run.

Nothing here runs when an accelerator is present, no installed file is edited, and no
torchtitan module attribute is touched.
"""

from __future__ import annotations

import logging
import os
import warnings
from types import SimpleNamespace

import torch

_applied = False


def accelerator_available() -> bool:
    """True when torch sees a CUDA/ROCm, XPU, MTIA or out-of-tree accelerator."""
    return torch._utils._get_available_device_type() is not None


def _host_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _peak_rss_bytes() -> int:
    """This process's peak resident memory (``VmHWM``), in bytes; 0 where /proc does not tell."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass


def _memory_stats(device=None) -> dict[str, int]:
    peak = _peak_rss_bytes()
    return {"active_bytes.all.peak": peak, "reserved_bytes.all.peak": peak, "num_alloc_retries": 0, "num_ooms": 0}


_GPU_ONLY_LOGS = ("Error running lspci", "Peak flops undefined for: cpu")


class _DropGpuOnlyLogs(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_GPU_ONLY_LOGS)


def apply_cpu_shims() -> bool:
    """Adapt this process for a CPU-only torchtitan run; returns whether shims were applied.

    Must run before ``torchtitan`` is imported. A no-op on hosts with an accelerator.
    """
    global _applied
    if _applied:
        return True
    if accelerator_available():
        return False

    # 1. device selection
    torch._utils._get_available_device_type = lambda: "cpu"

    # 2. memory statistics (host RAM as capacity; CPU has no caching allocator peaks)
    total = _host_memory_bytes()
    cpu = torch.cpu
    cpu.get_device_name = lambda device=None: "cpu"
    cpu.get_device_properties = lambda device=None: SimpleNamespace(name="cpu", total_memory=total)
    cpu.memory_stats = _memory_stats
    cpu.reset_peak_memory_stats = lambda device=None: _reset_peak_rss()
    cpu.empty_cache = lambda: None
    # torch.cpu.current_device() answers "cpu"; torchtitan passes it to barrier(device_ids=[...])
    cpu.current_device = lambda: 0

    # 3. gloo has no PREMUL_SUM: reduce with SUM when torchtitan sets the divide factor
    from torch.distributed.fsdp import FSDPModule

    set_factor = FSDPModule.set_gradient_divide_factor

    def set_gradient_divide_factor(self, factor: float) -> None:
        set_factor(self, factor)
        self.set_force_sum_reduction_for_comms(True)

    FSDPModule.set_gradient_divide_factor = set_gradient_divide_factor

    # 4. no GPU-only noise (torchtitan logs through the root logger)
    logging.getLogger().addFilter(_DropGpuOnlyLogs())
    warnings.filterwarnings("ignore", message="In CPU autocast, but the target dtype is not supported")

    # 5. gloo ranks shut their process groups down together
    import torch.distributed as dist

    destroy = dist.destroy_process_group

    def destroy_process_group(group=None) -> None:
        if group is None and dist.is_initialized() and dist.get_world_size() > 1:
            dist.barrier()
        destroy(group)

    dist.destroy_process_group = destroy_process_group
    _applied = True
    return True
