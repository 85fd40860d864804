"""TensorRT engines: build from ONNX, describe them in a sidecar, check and run them.

This is the only module that imports ``tensorrt`` or ``pycuda``. It is split in two:

- pure functions, testable on any machine: what to build for which precision (:func:`plan_build`),
  the sidecar JSON (:func:`make_sidecar`, :func:`read_sidecar`), the checks that refuse an engine
  built for another TensorRT version or GPU, or a truncated file (:func:`check_engine_file`,
  :func:`check_environment`), parser-error formatting, the rebuild command;
- thin TensorRT / CUDA calls (``_trt_*`` functions and :class:`EngineSession`), each feature-detected
  so the same code runs on TensorRT 10.x and 11.x.

Precision comes from the ONNX (the design's "precision contract"): the network is created strongly
typed (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``, always on and the flag deprecated in
TensorRT 11), so an FP32, FP16 or INT8 Q/DQ ONNX gives an FP32, FP16 or INT8 engine. Asking for
``fp16``/``int8`` with an FP32 ONNX first writes that ONNX variant (export / calibration code),
then builds it. On TensorRT 10 only, ``legacy_fp16_flag`` builds the FP32 ONNX as a weakly typed
network with ``BuilderFlag.FP16`` instead (the flag does not exist in TensorRT 11).

Sidecar: ``<engine>.json`` next to the engine (``model.fp16.engine`` -> ``model.fp16.engine.json``).
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .errors import UserError
from .utils import atomic_write_bytes, atomic_write_json, sha256_file, versions

SIDECAR_FORMAT = "pspnet-deploy/engine-sidecar"
SIDECAR_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_MAX_BATCH = 8
PROG = "pspnet-build-engine"


class TensorRTUnavailable(UserError):
    """TensorRT, pycuda or a CUDA GPU is missing on this machine."""


# --------------------------------------------------------------------------------------------
# Pure helpers: devices, ONNX inspection, build plans
# --------------------------------------------------------------------------------------------

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


def tensorrt_version() -> tuple[str | None, str | None]:
    """(version, None) or (None, reason)."""
    try:
        import tensorrt as trt  # noqa: F401 - the one place (with _trt) that imports it
    except ImportError as e:
        return None, f"TensorRT is not installed (import tensorrt: {e})"
    except Exception as e:  # noqa: BLE001 - a broken install raises all sorts
        return None, f"TensorRT cannot be imported ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return str(trt.__version__), None


def environment(device: str | int | None = 0) -> dict:
    """What this machine offers for engines: TensorRT version and the GPU, with reasons if missing."""
    idx = parse_device(device)
    trt_ver, trt_err = tensorrt_version()
    gpu, gpu_err = cuda_device_info(idx)
    return {"tensorrt": trt_ver, "tensorrt_error": trt_err, "gpu": gpu, "gpu_error": gpu_err, "device_index": idx}


def require_engine_support(env: dict, wrote: list[str] | None = None, action: str = "build engines") -> None:
    """Raise :class:`TensorRTUnavailable` (one line) unless TensorRT and a GPU are there."""
    missing = [m for m in (env.get("tensorrt_error"), env.get("gpu_error")) if m]
    if not missing:
        return
    done = f"; wrote {', '.join(wrote)}" if wrote else ""
    raise TensorRTUnavailable(f"cannot {action} here: {'; '.join(missing)}{done}; run this on a machine with "
                              f"TensorRT 10/11 and an NVIDIA GPU (pip install tensorrt pycuda)")


def _dim(d) -> int | str:
    if d.HasField("dim_value"):
        return int(d.dim_value)
    return d.dim_param or "?"


_ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16", 6: "int32", 7: "int64", 3: "int8",
                2: "uint8", 9: "bool"}


def onnx_io(path: str | Path) -> dict:
    """Inputs and outputs of an ONNX file: name, dtype, shape (int, or the symbolic name / "?")."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{path}: cannot read ONNX model ({type(e).__name__}); is it a valid .onnx file?") from e
    inits = {i.name for i in model.graph.initializer}

    def desc(v):
        t = v.type.tensor_type
        return {"name": v.name, "dtype": _ONNX_DTYPES.get(t.elem_type, f"onnx:{t.elem_type}"),
                "shape": [_dim(d) for d in t.shape.dim]}

    return {"inputs": [desc(v) for v in model.graph.input if v.name not in inits],
            "outputs": [desc(v) for v in model.graph.output]}


def onnx_precision(path: str | Path, meta: dict | None = None) -> str:
    """fp32 / fp16 / int8 of an ONNX: the ``pspnet.precision`` metadata, else read from the graph
    (Q/DQ nodes -> int8; FP16 initialisers or casts to FP16 -> fp16)."""
    if meta is None:
        from .runners.ort_runner import read_onnx_metadata

        meta = read_onnx_metadata(path)
    p = str(meta.get("precision", "")).lower()
    if p in PRECISIONS:
        return p
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    if {"QuantizeLinear", "DequantizeLinear"} & ops:
        return "int8"
    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer):
        return "fp16"
    for n in model.graph.node:
        if n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in n.attribute):
            return "fp16"
    return "fp32"


