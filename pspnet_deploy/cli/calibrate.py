"""pspnet-calibrate: FP32 ONNX -> explicit Q/DQ INT8 ONNX (TensorRT's format), by calibration."""
from __future__ import annotations

import argparse
import sys

from .common import make_parser, refuse_ignored, run

PROG = "pspnet-calibrate"


def build_parser():
    from ..precision.calib_data import DEFAULT_NUM_IMAGES, MIN_CALIB_IMAGES
    from ..precision.qdq import FALLBACKS
    from ..precision.ranges import DEFAULT_METHOD, DEFAULT_PERCENTILE, METHODS

    p = make_parser(PROG, "Calibrate an FP32 ONNX (from pspnet-export) into an INT8 Q/DQ ONNX: symmetric INT8, zero "
                          "points 0, weights per channel, biases FP32, the static pyramid pooling kept exact. Writes "
                          "OUT, OUT's .calib.json (per-tensor scales) and, with --max-miou-drop, a sensitivity "
                          "report (.sensitivity.md/.json/.png) when nodes had to stay FP32. A dynamic-shape "
                          "model is calibrated on the images at their own sizes (fitted into its bounds).")
    p.add_argument("model", help="FP32 ONNX written by pspnet-export (model.fp32.onnx)")
    p.add_argument("--data", default=None,
                   help="calibration images: dataset folder, synthetic[:SEED], or a folder of images (no masks)")
    p.add_argument("--split", default="train", help="dataset split to calibrate on (ignored for a folder of images)")
    p.add_argument("--num-images", type=int, default=DEFAULT_NUM_IMAGES,
                   help="calibration images, spread evenly over the split (all if fewer)")
    p.add_argument("--min-images", type=int, default=MIN_CALIB_IMAGES, help="refuse fewer decodable images than this")
    p.add_argument("--method", default=None, choices=list(METHODS) + ["auto"],
                   help=f"activation range (default {DEFAULT_METHOD}, minmax with --backend modelopt; chosen on held-out frames, "
                        "calibration/README.md): TensorRT entropy (KL), "
                        "min/max, a percentile of |x|, the MSE-optimal threshold, or auto (each tried, "
                        "best mIoU on --eval-split kept)")
    p.add_argument("--percentile", type=float, default=DEFAULT_PERCENTILE, help="for --method percentile")
    p.add_argument("--max-miou-drop", type=float, default=None, metavar="POINTS",
                   help="accuracy budget in mIoU POINTS (0.5 = half a point of 100): keep the most sensitive nodes "
                        "in FP32 until INT8 is within it; exit 2 with the best plan if it cannot be met")
    p.add_argument("--max-fp32-nodes", type=int, default=None,
                   help="most nodes the budget search may keep in FP32 (default: a quarter of the quantized nodes)")
    p.add_argument("--sensitivity-images", type=int, default=16,
                   help="calibration images used to rank node sensitivity")
    p.add_argument("--eval-data", default=None, help="evaluation dataset (default: --data)")
    p.add_argument("--eval-split", default="val", help="split for --max-miou-drop / --method auto")
    p.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N images only")
    p.add_argument("--placement", default="trt", choices=["trt", "ort"],
                   help="trt: Q/DQ on inputs of Conv/Gemm/MatMul and residual Adds (TensorRT's fusions); ort: ONNX "
                        "Runtime's default, inputs and outputs of every quantizable op (faster on ORT CPU)")
    p.add_argument("--backend", default="ort", choices=["ort", "modelopt"],
                   help="ort: onnxruntime quantize_static; modelopt: NVIDIA ModelOpt if installed")
    p.add_argument("--fallback", default=None, choices=list(FALLBACKS),
                   help="precision of the nodes kept out of INT8 by --max-miou-drop: fp32, or fp16 islands (Casts "
                        "around them), which strongly typed TensorRT runs in FP16 (default: fp32, or the "
                        "--calib-table's)")
    p.add_argument("--bias-correction", action=argparse.BooleanOptionalAction, default=None,
                   help="take each quantized convolution's mean output shift (measured on the calibration images) "
                        "out of its FP32 bias; the file format is unchanged (default: off, or as the --calib-table "
                        "was made)")
    p.add_argument("--calib-table", default=None,
                   help="reuse an earlier .calib.json: its ranges (no images needed) and its plan (FP32 nodes, "
                        "fallback precision, bias correction)")
    p.add_argument("--cache-dir", default="calibration/cache",
                   help="where the preprocessed calibration tensor (.npy) and statistics are cached")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime CPU threads")
    p.add_argument("--force", action="store_true",
                   help="calibrate on the evaluation split anyway / apply a table made for another model")
    p.add_argument("--no-parser-check", action="store_true", help="skip the TensorRT parser check of the result")
    p.add_argument("--json", default=None, help="write the calibration report here as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--output", "-o", required=True, help="INT8 ONNX to write (e.g. export/NAME/model.int8.onnx)")
    return p


