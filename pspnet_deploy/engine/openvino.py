"""OpenVINO IR for CPUs: build from ONNX, describe it in a sidecar, check it before it runs.

With :mod:`pspnet_deploy.runners.openvino_runner`, the only modules that import ``openvino``. The
sidecar is the TensorRT engines' contract (:mod:`.sidecar` writes its common sections and checks the
files, :func:`pspnet_deploy.card.read_card` reads it); this module adds the ``openvino`` and ``cpu``
sections and the checks that refuse an IR from another OpenVINO version or CPU.

Precision contract (the same idea as the TensorRT engines): the ONNX says what the network computes.

- ``fp32``: the FP32 ONNX, saved as an FP32 IR (``compress_to_fp16=False``) and compiled with
  ``INFERENCE_PRECISION_HINT=f32``. The hint is not optional: on a CPU with BF16 (AVX-512 BF16,
  AMX) the CPU plugin's default for an FP32 IR is BF16, so "FP32" would silently be BF16 there.
- ``bf16``: the *same* FP32 IR, compiled with ``INFERENCE_PRECISION_HINT=bf16``. BF16 is a runtime
  property, not a file format, so the sidecar records it (and the IR's ``rt_info``) and the runner
  applies it: a ``.bf16.xml`` always runs as BF16 where the CPU can. Where it cannot (no
  ``avx512_bf16`` / AMX-BF16) OpenVINO accepts the hint and runs FP32 without a word; the build
  and the runner read the precision back from the compiled model and say so.
- ``int8``: the Q/DQ ONNX from pspnet-calibrate as it is (OpenVINO's low-precision transformations
  turn each Q/DQ pair around a convolution into an INT8 convolution). ``--int8 --calib-data`` on
  an FP32 ONNX calibrates first (the command layer writes the INT8 ONNX, as for TensorRT builds). INT8 convolutions
  run on any AVX2 CPU; VNNI (AVX-512 VNNI, AVX-VNNI, AMX-INT8) is what makes them fast.

Files: ``NAME.PRECISION.xml`` + ``NAME.PRECISION.bin`` and the sidecar ``NAME.PRECISION.xml.json``
(OpenVINO version, CPU and its ISA features, requested and resolved precision, IO, the ONNX's
sha256, the model's classes, palette and preprocessing). A runner refuses an IR whose files do
not match the sidecar, or whose sidecar comes from another OpenVINO version or CPU.

The three files are one unit (:func:`publish_ir`): written under temporary names, then the old
sidecar removed, the .bin, the .xml and the new sidecar renamed into place, in that order; a kill
at any moment leaves the previous IR whole or one without a sidecar (refused with one line).
"""
from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from ..card import ModelCard, default_engine_path, ir_weights_path, read_card, read_sidecar_json, sidecar_path
from ..errors import UserError
from ..machine import ISA_FEATURES, cpu_flags, cpu_has_bf16, cpu_has_vnni, cpu_model_name
from ..precision.ranges import DEFAULT_METHOD
from ..utils import (fault_point, free_bytes, no_space_error, publish, rmdirs_if_empty, sha256_file, sigint_deferred,
                     temp_beside, tmp_name)
from .plan import check_calibration_options, source_onnx, variant_path
from .sidecar import PROG, check_engine_file, rebuild_command, sidecar_sections

BACKEND = "openvino"
PRECISIONS = ("fp32", "bf16", "int8")
DEVICE = "CPU"
#: the INFERENCE_PRECISION_HINT value per precision (int8: the float parts of an INT8 graph stay f32)
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


class OpenVINOUnavailable(UserError):
    """The openvino package is missing or broken."""


