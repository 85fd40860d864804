"""TensorRT builds: parse the planned ONNX, configure the builder, serialise, write the engine and
its sidecar. With :mod:`pspnet_deploy.runners.trt_runner`, the only module that imports
``tensorrt`` (and the CUDA bindings); every version-specific call is feature-detected, so the same
code runs on TensorRT 10.x and 11.x (``tests/test_trt_api.py`` holds it to the real API of
10.0.1, 10.16.1 and 11.4.0).
"""
from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import numpy as np

from ..card import read_card
from ..errors import UserError
from ..utils import atomic_write_bytes, atomic_write_json, sha256_file
from .device import TensorRTUnavailable, cc_tuple, cuda_device_info, parse_device, require_engine_support
from .plan import BuildOptions, BuildPlan, format_parser_errors, plan_build
from .sidecar import check_engine_file, check_environment, make_sidecar, read_sidecar


def tensorrt_version() -> tuple[str | None, str | None]:
    """(version, None) or (None, reason)."""
    try:
        import tensorrt as trt
    except ImportError as e:
        return None, f"TensorRT is not installed (import tensorrt: {e})"
    except Exception as e:  # noqa: BLE001 - a broken install raises all sorts
        return None, f"TensorRT cannot be imported ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return str(trt.__version__), None


def profiles_text(profiles: list) -> str:
    """Profiles as a reader sees them: ``1x3x48x48 / 1x3x64x96 / 1x3x256x320; ...``."""
    return "; ".join(" / ".join("x".join(map(str, s)) for s in p) for p in profiles)


def _gpu_module(name: str, what: str):
    """``import name``, or :class:`TensorRTUnavailable` saying ``what`` is missing and how to get it."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise TensorRTUnavailable(f"{what} is not installed (import {name}: {e}); pip install 'pspnet-deploy[gpu]' "
                                  f"on a machine with an NVIDIA GPU") from e


def cudart():
    """NVIDIA's CUDA runtime bindings (``cuda-bindings``: ``cuda.bindings.runtime``)."""
    return _gpu_module("cuda.bindings.runtime", "the CUDA Python bindings (cuda-bindings)")


def cuda_check(result, what: str):
    """The values of a ``cuda.bindings`` call (which returns ``(error, *values)``); RuntimeError
    naming the call and CUDA's error unless it succeeded."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        rt = cudart()
        name = getattr(err, "name", str(err))
        try:
            text = rt.cudaGetErrorString(err)[1]
            text = text.decode() if isinstance(text, bytes) else str(text)
        except Exception:  # noqa: BLE001 - the message is a courtesy
            text = ""
        raise RuntimeError(f"CUDA {what} failed: {name}{': ' + text if text else ''}")
    return values[0] if len(values) == 1 else tuple(values)


def use_device(index: int) -> None:
    """Make CUDA device ``index`` current for this thread (TensorRT builds and runs on the current device)."""
    cuda_check(cudart().cudaSetDevice(int(index)), f"cudaSetDevice({index})")


def environment(device: str | int | None = 0) -> dict:
    """What this machine offers for engines: TensorRT version, the CUDA bindings and the GPU, with
    the reason for each that is missing."""
    idx = parse_device(device)
    trt_ver, trt_err = tensorrt_version()
    cuda_err = None
    try:
        cudart()
    except TensorRTUnavailable as e:
        cuda_err = str(e).split(";")[0]
    gpu, gpu_err = cuda_device_info(idx)
    return {"tensorrt": trt_ver, "tensorrt_error": trt_err, "cuda_error": cuda_err, "gpu": gpu, "gpu_error": gpu_err,
            "device_index": idx}


def check_engine(engine_path: str | Path, device: str | int | None = 0, env: dict | None = None,
                 verify_hash: bool = True) -> tuple[dict, dict]:
    """Sidecar first, then the file, then this machine (``env``, probed with :func:`environment` if
    not given): (sidecar, env). Nothing touches TensorRT's runtime here."""
    sidecar = read_sidecar(engine_path)
    check_engine_file(engine_path, sidecar, verify_hash=verify_hash)
    if env is None:
        env = environment(device)
    check_environment(sidecar, env, engine_path)
    return sidecar, env


