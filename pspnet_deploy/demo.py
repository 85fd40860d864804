"""The main job on the built-in default: synthetic data -> train -> export FP32/FP16 -> INT8 by
calibration -> parity -> OpenVINO IRs (INT8 from the same Q/DQ file, BF16) -> benchmark with
accuracy, a load sweep (1 and 2 requests in flight) and a recommendation -> report folder. CPU
only, no download. The OpenVINO INT8 model is the fast path: uint8 pixels in, labels out
(``pspnet-export --input-kind uint8 --output-kind labels``), calibrated with the same ranges.

    python -m pspnet_deploy.demo --out runs/demo      (what `make demo` runs)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .cli.common import run

PROG = "pspnet-demo"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="folder for every artefact and the report")
    p.add_argument("--data", default="synthetic", help="dataset (default: the built-in synthetic scenes)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--input-size", type=int, nargs=2, default=None, metavar=("H", "W"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--iterations", type=int, default=30, help="timed iterations per benchmark row")
    p.add_argument("--max-miou-drop", type=float, default=1.0,
                   help="the recommendation's budget in mIoU points against PyTorch FP32 (the first model)")
    p.add_argument("--debug", action="store_true")
    return p


def _step(n: int, total: int, what: str) -> float:
    print(f"\n[{n}/{total}] {what}", flush=True)
    return time.time()


def main(argv=None) -> int:
    import torch

    from .bench import run_bench
    from .export import export_onnx
    from .precision.calibrate import calibrate_onnx
    from .train import TrainConfig, train

    a = build_parser().parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    total = 5

    _step(1, total, f"train PSPNet-ResNet18 on {a.data} ({a.epochs} epochs)")
    cfg = TrainConfig(data=a.data, out=str(out / "train"), backbone="resnet18", output_stride=8, head_channels=128,
                      epochs=a.epochs, batch_size=8, lr=0.02, head_lr_mult=1.0, warmup_iters=20, crop=[96, 96],
                      input_size=list(a.input_size) if a.input_size else None, val_every=a.epochs, threads=a.threads,
                      workers=1)
    res = train(cfg)
    ckpt = out / "train" / "best.pt"
    print(f"  val mIoU {100 * (res['best_val_miou'] or 0):.2f} -> {ckpt}")

    _step(2, total, "export FP32 and FP16 ONNX (exact static pooling, parity gate on)")
    from .checkpoint import load_checkpoint

    size = tuple(load_checkpoint(ckpt)["meta"]["preprocess"]["input_size"])
    fp32 = out / "export" / "model.fp32.onnx"
    fp16 = out / "export" / "model.fp16.onnx"
    r32 = export_onnx(ckpt, fp32, size, verify_data=a.data, progress=False)
    r16 = export_onnx(ckpt, fp16, size, fp16=True, verify_data=a.data, progress=False)
    for r in (r32, r16):
        p = r["parity"]["metrics"]
        print(f"  {Path(r['path']).name}: argmax agreement {100 * p.get('argmax_agreement', float('nan')):.3f}%, "
              f"max abs {p.get('max_abs', float('nan')):.2e}")

    _step(3, total, "INT8: calibrate on the train split, Q/DQ ONNX, accuracy on val")
    int8 = out / "export" / "model.int8.onnx"
    int8_ort = out / "export" / "model.int8-ort.onnx"
    calibrate_onnx(fp32, int8, a.data, split="train", num_images=64, progress=False,
                   cache_dir=out / "calib-cache")
    # same ranges, ONNX Runtime's placement: the file ONNX Runtime's CPU kernels run in INT8
    calibrate_onnx(fp32, int8_ort, table=int8.with_suffix(".calib.json"), placement="ort", progress=False)
    # the fast path: uint8 pixels in, labels out; the same ranges (its float body is the FP32 graph with an ArgMax)
    fast32 = out / "export" / "model.u8labels.fp32.onnx"
    fast8 = out / "export" / "model.u8labels.int8.onnx"
    export_onnx(ckpt, fast32, size, verify_data=a.data, progress=False, input_kind="uint8", output_kind="labels")
    calibrate_onnx(fast32, fast8, table=int8.with_suffix(".calib.json"), force=True, progress=False)
    print(f"  {int8.name} (TensorRT placement), {int8_ort.name} (ONNX Runtime placement), {fast8.name} (uint8 in, "
          f"labels out, same ranges)")

    from .engine.openvino import OVBuildOptions, build_openvino

    ov_int8 = build_openvino(fast8, log=lambda m: None)  # the TensorRT-placement Q/DQ file, as it is
    ov_bf16 = build_openvino(fp32, opts=OVBuildOptions(precision="bf16"), log=lambda m: None)
    for sc in (ov_int8, ov_bf16):
        note = sc["openvino"]["precision_note"]
        print(f"  {Path(sc['engine']['path']).name}: OpenVINO {sc['openvino']['version']}, runs as "
              f"{sc['openvino']['runs_as']}" + (f" ({note})" if note else ""))

    _step(4, total, "benchmark PyTorch FP32 (reference), ONNX Runtime FP32/FP16/INT8, OpenVINO INT8 "
                    "(uint8 in, labels out)/BF16 with accuracy, load sweep and recommendation")
    models = [(str(ckpt), "torch-fp32"), (str(fp32), "ort-fp32"), (str(fp16), "ort-fp16"),
              (str(int8), "ort-int8-trtqdq"), (str(int8_ort), "ort-int8"), (ov_int8["engine"]["path"], "ov-int8-u8labels"),
              (ov_bf16["engine"]["path"], "ov-bf16")]
    report = run_bench(models, out / "report", data=a.data, split="val",
                       iterations=a.iterations, warmup=5, threads=a.threads, scope="both", progress=True,
                       concurrency=[1, 2], max_miou_drop=a.max_miou_drop)

    _step(5, total, "done")
    print((out / "report" / "report.md").read_text() if (out / "report" / "report.md").exists() else "")
    print(f"report: {out / 'report'} (report.md, report.json, report.csv, *.png); total {time.time() - t0:.0f}s")
    return 0 if report is not None else 1


def entry() -> None:
    sys.exit(run(PROG, main))


if __name__ == "__main__":
    entry()