def quiet_openvino_telemetry() -> None:
    """Turn OpenVINO's usage telemetry off for this process, before ``import openvino``.

    What the installed sources do (openvino 2026.4, openvino-telemetry 2025.2): ``import openvino``
    imports ``openvino.tools.ovc``, whose ``telemetry_utils.py`` and ``convert_impl.py`` do
    ``try: import openvino_telemetry as tm / except ImportError: import
    openvino.tools.ovc.telemetry_stub as tm``. Every ``convert_model`` then starts a session and
    sends events to Google Analytics from a thread pool (``urllib`` to www.google-analytics.com)
    unless ``~/intel/openvino_telemetry`` holds ``0`` (what ``opt_in_out --opt_out``, the documented
    opt-out, writes: a per-user setting we do not change for the user) or ``CI=true`` is set. A
    ``None`` entry in ``sys.modules`` makes ``import openvino_telemetry`` raise ImportError, so
    OpenVINO takes its own no-op stub, for this process only: no network, no client-id file in
    the home folder, no sender threads to interrupt at exit. When openvino was imported before
    (a caller's own import), its modules get the stub in place of the telemetry module."""
    if "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]
        return
    if sys.modules["openvino_telemetry"] is None:
        return
    try:
        from openvino.tools.ovc import telemetry_stub
    except ImportError:
        return
    for name in ("openvino.tools.ovc.telemetry_utils", "openvino.tools.ovc.convert_impl", "openvino.tools.ovc.utils",
                 "openvino.tools.ovc.main"):
        mod = sys.modules.get(name)
        if mod is not None and hasattr(mod, "tm"):
            mod.tm = telemetry_stub
    try:  # the instance that import already made: nothing more leaves it
        real = sys.modules["openvino_telemetry"].Telemetry()
        real.consent = False
        real.sender.executor.shutdown(wait=False, cancel_futures=True)
    except Exception:  # noqa: BLE001 - never configured, or another telemetry version: nothing to stop
        pass


def _ov():
    quiet_openvino_telemetry()  # before the first import: OpenVINO's telemetry would reach the network
    try:
        import openvino as ov
    except ImportError as e:
        raise OpenVINOUnavailable(f"OpenVINO is not installed (import openvino: {e}); pip install "
                                  f"'openvino>=2026.0,<2027'") from e
    return ov


@functools.lru_cache(maxsize=1)
def ov_core():
    """The process's one ``ov.Core``, kept until exit; every build, check and runner uses it.

    Why one: OpenVINO's CPU plugin (2026.x, ``sigstack_manager``) swaps the signal stack of the
    thread that creates it for one of its own and, when destroyed, restores the previous one only if
    its own is still current, then unmaps it. Two plugins (one per ``Core``) that overlap and die in
    creation order leave the thread on an unmapped signal stack; the next Python signal handler run
    there (a DataLoader's SIGCHLD when its worker exits) then kills the process with SIGSEGV."""
    return _ov().Core()


def openvino_version() -> str:
    ov = _ov()
    return str(ov.__version__).split("-")[0]


# --------------------------------------------------------------------------------------------
# This machine: CPU and ISA
# --------------------------------------------------------------------------------------------

def native_support(isa: dict, capabilities: list[str] | None = None) -> dict:
    """Which precisions this CPU runs natively: bf16 (AVX-512 BF16 or AMX-BF16, or OpenVINO lists
    BF16 in OPTIMIZATION_CAPABILITIES), int8 with VNNI (AVX-512 VNNI, AVX-VNNI or AMX-INT8)."""
    caps = {c.upper() for c in (capabilities or [])}
    present = {f for f, on in isa.items() if on}
    bf16 = cpu_has_bf16(present) or "BF16" in caps
    vnni = cpu_has_vnni(present)
    return {"bf16": bf16, "int8_vnni": vnni}