def export_batch_range(meta: dict) -> tuple[int, int, int]:
    """(min, opt, max) batch recorded by pspnet-export for a dynamic-batch ONNX
    (``pspnet.export.dynamic_batch``), else (1, 8, 8)."""
    rng = (meta.get("export") or {}).get("dynamic_batch") if isinstance(meta.get("export"), dict) else None
    try:
        lo, opt, hi = (int(v) for v in rng)
        if 1 <= lo <= opt <= hi:
            return lo, opt, hi
    except (TypeError, ValueError):
        pass
    return 1, DEFAULT_MAX_BATCH, DEFAULT_MAX_BATCH


def _strip_precision(stem: str) -> str:
    for p in PRECISIONS:
        if stem.endswith("." + p):
            return stem[: -len(p) - 1]
    return stem


def variant_path(onnx_path: str | Path, precision: str) -> Path:
    """Where the ``precision`` variant of an ONNX goes: ``model.fp32.onnx`` -> ``model.int8.onnx``."""
    p = Path(onnx_path)
    return p.with_name(f"{_strip_precision(p.stem)}.{precision}.onnx")


def default_engine_path(onnx_path: str | Path, precision: str) -> Path:
    """``<name>.<precision>.engine`` next to the ONNX."""
    p = Path(onnx_path)
    return p.with_name(f"{_strip_precision(p.stem)}.{precision}.engine")


def sidecar_path(engine_path: str | Path) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


@dataclass
class BuildOptions:
    """Everything that shapes an engine build (recorded in the sidecar)."""

    precision: str | None = None  # None: as the ONNX is; fp16/int8 on an FP32 ONNX: make that variant first
    workspace_gb: float | None = None
    opt_level: int | None = None  # builder optimisation level 0-5 (TensorRT default 3)
    timing_cache: str | None = None
    batch: tuple[int, int, int] | None = None  # optimisation profile (min, opt, max) for a dynamic batch
    version_compatible: bool = False
    hardware_compatible: bool = False  # HardwareCompatibilityLevel.AMPERE_PLUS
    legacy_fp16_flag: bool = False  # TensorRT 10 only: weakly typed network + BuilderFlag.FP16
    device: str = "cuda:0"
    calib_data: str | None = None
    calib_split: str = "train"
    calib_images: int | None = None
    calib_method: str = "entropy"
    verbose: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d["batch"] = list(self.batch) if self.batch else None
        return d

    def validate(self) -> None:
        if self.precision is not None and self.precision not in PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.workspace_gb is not None and not (self.workspace_gb > 0):
            raise UserError(f"--workspace must be a positive number of GiB, got {self.workspace_gb}")
        if self.opt_level is not None and not (0 <= int(self.opt_level) <= 5):
            raise UserError(f"--opt-level must be 0..5, got {self.opt_level}")
        if self.batch is not None:
            if len(self.batch) != 3:
                raise UserError(f"--batch takes MIN OPT MAX, got {list(self.batch)}")
            lo, opt, hi = (int(b) for b in self.batch)
            if not (1 <= lo <= opt <= hi):
                raise UserError(f"--batch needs 1 <= MIN <= OPT <= MAX, got {lo} {opt} {hi}")
        if self.legacy_fp16_flag and self.precision != "fp16":
            raise UserError("--legacy-fp16-flag goes with --fp16 (it builds the FP32 ONNX with TensorRT 10's FP16 flag)")
        if (self.calib_data or self.calib_images) and self.precision not in ("fp16", "int8"):
            raise UserError("--calib-data / --calib-images go with --int8 (or --fp16) on an FP32 ONNX")
        if self.calib_images is not None and self.calib_images <= 0:
            raise UserError(f"--calib-images must be positive, got {self.calib_images}")


@dataclass
class BuildPlan:
    """What :func:`build_engine` will do, decided without TensorRT."""

    source_onnx: Path
    source_precision: str
    convert: str | None  # None, "fp16" (convert_fp16) or "int8" (calibrate_onnx)
    build_onnx: Path
    precision: str  # of the engine
    strongly_typed: bool
    input_name: str
    input_shape: list
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None
    engine_path: Path
    meta: dict = field(default_factory=dict)

    @property
    def sidecar_path(self) -> Path:
        return sidecar_path(self.engine_path)