def trt_module():
    """The ``tensorrt`` module."""
    return _gpu_module("tensorrt", "TensorRT")


def trt_logger(trt, verbose: bool = False):
    return trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)


def _dtype_name(trt, dt) -> str:
    try:
        return np.dtype(trt.nptype(dt)).name
    except (TypeError, KeyError, AttributeError):  # types numpy lacks (bf16, fp8, fp4)
        return str(dt).rsplit(".", 1)[-1].lower()


def np_dtype(trt, dt) -> np.dtype:
    try:
        return np.dtype(trt.nptype(dt))
    except (TypeError, KeyError, AttributeError) as e:
        raise UserError(f"engine IO type {dt} has no numpy equivalent; export the ONNX with FP32 inputs and outputs") from e


def _trt_parse_errors(parser) -> list[dict]:
    errors = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        code = err.code()
        e = {"node": int(err.node()), "desc": str(err.desc()),
             "code": getattr(code, "name", None) or str(code).rsplit(".", 1)[-1]}
        for attr in ("node_name", "node_operator"):  # TensorRT 10 parsers; absent on older ones
            fn = getattr(err, attr, None)
            if callable(fn):
                try:
                    e[attr] = str(fn())
                except Exception:  # noqa: BLE001
                    pass
        errors.append(e)
    return errors


def engine_io(trt, engine) -> dict:
    """The engine's IO tensors (name, shape with -1 for a dynamic dimension, dtype) and, for a dynamic
    input, its optimisation profiles: ``profiles`` (one ``{input, min, opt, max}`` per profile index)
    and ``profile`` (the first, which the model card reads the batch range from)."""
    io = {"inputs": [], "outputs": [], "profile": None, "profiles": []}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        mode = engine.get_tensor_mode(name)
        entry = {"name": name, "shape": [int(d) for d in engine.get_tensor_shape(name)],
                 "dtype": _dtype_name(trt, engine.get_tensor_dtype(name))}
        if mode == trt.TensorIOMode.INPUT:
            io["inputs"].append(entry)
            if -1 in entry["shape"] and not io["profiles"]:
                for index in range(int(engine.num_optimization_profiles)):
                    lo, opt, hi = engine.get_tensor_profile_shape(name, index)
                    io["profiles"].append({"input": name, "min": [int(d) for d in lo], "opt": [int(d) for d in opt],
                                           "max": [int(d) for d in hi]})
                io["profile"] = io["profiles"][0] if io["profiles"] else None
        else:
            io["outputs"].append(entry)
    return io


def _parse_network(trt, builder, logger, plan: BuildPlan):
    """The network of ``plan.build_onnx``, created strongly typed unless the plan says otherwise:
    (network, parser); the parser must live as long as the network."""
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
    return network, parser


def _configure(trt, builder, plan: BuildPlan, opts: BuildOptions, env: dict):
    """The builder config: workspace, optimisation level, typing flags, compatibility, profile."""
    config = builder.create_builder_config()
    if opts.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_bytes)
    if opts.opt_level is not None:
        config.builder_optimization_level = int(opts.opt_level)
    detailed = getattr(trt.ProfilingVerbosity, "DETAILED", None)
    if detailed is not None:  # layer names and precisions for the engine inspector (pspnet-debug --profile)
        config.profiling_verbosity = detailed
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
        if cc_tuple(env["gpu"]["compute_capability"]) < (8, 0):
            raise UserError(f"--hardware-compatible (Ampere and newer) needs an Ampere or newer GPU to build on; "
                            f"{env['gpu']['name']} has compute capability {env['gpu']['compute_capability']}")
        config.hardware_compatibility_level = level
    for shapes in plan.profiles:  # one per size class; index order is the sidecar's io.profiles order
        profile = builder.create_optimization_profile()
        profile.set_shape(plan.input_name, *shapes)
        config.add_optimization_profile(profile)
    return config