def cpu_environment() -> dict:
    """OpenVINO version and the CPU as the sidecar records it: model, ISA features, capabilities."""
    core = ov_core()
    flags = cpu_flags()
    isa = {f: f in flags for f in ISA_FEATURES}
    try:
        caps = [str(c) for c in core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES")]
    except Exception:  # noqa: BLE001 - informative only
        caps = []
    try:
        full_name = str(core.get_property(DEVICE, "FULL_DEVICE_NAME"))
    except Exception:  # noqa: BLE001
        full_name = None
    return {"openvino": openvino_version(), "device": DEVICE, "cpu": cpu_model_name() or full_name or "unknown CPU",
            "full_device_name": full_name, "isa": isa, "optimization_capabilities": caps,
            "native": native_support(isa, caps), "logical_cpus": os.cpu_count()}


_PRETTY = {"f32": "FP32", "bf16": "BF16", "f16": "FP16"}


def precision_note(requested: str, resolved: dict, native: dict) -> str | None:
    """A plain sentence when the runtime does not run what was asked (or runs it slowly), else None."""
    used = resolved.get("inference_precision")
    if requested == "bf16" and used != "bf16":
        return ("BF16 requested, but this CPU has no BF16 instructions (avx512_bf16 / AMX-BF16): OpenVINO "
                f"accepted the hint and runs {_PRETTY.get(str(used), str(used))}")
    if requested == "int8":
        convs = resolved.get("conv_precisions") or {}
        n_int8 = sum(v for k, v in convs.items() if k in ("i8", "u8"))
        n_all = sum(convs.values())
        if n_all and n_int8 == 0:
            return "INT8 requested, but no convolution runs in INT8 (the Q/DQ pattern was not recognised)"
        if not native.get("int8_vnni"):
            return (f"INT8 convolutions ({n_int8}/{n_all}) run without VNNI (no avx512_vnni / avx_vnni / AMX-INT8 "
                    f"on this CPU): INT8 here is emulated with AVX2 multiply-adds, far from the 4x of VNNI")
    return None


# --------------------------------------------------------------------------------------------
# Paths and options
# --------------------------------------------------------------------------------------------

def default_ir_path(onnx_path: str | Path, precision: str) -> Path:
    """``<name>.<precision>.xml`` next to the ONNX."""
    return default_engine_path(onnx_path, precision, ".xml")


def weights_path(xml_path: str | Path) -> Path:
    return ir_weights_path(xml_path)


@dataclass
class OVBuildOptions:
    """What shapes an OpenVINO build (recorded in the sidecar)."""

    precision: str | None = None  # None: as the ONNX is (fp32/int8); bf16: hint on the FP32 IR; int8 on FP32: calibrate
    calib_data: str | None = None
    calib_split: str = "train"
    calib_images: int | None = None
    calib_method: str = DEFAULT_METHOD
    static_size: list | None = None  # a dynamic-shape ONNX: reshape the IR to this fixed H W (faster)

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        if self.static_size is not None:
            try:
                h, w = (int(v) for v in self.static_size)
                if h < 1 or w < 1:
                    raise ValueError
            except (TypeError, ValueError):
                raise UserError(f"--static-size takes a positive H W, got {self.static_size}") from None
            self.static_size = [h, w]
        if self.precision is not None and self.precision not in PRECISIONS:
            raise UserError(f"OpenVINO builds {', '.join(PRECISIONS)}, not {self.precision!r} "
                            f"(FP16 on CPUs: use --bf16)")
        check_calibration_options(self, ("int8",))


@dataclass
class OVBuildPlan:
    source_onnx: Path
    source_precision: str
    convert: str | None  # None or "int8" (calibrate first)
    build_onnx: Path
    precision: str
    engine_path: Path  # the .xml
    card: ModelCard  # of build_onnx (the source's until the INT8 ONNX is written)

    @property
    def xml_path(self) -> Path:
        return self.engine_path

    @property
    def bin_path(self) -> Path:
        return weights_path(self.xml_path)

    @property
    def sidecar_path(self) -> Path:
        return sidecar_path(self.xml_path)


def plan_openvino_build(onnx_path: str | Path, opts: OVBuildOptions, xml_path: str | Path | None = None) -> OVBuildPlan:
    """Which ONNX becomes which IR at which precision; UserError for requests that cannot be met."""
    opts.validate()
    src, card = source_onnx(onnx_path)
    src_p = card.precision
    if src_p == "fp16":
        raise UserError(f"{src} is the FP16 ONNX; OpenVINO on CPUs builds from the FP32 ONNX "
                        f"({variant_path(src, 'fp32').name}): pass that, with --bf16 for 16-bit inference")
    want = opts.precision or src_p
    convert, build_onnx = None, src
    if want == "bf16" and src_p != "fp32":
        raise UserError(f"{src} is the {src_p.upper()} ONNX; --bf16 is an inference precision of the FP32 IR: "
                        f"pass the FP32 ONNX ({variant_path(src, 'fp32').name})")
    if want == "fp32" and src_p == "int8":
        raise UserError(f"{src} is the INT8 Q/DQ ONNX; for an FP32 IR pass the FP32 ONNX "
                        f"({variant_path(src, 'fp32').name})")
    if want == "int8" and src_p == "fp32":
        if not opts.calib_data:
            raise UserError(f"--int8 on the FP32 ONNX {src.name} needs calibration images: add --calib-data DIR "
                            f"(or pass the INT8 Q/DQ ONNX from pspnet-calibrate)")
        convert, build_onnx = "int8", variant_path(src, "int8")
    card.require("classes", "palette", "preprocess", hint="export it with pspnet-export so the IR can carry its "
                                                          "classes, palette and preprocessing")
    if len(card.inputs) != 1:
        raise UserError(f"{src}: expected one image input, found {len(card.inputs)}")
    if opts.static_size is not None:
        if card.size_range is None:
            raise UserError(f"{src}: --static-size reshapes a dynamic-shape ONNX (pspnet-export --dynamic-shape); "
                            f"this one is fixed at {card.input_size[0]}x{card.input_size[1]}")
        card.check_bounds(*opts.static_size)
    xml = Path(xml_path) if xml_path is not None else default_ir_path(src, want)
    if xml.suffix.lower() != ".xml":
        raise UserError(f"{xml}: OpenVINO IR files end in .xml (the weights go to {xml.with_suffix('.bin').name})")
    return OVBuildPlan(source_onnx=src, source_precision=src_p, convert=convert, build_onnx=build_onnx,
                       precision=want, engine_path=xml, card=card)


def build_argv(onnx: str | Path, xml: str | Path, opts: OVBuildOptions) -> list[str]:
    """The command line of a build made without one (the library, the demo): what
    :func:`~pspnet_deploy.engine.sidecar.rebuild_command` prints. The CLI records its own argv."""
    argv = [PROG, str(Path(onnx).resolve()), "--backend", BACKEND, "--engine", str(Path(xml).resolve())]
    if opts.precision == "bf16":
        argv.append("--bf16")
    elif opts.precision == "int8":
        argv.append("--int8")
    if opts.static_size:
        argv += ["--static-size", *map(str, opts.static_size)]
    for flag, value, default in (("--calib-data", opts.calib_data, None), ("--calib-split", opts.calib_split, "train"),
                                 ("--calib-images", opts.calib_images, None),
                                 ("--calib-method", opts.calib_method, DEFAULT_METHOD)):
        if opts.precision == "int8" and value is not None and value != default:
            argv += [flag, str(value)]
    return argv


# --------------------------------------------------------------------------------------------
# Compiling and reading back what the runtime does
# --------------------------------------------------------------------------------------------

def _type_name(t) -> str:
    """An OpenVINO element type as a short name: f32, bf16, f16, i8, u8, ..."""
    name = getattr(t, "get_type_name", None)
    if callable(name):
        return str(name())
    s = str(t).lower()
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16", "<type: 'float32'>": "f32",
            "<type: 'bfloat16'>": "bf16"}.get(s, s)


