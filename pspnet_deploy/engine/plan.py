"""What to build, decided without TensorRT: build options, the plan (which ONNX, precision, network
typing, optimisation profile, output path) and the parser-error line.

Precision comes from the ONNX (the design's "precision contract"): the network is created strongly
typed, so an FP32, FP16 or INT8 Q/DQ ONNX gives an FP32, FP16 or INT8 engine. Asking for
``fp16``/``int8`` with an FP32 ONNX plans a conversion (``plan.convert``) that the command layer
(:mod:`pspnet_deploy.cli.build_engine`) carries out before the build. On TensorRT 10 only,
``legacy_fp16_flag`` builds the FP32 ONNX weakly typed with ``BuilderFlag.FP16`` instead.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
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
    #: a dynamic-shape ONNX: one optimisation profile per size class, ((min H, W), (opt H, W), (max H, W)) each;
    #: None: one profile from the export's --min-size / --input-size / --max-size
    profiles: list | None = None
    #: execution contexts that may run at once on an engine with dynamic inputs: TensorRT wants each
    #: concurrently running context on a profile of its own, so every profile is built this many times
    contexts: int = 1
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
        d["profiles"] = [format_profile(p) for p in self.profiles] if self.profiles else None
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
        if self.profiles is not None:
            self.profiles = [parse_profile(p) if isinstance(p, str) else _profile_tuple(p) for p in self.profiles]
            if not self.profiles:
                raise UserError("--profiles needs at least one MIN:OPT:MAX (or HxW)")
        if not 1 <= int(self.contexts) <= 64:
            raise UserError(f"--contexts must be 1..64, got {self.contexts}")
        if self.legacy_fp16_flag and self.precision != "fp16":
            raise UserError("--legacy-fp16-flag goes with --fp16 (it builds the FP32 ONNX with TensorRT 10's FP16 flag)")
        check_calibration_options(self, ("int8", "fp16"))


def _profile_tuple(p) -> tuple:
    """((min H, W), (opt H, W), (max H, W)) with min <= opt <= max per side, from any nesting of ints."""
    try:
        lo, opt, hi = (tuple(int(v) for v in s) for s in p)
        ok = len(lo) == len(opt) == len(hi) == 2 and all(1 <= a <= b <= c for a, b, c in zip(lo, opt, hi))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise UserError(f"--profiles: {p!r} is not MIN:OPT:MAX sizes with min <= opt <= max per side")
    return lo, opt, hi


def parse_profile(text: str) -> tuple:
    """``HxW:HxW:HxW`` (min:opt:max) or ``HxW`` (a profile of that one size) -> ((h, w), (h, w), (h, w))."""
    parts = str(text).lower().split(":")
    try:
        sizes = [tuple(int(v) for v in part.split("x")) for part in parts]
        if len(parts) not in (1, 3) or any(len(s) != 2 for s in sizes):
            raise ValueError
    except ValueError:
        raise UserError(f"--profiles: {text!r} is not MIN:OPT:MAX (e.g. 48x48:360x480:512x640) or one size HxW"
                        ) from None
    return _profile_tuple(sizes * 3 if len(sizes) == 1 else sizes)


def format_profile(p) -> str:
    """The ``--profiles`` spelling of a profile (what the sidecar and the rebuild command record)."""
    return ":".join(f"{h}x{w}" for h, w in _profile_tuple(p))


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
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None  # the first of ``profiles``
    engine_path: Path
    card: ModelCard | None = None  # of build_onnx (the source's until a variant is written)
    #: every optimisation profile (min, opt, max input shapes), in index order; [] for a static input.
    #: ``profile_sets`` copies of the size classes: profile ``s * k + c`` is class ``c`` of set ``s``
    #: (k classes), the set execution context ``s`` runs on
    profiles: list = field(default_factory=list)
    profile_sets: int = 1

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
    profiles = plan_profiles(src, card, inp, opts)
    if opts.contexts > 1 and not profiles:
        raise UserError(f"{src} has a fixed input shape {shape}; --contexts is for engines with dynamic inputs (any "
                        f"number of contexts runs a static engine at once): drop it")
    if engine_path is None:
        engine_path = default_engine_path(src, want)
    engine_path = Path(engine_path)
    if SUFFIX_KINDS.get(engine_path.suffix.lower()) != "tensorrt":
        raise UserError(f"{engine_path}: engine files end in .engine (or .plan / .trt)")
    if opts.timing_cache:
        check_timing_cache(opts.timing_cache, {"ONNX": src, f"{want.upper()} ONNX": build_onnx, "engine": engine_path,
                                               "engine sidecar": sidecar_path(engine_path)})
    return BuildPlan(source_onnx=src, source_precision=src_p, convert=convert, build_onnx=build_onnx, precision=want,
                     strongly_typed=strongly_typed, input_name=inp["name"], input_shape=list(shape),
                     profile=profiles[0] if profiles else None, engine_path=engine_path, card=card,
                     profiles=profiles * int(opts.contexts) if profiles else [],
                     profile_sets=int(opts.contexts) if profiles else 1)


def spatial_axes(card: ModelCard) -> tuple[int, int]:
    """The H and W axes of the model's input: N x 3 x H x W, or N x H x W x 3 for uint8 pixels."""
    return (1, 2) if card.input_kind == "uint8" else (2, 3)