def _load_timing_cache(trt, config, path: str | Path) -> int:
    """Give the builder the timing cache at ``path``: the file's if it exists, else a new empty one
    (trtexec's ``--timingCacheFile``). Returns the number of bytes loaded. Feature-detected."""
    if not all(hasattr(config, m) for m in ("create_timing_cache", "set_timing_cache", "get_timing_cache")):
        raise UserError(f"TensorRT {trt.__version__} has no timing cache API (IBuilderConfig.create_timing_cache); "
                        f"drop --timing-cache")
    p = Path(path)
    data = p.read_bytes() if p.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is None or not config.set_timing_cache(cache, False):
        raise UserError(f"{path}: TensorRT cannot use this timing cache (corrupt or from another TensorRT version / "
                        f"GPU); delete it and build again")
    return len(data)


def _trt_build(plan: BuildPlan, opts: BuildOptions, env: dict) -> tuple[bytes, dict, bytes | None, dict]:
    """Parse ``plan.build_onnx`` and build; returns (engine bytes, engine IO, timing cache bytes, extra info)."""
    trt = trt_module()
    use_device(env["device_index"])  # TensorRT builds for the current device: make it the one asked for
    logger = trt_logger(trt, opts.verbose)
    builder = trt.Builder(logger)
    network, parser = _parse_network(trt, builder, logger, plan)
    config = _configure(trt, builder, plan, opts, env)
    loaded = _load_timing_cache(trt, config, opts.timing_cache) if opts.timing_cache else None
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(f"{plan.build_onnx}: TensorRT failed to build an engine (see the TensorRT messages above); "
                        f"try a larger --workspace, or --verbose for details")
    data = bytes(serialized)
    extra = {}
    cache_out = None
    if loaded is not None:
        cache_out = bytes(config.get_timing_cache().serialize())
        extra["timing_cache"] = {"path": str(Path(opts.timing_cache).resolve()), "loaded_bytes": loaded,
                                 "size": len(cache_out), "sha256": hashlib.sha256(cache_out).hexdigest()}
    runtime = trt.Runtime(logger)
    if opts.version_compatible and hasattr(runtime, "engine_host_code_allowed"):
        runtime.engine_host_code_allowed = True
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:  # pragma: no cover - a fresh build should always load
        raise UserError(f"{plan.engine_path}: TensorRT built an engine it cannot load back; build with --verbose")
    io = engine_io(trt, engine)
    extra.update(onnx_parser=getattr(trt, "get_nv_onnx_parser_version", lambda: None)(),
                 num_layers=int(getattr(engine, "num_layers", -1)))
    del engine, runtime, parser
    return data, io, cache_out, extra