def compile_config(precision: str, threads: int | None = None, mode: str = "latency", streams: int | str | None = None
                   ) -> dict:
    """The ``compile_model`` properties for a precision and the runner options."""
    if mode not in ("latency", "throughput"):
        raise UserError(f"OpenVINO performance mode must be latency or throughput, got {mode!r}")
    cfg = {"INFERENCE_PRECISION_HINT": HINTS[precision], "PERFORMANCE_HINT": mode.upper()}
    if threads is not None:
        if int(threads) <= 0:
            raise UserError(f"--threads must be positive, got {threads}")
        cfg["INFERENCE_NUM_THREADS"] = int(threads)
    if streams is not None:
        if isinstance(streams, str) and streams.upper() in ("AUTO", "NUMA"):
            cfg["NUM_STREAMS"] = streams.upper()
        else:
            if int(streams) <= 0:
                raise UserError(f"--streams must be positive (or AUTO), got {streams}")
            cfg["NUM_STREAMS"] = int(streams)
    return cfg


def resolved_precision(compiled) -> dict:
    """What the compiled model really runs: the inference precision it resolved the hint to, and
    the runtime precision of every convolution (from the runtime model's ``runtimePrecision``)."""
    out = {"inference_precision": _type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))}
    convs: dict[str, int] = {}
    try:
        for op in compiled.get_runtime_model().get_ordered_ops():
            rt = op.get_rt_info()
            if "layerType" in rt and rt["layerType"].astype(str) == "Convolution" and "runtimePrecision" in rt:
                p = rt["runtimePrecision"].astype(str)
                convs[p] = convs.get(p, 0) + 1
    except Exception:  # noqa: BLE001 - the summary is informative; the hint above is the contract
        pass
    out["conv_precisions"] = dict(sorted(convs.items()))
    for k in ("NUM_STREAMS", "INFERENCE_NUM_THREADS", "OPTIMAL_NUMBER_OF_INFER_REQUESTS", "PERFORMANCE_HINT"):
        try:
            v = compiled.get_property(k)
            out[k.lower()] = int(v) if isinstance(v, int) or str(v).isdigit() else str(v).rsplit(".", 1)[-1]
        except Exception:  # noqa: BLE001
            pass
    return out


