"""The engine sidecar (``<engine>.json``): writing it, and the checks that refuse an engine before
anything touches TensorRT (a truncated or replaced file, another TensorRT version, another GPU),
each as one line with the command that rebuilds it. Given the machine's ``env`` (probed by
:func:`pspnet_deploy.engine.build.environment`, which also runs all three checks in
:func:`~pspnet_deploy.engine.build.check_engine`); this module never imports the build.

The format (see :mod:`pspnet_deploy.card` for the reader every stage uses) is backend-neutral where
it costs nothing: ``engine`` (file, size, sha256), ``precision``, ``io``, ``onnx`` (what it was
built from), ``build`` (options, time, the command line), ``model`` (the card's facts), ``versions``;
a backend adds its own section (``tensorrt``: version, compatibility, typing) and ``gpu``.
"""
from __future__ import annotations

import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

from ..card import SIDECAR_FORMAT, SIDECAR_VERSION, read_sidecar_json
from ..errors import UserError
from ..utils import sha256_file, versions
from .device import cc_tuple, require_engine_support
from .plan import BuildOptions, BuildPlan

PROG = "pspnet-build-engine"


def rebuild_command(sidecar: dict, engine_path: str | Path | None = None) -> str:
    """How to rebuild the engine a sidecar describes: the command line that built it (every option,
    as the command layer recorded it from its parser), writing to ``engine_path`` if given."""
    build = sidecar.get("build") if isinstance(sidecar.get("build"), dict) else {}
    argv = build.get("argv")
    if isinstance(argv, list) and argv and all(isinstance(x, str) for x in argv):
        argv = list(argv)
        if engine_path is not None and "--engine" in argv[:-1]:
            argv[argv.index("--engine") + 1] = str(Path(engine_path).resolve())
        return shlex.join(argv)
    if isinstance(build.get("command"), str) and build["command"]:
        return build["command"]
    onnx = sidecar.get("onnx") if isinstance(sidecar.get("onnx"), dict) else {}
    src = onnx.get("source_path") or onnx.get("path") or "MODEL.onnx"
    eng = engine_path or (sidecar.get("engine") or {}).get("path") or "OUT.engine"
    return shlex.join([PROG, str(src), "--engine", str(eng)]) + " (with the options in its sidecar's build.options)"


def sidecar_sections(plan, opts, io: dict, engine_sha256: str, engine_size: int, build_seconds: float,
                     onnx_sha256: str, source_sha256: str | None = None, command: list[str] | None = None,
                     onnx_precision: str | None = None) -> dict:
    """The backend-neutral sidecar (``engine``, ``precision``, ``io``, ``onnx``, ``build``, ``model``,
    ``versions``) of a compiled model built by ``plan`` (``card``, ``engine_path``, ``build_onnx``,
    ``source_onnx``, ``precision``, ``source_precision``, ``convert``) with ``opts`` (``to_dict``);
    a backend adds its own section. ``command``: the argv that made the build (see
    :func:`rebuild_command`); ``onnx_precision``: the built ONNX's precision where it differs from
    the runtime's (an FP32 ONNX run as BF16)."""
    plan.card.require("classes", "palette", "preprocess",
                      hint="export it with pspnet-export so the engine can carry its classes, palette and "
                           "preprocessing")
    engine_abs, build_abs, source_abs = (p.resolve() for p in (plan.engine_path, plan.build_onnx, plan.source_onnx))
    build = {"options": opts.to_dict(), "seconds": round(float(build_seconds), 3),
             "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "argv": [str(x) for x in command] if command else None}
    build["command"] = rebuild_command({"build": build, "onnx": {"source_path": str(source_abs)},
                                        "engine": {"path": str(engine_abs)}})
    return {
        "format": SIDECAR_FORMAT, "version": SIDECAR_VERSION,
        "engine": {"path": str(engine_abs), "file": plan.engine_path.name, "size": int(engine_size),
                   "sha256": engine_sha256},
        "precision": plan.precision,
        "io": io,
        "onnx": {"path": str(build_abs), "sha256": onnx_sha256, "precision": onnx_precision or plan.precision,
                 "source_path": str(source_abs), "source_sha256": source_sha256 or onnx_sha256,
                 "source_precision": plan.source_precision, "converted": plan.convert},
        "build": build,
        "model": plan.card.model_facts(),
        "pspnet_metadata": plan.card.meta,
        "versions": versions(),
    }


def make_sidecar(plan: BuildPlan, opts: BuildOptions, env: dict, io: dict, engine_sha256: str, engine_size: int,
                 build_seconds: float, onnx_sha256: str, source_sha256: str | None = None,
                 tensorrt_extra: dict | None = None, command: list[str] | None = None) -> dict:
    """The engine's sidecar: everything needed to run it without the ONNX and to refuse it elsewhere.
    ``command``: the argv that made the build (see :func:`rebuild_command`)."""
    sidecar = sidecar_sections(plan, opts, io, engine_sha256, engine_size, build_seconds, onnx_sha256,
                               source_sha256, command)
    trt_info = {"version": env.get("tensorrt"), "version_compatible": bool(opts.version_compatible),
                "hardware_compatibility": "ampere_plus" if opts.hardware_compatible else "none",
                "strongly_typed": plan.strongly_typed,
                "profile_sets": int(getattr(plan, "profile_sets", 1))}  # io.profiles = this many copies of the classes
    trt_info.update(tensorrt_extra or {})
    sidecar.update(tensorrt=trt_info, gpu=env.get("gpu"))
    return sidecar


def read_sidecar(engine_path: str | Path) -> dict:
    """The sidecar of an engine; UserError if it is missing, unreadable or malformed."""
    return read_sidecar_json(engine_path)


def check_engine_file(engine_path: str | Path, sidecar: dict, verify_hash: bool = True, what: str = "engine file"
                      ) -> None:
    """Refuse an engine whose size or sha256 differs from its sidecar (truncated, replaced, corrupt),
    and the same for the weights file the sidecar's ``engine.weights`` names (an OpenVINO ``.bin``)."""
    engine_path = Path(engine_path)
    want = sidecar["engine"]
    cmd = rebuild_command(sidecar, engine_path)
    files = [(engine_path, want, what)]
    weights = want.get("weights")
    if isinstance(weights, dict) and isinstance(weights.get("file"), str):
        wpath = engine_path.with_name(Path(weights["file"]).name)
        if not wpath.is_file():
            raise UserError(f"{engine_path}: its weights file {wpath.name} is missing (the model is {engine_path.name} "
                            f"and {wpath.name} together); copy both or rebuild: {cmd}")
        files.append((wpath, weights, "weights file"))
    for path, rec, label in files:
        size = path.stat().st_size
        if "size" in rec and size != int(rec["size"]):
            state = "truncated" if size < int(rec["size"]) else "changed"
            raise UserError(f"{path}: {label} is {size} bytes but its sidecar records {rec['size']} "
                            f"({state} copy?); copy it again or rebuild: {cmd}")
        if verify_hash and rec.get("sha256") and sha256_file(path) != rec["sha256"]:
            raise UserError(f"{path}: {label}'s sha256 differs from its sidecar (corrupt or replaced); "
                            f"copy it again or rebuild: {cmd}")


def _ver_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in str(v).split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out + [0] * (3 - len(out)))


