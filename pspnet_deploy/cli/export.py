"""pspnet-export: checkpoint -> static ONNX (FP32 or FP16), with a parity gate and a TensorRT parser check.

Examples::

    pspnet-export runs/ref/best.pt --onnx export/camvid/model.fp32.onnx --input-size 360 480 \\
        --verify-data ../shared/data/camvid
    pspnet-export runs/ref/best.pt --onnx camvid --fp16          # -> export/camvid/model.fp16.onnx
    pspnet-export runs/ref/best.pt --onnx m.onnx --dynamic-batch 1 4 8 --output-kind labels
    pspnet-export runs/ref/best.pt --onnx fast.onnx --input-kind uint8 --output-kind labels   # pixels in, labels out

Other output formats add their own options to :func:`build_parser` and their step to
:func:`main` (after the ONNX step, which they can build on).
"""
from __future__ import annotations

import json
import sys

from .common import make_parser, run, size_arg

PROG = "pspnet-export"


def build_parser():
    p = make_parser(PROG, "Export a checkpoint to a clean static ONNX graph (exact static pyramid pooling), "
                          "optionally FP16, checked against PyTorch with ONNX Runtime and against the TensorRT "
                          "ONNX parser's support matrix.")
    p.add_argument("checkpoint", help="checkpoint (.pt) written by pspnet-train")
    p.add_argument("--onnx", metavar="OUT", nargs="?", const="", default=None,
                   help="ONNX output: a .onnx path, a folder, or a bare name (-> export/NAME/model.<precision>.onnx); "
                        "no value or omitted: export/<checkpoint name>/model.<precision>.onnx")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="static input size (default: the checkpoint's preprocessing size)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--batch", type=int, default=1, help="fixed batch size")
    g.add_argument("--dynamic-batch", type=int, nargs=3, metavar=("MIN", "OPT", "MAX"), default=None,
                   help="symbolic batch dimension; the range is stored for TensorRT optimisation profiles")
    p.add_argument("--dynamic-shape", action="store_true",
                   help="symbolic H and W (exact pyramid pooling at every size); --input-size is then the size "
                        "to optimise for")
    p.add_argument("--min-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="with --dynamic-shape: smallest input (default: the model's minimum)")
    p.add_argument("--max-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="with --dynamic-shape: largest input (default: twice --input-size)")
    p.add_argument("--fp16", action="store_true",
                   help="write the FP16 variant (FP16 weights and activations, FP32 inputs/outputs, nodes that "
                        "would overflow FP16 on the verification images kept FP32)")
    p.add_argument("--fp16-margin", type=float, default=4.0,
                   help="keep a node FP32 when its values exceed 65504 / MARGIN on the verification images")
    p.add_argument("--output-kind", choices=["logits", "labels"], default="logits",
                   help="logits (N x C x H x W float32) or labels (ArgMax in the graph, N x H x W int32)")
    p.add_argument("--input-kind", choices=["float", "uint8"], default="float",
                   help="float (N x 3 x H x W, preprocessed by the caller) or uint8 (N x H x W x 3 pixels; cast, "
                        "mean/std and transpose in the graph)")
    p.add_argument("--channel-order", type=str.upper, choices=["RGB", "BGR"], default="RGB",
                   help="uint8 input: the pixels' channel order (RGB: the toolkit's image reader; BGR: cv2.imread)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 20, the newest TensorRT 10 parses)")
    p.add_argument("--trt-major", type=int, default=10, help="TensorRT major version whose ONNX parser to check against")
    p.add_argument("--verify-data", default=None,
                   help="dataset folder for the parity check and FP16 ranges (default: generated images)")
    p.add_argument("--verify-split", default="val")
    p.add_argument("--num-verify", type=int, default=4, help="number of images for the parity check")
    p.add_argument("--no-verify", action="store_true", help="skip the parity gate (not recommended)")
    p.add_argument("--tolerance", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parity tolerance (repeatable): max_abs_rel, mean_abs_rel, max_abs, mean_abs, "
                        "cosine, argmax_agreement, nonfinite; VALUE 'none' drops the check")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch and ONNX Runtime")
    p.add_argument("--json", default=None, help="also write the export report here")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def main(argv=None) -> int:
    from pathlib import Path

    from ..compare import parse_tolerances
    from ..errors import UserError
    from ..export import _validate, default_output_path
    from ..card import failed_report_path, parity_report_path
    from ..runfiles import RunFiles
    from ..utils import atomic_write_json, check_writable, jsonable

    a = build_parser().parse_args(argv)
    # cheap checks first: a bad argument should not wait for torch to import
    tolerances = parse_tolerances(a.tolerance)
    _validate(a.batch, a.dynamic_batch, a.output_kind, a.opset, a.trt_major, a.num_verify, a.input_kind,
              a.channel_order)
    if a.channel_order != "RGB" and a.input_kind != "uint8":
        raise UserError("--channel-order applies to --input-kind uint8 (a float input is preprocessed by the caller)")
    if a.threads is not None and a.threads < 1:
        raise UserError(f"--threads must be at least 1, got {a.threads}")
    if not Path(a.checkpoint).is_file():
        raise UserError(f"{a.checkpoint}: checkpoint not found")
    if (a.min_size or a.max_size) and not a.dynamic_shape:
        raise UserError("--min-size and --max-size need --dynamic-shape")
    size_arg(a.input_size)  # the argument's own form first (no checkpoint read for a typo)
    from ..card import read_card

    # the size the export runs at (given, else the checkpoint's) within the model's bounds and memory, times the
    # largest batch: the parity gate and FP16 ranges run the model on a batch of that size
    read_card(a.checkpoint, kind="torch").check_size(a.input_size, batch=a.dynamic_batch[2] if a.dynamic_batch else a.batch)
    out = default_output_path(a.checkpoint, a.onnx or None, "fp16" if a.fp16 else "fp32")
    check_writable(out, "an .onnx file path")
    files = RunFiles().read_model(a.checkpoint, "checkpoint").read_dir(a.verify_data, "--verify-data dataset")
    files.write(out, "--onnx output").also_writes(parity_report_path(out), "parity report")
    files.also_writes(failed_report_path(out), "failed-parity report").write(a.json, "--json report").check()

    import torch

    from ..export import export_onnx

    if a.threads is not None:
        torch.set_num_threads(a.threads)
    report = export_onnx(
        a.checkpoint, a.onnx or None, input_size=size_arg(a.input_size), batch=a.batch,
        dynamic_batch=a.dynamic_batch, fp16=a.fp16, output_kind=a.output_kind, opset=a.opset,
        verify=not a.no_verify, verify_data=a.verify_data, verify_split=a.verify_split, num_verify=a.num_verify,
        tolerances=tolerances, progress=not a.quiet, trt_major=a.trt_major, fp16_margin=a.fp16_margin,
        threads=a.threads, dynamic_shape=a.dynamic_shape, min_size=a.min_size, max_size=a.max_size,
        input_kind=a.input_kind, channel_order=a.channel_order)
    if a.json:
        atomic_write_json(a.json, jsonable(report))
    summary = {"path": report["path"], "precision": report["precision"], "nodes": report["nodes"],
               "parity_passed": report["parity"].get("passed")}
    print(json.dumps(summary))
    return 0


def entry() -> None:
    sys.exit(run(PROG, main))


if __name__ == "__main__":
    entry()