def describe_used(requested: str, resolved: dict) -> str:
    """Short label of what ran, for tables: ``bf16``, ``f32 (bf16 asked)``, ``int8 24/26 conv``."""
    used = resolved.get("inference_precision", "?")
    convs = resolved.get("conv_precisions") or {}
    if requested == "int8":
        n8 = sum(v for k, v in convs.items() if k in ("i8", "u8"))
        return f"int8 ({n8}/{sum(convs.values())} conv), rest {used}"
    name = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(used, used)
    return name if name == requested else f"{name} ({requested} asked)"


def _io(model) -> dict:
    def desc(port):
        ps = port.get_partial_shape()
        shape = [int(d.get_length()) if d.is_static else -1 for d in ps]
        return {"name": port.get_any_name(), "shape": shape, "dtype": _np_name(port.get_element_type())}

    return {"inputs": [desc(p) for p in model.inputs], "outputs": [desc(p) for p in model.outputs], "profile": None}


def _np_name(t) -> str:
    n = _type_name(t)
    return {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "i64": "int64", "i32": "int32", "u8": "uint8",
            "i8": "int8", "boolean": "bool"}.get(n, n)


# --------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------

@contextmanager
def _ir_temporaries(xml: Path):
    """Temporary names for the three files of one IR, in the IR's folder: ``(xml, bin, sidecar)``,
    named like every temporary (:func:`pspnet_deploy.utils.tmp_name`, so a killed build's are
    removed by the next write there) and removed when the body does not publish them (Ctrl-C
    included: each exists only once registered for removal)."""
    made: list[Path] = []
    created: list[Path] = []
    try:
        with temp_beside(xml) as (parent, created):
            for target, suffix in ((xml, ".xml"), (sidecar_path(xml), ".json")):
                prefix, suffix = tmp_name(target, suffix)
                with sigint_deferred():
                    fd, t = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=parent)
                    fault_point("ir:temporary-made")
                    os.close(fd)
                    made.append(Path(t))
        tmp_xml, tmp_sc = made
        tmp_bin = tmp_xml.with_suffix(".bin")  # where OpenVINO's serializer puts the weights of tmp_xml
        made.append(tmp_bin)
        yield tmp_xml, tmp_bin, tmp_sc
    finally:
        with sigint_deferred():
            for t in made:
                try:
                    t.unlink()
                except FileNotFoundError:
                    pass
            rmdirs_if_empty(created)  # the folders this build made, unless an IR is in them now


