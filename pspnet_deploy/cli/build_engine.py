"""pspnet-build-engine: a TensorRT engine (+ sidecar JSON) from an FP32, FP16 or INT8 Q/DQ ONNX."""
from __future__ import annotations

import sys

from .common import make_parser, run

PROG = "pspnet-build-engine"


def build_parser():
    p = make_parser(PROG, "Build a TensorRT 10/11 engine as a strongly typed network: the precision is the ONNX's "
                          "(FP32, FP16, or INT8 Q/DQ). --fp16 / --int8 on an FP32 ONNX first write "
                          "<name>.fp16.onnx / <name>.int8.onnx next to it, then build that. Writes OUT.engine and "
                          "OUT.engine.json (sidecar: TensorRT version, GPU, IO, ONNX hash, build options, model "
                          "metadata). Without TensorRT or a GPU: says so, exits non-zero, writes no engine.")
    p.add_argument("onnx", help="ONNX file from pspnet-export / pspnet-calibrate")
    p.add_argument("--engine", default=None,
                   help="output engine file (default: <name>.<precision>.engine next to the ONNX)")
    prec = p.add_mutually_exclusive_group()
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
    p.add_argument("--calib-method", default="entropy", help="calibration method (see pspnet-calibrate)")
    p.add_argument("--workspace", type=float, default=None, metavar="GB", help="builder workspace limit in GiB")
    p.add_argument("--opt-level", type=int, default=None, choices=range(6), metavar="0-5",
                   help="builder optimisation level (TensorRT's default: 3)")
    p.add_argument("--timing-cache", default=None, metavar="FILE",
                   help="read this timing cache if it exists and write the updated cache back")
    p.add_argument("--batch", type=int, nargs=3, default=None, metavar=("MIN", "OPT", "MAX"),
                   help="optimisation profile for an ONNX with a dynamic batch (default: the range given to "
                        "pspnet-export --dynamic-batch, else 1 8 8)")
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
                        batch=tuple(a.batch) if a.batch else None, version_compatible=a.version_compatible,
                        hardware_compatible=a.hardware_compatible, legacy_fp16_flag=a.legacy_fp16_flag,
                        device=a.device, calib_data=a.calib_data, calib_split=a.calib_split,
                        calib_images=a.calib_images, calib_method=a.calib_method, verbose=a.verbose)


def main(argv=None) -> int:
    from ..engine import build_engine, plan_build

    a = build_parser().parse_args(argv)
    opts = options_from_args(a)
    if a.dry_run:
        plan = plan_build(a.onnx, opts, a.engine)
        steps = []
        if plan.convert:
            steps.append(f"write the {plan.convert.upper()} ONNX {plan.build_onnx}")
        steps.append(f"build a {plan.precision.upper()} engine {plan.engine_path} "
                     f"({'strongly typed' if plan.strongly_typed else 'weakly typed + BuilderFlag.FP16'}"
                     + (f", batch {plan.profile[0][0]}..{plan.profile[2][0]}" if plan.profile else
                        f", fixed batch {plan.input_shape[0]}") + f") from {plan.build_onnx}")
        steps.append(f"write its sidecar {plan.sidecar_path}")
        print(f"{PROG}: would " + "; ".join(steps))
        return 0
    sidecar = build_engine(a.onnx, a.engine, opts, log=lambda m: print(f"{PROG}: {m}", file=sys.stderr))
    print(f"{PROG}: {sidecar['engine']['path']} ({sidecar['precision']}, TensorRT {sidecar['tensorrt']['version']}, "
          f"{sidecar['gpu']['name']})")
    return 0


def entry() -> None:
    sys.exit(run(PROG, main))


if __name__ == "__main__":
    entry()
