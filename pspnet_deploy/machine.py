"""This machine: its CPU (model name, cores, instruction-set features, read once from /proc/cpuinfo),
its GPU, and the environment record every benchmark writes.

The one owner of CPU feature detection: OpenVINO's build checks, the benchmark's environment record,
BF16 autocast in ``pspnet-train`` and ``pspnet-qat`` (``bf16_choice``) all ask here. Nothing here
imports torch at import time.
"""
from __future__ import annotations

import functools
import os
import platform
import re
from pathlib import Path

from .errors import UserError

__all__ = ["ISA_FEATURES", "AUTO_ON_OFF", "cpu_flags", "cpu_model_name", "cpu_has_bf16", "cpu_has_vnni", "bf16_choice",
           "cpu_info", "gpu_info", "environment"]
#: the values of the precision switches (``pspnet-train --amp``, ``pspnet-qat --bf16``)
AUTO_ON_OFF = ("auto", "on", "off")

#: the CPU features that decide which precisions run fast here (names as in /proc/cpuinfo)
ISA_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> str | None:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU flags of /proc/cpuinfo, or of the text given (empty where it cannot be read)."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    m = re.search(r"^flags\s*:\s*(.*)$", text or "", re.M)
    return set(m.group(1).split()) if m else set()


def cpu_model_name(cpuinfo: str | None = None) -> str | None:
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    m = re.search(r"^model name\s*:\s*(.+)$", text or "", re.M)
    return m.group(1).strip() if m else None


def cpu_has_bf16(flags: set[str] | None = None) -> bool:
    """True when the CPU executes BF16 natively: AVX-512 BF16 or AMX-BF16. Without either, BF16 is
    emulated and slower than FP32, so callers fall back to FP32. Where /proc/cpuinfo cannot be read,
    torch's oneDNN check answers (torch is imported only then)."""
    if flags is None and _cpuinfo() is None:
        try:
            import torch

            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (ImportError, AttributeError, RuntimeError):
            return False
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def bf16_choice(mode: str, option: str) -> bool:
    """Whether a CPU run uses BF16 autocast for ``mode`` (auto: where the CPU has native BF16, an
    assumption from the flags - nothing is measured, and on an Intel Xeon with AVX-512 BF16 but no
    AMX BF16 autocast ran slower than FP32 (issue 25); on: required, refused
    without it; off: never). ``option`` names the switch in the messages."""
    if mode not in AUTO_ON_OFF:
        raise UserError(f"{option} must be auto, on or off, got {mode!r}")
    if mode == "off":
        return False
    if cpu_has_bf16():
        return True
    if mode == "on":
        raise UserError(f"{option} on: this CPU has no native BF16 (no avx512_bf16 / amx_bf16), so BF16 autocast "
                        f"would be slower than FP32; use {option} auto or off")
    return False


def cpu_has_vnni(flags: set[str] | None = None) -> bool:
    """True when INT8 dot products run natively: AVX-512 VNNI, AVX-VNNI or AMX-INT8."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)


def _physical_cores(cpuinfo: str | None = None) -> int | None:
    """Distinct (physical id, core id) pairs of /proc/cpuinfo, or None where it says nothing."""
    physical, phys = set(), None
    for line in (_cpuinfo() if cpuinfo is None else cpuinfo or "").splitlines():
        if line.startswith("physical id"):
            phys = line.split(":")[1].strip()
        elif line.startswith("core id"):
            physical.add((phys, line.split(":")[1].strip()))
    return len(physical) or None


def cpu_info() -> dict:
    """The CPU as a benchmark records it: model, logical / physical / usable CPUs, ISA features."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    flags = cpu_flags()
    return {"cpu": cpu_model_name() or platform.processor() or platform.machine(), "logical_cpus": os.cpu_count(),
            "physical_cores": _physical_cores(), "usable_cpus": usable,
            "isa": [f for f in ISA_FEATURES if f in flags]}


def gpu_info() -> dict | None:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return None
    if not torch.cuda.is_available():
        return None
    p = torch.cuda.get_device_properties(0)
    return {"name": p.name, "count": torch.cuda.device_count(), "memory_gb": round(p.total_memory / 2 ** 30, 2),
            "compute_capability": f"{p.major}.{p.minor}", "cuda": torch.version.cuda}


def environment(threads: int | None, device: str) -> dict:
    """What every benchmark record carries: platform, CPU and ISA, threads, GPU, versions, load."""
    import torch

    from .utils import versions

    env = {"platform": platform.platform(), "hostname": platform.node(), **cpu_info(),
           "torch_threads": torch.get_num_threads(),
           "onnxruntime_threads": threads or "onnxruntime default (one per physical core)",
           "opencv_threads": "OpenCV single-threaded (cv2.setNumThreads(0) by pspnet_deploy.data)",
           "device": device, "gpu": gpu_info(), "versions": versions()}
    try:
        env["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        pass
    return env
