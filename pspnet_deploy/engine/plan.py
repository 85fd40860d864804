"""What to build, decided without TensorRT: build options, the plan (which ONNX, precision, network
typing, optimisation profile, output path) and the parser-error line.

Precision comes from the ONNX (the design's "precision contract"): the network is created strongly
typed, so an FP32, FP16 or INT8 Q/DQ ONNX gives an FP32, FP16 or INT8 engine. Asking for
``fp16``/``int8`` with an FP32 ONNX plans a conversion (``plan.convert``) that the command layer
(:mod:`pspnet_deploy.cli.build_engine`) carries out before the build. On TensorRT 10 only,
``legacy_fp16_flag`` builds the FP32 ONNX weakly typed with ``BuilderFlag.FP16`` instead.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ..card import (PRECISIONS, SUFFIX_KINDS, ModelCard, default_engine_path, read_card, sidecar_path,
                    variant_path)
from ..errors import UserError
from ..precision.ranges import DEFAULT_METHOD

DEFAULT_MAX_BATCH = 8
#: what a TensorRT engine can be built as (BF16 is an OpenVINO inference precision, see engine/openvino.py)
ENGINE_PRECISIONS = ("fp32", "fp16", "int8")


def onnx_io(path: str | Path) -> dict:
    """Inputs and outputs of an ONNX file: name, dtype, shape (int, or the symbolic name / "?")."""
    card = read_card(path)
    return {"inputs": card.inputs, "outputs": card.outputs}


def onnx_precision(path: str | Path) -> str:
    """fp32 / fp16 / int8 of an ONNX: the ``pspnet.precision`` metadata, else read from the graph."""
    return read_card(path).precision


def export_batch_range(card: ModelCard) -> tuple[int, int, int]:
    """(min, opt, max) batch recorded by pspnet-export for a dynamic-batch ONNX, else (1, 8, 8)."""
    return tuple(card.batch_range) if card.batch_range else (1, DEFAULT_MAX_BATCH, DEFAULT_MAX_BATCH)


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
    calib_method: str = DEFAULT_METHOD
    verbose: bool = False

    @property
    def workspace_bytes(self) -> int | None:
        """The workspace limit TensorRT is given, in bytes (recorded exactly in the sidecar)."""
        return None if self.workspace_gb is None else int(self.workspace_gb * (1 << 30))

    def to_dict(self) -> dict:
        """As recorded in the sidecar: paths absolute (see :func:`recorded_path`), the workspace also in bytes."""
        d = asdict(self)
        d["batch"] = list(self.batch) if self.batch else None
        for key in PATH_OPTIONS:
            d[key] = recorded_path(key, d[key])
        d["workspace_bytes"] = self.workspace_bytes
        return d

    def validate(self) -> None:
        if self.precision is not None and self.precision not in ENGINE_PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(ENGINE_PRECISIONS)}, got {self.precision!r}")
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
        check_calibration_options(self, ("int8", "fp16"))


#: options whose value names a file or folder (recorded absolute); True: always a path (else a folder
#: or a dataset spec such as ``synthetic:1``, resolved only where such a path exists)
PATH_OPTIONS = {"timing_cache": True, "calib_data": False}


def recorded_path(key: str, value):
    """``value`` of option ``key`` as a build records it: an absolute, resolved path where it names one."""
    if key not in PATH_OPTIONS or value is None:
        return value
    return str(Path(value).resolve()) if PATH_OPTIONS[key] or Path(value).exists() else value


def check_timing_cache(cache: str | Path, inputs: dict[str, Path]) -> None:
    """The timing cache is read and rewritten by a build, so it may be neither the ONNX nor the engine
    (or its sidecar): one line naming which. ``inputs``: what each protected path is."""
    c = Path(cache)
    for what, p in inputs.items():
        same = c.resolve() == Path(p).resolve()
        if not same and c.exists() and Path(p).exists():
            same = c.samefile(p)
        if same:
            raise UserError(f"{cache}: --timing-cache is the {what} {p}; give the timing cache a file of its own "
                            f"(it is read, then rewritten after the build)")


def check_calibration_options(opts, converts: tuple[str, ...]) -> None:
    """``--calib-*`` (``opts.calib_data``, ``opts.calib_images``) only with a precision that converts
    an FP32 ONNX first (``converts``, the first one named first), and a positive image count."""
    if (opts.calib_data or opts.calib_images) and opts.precision not in converts:
        others = "".join(f" (or --{c})" for c in converts[1:])
        raise UserError(f"--calib-data / --calib-images go with --{converts[0]}{others} on an FP32 ONNX")
    if opts.calib_images is not None and opts.calib_images <= 0:
        raise UserError(f"--calib-images must be positive, got {opts.calib_images}")


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
    card: ModelCard | None = None  # of build_onnx (the source's until a variant is written)

    @property
    def sidecar_path(self) -> Path:
        return sidecar_path(self.engine_path)


def source_onnx(onnx_path: str | Path) -> tuple[Path, ModelCard]:
    """The ONNX a build starts from and its card; UserError for a missing or non-ONNX file."""
    src = Path(onnx_path)
    if not src.is_file():
        raise UserError(f"{src}: ONNX file not found")
    if src.suffix.lower() != ".onnx":
        raise UserError(f"{src}: expected an .onnx file (export one with pspnet-export)")
    return src, read_card(src, kind="onnx")


def plan_build(onnx_path: str | Path, opts: BuildOptions, engine_path: str | Path | None = None) -> BuildPlan:
    """Decide what to build: which ONNX (converting first if asked), precision, network typing,
    optimisation profile and output path. Raises UserError for contradictory requests."""
    opts.validate()
    src, card = source_onnx(onnx_path)
    src_p = card.precision
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
    if len(card.inputs) != 1:
        raise UserError(f"{src}: expected one image input, found {len(card.inputs)} "
                        f"({', '.join(i['name'] for i in card.inputs)})")
    inp = card.inputs[0]
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
            lo, opt, hi = export_batch_range(card)
        rest = tuple(int(d) for d in shape[1:])
        profile = ((lo,) + rest, (opt,) + rest, (hi,) + rest)
    if engine_path is None:
        engine_path = default_engine_path(src, want)
    engine_path = Path(engine_path)
    if SUFFIX_KINDS.get(engine_path.suffix.lower()) != "tensorrt":
        raise UserError(f"{engine_path}: engine files end in .engine (or .plan / .trt)")
    if opts.timing_cache:
        check_timing_cache(opts.timing_cache, {"ONNX": src, f"{want.upper()} ONNX": build_onnx, "engine": engine_path,
                                               "engine sidecar": sidecar_path(engine_path)})
    return BuildPlan(source_onnx=src, source_precision=src_p, convert=convert, build_onnx=build_onnx, precision=want,
                     strongly_typed=strongly_typed, input_name=inp["name"], input_shape=list(shape), profile=profile,
                     engine_path=engine_path, card=card)


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