def plan_build(onnx_path: str | Path, opts: BuildOptions, engine_path: str | Path | None = None) -> BuildPlan:
    """Decide what to build: which ONNX (converting first if asked), precision, network typing,
    optimisation profile and output path. Raises UserError for contradictory requests."""
    from .runners.ort_runner import read_onnx_metadata

    opts.validate()
    src = Path(onnx_path)
    if not src.is_file():
        raise UserError(f"{src}: ONNX file not found")
    if src.suffix.lower() != ".onnx":
        raise UserError(f"{src}: expected an .onnx file (export one with pspnet-export)")
    meta = read_onnx_metadata(src)
    src_p = onnx_precision(src, meta)
    want = opts.precision or src_p
    convert = None
    strongly_typed = True
    build_onnx = src
    if want != src_p:
        if src_p != "fp32":
            raise UserError(f"{src} is the {src_p.upper()} ONNX; --{want} starts from the FP32 ONNX "
                            f"({variant_path(src, 'fp32').name}); pass that instead")
        if opts.legacy_fp16_flag:
            strongly_typed = False  # the FP32 graph, TensorRT picks FP16 kernels where it likes
        else:
            convert = want
            build_onnx = variant_path(src, want)
            if build_onnx.resolve() == src.resolve():  # pragma: no cover - odd names
                build_onnx = src.with_name(f"{src.stem}.{want}.onnx")
    elif opts.legacy_fp16_flag:
        raise UserError(f"{src} is already the {src_p.upper()} ONNX; --legacy-fp16-flag only applies to an FP32 ONNX")
    if convert == "int8" and not opts.calib_data:
        raise UserError(f"--int8 on the FP32 ONNX {src.name} needs calibration images: add --calib-data DIR "
                        f"(or pass an INT8 Q/DQ ONNX from pspnet-calibrate)")
    io = onnx_io(src)
    if len(io["inputs"]) != 1:
        raise UserError(f"{src}: expected one image input, found {len(io['inputs'])} "
                        f"({', '.join(i['name'] for i in io['inputs'])})")
    inp = io["inputs"][0]
    shape = inp["shape"]
    if len(shape) != 4:
        raise UserError(f"{src}: input {inp['name']} has shape {shape}; expected N x 3 x H x W")
    if any(not isinstance(d, int) for d in shape[1:]):
        raise UserError(f"{src}: input {inp['name']} has dynamic sizes {shape}; only the batch may be dynamic "
                        f"(re-export with a fixed --input-size)")
    profile = None
    if isinstance(shape[0], int):
        b = shape[0]
        if opts.batch is not None and tuple(opts.batch) != (b, b, b):
            raise UserError(f"{src} has a fixed batch of {b}; --batch {' '.join(map(str, opts.batch))} needs an ONNX "
                            f"with a dynamic batch (re-export with --dynamic-batch)")
    else:
        if opts.batch is not None:
            lo, opt, hi = (int(v) for v in opts.batch)
        else:
            lo, opt, hi = export_batch_range(meta)
        rest = tuple(int(d) for d in shape[1:])
        profile = ((lo,) + rest, (opt,) + rest, (hi,) + rest)
    if engine_path is None:
        engine_path = default_engine_path(src, want)
    engine_path = Path(engine_path)
    if engine_path.suffix.lower() not in (".engine", ".plan", ".trt"):
        raise UserError(f"{engine_path}: engine files end in .engine (or .plan / .trt)")
    return BuildPlan(source_onnx=src, source_precision=src_p, convert=convert, build_onnx=build_onnx, precision=want,
                     strongly_typed=strongly_typed, input_name=inp["name"], input_shape=list(shape), profile=profile,
                     engine_path=engine_path, meta=meta)


def format_parser_errors(path: str | Path, errors: list[dict]) -> str:
    """One line naming every ONNX parser error with its node (index, name, operator)."""
    parts = []
    for e in errors:
        where = f"node {e.get('node', -1)}"
        extra = " ".join(x for x in (e.get("node_operator") or "", repr(e["node_name"]) if e.get("node_name") else "") if x)
        if extra:
            where += f" ({extra})"
        code = f"{e['code']}: " if e.get("code") else ""
        parts.append(f"{where}: {code}{' '.join(str(e.get('desc', '')).split())}")
    n = len(errors)
    return (f"{path}: TensorRT's ONNX parser rejected the model ({n} error{'s' if n != 1 else ''}): "
            + "; ".join(parts) + "; check the exporter's opset and operators (pspnet-export)")


def build_command(onnx: str | Path, engine: str | Path, opts: BuildOptions | dict) -> str:
    """The pspnet-build-engine command line that builds ``engine`` from ``onnx`` with ``opts``."""
    o = opts.to_dict() if isinstance(opts, BuildOptions) else dict(opts)
    args = [PROG, str(onnx), "--engine", str(engine)]
    if o.get("precision") == "fp16":
        args.append("--fp16")
    elif o.get("precision") == "int8":
        args.append("--int8")
        if o.get("calib_data"):
            args += ["--calib-data", str(o["calib_data"])]
    if o.get("legacy_fp16_flag"):
        args.append("--legacy-fp16-flag")
    if o.get("workspace_gb") is not None:
        args += ["--workspace", f"{o['workspace_gb']:g}"]
    if o.get("opt_level") is not None:
        args += ["--opt-level", str(o["opt_level"])]
    if o.get("timing_cache"):
        args += ["--timing-cache", str(o["timing_cache"])]
    if o.get("batch"):
        args += ["--batch"] + [str(b) for b in o["batch"]]
    if o.get("version_compatible"):
        args.append("--version-compatible")
    if o.get("hardware_compatible"):
        args.append("--hardware-compatible")
    return " ".join(shlex.quote(a) for a in args)


def rebuild_command(sidecar: dict, engine_path: str | Path | None = None) -> str:
    """How to rebuild the engine a sidecar describes (from the ONNX it was built from)."""
    onnx = sidecar.get("onnx", {})
    src = onnx.get("source_path") or onnx.get("path") or "MODEL.onnx"
    eng = engine_path or sidecar.get("engine", {}).get("path") or "OUT.engine"
    return build_command(src, eng, sidecar.get("build", {}).get("options", {}))


# --------------------------------------------------------------------------------------------
# Sidecar: write, read, check
# --------------------------------------------------------------------------------------------

