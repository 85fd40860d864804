"""pspnet-bench: latency, throughput, accuracy, memory and FLOPs of model files, with reports and plots."""
from __future__ import annotations

import sys

from .common import make_parser, refuse_ignored, run, size_arg

PROG = "pspnet-bench"


def build_parser():
    p = make_parser(PROG, "Benchmark model files (.pt, .onnx, .engine): latency percentiles and throughput per "
                          "batch size in two labelled scopes (model: staged input; end2end: decode, preprocess, "
                          "infer, postprocess), optional mIoU and agreement with the first model, peak memory, "
                          "FLOPs and fraction of the measured FP32 peak. Writes report.json/.md/.csv and PNG plots.")
    p.add_argument("--model", action="append", required=True, metavar="PATH[:LABEL]",
                   help="model file, repeatable; the first is the reference for speed-ups and agreement")
    p.add_argument("--label", action="append", default=None,
                   help="label per --model, in the same order (instead of PATH:LABEL)")
    p.add_argument("--out", required=True, help="output folder for report.json, report.md, report.csv and plots")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="model input size for .pt checkpoints (ONNX and engines must already have it)")
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes to measure")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls before each measurement")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--iterations", type=int, default=50, help="timed calls per measurement")
    g.add_argument("--duration", type=float, default=None, help="time calls for this many seconds instead")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and onnxruntime (default: theirs)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--cuda-graph", action="store_true",
                   help="TensorRT engines: replay inference as a CUDA graph (one capture per input shape, as "
                        "pspnet-predict --cuda-graph); other models run as usual")
    p.add_argument("--scope", choices=["model", "end2end", "both"], default="both")
    p.add_argument("--data", default=None, help="dataset folder or synthetic[:SEED]: adds mIoU and agreement")
    p.add_argument("--split", default="val")
    p.add_argument("--limit", type=int, default=None, help="first N images of the split for accuracy")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="size of the generated end-to-end images when there is no --data (default: model size)")
    p.add_argument("--peak-size", type=int, default=2048, help="matrix size of the FP32 peak benchmark")
    p.add_argument("--no-peak", action="store_true", help="skip the FP32 peak benchmark")
    p.add_argument("--no-samples", action="store_true", help="leave the raw per-call timings out of report.json")
    p.add_argument("--concurrency", type=int, nargs="+", default=None, metavar="N",
                   help="load sweep: keep N requests of one image in flight per level (OpenVINO: N infer requests on "
                        "N streams; TensorRT: N execution contexts on N CUDA streams; ONNX Runtime / PyTorch: N threads on one model); throughput and p50/p99 per level, "
                        "latency-throughput plot")
    p.add_argument("--max-miou-drop", type=float, default=None, metavar="P",
                   help="with --data: recommend the fastest model (and concurrency) within P mIoU points of the "
                        "first model")
    p.add_argument("--max-latency-ms", type=float, default=None, metavar="L",
                   help="with --max-miou-drop: the recommended point's p50 must be at most L ms")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None) -> int:
    from ..errors import UserError

    from ..runfiles import RunFiles
    from ..utils import check_device

    parser = build_parser()
    a = parser.parse_args(argv)
    refuse_ignored(parser, a, [("limit", a.data is None, "without --data (it limits the accuracy images)"),
                               ("split", a.data is None, "without --data"),
                               ("image_size", a.data is not None, "with --data (end-to-end runs on its images)"),
                               ("peak_size", a.no_peak, "with --no-peak")])
    if a.peak_size <= 0:
        raise UserError(f"--peak-size must be positive, got {a.peak_size}")
    if any(b < 1 for b in a.batch):
        raise UserError(f"--batch sizes must be at least 1, got {a.batch}")
    if a.iterations < 1:
        raise UserError(f"--iterations must be at least 1, got {a.iterations}")
    if a.warmup < 0 or (a.duration is not None and not a.duration > 0):
        raise UserError("--warmup must be >= 0 and --duration > 0")
    if a.limit is not None and a.limit < 1:
        raise UserError(f"--limit must be positive, got {a.limit}")
    if a.threads is not None and a.threads < 1:
        raise UserError(f"--threads must be at least 1, got {a.threads}")
    check_device(a.device, allow_auto=False)
    if a.cuda_graph:
        from ..bench import parse_model_arg

        if not any(parse_model_arg(m).kind == "tensorrt" for m in a.model):
            raise UserError("--cuda-graph applies to TensorRT engines (.engine) only; none of the --model files is one")
    input_size = size_arg(a.input_size, batch=max(a.batch))
    image_size = size_arg(a.image_size, "--image-size", batch=max(a.batch))
    from ..bench import parse_model_arg
    from ..report import REPORT_FILES

    from ..card import read_card

    files = RunFiles().read_dir(a.data, "--data dataset")
    specs = [parse_model_arg(m) for m in a.model]
    for spec in specs:
        files.read_model(spec.path)
        spec.card = read_card(spec.path)  # read once: the benchmark and the runner use this card
        # each model at its size and the largest batch: within its bounds and memory
        spec.card.check_size(input_size if spec.card.kind == "torch" else None, batch=max(a.batch))
    files.write_dir(a.out, "--out folder", files=REPORT_FILES).check()
    from ..bench import run_bench

    rep = run_bench(specs, a.out, labels=a.label, input_size=input_size, batches=a.batch,
                    warmup=a.warmup, iterations=None if a.duration is not None else a.iterations,
                    duration=a.duration, threads=a.threads, scope=a.scope, data=a.data, split=a.split, limit=a.limit,
                    device=a.device, image_size=image_size, peak=not a.no_peak, peak_size=a.peak_size,
                    keep_samples=not a.no_samples, progress=not a.no_progress, cuda_graph=a.cuda_graph,
                    concurrency=a.concurrency, max_miou_drop=a.max_miou_drop, max_latency_ms=a.max_latency_ms)
    for r in rep["results"]:
        lat = r["latency_ms"]
        sp = r.get("speedup_vs_ref")
        print(f"{r['model']:<20} {r['backend']:<12} {r['precision']:<5} b{r['batch']:<3} {r['scope']:<8} "
              f"mean {lat['mean']:8.2f} ms  p50 {lat['p50']:8.2f}  p99 {lat['p99']:8.2f}  "
              f"{r['throughput_ips']:8.1f} img/s" + (f"  x{sp:.2f}" if sp else ""))
    for m in rep["models"]:
        if m.get("miou") is not None:
            print(f"{m['model']:<20} mIoU {100 * m['miou']:.2f} %  pixel acc {100 * m['pixel_accuracy']:.2f} %"
                  + (f"  agreement {100 * m['pixel_agreement']:.2f} %" if m.get("pixel_agreement") is not None else ""))
    for r in rep.get("load", []):
        lat = r["latency_ms"]
        print(f"{r['model']:<20} {r['backend']:<12} {r['precision']:<5} {r['concurrency']:>2} in flight  "
              f"p50 {lat['p50']:8.2f} ms  p99 {lat['p99']:8.2f}  {r['throughput_ips']:8.1f} img/s")
    rec = rep.get("recommendation")
    if rec:
        print(f"recommendation: {rec['model']} at {rec['concurrency']} in flight - {rec['reason']}"
              if rec["model"] is not None else f"recommendation: none - {rec['reason']}")
    print(f"reports in {a.out}: {', '.join(rep.get('files', []))}")
    return 0


def entry() -> None:
    sys.exit(run(PROG, main))


if __name__ == "__main__":
    entry()