def plan_profiles(src: Path, card: ModelCard, inp: dict, opts: BuildOptions) -> list:
    """The optimisation profiles (min, opt, max input shapes) of a build; [] for a fully static input.

    The batch of every profile is ``--batch`` (else the export's --dynamic-batch range, else 1 8 8);
    a dynamic-shape ONNX (``card.size_range``) gets one profile per ``--profiles`` entry, each within
    the export's bounds, else one profile from the bounds themselves (min / optimise-for / max).
    """
    shape = inp["shape"]
    hw = spatial_axes(card)
    symbolic = [i for i, d in enumerate(shape) if not isinstance(d, int) or d < 1]
    if any(i not in (0, *hw) for i in symbolic):
        raise UserError(f"{src}: input {inp['name']} has dynamic dimensions {shape}; only the batch and (with "
                        f"pspnet-export --dynamic-shape) H and W may be dynamic")
    dynamic_hw = any(i in hw for i in symbolic)
    if dynamic_hw and card.size_range is None:
        raise UserError(f"{src}: input {inp['name']} has dynamic sizes {shape} but no recorded bounds "
                        f"(pspnet.export.dynamic_shape); re-export with pspnet-export --dynamic-shape or a fixed "
                        f"--input-size")
    if opts.profiles and not dynamic_hw:
        raise UserError(f"{src} has a fixed input size {shape}; --profiles needs a dynamic-shape ONNX (pspnet-export "
                        f"--dynamic-shape)")
    if 0 not in symbolic:
        b = int(shape[0])
        if opts.batch is not None and tuple(opts.batch) != (b, b, b):
            raise UserError(f"{src} has a fixed batch of {b}; --batch {' '.join(map(str, opts.batch))} needs an ONNX "
                            f"with a dynamic batch (re-export with --dynamic-batch)")
        batch = (b, b, b)
    else:
        batch = tuple(int(v) for v in opts.batch) if opts.batch is not None else export_batch_range(card)
    if not symbolic:
        return []
    sizes = [tuple(map(tuple, card.size_range))] if dynamic_hw and not opts.profiles else list(opts.profiles or [])
    if not dynamic_hw:
        sizes = [tuple((int(shape[hw[0]]), int(shape[hw[1]])) for _ in range(3))]
    (lo_h, lo_w), _, (hi_h, hi_w) = card.size_range or sizes[0]
    profiles = []
    for size in sizes:
        (a_h, a_w), _, (z_h, z_w) = size
        if not (lo_h <= a_h and lo_w <= a_w and z_h <= hi_h and z_w <= hi_w):
            raise UserError(f"--profiles {format_profile(size)} reaches outside the bounds the model was exported "
                            f"for ({lo_h}x{lo_w} .. {hi_h}x{hi_w}); keep each profile within them, or re-export "
                            f"with wider --min-size / --max-size")
        prof = []
        for b, (h, w) in zip(batch, size):
            dims = list(shape)
            dims[0], dims[hw[0]], dims[hw[1]] = b, h, w
            prof.append(tuple(int(d) for d in dims))
        profiles.append(tuple(prof))
    return profiles


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