def _weights_bytes(model) -> int:
    """Bytes of the model's constants: the size of the ``.bin`` the serializer writes."""
    total = 0
    for op in model.get_ops():
        if op.get_type_name() == "Constant":
            total += int(op.get_byte_size())
    return total


def _serialize(ov, model, tmp_xml: Path, xml: Path) -> None:
    """``ov.save_model`` to the temporary names. The serializer reports every write failure as
    ``RuntimeError: basic_ios::clear: iostream error`` (no errno) and removes what it wrote, so a
    full disk is recognised by the free space left in the folder being less than the ``.bin``
    needs; that and any other write failure is one line (UserError), not an internal error."""
    try:
        ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
    except Exception as e:  # noqa: BLE001 - the serializer raises RuntimeError for every I/O failure
        err = no_space_error(e, xml)
        why = (str(e).strip().splitlines() or [type(e).__name__])[-1][:200]
        if err is None:
            need = _weights_bytes(model) + (1 << 20)  # the .bin and a generous .xml
            free = free_bytes(tmp_xml.parent)
            if free is not None and free < need:
                err = UserError(f"{xml}: no space left to write it (the IR needs about {need / 2**20:.0f} MiB, "
                                f"{free / 2**20:.0f} MiB are free); free disk space or choose another output path")
            else:
                err = UserError(f"{xml}: OpenVINO could not write the IR ({why}); check the output folder and disk")
        raise err from e


def publish_ir(tmp_xml: Path, tmp_bin: Path, tmp_sc: Path, xml: Path) -> None:
    """Put a finished IR in place so that at every instant the folder holds the previous IR whole,
    or an IR that no reader accepts: the old sidecar goes first (an IR without its sidecar is
    refused with one line, whatever its .xml and .bin are), then the .bin, the .xml, and the new
    sidecar last, which records the sha256 and size of exactly this .xml and .bin. Every file gets
    the usual mode (the serializer writes the .xml 0600)."""
    sc = sidecar_path(xml)
    publish([(tmp_bin, weights_path(xml)), (tmp_xml, xml), (tmp_sc, sc)], retire=[sc])


def _shape_input(ov, model, size_range, static_size=None) -> None:
    """A dynamic-shape model's input: H and W bounded by the export's range, or fixed at
    ``static_size`` (the CPU plugin compiles a static shape once, a bounded one per new shape)."""
    (lo_h, lo_w), _opt, (hi_h, hi_w) = size_range
    port = model.inputs[0]
    ps = port.get_partial_shape()
    hw = [ov.Dimension(int(v)) for v in static_size] if static_size else \
        [ov.Dimension(lo_h, hi_h), ov.Dimension(lo_w, hi_w)]
    model.reshape({port: ov.PartialShape([ps[0], ps[1], *hw])})


