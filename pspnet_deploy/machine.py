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

__all__ = ["ISA_FEATURES", "ISA_RECORDED", "AUTO_ON_OFF", "BF16_MARGIN", "cpu_flags", "cpu_model_name", "cpu_identity",
           "cpu_summary", "cpu_has_bf16", "cpu_has_vnni", "bf16_probe", "bf16_decision", "bf16_choice", "cpu_info", "gpu_info",
           "environment", "record_summary"]
#: the values of the precision switches (``pspnet-train --amp``, ``pspnet-qat --bf16``)
AUTO_ON_OFF = ("auto", "on", "off")

#: the CPU features that decide which precisions run fast here (names as in /proc/cpuinfo); an
#: OpenVINO IR's sidecar records these and is refused on a CPU where they differ, so this set stays fixed
ISA_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")

#: the instruction sets the environment record lists (a superset of :data:`ISA_FEATURES`; names as
#: /proc/cpuinfo spells them: x86 ``flags``, then ARM ``Features``): FP32 vector width and FMA, INT8
#: dot products, BF16 / FP16 arithmetic, matrix units
ISA_RECORDED = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
                "avx_vnni_int8", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16",
                "asimd", "asimdhp", "asimddp", "fphp", "bf16", "i8mm", "sve", "sve2", "sme")

#: BF16 autocast is chosen by ``auto`` only when the measured FP32 time is at least this much
#: larger than the BF16 time (1.10: BF16 at least 10 % faster), so noise does not flip it
BF16_MARGIN = 1.10

#: ARM ``CPU implementer`` codes (/proc/cpuinfo) -> vendor
_ARM_IMPLEMENTERS = {0x41: "ARM", 0x42: "Broadcom", 0x43: "Cavium", 0x46: "Fujitsu", 0x48: "HiSilicon",
                     0x4E: "NVIDIA", 0x50: "APM", 0x51: "Qualcomm", 0x61: "Apple", 0x6D: "Microsoft",
                     0xC0: "Ampere"}


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> str | None:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def _first_block(text: str | None) -> dict[str, str]:
    """The ``key : value`` lines of the first processor block of a /proc/cpuinfo text (keys
    lower-cased; later processors are the same CPU, except on big.LITTLE ARM, where the first
    core's is taken), plus the lines outside any block (ARM's ``Hardware``, ``Features`` on old kernels)."""
    fields: dict[str, str] = {}
    seen_processor = 0
    for line in (text or "").splitlines():
        if ":" not in line:
            continue
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "processor":
            seen_processor += 1
            if seen_processor > 1:
                continue
        if seen_processor > 1 and key in fields:
            continue
        fields.setdefault(key, value.strip())
    return fields


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU flags of /proc/cpuinfo (x86 ``flags``, ARM ``Features``), or of the text given
    (empty where it cannot be read)."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    m = re.search(r"^(?:flags|features)\s*:\s*(.*)$", text or "", re.M | re.I)
    return set(m.group(1).split()) if m else set()


def cpu_model_name(cpuinfo: str | None = None) -> str | None:
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    m = re.search(r"^model name\s*:\s*(.+)$", text or "", re.M)
    return m.group(1).strip() if m else None


def _int(value: str | None) -> int | None:
    """A /proc/cpuinfo number (decimal, or 0x hex as ARM writes them), None where absent or not a number."""
    if value is None:
        return None
    try:
        return int(value, 0)
    except ValueError:
        return None