MODEL_KEYS = ("classes", "palette", "ignore_index", "preprocess", "output_kind")


def make_sidecar(plan: BuildPlan, opts: BuildOptions, env: dict, io: dict, engine_sha256: str, engine_size: int,
                 build_seconds: float, onnx_sha256: str, source_sha256: str | None = None,
                 tensorrt_extra: dict | None = None) -> dict:
    """The engine's sidecar: everything needed to run it without the ONNX and to refuse it elsewhere."""
    missing = [k for k in ("classes", "palette", "preprocess") if k not in plan.meta]
    if missing:
        raise UserError(f"{plan.build_onnx}: ONNX has no pspnet.{missing[0]} metadata; export it with pspnet-export "
                        f"so the engine can carry its classes, palette and preprocessing")
    model = {k: plan.meta[k] for k in MODEL_KEYS if k in plan.meta}
    model.setdefault("output_kind", "logits")
    model.setdefault("ignore_index", 255)
    trt_info = {"version": env.get("tensorrt"), "version_compatible": bool(opts.version_compatible),
                "hardware_compatibility": "ampere_plus" if opts.hardware_compatible else "none",
                "strongly_typed": plan.strongly_typed}
    trt_info.update(tensorrt_extra or {})
    engine_abs, build_abs, source_abs = (p.resolve() for p in (plan.engine_path, plan.build_onnx, plan.source_onnx))
    return {
        "format": SIDECAR_FORMAT, "version": SIDECAR_VERSION,
        "engine": {"path": str(engine_abs), "file": plan.engine_path.name, "size": int(engine_size),
                   "sha256": engine_sha256},
        "precision": plan.precision,
        "tensorrt": trt_info,
        "gpu": env.get("gpu"),
        "io": io,
        "onnx": {"path": str(build_abs), "sha256": onnx_sha256, "precision": plan.precision,
                 "source_path": str(source_abs), "source_sha256": source_sha256 or onnx_sha256,
                 "source_precision": plan.source_precision, "converted": plan.convert},
        "build": {"options": opts.to_dict(), "seconds": round(float(build_seconds), 3),
                  "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "command": build_command(source_abs, engine_abs, opts)},
        "model": model,
        "pspnet_metadata": plan.meta,
        "versions": versions(),
    }


def read_sidecar(engine_path: str | Path) -> dict:
    """The sidecar of an engine; UserError if it is missing or unreadable."""
    engine_path = Path(engine_path)
    sc = sidecar_path(engine_path)
    if not engine_path.is_file():
        raise UserError(f"{engine_path}: engine file not found")
    if not sc.is_file():
        raise UserError(f"{engine_path}: no sidecar {sc.name} next to it, so its TensorRT version, GPU and model "
                        f"metadata are unknown; rebuild it with pspnet-build-engine MODEL.onnx --engine {engine_path}")
    try:
        data = json.loads(sc.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{sc}: sidecar is not valid JSON ({type(e).__name__}); rebuild the engine with "
                        f"pspnet-build-engine") from e
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise UserError(f"{sc}: not a pspnet-deploy engine sidecar; rebuild the engine with pspnet-build-engine")
    if int(data.get("version", 0)) > SIDECAR_VERSION:
        raise UserError(f"{sc}: sidecar version {data.get('version')} is newer than this toolkit reads "
                        f"({SIDECAR_VERSION}); upgrade pspnet-deploy")
    for key in ("engine", "tensorrt", "io", "model"):
        if not isinstance(data.get(key), dict):
            raise UserError(f"{sc}: sidecar has no {key!r} section; rebuild the engine with pspnet-build-engine")
    return data


def check_engine_file(engine_path: str | Path, sidecar: dict, verify_hash: bool = True) -> None:
    """Refuse an engine whose size or sha256 differs from its sidecar (truncated, replaced, corrupt)."""
    engine_path = Path(engine_path)
    want = sidecar["engine"]
    size = engine_path.stat().st_size
    cmd = rebuild_command(sidecar, engine_path)
    if "size" in want and size != int(want["size"]):
        state = "truncated" if size < int(want["size"]) else "changed"
        raise UserError(f"{engine_path}: engine file is {size} bytes but its sidecar records {want['size']} "
                        f"({state} copy?); copy it again or rebuild: {cmd}")
    if verify_hash and want.get("sha256") and sha256_file(engine_path) != want["sha256"]:
        raise UserError(f"{engine_path}: engine file's sha256 differs from its sidecar (corrupt or replaced); "
                        f"copy it again or rebuild: {cmd}")


def _ver_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in str(v).split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out + [0] * (3 - len(out)))


def _cc_tuple(cc: str) -> tuple[int, int]:
    a, _, b = str(cc).partition(".")
    return int(a or 0), int(b or 0)