def build_openvino(onnx_path: str | Path | OVBuildPlan, xml_path: str | Path | None = None,
                   opts: OVBuildOptions | None = None, log=lambda msg: print(msg, file=sys.stderr),
                   command: list[str] | None = None) -> dict:
    """Build ``NAME.PRECISION.xml/.bin`` and the sidecar from an ONNX (``onnx_path``: a path or an
    :class:`OVBuildPlan`). A plan that converts (``--int8`` on an FP32 ONNX) needs its INT8 ONNX
    written first: the command layer's job (:func:`pspnet_deploy.cli.build_engine.make_variant`).
    Compiles the IR once on this CPU to read back the precision the runtime uses. ``command``: the
    argv that made the build (default: the equivalent pspnet-build-engine line). Returns the sidecar."""
    opts = opts or OVBuildOptions()
    plan = onnx_path if isinstance(onnx_path, OVBuildPlan) else plan_openvino_build(onnx_path, opts, xml_path)
    ov = _ov()
    env = cpu_environment()
    if plan.convert:
        if not plan.build_onnx.is_file():
            raise UserError(f"{plan.build_onnx}: the INT8 ONNX to build from is not there; write it first "
                            f"(pspnet-build-engine {plan.source_onnx} --backend openvino --int8 --calib-data DIR)")
        plan.card = read_card(plan.build_onnx, kind="onnx")
    log(f"converting {plan.build_onnx} to the OpenVINO {env['openvino']} IR {plan.xml_path} "
        f"({plan.precision.upper()}) on {env['cpu']}")
    t0 = time.perf_counter()
    try:
        model = ov.convert_model(str(plan.build_onnx))
    except Exception as e:  # noqa: BLE001 - the frontend raises several types
        raise UserError(f"{plan.build_onnx}: OpenVINO cannot convert this ONNX: "
                        f"{str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__}") from e
    if plan.card.size_range is not None:
        _shape_input(ov, model, plan.card.size_range, opts.static_size)
    hint = HINTS[plan.precision]
    model.set_rt_info(plan.precision, ["pspnet", "precision"])
    model.set_rt_info(hint, ["pspnet", "inference_precision_hint"])
    core = ov_core()
    try:
        compiled = core.compile_model(model, DEVICE, compile_config(plan.precision))
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{plan.build_onnx}: OpenVINO's CPU plugin cannot compile this model: "
                        f"{str(e).strip().splitlines()[0][:300]}") from e
    resolved = resolved_precision(compiled)
    io = _io(model)
    del compiled
    onnx_sha = sha256_file(plan.build_onnx)
    source_sha = sha256_file(plan.source_onnx) if plan.source_onnx != plan.build_onnx else onnx_sha
    # the .xml, .bin and sidecar are one unit: all three under temporary names, then published together
    with _ir_temporaries(plan.xml_path) as (tmp_xml, tmp_bin, tmp_sc):
        _serialize(ov, model, tmp_xml, plan.xml_path)
        fault_point("ir:serialized")
        xml_size, bin_size = tmp_xml.stat().st_size, tmp_bin.stat().st_size
        seconds = time.perf_counter() - t0
        sidecar = make_sidecar(plan, opts, env, io, resolved, xml_size, bin_size, seconds, onnx_sha, source_sha,
                               command or build_argv(plan.source_onnx, plan.xml_path, opts), files=(tmp_xml, tmp_bin))
        try:
            tmp_sc.write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
        except OSError as e:
            raise no_space_error(e, plan.sidecar_path) or e
        fault_point("ir:sidecar-written")
        publish_ir(tmp_xml, tmp_bin, tmp_sc, plan.xml_path)
    log(f"wrote {plan.xml_path} + {plan.bin_path.name} ({bin_size / 2**20:.1f} MiB, {seconds:.1f} s) and "
        f"{plan.sidecar_path.name}; runs as {describe_used(plan.precision, resolved)}")
    note = sidecar["openvino"].get("precision_note")
    if note:
        log(f"note: {note}")
    return sidecar


def make_sidecar(plan: OVBuildPlan, opts: OVBuildOptions, env: dict, io: dict, resolved: dict, xml_size: int,
                 bin_size: int, seconds: float, onnx_sha256: str, source_sha256: str, command: list[str],
                 files: tuple[Path, Path] | None = None) -> dict:
    """The TensorRT engines' sidecar (:func:`~pspnet_deploy.engine.sidecar.sidecar_sections`) with the
    ``.bin`` under ``engine.weights`` and the ``openvino`` and ``cpu`` sections. ``files``: the
    (.xml, .bin) to hash when they are still under their temporary names (default: the plan's)."""
    xml_file, bin_file = files or (plan.xml_path, plan.bin_path)
    sidecar = sidecar_sections(plan, opts, io, sha256_file(xml_file), xml_size, seconds, onnx_sha256,
                               source_sha256, command, onnx_precision="int8" if plan.convert else plan.source_precision)
    sidecar["engine"]["weights"] = {"file": plan.bin_path.name, "size": int(bin_size),
                                    "sha256": sha256_file(bin_file)}
    sidecar["backend"] = BACKEND
    sidecar["openvino"] = {"version": env["openvino"], "device": DEVICE,
                           "inference_precision_hint": HINTS[plan.precision],
                           "resolved": resolved, "runs_as": describe_used(plan.precision, resolved),
                           "precision_note": precision_note(plan.precision, resolved, env["native"])}
    sidecar["cpu"] = {k: env[k] for k in ("cpu", "full_device_name", "isa", "optimization_capabilities", "native")}
    sidecar["versions"]["openvino"] = env["openvino"]
    return sidecar


