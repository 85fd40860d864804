"""This machine's CPU: its model name and instruction-set features, read once from /proc/cpuinfo.

The one owner of CPU feature detection: OpenVINO's build checks, the benchmark's environment record,
BF16 autocast in ``pspnet-train`` and ``pspnet-qat`` all ask here.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

__all__ = ["ISA_FEATURES", "cpu_flags", "cpu_model_name", "cpu_has_bf16", "cpu_has_vnni"]

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
    emulated and slower than FP32, so callers fall back to FP32."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def cpu_has_vnni(flags: set[str] | None = None) -> bool:
    """True when INT8 dot products run natively: AVX-512 VNNI, AVX-VNNI or AMX-INT8."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)