def check_environment(sidecar: dict, env: dict, engine_path: str | Path = "engine",
                      warn=lambda msg: print(msg, file=sys.stderr)) -> None:
    """Refuse an engine built for another TensorRT version or GPU (one line, rebuild command included).

    TensorRT: the same version, or with ``version_compatible`` any later one (TensorRT's rule).
    GPU: the same compute capability, or with ``ampere_plus`` hardware compatibility any >= 8.0. A
    different GPU name with the same compute capability runs (TensorRT warns of speed); so do we.
    """
    require_engine_support(env, action="run TensorRT engines")
    cmd = rebuild_command(sidecar, engine_path)
    trt_info = sidecar["tensorrt"]
    built, here = str(trt_info.get("version")), str(env["tensorrt"])
    if trt_info.get("version_compatible"):
        if _ver_tuple(here) < _ver_tuple(built):
            raise UserError(f"{engine_path}: built with TensorRT {built} (version compatible) but this is the older "
                            f"TensorRT {here}, which cannot run it; upgrade TensorRT or rebuild here: {cmd}")
    elif _ver_tuple(built) != _ver_tuple(here):
        raise UserError(f"{engine_path}: built with TensorRT {built} but this is TensorRT {here}; engines only run on "
                        f"the TensorRT version that built them: rebuild here: {cmd}")
    built_gpu = sidecar.get("gpu") or {}
    gpu = env["gpu"]
    if not built_gpu.get("compute_capability"):
        raise UserError(f"{engine_path}: sidecar does not record the GPU it was built for; rebuild here: {cmd}")
    if trt_info.get("hardware_compatibility") == "ampere_plus":
        if _cc_tuple(gpu["compute_capability"]) < (8, 0):
            raise UserError(f"{engine_path}: built hardware-compatible for Ampere and newer GPUs, but "
                            f"{gpu['name']} has compute capability {gpu['compute_capability']}; rebuild here: {cmd}")
        return
    if _cc_tuple(built_gpu["compute_capability"]) != _cc_tuple(gpu["compute_capability"]):
        raise UserError(f"{engine_path}: built for {built_gpu.get('name', '?')} (compute capability "
                        f"{built_gpu['compute_capability']}) but this GPU is {gpu['name']} (compute capability "
                        f"{gpu['compute_capability']}); rebuild here: {cmd} (or build with --hardware-compatible)")
    if built_gpu.get("name") and built_gpu["name"] != gpu["name"]:
        warn(f"warning: {engine_path} was built on {built_gpu['name']}, running on {gpu['name']} (same compute "
             f"capability {gpu['compute_capability']}); it runs, but rebuild here for the best speed: {cmd}")


def check_engine(engine_path: str | Path, device: str | int | None = 0, env: dict | None = None,
                 verify_hash: bool = True) -> tuple[dict, dict]:
    """Sidecar first, then the file, then this machine: (sidecar, env). Nothing touches TensorRT here."""
    sidecar = read_sidecar(engine_path)
    check_engine_file(engine_path, sidecar, verify_hash=verify_hash)
    env = env if env is not None else environment(device)
    check_environment(sidecar, env, engine_path)
    return sidecar, env


# --------------------------------------------------------------------------------------------
# Thin TensorRT calls
# --------------------------------------------------------------------------------------------

def _trt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TensorRTUnavailable(f"TensorRT is not installed (import tensorrt: {e}); pip install tensorrt on a "
                                  f"machine with an NVIDIA GPU") from e
    return trt


def _logger(trt, verbose: bool = False):
    return trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)


def _dtype_name(trt, dt) -> str:
    try:
        return np.dtype(trt.nptype(dt)).name
    except (TypeError, KeyError, AttributeError):  # types numpy lacks (bf16, fp8, fp4)
        return str(dt).rsplit(".", 1)[-1].lower()


def _np_dtype(trt, dt) -> np.dtype:
    try:
        return np.dtype(trt.nptype(dt))
    except (TypeError, KeyError, AttributeError) as e:
        raise UserError(f"engine IO type {dt} has no numpy equivalent; export the ONNX with FP32 inputs and outputs") from e


def _trt_parse_errors(parser) -> list[dict]:
    errors = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        e = {"node": int(err.node()), "desc": str(err.desc()), "code": str(err.code()).rsplit(".", 1)[-1]}
        for attr in ("node_name", "node_operator"):  # TensorRT 10 parsers; absent on older ones
            fn = getattr(err, attr, None)
            if callable(fn):
                try:
                    e[attr] = str(fn())
                except Exception:  # noqa: BLE001
                    pass
        errors.append(e)
    return errors


def _trt_engine_io(trt, engine) -> dict:
    io = {"inputs": [], "outputs": [], "profile": None}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        mode = engine.get_tensor_mode(name)
        entry = {"name": name, "shape": [int(d) for d in engine.get_tensor_shape(name)],
                 "dtype": _dtype_name(trt, engine.get_tensor_dtype(name))}
        if mode == trt.TensorIOMode.INPUT:
            io["inputs"].append(entry)
            if -1 in entry["shape"] and io["profile"] is None:
                lo, opt, hi = engine.get_tensor_profile_shape(name, 0)
                io["profile"] = {"input": name, "min": [int(d) for d in lo], "opt": [int(d) for d in opt],
                                 "max": [int(d) for d in hi]}
        else:
            io["outputs"].append(entry)
    return io


