"""pspnet-build-engine: a TensorRT engine or an OpenVINO IR (+ sidecar JSON) from an FP32, FP16 or INT8 Q/DQ ONNX."""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UserError
from .common import make_parser, run

PROG = "pspnet-build-engine"


def build_parser():
    from ..precision.ranges import DEFAULT_METHOD

    p = make_parser(PROG, "Build a TensorRT 10/11 engine as a strongly typed network: the precision is the ONNX's "
                          "(FP32, FP16, or INT8 Q/DQ). --fp16 / --int8 on an FP32 ONNX first write "
                          "<name>.fp16.onnx / <name>.int8.onnx next to it, then build that. Writes OUT.engine and "
                          "OUT.engine.json (sidecar: TensorRT version, GPU, IO, ONNX hash, build options, model "
                          "metadata). Without TensorRT or a GPU: says so, exits non-zero, writes no engine. With --backend "
                          "openvino: an OpenVINO IR NAME.PRECISION.xml + .bin and NAME.PRECISION.xml.json (OpenVINO "
                          "version, CPU and ISA, requested and resolved precision, ONNX hash, model metadata).")
    p.add_argument("onnx", help="ONNX file from pspnet-export / pspnet-calibrate")
    p.add_argument("--backend", choices=("tensorrt", "openvino"), default="tensorrt",
                   help="tensorrt: a .engine for NVIDIA GPUs; openvino: an OpenVINO IR (.xml + .bin) for CPUs, "
                        "FP32, BF16 (--bf16, an inference precision of the FP32 IR) or INT8 (the Q/DQ ONNX as it is, "
                        "or --int8 --calib-data on an FP32 ONNX)")
    p.add_argument("--engine", default=None,
                   help="output file (default: <name>.<precision>.engine, or .xml with --backend openvino, next to "
                        "the ONNX)")
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--bf16", action="store_true", help="--backend openvino: run the FP32 IR in BF16 (recorded in "
                                                         "the sidecar; FP32 where the CPU has no BF16, and it says so)")
    prec.add_argument("--fp16", action="store_true", help="FP16 engine (converts an FP32 ONNX to FP16 first)")
    prec.add_argument("--int8", action="store_true", help="INT8 engine (calibrates an FP32 ONNX into Q/DQ first)")
    p.add_argument("--legacy-fp16-flag", action="store_true",
                   help="TensorRT 10 only, with --fp16: build the FP32 ONNX weakly typed with BuilderFlag.FP16 "
                        "instead of converting it")
    p.add_argument("--calib-data", default=None,
                   help="--int8 on an FP32 ONNX: calibration data (dataset folder, image folder or synthetic); "
                        "--fp16: images that find the values FP16 cannot hold (default: generated images)")
    p.add_argument("--calib-split", default="train", help="dataset split for calibration")
    p.add_argument("--calib-images", type=int, default=None, help="number of calibration images")
    p.add_argument("--calib-method", default=DEFAULT_METHOD, help="calibration method (see pspnet-calibrate)")
    p.add_argument("--workspace", type=float, default=None, metavar="GB", help="builder workspace limit in GiB")
    p.add_argument("--opt-level", type=int, default=None, choices=range(6), metavar="0-5",
                   help="builder optimisation level (TensorRT's default: 3)")
    p.add_argument("--timing-cache", default=None, metavar="FILE",
                   help="read this timing cache if it exists and write the updated cache back")
    p.add_argument("--batch", type=int, nargs=3, default=None, metavar=("MIN", "OPT", "MAX"),
                   help="optimisation profile for an ONNX with a dynamic batch (default: the range given to "
                        "pspnet-export --dynamic-batch, else 1 8 8)")
    p.add_argument("--profiles", nargs="+", default=None, metavar="MIN:OPT:MAX",
                   help="a dynamic-shape ONNX (pspnet-export --dynamic-shape): one TensorRT optimisation profile per "
                        "size class, each MIN:OPT:MAX as HxW:HxW:HxW (or HxW for one exact size), within the export's "
                        "bounds, e.g. 48x48:240x320:256x320 360x480; the runner picks, per input, the tightest "
                        "profile that covers it (default: one profile --min-size:--input-size:--max-size of the "
                        "export)")
    p.add_argument("--contexts", type=int, default=1, metavar="N",
                   help="an ONNX with dynamic inputs: build every optimisation profile N times, so N execution "
                        "contexts (pspnet-bench --concurrency N) each run on profiles of their own, as TensorRT "
                        "requires for contexts running at once")
    p.add_argument("--static-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="--backend openvino, a dynamic-shape ONNX: fix the IR's input at H x W (faster; default: "
                        "H and W bounded by the export's --min-size/--max-size)")
    p.add_argument("--version-compatible", action="store_true",
                   help="engine that later TensorRT versions can run (may be slower)")
    p.add_argument("--hardware-compatible", action="store_true",
                   help="engine for any Ampere-or-newer GPU (HardwareCompatibilityLevel.AMPERE_PLUS)")
    p.add_argument("--device", default="cuda:0", help="GPU to build on")
    p.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")
    p.add_argument("--dry-run", action="store_true", help="print what would be done and exit")
    return p


