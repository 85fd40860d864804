"""Memory of a measurement window, for the benchmark's rows.

The process's RSS high-water mark (``VmHWM`` in ``/proc/self/status``), reset to the
current RSS before each measurement by writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0).
So ``peak_rss_mb`` of a row is the process's peak resident memory while that row ran, with that
model loaded (interpreter, libraries and the model included; earlier models are closed first,
but memory the allocator kept from them can still count). Where the reset is not allowed the
fallback is ``ru_maxrss``, which is process-wide and monotonic: the report names the method.
GPU memory (CUDA devices): PyTorch's allocator peak, and the device-wide used memory
(``cudaMemGetInfo``, which includes other processes and contexts).
"""
from __future__ import annotations

import gc
import platform
import re
import resource
from pathlib import Path

__all__ = ["MemoryProbe", "GpuMemoryProbe"]


class MemoryProbe:
    """Peak resident memory of this process over a window (see the module docstring)."""

    def __init__(self):
        self.method = "VmHWM after /proc/self/clear_refs reset"
        self.resettable = self._try_reset()
        if not self.resettable:
            self.method = "ru_maxrss (process-wide, monotonic: includes everything earlier in the run)"

    @staticmethod
    def _status_kb(key: str) -> int | None:
        try:
            m = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
        except OSError:
            return None
        return int(m.group(1)) if m else None

    def _try_reset(self) -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            return False
        return self._status_kb("VmHWM") is not None

    def reset(self) -> None:
        gc.collect()
        if self.resettable:
            self._try_reset()

    def rss_mb(self) -> float | None:
        kb = self._status_kb("VmRSS")
        return None if kb is None else kb / 1024.0

    def peak_mb(self) -> float:
        if self.resettable:
            kb = self._status_kb("VmHWM")
            if kb is not None:
                return kb / 1024.0
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r / (1024.0 * 1024.0) if platform.system() == "Darwin" else r / 1024.0


class GpuMemoryProbe:
    """CUDA memory over a window: PyTorch allocator peak and device-wide used memory."""

    def __init__(self, device: str):
        self.enabled = False
        if not str(device).startswith("cuda"):
            return
        try:
            import torch

            self.enabled = torch.cuda.is_available()
            self.torch = torch
            self.device = torch.device(device)
        except ImportError:
            pass

    def reset(self) -> None:
        if self.enabled:
            self.torch.cuda.synchronize(self.device)
            self.torch.cuda.reset_peak_memory_stats(self.device)

    def read(self) -> dict:
        if not self.enabled:
            return {}
        t = self.torch
        t.cuda.synchronize(self.device)
        free, total = t.cuda.mem_get_info(self.device)
        return {"gpu_torch_peak_mb": t.cuda.max_memory_allocated(self.device) / 2 ** 20,
                "gpu_device_used_mb": (total - free) / 2 ** 20}