def _trt_build(plan: BuildPlan, opts: BuildOptions, env: dict) -> tuple[bytes, dict, bytes | None, dict]:
    """Parse ``plan.build_onnx`` and build; returns (engine bytes, engine IO, timing cache bytes, extra info)."""
    trt = _trt()
    logger = _logger(trt, opts.verbose)
    builder = trt.Builder(logger)
    flags = 0
    st_flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if plan.strongly_typed and st_flag is not None:  # TensorRT >= 9.1; ignored (always on) in 11
        flags |= 1 << int(st_flag)
    if not plan.strongly_typed and not hasattr(trt.BuilderFlag, "FP16"):
        raise UserError(f"TensorRT {trt.__version__} has no BuilderFlag.FP16 (removed in TensorRT 11); drop "
                        f"--legacy-fp16-flag: --fp16 builds the FP16 ONNX as a strongly typed network instead")
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(plan.build_onnx)):
        errors = _trt_parse_errors(parser)
        raise UserError(format_parser_errors(plan.build_onnx, errors or [{"node": -1, "desc": "no details given"}]))
    config = builder.create_builder_config()
    if opts.workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_gb * (1 << 30)))
    if opts.opt_level is not None:
        config.builder_optimization_level = int(opts.opt_level)
    if not plan.strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
    if opts.version_compatible:
        if not hasattr(trt.BuilderFlag, "VERSION_COMPATIBLE"):
            raise UserError(f"TensorRT {trt.__version__} has no version-compatible engines; drop --version-compatible")
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if opts.hardware_compatible:
        level = getattr(getattr(trt, "HardwareCompatibilityLevel", None), "AMPERE_PLUS", None)
        if level is None:
            raise UserError(f"TensorRT {trt.__version__} has no HardwareCompatibilityLevel.AMPERE_PLUS; drop "
                            f"--hardware-compatible")
        if _cc_tuple(env["gpu"]["compute_capability"]) < (8, 0):
            raise UserError(f"--hardware-compatible (Ampere and newer) needs an Ampere or newer GPU to build on; "
                            f"{env['gpu']['name']} has compute capability {env['gpu']['compute_capability']}")
        config.hardware_compatibility_level = level
    if plan.profile is not None:
        profile = builder.create_optimization_profile()
        profile.set_shape(plan.input_name, *plan.profile)
        config.add_optimization_profile(profile)
    cache_in = b""
    if opts.timing_cache and Path(opts.timing_cache).is_file():
        cache_in = Path(opts.timing_cache).read_bytes()
    cache = None
    if opts.timing_cache:
        cache = config.create_timing_cache(cache_in)
        if cache is None or not config.set_timing_cache(cache, False):
            raise UserError(f"{opts.timing_cache}: TensorRT cannot use this timing cache (corrupt or from another "
                            f"TensorRT version / GPU); delete it and build again")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(f"{plan.build_onnx}: TensorRT failed to build an engine (see the TensorRT messages above); "
                        f"try a larger --workspace, or --verbose for details")
    data = bytes(serialized)
    cache_out = None
    if cache is not None:
        cache_out = bytes(config.get_timing_cache().serialize())
    runtime = trt.Runtime(logger)
    if opts.version_compatible and hasattr(runtime, "engine_host_code_allowed"):
        runtime.engine_host_code_allowed = True
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:  # pragma: no cover - a fresh build should always load
        raise UserError(f"{plan.engine_path}: TensorRT built an engine it cannot load back; build with --verbose")
    io = _trt_engine_io(trt, engine)
    extra = {"onnx_parser": getattr(trt, "get_nv_onnx_parser_version", lambda: None)(),
             "num_layers": int(getattr(engine, "num_layers", -1))}
    del engine, runtime
    return data, io, cache_out, extra


def _make_variant(plan: BuildPlan, opts: BuildOptions, log) -> dict:
    """Write the FP16 or INT8 ONNX that ``plan.convert`` asks for (export / calibration code, CPU)."""
    if plan.convert == "fp16":
        try:
            from .precision.fp16 import convert_fp16
        except ImportError as e:
            raise UserError(f"FP16 conversion is not available in this build ({e}); export the FP16 ONNX with "
                            f"pspnet-export --fp16 and pass it instead") from e
        log(f"writing the FP16 ONNX {plan.build_onnx} from {plan.source_onnx}")
        kwargs = {}
        if opts.calib_data:  # real images to find the values FP16 cannot hold (else generated ones)
            kwargs.update(calibration_images=opts.calib_data, split=opts.calib_split)
            if opts.calib_images is not None:
                kwargs["num_images"] = opts.calib_images
        return convert_fp16(str(plan.source_onnx), str(plan.build_onnx), **kwargs) or {}
    if plan.convert == "int8":
        try:
            from .evaluate import onnx_miou  # --calib-method auto measures accuracy
            from .precision.calibrate import calibrate_onnx
        except ImportError as e:
            raise UserError(f"INT8 calibration is not available in this build ({e}); calibrate with pspnet-calibrate "
                            f"and pass the INT8 ONNX instead") from e
        log(f"calibrating the INT8 Q/DQ ONNX {plan.build_onnx} from {plan.source_onnx} on {opts.calib_data}")
        kwargs = {"split": opts.calib_split, "method": opts.calib_method, "evaluator": onnx_miou}
        if opts.calib_images is not None:
            kwargs["num_images"] = opts.calib_images
        return calibrate_onnx(str(plan.source_onnx), str(plan.build_onnx), opts.calib_data, **kwargs) or {}
    return {}


