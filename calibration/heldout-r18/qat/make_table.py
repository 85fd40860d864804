"""Write qat/results.md from the recorded JSON files (no model is run here).

    python calibration/heldout-r18/qat/make_table.py
"""
import json
from pathlib import Path

d = Path(__file__).parent
base = json.loads((d.parent / "results.json").read_text())
rows = [("FP32 (models/pspnet_r18_camvid.pt)", base["fp32"]["heldout"]),
        ("PTQ, default (mse, 32 images)", base["runs"]["mse-32"]["heldout"]),
        ("QAT weights in FP32 (no fake quantization)", json.loads((d / "eval_heldout_qat_weights_fp32.json").read_text())),
        ("QAT INT8 (model.qat.int8.onnx, ONNX Runtime)", json.loads((d / "eval_heldout_int8.json").read_text()))]
rep = json.loads((d / "qat_report.json").read_text())
ref, own = rows[0][1]["miou"], rows[2][1]["miou"]
lines = ["# QAT on the held-out sequence (models/pspnet_r18_camvid.pt)", "",
         "`pspnet-qat` fine-tuned on `train!0006R0` (266 images, 2 epochs, 132 steps of batch 4 at 360x480, "
         f"lr 1e-4, BF16 autocast {'on' if rep['bf16']['used'] else 'off'}), starting from mse ranges on 32 of those images (TensorRT placement, "
         f"{rep['seconds'] / 60:.1f} min wall time on 2 cores, about 15 of them stopped (SIGSTOP) while a training run had the CPU); evaluated on `train@0006R0` (101 frames neither calibration "
         "nor QAT saw; the checkpoint itself was trained on all of train, 0006R0 included, as in results.md).", "",
         "| model | mIoU % | vs FP32 (points) | vs the QAT weights in FP32 | pixel acc % |", "|---|---:|---:|---:|---:|"]
for name, r in rows:
    lines.append(f"| {name} | {100 * r['miou']:.2f} | {100 * (r['miou'] - ref):+.2f} | "
                 f"{100 * (r['miou'] - own):+.2f} | {100 * r['pixel_accuracy']:.2f} |")
classes = list(rows[0][1]["per_class_iou"])
lines += ["", "Per-class IoU %:", "", "| class | " + " | ".join(n.split(" (")[0] for n, _ in rows) + " |",
          "|---|" + "---:|" * len(rows)]
for c in classes:
    lines.append(f"| {c} | " + " | ".join(f"{100 * r['per_class_iou'][c]:.2f}" for _, r in rows) + " |")
lines += ["", "Reproduce:", "", "```bash",
          "pspnet-qat models/pspnet_r18_camvid.pt --data ../shared/data/camvid --split 'train!0006R0' \\",
          "    --output export/qat/model.qat.int8.onnx --epochs 2 --num-images 32 --method mse --threads 2",
          "pspnet-eval export/qat/model.qat.int8.onnx --data ../shared/data/camvid --split 'train@0006R0' \\",
          "    --json calibration/heldout-r18/qat/eval_heldout_int8.json",
          "python calibration/heldout-r18/qat/eval_qat_weights_fp32.py   # the fine-tuned weights without quantization",
          "```", ""]
(d / "results.md").write_text("\n".join(lines))