def main(argv=None) -> int:
    from ..errors import UserError
    from ..evaluate import onnx_miou
    from ..precision.calibrate import calibrate_onnx
    from ..card import sensitivity_report_paths, table_path_for
    from ..runfiles import RunFiles
    from ..utils import atomic_write_json, jsonable

    parser = build_parser()
    a = parser.parse_args(argv)
    measures = a.max_miou_drop is not None or a.method == "auto"
    images = a.data is not None
    refuse_ignored(parser, a, [
        ("percentile", a.method not in ("percentile", "auto"), "unless --method percentile (or auto)"),
        ("eval_data", not measures, "without --max-miou-drop or --method auto (nothing is evaluated)"),
        ("eval_split", not measures, "without --max-miou-drop or --method auto (nothing is evaluated)"),
        ("eval_limit", not measures, "without --max-miou-drop or --method auto (nothing is evaluated)"),
        ("sensitivity_images", a.max_miou_drop is None, "without --max-miou-drop"),
        ("max_fp32_nodes", a.max_miou_drop is None, "without --max-miou-drop"),
        ("split", not images, "without --data (the ranges come from --calib-table)"),
        ("num_images", not images, "without --data (the ranges come from --calib-table)"),
        ("min_images", not images, "without --data (the ranges come from --calib-table)")])
    if a.num_images <= 0:
        raise UserError(f"--num-images must be positive, got {a.num_images}")
    if a.max_fp32_nodes is not None and a.max_fp32_nodes < 0:
        raise UserError(f"--max-fp32-nodes must be >= 0, got {a.max_fp32_nodes}")
    if a.data is None and a.calib_table is None:
        raise UserError("pass --data DIR (calibration images) or --calib-table OUT.calib.json")
    if a.min_images < 1 or a.sensitivity_images < 1:
        raise UserError("--min-images and --sensitivity-images must be at least 1")
    if a.threads is not None and a.threads < 1:
        raise UserError(f"--threads must be at least 1, got {a.threads}")
    if not str(a.output).lower().endswith(".onnx"):
        raise UserError(f"{a.output}: --output must be an .onnx file path")
    files = RunFiles().read_model(a.model, "FP32 ONNX").read_dir(a.data, "--data dataset")
    files.read_dir(a.eval_data, "--eval-data dataset").read(a.calib_table, "--calib-table")
    files.write(a.output, "--output ONNX").also_writes(table_path_for(a.output), "calibration table")
    for kind, path in sensitivity_report_paths(a.output).items():
        files.also_writes(path, f"sensitivity report (.{kind})")
    files.write(a.json, "--json report").write_dir(a.cache_dir, "--cache-dir").check()
    rep = calibrate_onnx(a.model, a.output, a.data, split=a.split, num_images=a.num_images, method=a.method,
                         max_miou_drop=a.max_miou_drop, eval_split=a.eval_split, eval_limit=a.eval_limit,
                         cache_dir=a.cache_dir, force=a.force, progress=not a.no_progress, eval_data=a.eval_data,
                         percentile=a.percentile, placement=a.placement, backend=a.backend, table=a.calib_table,
                         min_images=a.min_images, sensitivity_images=a.sensitivity_images,
                         max_fp32_nodes=a.max_fp32_nodes, threads=a.threads, bias_correction=a.bias_correction,
                         fallback=a.fallback, parser_check=not a.no_parser_check,
                         evaluator=onnx_miou)
    print(format_report(rep))
    if a.json:
        atomic_write_json(a.json, jsonable(rep))
    return 0


def format_report(rep: dict) -> str:
    img = rep.get("images", {})
    q = rep.get("qdq", {})
    lines = [f"wrote {rep['output']} (INT8 Q/DQ, {rep['placement']} placement, method {rep['method']})",
             f"  calibration: {img.get('count')} images from {img.get('data')}"
             + (f" [{img['split']}]" if img.get("split") else "")
             + (f", {img['skipped']} skipped (undecodable)" if img.get("skipped") else "")
             + (" (cached tensor reused)" if rep.get("cache", {}).get("hit") else ""),
             f"  Q/DQ: {q.get('quantize_linear')} Q, {q.get('dequantize_linear')} DQ, {q.get('int8_weighted_ops')} "
             f"INT8 weighted ops; static pooling kept FP32 ({len(rep.get('static_pool_nodes', []))} nodes)",
             f"  table: {rep['table']}"]
    if "methods" in rep:
        for m, v in rep["methods"].items():
            lines.append(f"  {m:<10} mIoU {100 * v['miou']:6.2f}  drop {v['drop_points']:+.2f} points"
                         + ("   <- kept" if m == rep["method"] else ""))
    if "fp32_miou" in rep and "int8_miou" in rep:
        lines.append(f"  mIoU: FP32 {100 * rep['fp32_miou']:.2f}, INT8 {100 * rep['int8_miou']:.2f} "
                     f"(drop {rep['drop_points']:.2f} points"
                     + (f", budget {rep['budget_points']:g})" if rep.get("budget_points") is not None else ")"))
    if rep.get("fp32_nodes"):
        fb = "FP16 islands" if rep.get("qdq", {}).get("fp16_weighted_ops") else "FP32"
        why = "the budget" if rep.get("sensitivity") else "the table's plan"
        lines.append(f"  kept in {fb} for {why}: {', '.join(rep['fp32_nodes'])}")
    if rep.get("bias_correction"):
        lines.append(f"  bias correction: {rep['bias_correction']['corrected']} convolutions (largest shift "
                     f"{rep['bias_correction']['max_shift_rel']:.3g} of their mean |bias|)")
    if rep.get("sensitivity"):
        lines.append(f"  sensitivity report: {rep['sensitivity']['files']['md']}")
    if rep.get("parser_check") is not None:
        lines.append("  TensorRT parser check: ok")
    return "\n".join(lines)


def entry() -> None:
    sys.exit(run(PROG, main))


if __name__ == "__main__":
    entry()