# --------------------------------------------------------------------------------------------
# Checks before running
# --------------------------------------------------------------------------------------------

def read_sidecar(xml_path: str | Path) -> dict:
    """The sidecar of an IR (the common checks are :func:`pspnet_deploy.card.read_sidecar_json`'s),
    with its ``openvino`` and ``cpu`` sections checked."""
    data = read_sidecar_json(xml_path)
    sc = sidecar_path(xml_path)
    cmd = rebuild_command(data, xml_path)
    if data.get("backend") != BACKEND:
        raise UserError(f"{sc}: not an OpenVINO sidecar (backend {data.get('backend')!r}); rebuild the IR: {cmd}")
    if not isinstance(data.get("cpu"), dict):
        raise UserError(f"{sc}: sidecar has no 'cpu' section; rebuild the IR: {cmd}")
    if data.get("precision") not in PRECISIONS:
        raise UserError(f"{sc}: sidecar precision {data.get('precision')!r} is not one of {', '.join(PRECISIONS)}; "
                        f"rebuild the IR: {cmd}")
    return data


def check_environment(sidecar: dict, env: dict, xml_path: str | Path = "model.xml") -> None:
    """Refuse an IR whose sidecar was written by another OpenVINO version or on another CPU: the
    precision it records as what the runtime uses would not hold here."""
    cmd = rebuild_command(sidecar, xml_path)
    built = str(sidecar["openvino"].get("version"))
    if built != env["openvino"]:
        raise UserError(f"{xml_path}: built with OpenVINO {built} but this is OpenVINO {env['openvino']}; rebuild "
                        f"here (seconds) so the recorded precision is what this runtime does: {cmd}")
    cpu = sidecar["cpu"]
    if cpu.get("cpu") != env["cpu"] or dict(cpu.get("isa") or {}) != env["isa"]:
        have = ", ".join(k for k, v in env["isa"].items() if v) or "none"
        was = ", ".join(k for k, v in (cpu.get("isa") or {}).items() if v) or "none"
        raise UserError(f"{xml_path}: built on {cpu.get('cpu')} ({was}) but this CPU is {env['cpu']} ({have}); the "
                        f"precision it records may not hold here: rebuild here (seconds): {cmd}")


def check_ir(xml_path: str | Path, verify_hash: bool = True, env: dict | None = None,
             sidecar: dict | None = None) -> tuple[dict, dict]:
    """Sidecar, files (the .xml and its .bin), then this machine: (sidecar, env). Nothing is compiled yet."""
    sidecar = read_sidecar(xml_path) if sidecar is None else sidecar
    check_engine_file(xml_path, sidecar, verify_hash=verify_hash, what="IR")
    if not verify_hash:  # the .xml is small: always check that it is the one its sidecar and .bin belong to
        check_engine_file(xml_path, {"engine": {k: v for k, v in sidecar["engine"].items() if k != "weights"},
                                     **{k: v for k, v in sidecar.items() if k != "engine"}}, verify_hash=True, what="IR")
    env = env if env is not None else cpu_environment()
    check_environment(sidecar, env, xml_path)
    return sidecar, env


__all__ = ["BACKEND", "HINTS", "ISA_FEATURES", "OVBuildOptions", "OVBuildPlan", "OpenVINOUnavailable", "build_argv",
           "build_openvino", "check_environment", "check_ir", "compile_config", "cpu_environment",
           "default_ir_path", "describe_used", "make_sidecar", "native_support", "plan_openvino_build",
           "ov_core", "precision_note", "publish_ir", "read_sidecar", "resolved_precision", "weights_path"]
