#!/usr/bin/env python
"""Write benchmarks/int8-accuracy/README.md: FP32, default PTQ, budgeted PTQ (FP32 and FP16 fallback),
bias correction and QAT of the reference model on the held-out sequence and on CamVid val, from the
measurements of ``calibration/heldout_study.py`` (its ``results.json``; no model is run here).

    python benchmarks/int8-accuracy/make_record.py [--results calibration/heldout-r18/results.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

#: (row label, run name in results.json): the record's rows, in order
ROWS = [
    ("PTQ, default (`pspnet-calibrate` defaults: mse, 200 images)", "mse-200"),
    ("PTQ + bias correction (`--bias-correction`)", "mse+bc-200"),
    ("PTQ, budget 0.1 points on val, kept nodes FP32 (`--max-miou-drop 0.1`)", "mse@0.1-200"),
    ("the same plan, kept nodes as FP16 islands (`--fallback fp16`)", "mse@0.1+fp16-200"),
    ("QAT (`pspnet-qat`, 2 epochs from mse ranges on 32 images)", "qat"),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default=str(ROOT / "calibration" / "heldout-r18" / "results.json"))
    p.add_argument("--out", default=str(HERE / "README.md"))
    a = p.parse_args(argv)
    res = json.loads(Path(a.results).read_text())
    keys = [k for k in ("heldout", "val") if k in res["fp32"]]
    rows = [("FP32 (ONNX Runtime)", {k: dict(res["fp32"][k], drop_points=0.0, pixel_agreement=1.0) for k in keys},
             None)]
    missing = []
    for label, name in ROWS:
        r = res["runs"].get(name)
        if r is None or not all(k in r for k in keys):
            missing.append(name)
            continue
        rows.append((label, r, r))
    m = res["machine"]
    lines = [
        "# INT8 accuracy of the reference model: FP32, PTQ, budget, FP16 islands, bias correction, QAT", "",
        f"Checkpoint `{res['checkpoint']}`"
        + (f" (sha256 `{res['checkpoint_sha256'][:12]}…`)" if res.get("checkpoint_sha256") else "")
        + f" (trained on `{res['checkpoint_train_split']}`), exported at "
        f"{res['input_size'][0]}x{res['input_size'][1]}, {res['placement']} Q/DQ placement (the TensorRT file), "
        f"run with ONNX Runtime {m['onnxruntime']} on the CPU ({m['cpu']}"
        + (f", {' '.join(m['isa'])}" if m.get("isa") else "") + f"; {m['threads']} threads; torch {m['torch']}). "
        f"Calibration images from `{res['calib_split']}`. **held-out** = `{res['eval_split']}` (101 frames of a "
        "sequence calibration never saw; the model did see it in training), **val** = CamVid val (101 frames "
        "a few frames from train's). The budget plan was chosen on val, so its val row is not an unseen "
        "figure; its held-out row is. \"pixels = FP32\": share of pixels whose label equals FP32's.", "",
        "| variant | " + " | ".join(f"{k} mIoU % | {k} loss (points) | {k} pixels = FP32 %" for k in keys)
        + " | kept out of INT8 |",
        "|---|" + "---:|" * (3 * len(keys)) + "---|"]
    for label, r, run in rows:
        kept = "—" if run is None else (", ".join(f"`{n}`" for n in run.get("fp32_nodes") or []) or "none")
        lines.append(f"| {label} | " + " | ".join(
            f"{100 * r[k]['miou']:.2f} | {r[k]['drop_points']:+.2f} | {100 * r[k]['pixel_agreement']:.3f}"
            for k in keys) + f" | {kept} |")
    for k in keys:
        classes = list(res["fp32"][k]["per_class_iou"])
        lines += ["", f"Per-class IoU % on {k}:", "",
                  "| class | " + " | ".join(lbl.split(" (")[0] for lbl, _, _ in rows) + " |",
                  "|---|" + "---:|" * len(rows)]
        for c in classes:
            cells = []
            for _, r, _ in rows:
                v = r[k]["per_class_iou"][c]
                cells.append("—" if v is None else f"{100 * v:.2f}")
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
    if missing:
        lines += ["", f"Not measured yet: {', '.join(missing)}."]
    lines += ["", "Reproduce (2 CPU cores; the study keeps finished rows in results.json):", "", "```bash",
              "pspnet-qat models/pspnet_r18_camvid.pt --data ../shared/data/camvid --split 'train!0006R0' \\",
              "    --output export/qat/model.qat.int8.onnx --epochs 2 --num-images 32 --method mse --threads 2",
              "python calibration/heldout_study.py models/pspnet_r18_camvid.pt --out calibration/heldout-r18 --also-val \\",
              "    --methods mse,mse+bc,mse@0.1,mse@0.1+fp16 --num-images 200 --extra qat=export/qat/model.qat.int8.onnx",
              "python benchmarks/int8-accuracy/make_record.py",
              "```", ""]
    out = Path(a.out)
    tmp = out.with_suffix(".tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(out)
    print(f"wrote {out} ({len(rows)} rows{', missing ' + ', '.join(missing) if missing else ''})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
