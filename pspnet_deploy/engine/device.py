"""Which GPU: device strings, the CUDA driver's view of a GPU (ctypes, no TensorRT), and the one
line that says engines cannot be built or run here."""
from __future__ import annotations

import ctypes

from ..errors import UserError


class TensorRTUnavailable(UserError):
    """TensorRT, the CUDA bindings or a CUDA GPU is missing on this machine."""


def parse_device(device: str | int | None) -> int:
    """CUDA device index from ``cuda``, ``cuda:N``, ``N``; ``cpu``/``auto``/None mean device 0
    (an engine only runs on a GPU, so the CLIs' default ``--device cpu`` picks the first GPU)."""
    if device is None:
        return 0
    if isinstance(device, int):
        idx = device
    else:
        d = str(device).strip().lower()
        if d in ("cpu", "auto", "cuda", "gpu", ""):
            return 0
        if d.startswith(("cuda:", "gpu:")):
            d = d.split(":", 1)[1]
        try:
            idx = int(d)
        except ValueError:
            raise UserError(f"device {device!r} is not a CUDA device; use cuda or cuda:N") from None
    if idx < 0:
        raise UserError(f"device index must be >= 0, got {idx}")
    return idx


def cc_tuple(cc: str) -> tuple[int, int]:
    """``"8.6"`` -> ``(8, 6)``: a compute capability that compares as numbers."""
    a, _, b = str(cc).partition(".")
    return int(a or 0), int(b or 0)


def cuda_device_info(index: int = 0) -> tuple[dict | None, str | None]:
    """(info, None) or (None, reason) for CUDA device ``index``, via the driver library (ctypes).

    ``info``: name, compute_capability ("8.6"), driver (CUDA driver API version, "12.4"), index.
    """
    lib = None
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll", "libcuda.dylib"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        return None, "no NVIDIA driver (libcuda not found)"
    try:
        if lib.cuInit(0) != 0:
            return None, "the NVIDIA driver found no usable GPU (cuInit failed)"
        count = ctypes.c_int(0)
        if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
            return None, "no CUDA GPU visible"
        if index >= count.value:
            return None, f"CUDA device {index} does not exist ({count.value} visible)"
        dev = ctypes.c_int(0)
        lib.cuDeviceGet(ctypes.byref(dev), index)
        buf = ctypes.create_string_buffer(256)
        lib.cuDeviceGetName(buf, 256, dev)
        major, minor, drv = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
        lib.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
        lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR
        lib.cuDriverGetVersion(ctypes.byref(drv))
    except (AttributeError, OSError) as e:  # pragma: no cover - broken driver installs
        return None, f"the NVIDIA driver could not be queried ({e})"
    return {"index": index, "name": buf.value.decode(errors="replace"),
            "compute_capability": f"{major.value}.{minor.value}",
            "driver": f"{drv.value // 1000}.{(drv.value % 1000) // 10}"}, None


def require_engine_support(env: dict, wrote: list[str] | None = None, action: str = "build engines") -> None:
    """Raise :class:`TensorRTUnavailable` (one line) unless TensorRT, the CUDA bindings and a GPU are there."""
    missing = [m for m in (env.get("tensorrt_error"), env.get("cuda_error"), env.get("gpu_error")) if m]
    if not missing:
        return
    done = f"; wrote {', '.join(wrote)}" if wrote else ""
    raise TensorRTUnavailable(f"cannot {action} here: {'; '.join(missing)}{done}; run this on a machine with "
                              f"TensorRT 10/11 and an NVIDIA GPU (pip install 'pspnet-deploy[gpu]')")