def build_engine(onnx_path: str | Path, engine_path: str | Path | None = None, opts: BuildOptions | None = None,
                 log=lambda msg: print(msg, file=sys.stderr), env: dict | None = None) -> dict:
    """Build an engine from an ONNX (making the FP16 / INT8 variant first if asked); write the engine
    and its sidecar atomically, and the timing cache back. Returns the sidecar.

    Without TensorRT or a GPU: raises :class:`TensorRTUnavailable` after writing any ONNX variant
    that was asked for (it says so), and writes no engine.
    """
    opts = opts or BuildOptions()
    plan = plan_build(onnx_path, opts, engine_path)
    env = env if env is not None else environment(opts.device)
    wrote: list[str] = []
    if plan.convert:
        missing = env.get("tensorrt_error") or env.get("gpu_error")
        if missing:
            log(f"note: {missing}; the {plan.convert.upper()} ONNX is still written, the engine is not")
        _make_variant(plan, opts, log)
        if not plan.build_onnx.is_file():
            raise UserError(f"{plan.build_onnx}: the {plan.convert.upper()} conversion wrote no file")
        wrote.append(str(plan.build_onnx))
        from .runners.ort_runner import read_onnx_metadata

        plan.meta = read_onnx_metadata(plan.build_onnx) or plan.meta
    require_engine_support(env, wrote)
    from .runners.ort_runner import read_onnx_metadata

    if not plan.meta:
        plan.meta = read_onnx_metadata(plan.build_onnx)
    for key in ("classes", "palette", "preprocess"):
        if key not in plan.meta:
            raise UserError(f"{plan.build_onnx}: ONNX has no pspnet.{key} metadata; export it with pspnet-export so "
                            f"the engine can carry its classes, palette and preprocessing")
    log(f"building {plan.precision.upper()} engine {plan.engine_path} from {plan.build_onnx} with TensorRT "
        f"{env['tensorrt']} on {env['gpu']['name']}"
        + (f", batch profile {plan.profile[0][0]}/{plan.profile[1][0]}/{plan.profile[2][0]}" if plan.profile else ""))
    t0 = time.perf_counter()
    data, io, cache_out, extra = _trt_build(plan, opts, env)
    seconds = time.perf_counter() - t0
    digest = hashlib.sha256(data).hexdigest()
    onnx_sha = sha256_file(plan.build_onnx)
    source_sha = sha256_file(plan.source_onnx) if plan.source_onnx != plan.build_onnx else onnx_sha
    sidecar = make_sidecar(plan, opts, env, io, digest, len(data), seconds, onnx_sha, source_sha, extra)
    atomic_write_bytes(plan.engine_path, data)
    atomic_write_json(plan.sidecar_path, sidecar)
    if cache_out is not None and opts.timing_cache:
        atomic_write_bytes(opts.timing_cache, cache_out)
    log(f"wrote {plan.engine_path} ({len(data) / 2**20:.1f} MiB, {seconds:.1f} s) and {plan.sidecar_path.name}")
    return sidecar


def _pycuda():
    try:
        import pycuda.driver as cuda
    except ImportError as e:
        raise TensorRTUnavailable(f"pycuda is not installed ({e}); pip install pycuda to run TensorRT engines") from e
    return cuda