def cpu_identity(cpuinfo: str | None = None) -> dict:
    """Who made the CPU and which one it is: ``vendor``, ``family``, ``model``, ``stepping``,
    ``model_name``, the instruction sets of :data:`ISA_RECORDED` present (``isa``) and where it was read
    (``source``). x86: ``vendor_id`` (GenuineIntel, AuthenticAMD), ``cpu family``, ``model``,
    ``stepping``, ``model name``. ARM: the ``CPU implementer`` as the vendor (ARM, Apple, Ampere,
    ...), ``CPU architecture`` as the family, ``CPU part`` as the model, ``CPU variant`` / ``CPU
    revision`` as the stepping (``r<variant>p<revision>``). Where /proc/cpuinfo cannot be read
    (macOS, Windows) or lacks a field, the :mod:`platform` module answers what it can and the rest
    is None. ``cpuinfo``: a /proc/cpuinfo text to read instead of this machine's."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    f = _first_block(text)
    flags = cpu_flags(text) if text else set()
    isa = [x for x in ISA_RECORDED if x in flags]
    if "vendor_id" in f or "cpu family" in f:  # x86
        return {"vendor": f.get("vendor_id"), "family": _int(f.get("cpu family")), "model": _int(f.get("model")),
                "stepping": _int(f.get("stepping")), "model_name": f.get("model name"), "isa": isa,
                "source": "/proc/cpuinfo"}
    if "cpu implementer" in f:  # ARM
        impl = _int(f.get("cpu implementer"))
        variant, revision = _int(f.get("cpu variant")), _int(f.get("cpu revision"))
        return {"vendor": _ARM_IMPLEMENTERS.get(impl, f.get("cpu implementer")) if impl is not None else None,
                "family": _int(f.get("cpu architecture")), "model": _int(f.get("cpu part")),
                "stepping": f"r{variant}p{revision}" if variant is not None and revision is not None else None,
                "model_name": f.get("model name") or f.get("hardware") or (platform.processor() or None
                                                                           if cpuinfo is None else None),
                "isa": isa, "source": "/proc/cpuinfo"}
    # no /proc/cpuinfo (macOS, Windows), or one without the fields above: what the platform module says
    return {"vendor": None, "family": None, "model": None, "stepping": None,
            "model_name": f.get("model name") or platform.processor() or platform.machine() or None,
            "isa": isa,
            "source": "platform module" if not text else "/proc/cpuinfo (no vendor fields) + platform module"}


def cpu_summary(record: dict) -> str:
    """One line naming a CPU from an environment record (this module's :func:`cpu_info` fields, as
    every benchmark record carries them), e.g. ``AMD EPYC 9R14 (AuthenticAMD family 25 model 17
    stepping 1; avx2 avx512f avx512_vnni avx512_bf16)``: what READMEs say when they say where
    something was measured."""
    name = record.get("cpu") or record.get("cpu_model_name") or "unknown CPU"
    ident = " ".join(f"{k} {record[f'cpu_{k}']}" for k in ("family", "model", "stepping")
                     if record.get(f"cpu_{k}") is not None)
    vendor = record.get("cpu_vendor")
    head = " ".join(x for x in (vendor, ident) if x)
    isa = " ".join(record.get("isa") or []) or "no ISA features recorded"
    cpus = f"{record['logical_cpus']} logical CPUs; " if record.get("logical_cpus") else ""
    return f"{name} ({head + '; ' if head else ''}{cpus}{isa})"


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


@functools.lru_cache(maxsize=8)
def bf16_probe(seconds: float = 1.0, threads: int | None = None) -> dict:
    """Measure FP32 against BF16 autocast on this CPU, as a training step uses them: a forward and
    backward pass of a small stack shaped like PSPNet's ResNet body (3x3 convolutions, 64 channels,
    batch norm, ReLU, on a 1 x 64 x 24 x 24 feature map, then a 1x1 classifier), rounds of the two
    alternated for about ``seconds`` in all after one untimed round each. Cached for the process
    (per ``seconds`` and thread count). Returns ``fp32_ms`` and ``bf16_ms`` (the fastest round: other
    work on a shared CPU only adds time; the medians beside them),
    ``speedup`` (fp32 / bf16), ``rounds``, ``torch_threads``, ``workload``, ``seconds``. ``threads``
    only keys the cache: the probe runs with torch's current thread count."""
    import time

    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(64, 64, 3, padding=1, bias=False), torch.nn.BatchNorm2d(64), torch.nn.ReLU(),
        torch.nn.Conv2d(64, 64, 3, padding=1, bias=False), torch.nn.BatchNorm2d(64), torch.nn.ReLU(),
        torch.nn.Conv2d(64, 12, 1))
    x = torch.randn(1, 64, 24, 24)

    def step(bf16: bool) -> float:
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = net(x).float().square().mean()
        loss.backward()
        net.zero_grad(set_to_none=True)
        return (time.perf_counter() - t) * 1e3

    step(False), step(True)  # first calls pick kernels (oneDNN primitives) and allocate
    fp32, bf16 = [], []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds or len(fp32) < 2:
        fp32.append(step(False))
        bf16.append(step(True))
        if len(fp32) >= 200:
            break
    # the fastest round of each: on a shared CPU, other work only ever adds time to a round
    f, b = min(fp32), min(bf16)
    return {"fp32_ms": f, "bf16_ms": b, "speedup": f / b if b > 0 else None, "rounds": len(fp32),
            "fp32_median_ms": float(sorted(fp32)[len(fp32) // 2]),
            "bf16_median_ms": float(sorted(bf16)[len(bf16) // 2]),
            "torch_threads": torch.get_num_threads(), "seconds": seconds,
            "workload": "forward+backward of conv3x3(64)-BN-ReLU x2 + conv1x1(12) on 1x64x24x24, FP32 vs "
                        "torch.autocast(cpu, bfloat16), fastest of alternated rounds"}


def bf16_decision(mode: str, option: str, probe: dict | None = None) -> dict:
    """Whether a CPU run uses BF16 autocast for ``mode``, and why, as a record to keep.

    ``off``: never (nothing measured). ``on``: required, refused on a CPU without native BF16
    (no avx512_bf16 / amx_bf16: emulated BF16 is slower than FP32); nothing measured. ``auto``:
    measured here (:func:`bf16_probe`, about a second, once per process) and BF16 only when it
    is at least :data:`BF16_MARGIN` times faster than FP32 - the flags alone do not decide (issue
    25: an Intel Xeon with AVX-512 BF16 but no AMX ran BF16 slower than FP32). ``probe``: a
    measurement to decide from instead of measuring (a recorded one, or a test's).

    Returns ``{"mode", "use_bf16", "cpu_has_bf16", "decided_by", "measured", "margin", "reason"}``
    (``measured``: the probe's record, None when nothing was measured)."""
    if mode not in AUTO_ON_OFF:
        raise UserError(f"{option} must be auto, on or off, got {mode!r}")
    native = cpu_has_bf16()
    out = {"mode": mode, "use_bf16": False, "cpu_has_bf16": native, "decided_by": mode, "measured": None,
           "margin": BF16_MARGIN}
    if mode == "off":
        return {**out, "reason": f"{option} off: FP32"}
    if mode == "on":
        if not native:
            raise UserError(f"{option} on: this CPU has no native BF16 (no avx512_bf16 / amx_bf16), so BF16 autocast "
                            f"would be slower than FP32; use {option} auto or off")
        return {**out, "use_bf16": True, "reason": f"{option} on: BF16 autocast (native BF16; not measured)"}
    if probe is None:
        import torch

        probe = bf16_probe(threads=torch.get_num_threads())
    speedup = probe.get("speedup") or 0.0
    use = speedup >= BF16_MARGIN
    reason = (f"{option} auto: measured FP32 {probe['fp32_ms']:.2f} ms vs BF16 autocast {probe['bf16_ms']:.2f} ms "
              f"per step ({speedup:.2f}x); {'BF16' if use else 'FP32'} "
              f"({'at least' if use else 'below'} the {BF16_MARGIN:.2f}x margin)")
    return {**out, "use_bf16": use, "decided_by": "measurement", "measured": dict(probe), "reason": reason}


def bf16_choice(mode: str, option: str) -> bool:
    """``bf16_decision(mode, option)["use_bf16"]``: see :func:`bf16_decision`."""
    return bf16_decision(mode, option)["use_bf16"]


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


def cpu_info(cpuinfo: str | None = None) -> dict:
    """The CPU as a benchmark records it: model name (``cpu``), vendor, family, model number and
    stepping (``cpu_vendor``, ``cpu_family``, ``cpu_model``, ``cpu_stepping``; None where the
    system does not say), logical / physical / usable CPUs, the instruction sets of
    :data:`ISA_RECORDED` present (``isa``) and where this was read (``cpu_source``).
    ``cpuinfo``: a /proc/cpuinfo text instead of this machine's (the CPU counts stay this machine's)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    ident = cpu_identity(cpuinfo)
    fallback = (platform.processor() or platform.machine()) if cpuinfo is None else None
    return {"cpu": ident["model_name"] or fallback,
            "cpu_vendor": ident["vendor"], "cpu_family": ident["family"], "cpu_model": ident["model"],
            "cpu_stepping": ident["stepping"], "cpu_source": ident["source"],
            "logical_cpus": os.cpu_count(), "physical_cores": _physical_cores(cpuinfo), "usable_cpus": usable,
            "isa": ident["isa"]}


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


def record_summary(path: str | Path) -> str:
    """:func:`cpu_summary` of a benchmark record on disk (a JSON with an ``environment`` section,
    as pspnet-bench writes, or an environment record itself): the line a README cites."""
    import json

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable JSON record ({e})") from None
    env = None
    if isinstance(data, dict):
        env = next((data[k] for k in ("environment", "machine") if isinstance(data.get(k), dict)), data)
    if not isinstance(env, dict) or "cpu" not in env:
        raise UserError(f"{path}: has no environment record (no 'cpu' in it or in its 'environment' or 'machine' "
                        f"section); pass a report.json written by pspnet-bench or a benchmark's result.json")
    return cpu_summary(env)


if __name__ == "__main__":  # python -m pspnet_deploy.machine [RECORD.json ...]: the line a README cites
    import json
    import sys

    if len(sys.argv) > 1:
        for arg in sys.argv[1:]:
            try:
                print(f"{arg}: {record_summary(arg)}")
            except UserError as e:
                print(f"python -m pspnet_deploy.machine: error: {e}", file=sys.stderr)
                sys.exit(2)
    else:
        info = cpu_info()
        print(json.dumps(info, indent=1))
        print(cpu_summary(info))