def build_engine(onnx_path: str | Path | BuildPlan, engine_path: str | Path | None = None,
                 opts: BuildOptions | None = None, log=lambda msg: print(msg, file=sys.stderr), env: dict | None = None,
                 command: list[str] | None = None, wrote: list[str] | None = None) -> dict:
    """Build the engine a plan describes (``onnx_path``: the plan, or an ONNX to plan with ``opts``);
    write the timing cache back (if asked for), the engine and its sidecar, each atomically. Returns
    the sidecar.

    A plan that converts (``--fp16``/``--int8`` on an FP32 ONNX) needs its ``build_onnx`` written
    first; :mod:`pspnet_deploy.cli.build_engine` does that. ``command``: the command line that made
    this build (recorded so the sidecar can say how to rebuild it). Without TensorRT or a GPU:
    raises :class:`TensorRTUnavailable` naming ``wrote`` (files already written), and writes nothing.
    """
    opts = opts or BuildOptions()
    plan = onnx_path if isinstance(onnx_path, BuildPlan) else plan_build(onnx_path, opts, engine_path)
    env = env if env is not None else environment(opts.device)
    if plan.convert:
        if not plan.build_onnx.is_file():
            raise UserError(f"{plan.build_onnx}: the {plan.convert.upper()} ONNX this build needs does not exist; "
                            f"write it first (pspnet-build-engine --{plan.convert} does, or pspnet-export --fp16 / "
                            f"pspnet-calibrate)")
        plan.card = read_card(plan.build_onnx)
    require_engine_support(env, wrote)
    plan.card.require("classes", "palette", "preprocess",
                      hint="export it with pspnet-export so the engine can carry its classes, palette and "
                           "preprocessing")
    log(f"building {plan.precision.upper()} engine {plan.engine_path} from {plan.build_onnx} with TensorRT "
        f"{env['tensorrt']} on {env['gpu']['name']} (cuda:{env['device_index']})"
        + (f", optimisation profiles {profiles_text(plan.profiles[:len(plan.profiles) // plan.profile_sets])}"
           + (f" (x{plan.profile_sets}, one set per execution context)" if plan.profile_sets > 1 else "")
           if plan.profiles else ""))
    t0 = time.perf_counter()
    data, io, cache_out, extra = _trt_build(plan, opts, env)
    seconds = time.perf_counter() - t0
    digest = hashlib.sha256(data).hexdigest()
    onnx_sha = sha256_file(plan.build_onnx)
    source_sha = sha256_file(plan.source_onnx) if plan.source_onnx != plan.build_onnx else onnx_sha
    sidecar = make_sidecar(plan, opts, env, io, digest, len(data), seconds, onnx_sha, source_sha, extra,
                           command=command)
    if cache_out is not None:  # the cache the sidecar records (path, sha256), written before the sidecar
        atomic_write_bytes(opts.timing_cache, cache_out)
    atomic_write_bytes(plan.engine_path, data)
    atomic_write_json(plan.sidecar_path, sidecar)
    log(f"wrote {plan.engine_path} ({len(data) / 2**20:.1f} MiB, {seconds:.1f} s) and {plan.sidecar_path.name}")
    return sidecar


# ---------------------------------------------------------------------------------------------
# debug builds (pspnet-debug): layer outputs marked as engine outputs
# ---------------------------------------------------------------------------------------------

def build_debug_network(onnx_path: str | Path, tensors, device: str | int | None = 0,
                        verbose: bool = False) -> tuple[bytes, list[str], dict]:
    """A debug build of ``onnx_path`` for layerwise comparison: strongly typed like the regular
    build, every layer output whose name (TensorRT's ONNX parser keeps the ONNX tensor names) is in
    ``tensors`` marked as an extra engine output, and ``ProfilingVerbosity.DETAILED`` so the engine
    inspector can say each layer's precision. Marking a tensor stops TensorRT from fusing across it,
    so the numbers are those of the network with every compared tensor materialised (as with
    Polygraphy's "mark all"). Returns (engine bytes, marked tensor names, env)."""
    env = environment(device)
    require_engine_support(env, action="make a TensorRT debug build")
    trt = trt_module()
    use_device(env["device_index"])
    logger = trt_logger(trt, verbose)
    builder = trt.Builder(logger)
    flags = 0
    st_flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if st_flag is not None:
        flags |= 1 << int(st_flag)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = _trt_parse_errors(parser)
        raise UserError(format_parser_errors(Path(onnx_path), errors or [{"node": -1, "desc": "no details given"}]))
    want = set(tensors)
    present = {network.get_output(i).name for i in range(network.num_outputs)}
    marked: list[str] = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            t = layer.get_output(j)
            if t is not None and t.name in want and t.name not in present:
                network.mark_output(t)
                present.add(t.name)
                marked.append(t.name)
    config = builder.create_builder_config()
    detailed = getattr(trt.ProfilingVerbosity, "DETAILED", None)
    if detailed is not None:
        config.profiling_verbosity = detailed
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(f"{onnx_path}: TensorRT failed to build the debug engine (see the TensorRT messages above); "
                        f"compare fewer tensors at once (--max-memory) or use --verbose")
    return bytes(serialized), marked, env