def options_from_args(a):
    from ..engine import BuildOptions

    return BuildOptions(precision="fp16" if a.fp16 else "int8" if a.int8 else None, workspace_gb=a.workspace,
                        opt_level=a.opt_level, timing_cache=a.timing_cache,
                        batch=tuple(a.batch) if a.batch else None, profiles=a.profiles, contexts=a.contexts,
                        version_compatible=a.version_compatible,
                        hardware_compatible=a.hardware_compatible, legacy_fp16_flag=a.legacy_fp16_flag,
                        device=a.device, calib_data=a.calib_data, calib_split=a.calib_split,
                        calib_images=a.calib_images, calib_method=a.calib_method, verbose=a.verbose)


#: options that describe how this run behaves, not what it builds (left out of the recorded command)
NOT_RECORDED = ("help", "debug", "dry_run", "engine", "onnx")
#: options that only act when the build converts an FP32 ONNX first (recorded only then)
CONVERSION_ONLY = ("calib_data", "calib_split", "calib_images", "calib_method")


def effective_options(a, plan=None) -> dict:
    """Each option's value as the build uses it: defaults included, paths absolute (timing cache,
    calibration folder), the batch profile a dynamic ONNX gets from its export when ``--batch`` is
    not given, and the number of calibration images a conversion uses when ``--calib-images`` is
    not given. ``plan``: the build's plan (``profile``, ``convert``); without it, the values as parsed."""
    from ..engine.plan import recorded_path

    values = {k: recorded_path(k, v) for k, v in vars(a).items()}
    if plan is None:
        return values
    if values.get("batch") is None and getattr(plan, "profile", None):
        values["batch"] = [int(shape[0]) for shape in plan.profile]
    if getattr(plan, "card", None) is not None and plan.card.size_range is not None and plan.profiles:
        from ..engine.plan import format_profile, spatial_axes

        hw = spatial_axes(plan.card)  # every profile's sizes, as --profiles spells them (the default included)
        classes = plan.profiles[:len(plan.profiles) // plan.profile_sets]
        values["profiles"] = [format_profile([(s[hw[0]], s[hw[1]]) for s in p]) for p in classes]
    if values.get("calib_images") is None and values.get("calib_data") and plan.convert:
        values["calib_images"] = default_calibration_images(plan.convert)
    if not plan.convert:
        values.update(dict.fromkeys(CONVERSION_ONLY))
    if not getattr(plan, "profiles", None):
        values["contexts"] = None  # profile copies: only an engine with dynamic inputs has profiles
    if values.get("backend") == "openvino":
        values["device"] = None  # an IR is built for CPUs; --device names a GPU
    return values


def default_calibration_images(convert: str) -> int:
    """How many calibration images the ``convert`` step (fp16 / int8) uses when not told."""
    import inspect

    if convert == "int8":
        from ..precision.calibrate import DEFAULT_NUM_IMAGES

        return int(DEFAULT_NUM_IMAGES)
    from ..precision.fp16 import convert_fp16

    return int(inspect.signature(convert_fp16).parameters["num_images"].default)


def command_line(a, engine_path, parser=None, plan=None) -> list[str]:
    """The argv that builds the same engine again, derived from the parser's own actions: every
    option with an effective value (:func:`effective_options`), defaults included, so a rebuild after
    a default changed still builds the same thing; spelled as the parser spells it, paths absolute,
    floats exact. A switch that is off and an option left to TensorRT (no value) have no spelling."""
    parser = parser or build_parser()
    values = effective_options(a, plan)
    argv = [PROG, str(Path(a.onnx).resolve()), "--engine", str(Path(engine_path).resolve())]
    for action in parser._actions:  # argparse offers no public walk over its actions
        if action.dest in NOT_RECORDED or not action.option_strings:
            continue
        value = values.get(action.dest, action.default)
        if value is None or value is False:
            continue
        flag = action.option_strings[-1] if action.option_strings[-1].startswith("--") else action.option_strings[0]
        if action.nargs == 0:  # store_true and friends
            argv.append(flag)
        else:
            items = value if isinstance(value, (list, tuple)) else [value]
            argv += [flag, *(repr(v) if isinstance(v, float) else str(v) for v in items)]
    return argv


def make_variant(plan, opts, log) -> dict:
    """Write the FP16 or INT8 ONNX that ``plan.convert`` asks for (export / calibration code, CPU)."""
    if plan.convert == "fp16":
        from ..precision.fp16 import convert_fp16

        log(f"writing the FP16 ONNX {plan.build_onnx} from {plan.source_onnx}")
        kwargs = {}
        if opts.calib_data:  # real images to find the values FP16 cannot hold (else generated ones)
            kwargs.update(calibration_images=opts.calib_data, split=opts.calib_split)
            if opts.calib_images is not None:
                kwargs["num_images"] = opts.calib_images
        return convert_fp16(str(plan.source_onnx), str(plan.build_onnx), **kwargs) or {}
    from ..evaluate import onnx_miou  # --calib-method auto measures accuracy
    from ..precision.calibrate import calibrate_onnx

    log(f"calibrating the INT8 Q/DQ ONNX {plan.build_onnx} from {plan.source_onnx} on {opts.calib_data}")
    kwargs = {"split": opts.calib_split, "method": opts.calib_method, "evaluator": onnx_miou}
    if opts.calib_images is not None:
        kwargs["num_images"] = opts.calib_images
    return calibrate_onnx(str(plan.source_onnx), str(plan.build_onnx), opts.calib_data, **kwargs) or {}


def build(onnx, engine=None, opts=None, log=lambda m: print(f"{PROG}: {m}", file=sys.stderr),
          command: list[str] | None = None, env: dict | None = None) -> dict:
    """Plan (``onnx``: an ONNX path or a BuildPlan), write the FP16 / INT8 ONNX the plan asks for (even where TensorRT is missing: it says
    so), then build the engine; returns its sidecar."""
    from ..engine import BuildOptions, BuildPlan, build_engine, environment, plan_build

    opts = opts or BuildOptions()
    plan = onnx if isinstance(onnx, BuildPlan) else plan_build(onnx, opts, engine)
    env = env if env is not None else environment(opts.device)
    wrote: list[str] = []
    if plan.convert:
        missing = env.get("tensorrt_error") or env.get("cuda_error") or env.get("gpu_error")
        if missing:
            log(f"note: {missing}; the {plan.convert.upper()} ONNX is still written, the engine is not")
        make_variant(plan, opts, log)
        if not plan.build_onnx.is_file():
            raise UserError(f"{plan.build_onnx}: the {plan.convert.upper()} conversion wrote no file")
        wrote.append(str(plan.build_onnx))
    return build_engine(plan, opts=opts, log=log, env=env, command=command, wrote=wrote)


def declare_files(a, plan, outputs) -> None:
    """The build's file plan (:class:`pspnet_deploy.runfiles.RunFiles`): the ONNX (and its data), the
    calibration images, the variant ONNX a conversion writes, and ``outputs`` ((path, what) pairs:
    the engine or IR files, the timing cache)."""
    from ..card import table_path_for
    from ..runfiles import RunFiles

    files = RunFiles().read_model(plan.source_onnx, "ONNX").read_dir(getattr(a, "calib_data", None),
                                                                        "--calib-data dataset")
    if plan.convert:
        files.write(plan.build_onnx, f"{plan.convert.upper()} ONNX the build writes first")
        if plan.convert == "int8":
            files.also_writes(table_path_for(plan.build_onnx), "its calibration table")
    for path, what in outputs:
        files.write(path, what)
    files.check()


def _say_rebuild(out, onnx) -> None:
    """A rebuild over a model built from another ONNX says so (the contract compares the sha256)."""
    from ..card import rebuild_note

    note = rebuild_note(out, onnx)
    if note:
        print(f"{PROG}: {note}", file=sys.stderr)


def main_openvino(a, parser) -> int:
    from ..engine.openvino import OVBuildOptions, build_openvino, plan_openvino_build

    if a.fp16:
        raise UserError("--fp16 is a TensorRT precision; OpenVINO on CPUs uses --bf16 (or FP32 / --int8)")
    trt_only = [f for f, on in (("--legacy-fp16-flag", a.legacy_fp16_flag), ("--workspace", a.workspace is not None),
                                ("--opt-level", a.opt_level is not None), ("--timing-cache", a.timing_cache),
                                ("--batch", a.batch), ("--profiles", a.profiles), ("--contexts", a.contexts != 1),
                                ("--version-compatible", a.version_compatible),
                                ("--hardware-compatible", a.hardware_compatible)) if on]
    if trt_only:
        raise UserError(f"{', '.join(trt_only)}: TensorRT option(s), not used by --backend openvino; drop them")
    opts = OVBuildOptions(precision="bf16" if a.bf16 else "int8" if a.int8 else None, calib_data=a.calib_data,
                          calib_split=a.calib_split, calib_images=a.calib_images, calib_method=a.calib_method,
                          static_size=a.static_size)
    plan = plan_openvino_build(a.onnx, opts, a.engine)
    # the IR, its weights and its sidecar are one unit
    declare_files(a, plan, [(plan.xml_path, "IR"), (plan.bin_path, "IR weights"), (plan.sidecar_path, "IR sidecar")])
    _say_rebuild(plan.xml_path, plan.source_onnx)
    if a.dry_run:
        steps = [f"write the INT8 ONNX {plan.build_onnx}"] if plan.convert else []
        steps.append(f"convert {plan.build_onnx} to the OpenVINO IR {plan.xml_path} + {plan.bin_path.name} "
                     f"({plan.precision.upper()})")
        steps.append(f"write its sidecar {plan.sidecar_path}")
        print(f"{PROG}: would " + "; ".join(steps))
        return 0
    log = lambda m: print(f"{PROG}: {m}", file=sys.stderr)  # noqa: E731
    if plan.convert:
        make_variant(plan, opts, log)
    sc = build_openvino(plan, opts=opts, log=log, command=command_line(a, plan.xml_path, parser, plan))
    print(f"{PROG}: {sc['engine']['path']} ({sc['precision']}, runs as {sc['openvino']['runs_as']}, OpenVINO "
          f"{sc['openvino']['version']}, {sc['cpu']['cpu']})")
    return 0


def main(argv=None) -> int:
    from ..engine import plan_build
    from ..engine.build import profiles_text
    from ..utils import check_output_file

    parser = build_parser()
    a = parser.parse_args(argv)
    if a.engine:
        check_output_file(a.engine, "--engine file")
    if a.backend == "openvino":
        return main_openvino(a, parser)
    if a.static_size:
        raise UserError("--static-size goes with --backend openvino (a TensorRT engine of a dynamic-shape ONNX takes "
                        "its sizes from optimisation profiles)")
    if a.bf16:
        raise UserError("--bf16 goes with --backend openvino (TensorRT builds take the precision from the ONNX)")
    if a.timing_cache:
        check_output_file(a.timing_cache, "--timing-cache file")
    opts = options_from_args(a)
    plan = plan_build(a.onnx, opts, a.engine)
    declare_files(a, plan, [(plan.engine_path, "engine"), (plan.sidecar_path, "engine sidecar")]
                  + ([(a.timing_cache, "--timing-cache")] if a.timing_cache else []))
    _say_rebuild(plan.engine_path, plan.source_onnx)
    if a.dry_run:
        steps = []
        if plan.convert:
            steps.append(f"write the {plan.convert.upper()} ONNX {plan.build_onnx}")
        steps.append(f"build a {plan.precision.upper()} engine {plan.engine_path} "
                     f"({'strongly typed' if plan.strongly_typed else 'weakly typed + BuilderFlag.FP16'}"
                     + (f", {len(plan.profiles)} optimisation profile(s) {profiles_text(plan.profiles)}" if plan.profiles else
                        f", fixed batch {plan.input_shape[0]}") + f") from {plan.build_onnx}")
        steps.append(f"write its sidecar {plan.sidecar_path}")
        print(f"{PROG}: would " + "; ".join(steps))
        return 0
    sidecar = build(plan, opts=opts, command=command_line(a, plan.engine_path, parser, plan))
    print(f"{PROG}: {sidecar['engine']['path']} ({sidecar['precision']}, TensorRT {sidecar['tensorrt']['version']}, "
          f"{sidecar['gpu']['name']})")
    return 0


def entry() -> None:
    sys.exit(run(PROG, main))


if __name__ == "__main__":
    entry()