class EngineSession:
    """A deserialised engine with its execution context, pinned host buffers, device buffers and a
    CUDA stream (pycuda); optional CUDA graph per batch size. Name-based IO (set_input_shape,
    set_tensor_address, execute_async_v3), so it works on TensorRT 10 and 11.

    Built with :meth:`open` after :func:`check_engine` accepted the file.
    """

    def __init__(self, engine_path: str | Path, sidecar: dict, device_index: int = 0, cuda_graph: bool = False,
                 verbose: bool = False):
        trt = _trt()
        cuda = _pycuda()
        self.path = str(engine_path)
        self.sidecar = sidecar
        self._cuda = cuda
        self._ctx = None
        self._dev_bufs: dict = {}
        cuda.init()
        self._ctx = cuda.Device(device_index).retain_primary_context()  # the context the CUDA runtime (TensorRT) uses
        self._ctx.push()
        try:
            self._logger = _logger(trt, verbose)
            self._runtime = trt.Runtime(self._logger)
            if sidecar["tensorrt"].get("version_compatible") and hasattr(self._runtime, "engine_host_code_allowed"):
                self._runtime.engine_host_code_allowed = True
            data = Path(engine_path).read_bytes()
            self.engine = self._runtime.deserialize_cuda_engine(data)
            if self.engine is None:
                raise UserError(f"{engine_path}: TensorRT could not deserialise this engine (see its message above); "
                                f"rebuild it: {rebuild_command(sidecar, engine_path)}")
            self.context = self.engine.create_execution_context()
            if self.context is None:
                raise UserError(f"{engine_path}: TensorRT could not create an execution context (out of GPU memory?)")
            io = _trt_engine_io(trt, self.engine)
            if len(io["inputs"]) != 1 or not io["outputs"]:
                raise UserError(f"{engine_path}: expected one input and at least one output, found "
                                f"{len(io['inputs'])} inputs and {len(io['outputs'])} outputs")
            self.io = io
            inp = io["inputs"][0]
            self.input_name = inp["name"]
            self.input_shape = list(inp["shape"])
            self.input_dtype = _np_dtype(trt, self.engine.get_tensor_dtype(self.input_name))
            self.output_names = [o["name"] for o in io["outputs"]]
            if self.input_shape[0] == -1:
                prof = io["profile"]
                self.fixed_batch = None
                self.batch_range = (int(prof["min"][0]), int(prof["max"][0]))
                self.max_batch = self.batch_range[1]
                self.context.set_input_shape(self.input_name, [self.max_batch] + self.input_shape[1:])
            else:
                self.fixed_batch = int(self.input_shape[0])
                self.batch_range = None
                self.max_batch = self.fixed_batch
            full_in = tuple([self.max_batch] + self.input_shape[1:])
            self.host_in = cuda.pagelocked_empty(full_in, self.input_dtype)
            self._dev_bufs[self.input_name] = cuda.mem_alloc(self.host_in.nbytes)
            self.host_out = {}
            for name in self.output_names:
                shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
                dt = _np_dtype(trt, self.engine.get_tensor_dtype(name))
                self.host_out[name] = cuda.pagelocked_empty(shape, dt)
                self._dev_bufs[name] = cuda.mem_alloc(max(self.host_out[name].nbytes, 1))
            for name, buf in self._dev_bufs.items():
                self.context.set_tensor_address(name, int(buf))
            self.stream = cuda.Stream()
            self.cuda_graph = bool(cuda_graph)
            if self.cuda_graph and not hasattr(self.stream, "begin_capture"):
                raise UserError("this pycuda has no CUDA graph capture (needs pycuda >= 2022.1); drop --cuda-graph")
            self._graph = None  # (batch, graph exec)
            self._batch = self.max_batch
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(cls, engine_path: str | Path, device: str | int | None = 0, cuda_graph: bool = False,
             verify_hash: bool = True, verbose: bool = False) -> "EngineSession":
        sidecar, env = check_engine(engine_path, device, verify_hash=verify_hash)
        return cls(engine_path, sidecar, env["device_index"], cuda_graph=cuda_graph, verbose=verbose)

    def _enqueue(self, n: int) -> None:
        if not self.context.execute_async_v3(self.stream.handle):
            raise UserError(f"{self.path}: TensorRT execution failed (see its message above)")

    def _run_graph(self, n: int) -> None:
        if self._graph is None or self._graph[0] != n:
            self._enqueue(n)  # after a shape change TensorRT needs one plain enqueue before capture
            self.stream.synchronize()
            try:
                self.stream.begin_capture()
                self.context.execute_async_v3(self.stream.handle)
                graph = self.stream.end_capture()
                self._graph = (n, graph.instantiate())
            except Exception as e:  # noqa: BLE001 - some engines cannot be captured; run them plainly
                print(f"warning: {self.path}: CUDA graph capture failed ({type(e).__name__}: {e}); running without",
                      file=sys.stderr)
                self.cuda_graph = False
                self._graph = None
                self._enqueue(n)
                return
        try:
            self._graph[1].launch(self.stream)
        except TypeError:  # pycuda versions whose launch() takes no stream: the default stream orders it
            self._graph[1].launch()

    def run(self, batch: np.ndarray) -> np.ndarray:
        """One batch (N x 3 x H x W, any float dtype) -> the first output as numpy (a copy)."""
        cuda = self._cuda
        n = int(batch.shape[0])
        if n > self.max_batch or n < 1:
            raise UserError(f"{self.path}: batch of {n} outside what the engine accepts (1..{self.max_batch})")
        if self.fixed_batch is None and n != self._batch:
            self.context.set_input_shape(self.input_name, [n] + self.input_shape[1:])
            self._batch = n
        host_in = self.host_in[:n]
        np.copyto(host_in, batch, casting="same_kind" if batch.dtype.kind == "f" else "unsafe")
        cuda.memcpy_htod_async(self._dev_bufs[self.input_name], host_in, self.stream)
        if self.cuda_graph:
            self._run_graph(n)
        else:
            self._enqueue(n)
        name = self.output_names[0]
        out = self.host_out[name][:n]
        cuda.memcpy_dtoh_async(out, self._dev_bufs[name], self.stream)
        self.stream.synchronize()
        return np.array(out, copy=True)

    def close(self) -> None:
        for buf in list(self._dev_bufs.values()):
            try:
                buf.free()
            except Exception:  # noqa: BLE001
                pass
        self._dev_bufs = {}
        for attr in ("_graph", "context", "engine", "_runtime", "stream"):
            if hasattr(self, attr):
                setattr(self, attr, None)
        if self._ctx is not None:
            try:
                self._ctx.pop()
            except Exception:  # noqa: BLE001
                pass
            self._ctx = None

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


__all__ = ["BuildOptions", "BuildPlan", "EngineSession", "TensorRTUnavailable", "build_command", "build_engine",
           "check_engine", "check_engine_file", "check_environment", "cuda_device_info", "default_engine_path",
           "environment", "format_parser_errors", "make_sidecar", "onnx_io", "onnx_precision", "parse_device",
           "plan_build", "read_sidecar", "rebuild_command", "require_engine_support", "sidecar_path",
           "tensorrt_version", "variant_path"]