def check_environment(sidecar: dict, env: dict, engine_path: str | Path = "engine",
                      warn=lambda msg: print(msg, file=sys.stderr)) -> None:
    """Refuse an engine built for another TensorRT version or GPU (one line, rebuild command included).

    TensorRT: the same version, or with ``version_compatible`` any later one of the same major version
    (TensorRT's support matrix: version-compatible engines run on newer versions within their major
    version; a major version removes APIs).
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
        if _ver_tuple(here)[0] != _ver_tuple(built)[0]:
            major = built.split(".")[0]
            raise UserError(f"{engine_path}: built with TensorRT {built} (version compatible: later {major}.x versions "
                            f"run it) but this is TensorRT {here}, a newer major version; rebuild here: {cmd}")
    elif _ver_tuple(built) != _ver_tuple(here):
        raise UserError(f"{engine_path}: built with TensorRT {built} but this is TensorRT {here}; engines only run on "
                        f"the TensorRT version that built them: rebuild here: {cmd}")
    built_gpu = sidecar.get("gpu") or {}
    gpu = env["gpu"]
    if not built_gpu.get("compute_capability"):
        raise UserError(f"{engine_path}: sidecar does not record the GPU it was built for; rebuild here: {cmd}")
    if trt_info.get("hardware_compatibility") == "ampere_plus":
        if cc_tuple(gpu["compute_capability"]) < (8, 0):
            raise UserError(f"{engine_path}: built hardware-compatible for Ampere and newer GPUs, but "
                            f"{gpu['name']} has compute capability {gpu['compute_capability']}; rebuild here: {cmd}")
        return
    if cc_tuple(built_gpu["compute_capability"]) != cc_tuple(gpu["compute_capability"]):
        raise UserError(f"{engine_path}: built for {built_gpu.get('name', '?')} (compute capability "
                        f"{built_gpu['compute_capability']}) but this GPU is {gpu['name']} (compute capability "
                        f"{gpu['compute_capability']}); rebuild here: {cmd} (or build with --hardware-compatible)")
    if built_gpu.get("name") and built_gpu["name"] != gpu["name"]:
        warn(f"warning: {engine_path} was built on {built_gpu['name']}, running on {gpu['name']} (same compute "
             f"capability {gpu['compute_capability']}); it runs, but rebuild here for the best speed: {cmd}")
