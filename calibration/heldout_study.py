#!/usr/bin/env python
"""Which calibration default holds up on images calibration never saw: methods x image counts.

Calibrates the checkpoint's FP32 ONNX on ``--calib-split`` (default ``train!0006R0``: CamVid train
without sequence 0006R0) with each ``--methods`` entry and each ``--num-images`` count, then
evaluates FP32 and every INT8 file with ONNX Runtime (CPU) on ``--eval-split`` (default
``train@0006R0``: that sequence only, 101 frames not neighbouring any calibration frame) and, with
``--also-val``, on CamVid val. Records mIoU, the INT8-vs-FP32 loss in points, per-class IoU, the
pixel agreement of INT8 with FP32 labels and the calibration time.

Read the result for what it is: the loss measures how well *calibration* generalises to unseen
frames. Whether the *model* saw the held-out sequence in training is a property of the checkpoint
(the current reference model ``models/pspnet_r18_camvid.pt`` was trained on all of CamVid train,
0006R0 included; a checkpoint trained with ``--split 'train!0006R0'`` makes the sequence unseen
by both). The checkpoint's training split is printed into the record.

    python calibration/heldout_study.py models/pspnet_r18_camvid.pt --data ../shared/data/camvid \
        --out calibration/heldout-r18 --methods minmax,entropy,percentile,mse --num-images 32,100

Results go to ``OUT/results.json`` (rewritten after every step, so an interrupted run keeps what
it measured) and ``OUT/results.md``; the ONNX files stay in ``OUT`` (git-ignored: ``*.onnx``).
Calibration images and statistics are cached in ``--cache-dir``, FP32's label maps in
``OUT/fp32-labels-*.npz`` and finished runs in ``results.json``, so a rerun with more methods or
counts only measures what is new.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="PSPNet checkpoint (.pt) from pspnet-train / pspnet-convert")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "camvid"))
    p.add_argument("--calib-split", default="train!0006R0")
    p.add_argument("--eval-split", default="train@0006R0")
    p.add_argument("--also-val", action="store_true", help="evaluate on --data val as well")
    p.add_argument("--extra", action="append", default=[], metavar="NAME=ONNX",
                   help="also evaluate an INT8 file made elsewhere (e.g. pspnet-qat's) as row NAME; repeatable")
    p.add_argument("--input-size", type=int, nargs=2, default=(360, 480))
    p.add_argument("--methods", default="minmax,entropy,percentile,mse",
                   help="comma list of METHOD[:PERCENTILE][@BUDGET][+bc][+fp16] (see parse_spec): e.g. "
                        "percentile:99.999, mse+bc (bias correction), mse@0.1 (budget on val), mse@0.1+fp16")
    p.add_argument("--num-images", default="32,100", help="comma list of calibration image counts")
    p.add_argument("--placement", default="trt")
    p.add_argument("--out", required=True, help="output folder for ONNX files and results")
    p.add_argument("--cache-dir", default=str(ROOT / "calibration" / "cache"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-limit", type=int, default=None)
    return p.parse_args(argv)


def _eval(path: Path, ds, limit, threads, ref_labels: list | None, desc: str) -> tuple[dict, list]:
    """mIoU / per-class IoU on ``ds``; pixel agreement with ``ref_labels`` (FP32's) when given."""
    from pspnet_deploy.runners.ort_runner import OrtRunner

    with OrtRunner.from_file(str(path), threads=threads) as r:
        return _eval_with(r, ds, limit, ref_labels, desc)


def _eval_with(r, ds, limit, ref_labels, desc):
    from pspnet_deploy.evaluate import labels_at
    from pspnet_deploy.metrics import ConfusionMatrix
    from tqdm import tqdm

    cm = ConfusionMatrix(ds.info.num_classes, ds.info.ignore_index)
    n = len(ds) if limit is None else min(limit, len(ds))
    labels, same, total = [], 0, 0
    t0 = time.time()
    for i in tqdm(range(n), desc=desc, leave=False, dynamic_ncols=True):
        img, mask = ds.load(i)
        lab = labels_at(r.infer(r.preprocess(img)[None])[0], mask.shape).astype(np.uint8)
        cm.update(lab, mask)
        labels.append(lab)
        if ref_labels is not None:
            same += int((lab == ref_labels[i]).sum())
            total += lab.size
    s = cm.summary(ds.info.classes)
    s["num_images"] = n
    s["seconds"] = round(time.time() - t0, 1)
    if ref_labels is not None:
        s["pixel_agreement"] = same / max(total, 1)
    return s, labels


def main(argv=None) -> int:
    import onnx
    import onnxruntime
    import torch

    from pspnet_deploy.card import read_card
    from pspnet_deploy.checkpoint import load_checkpoint
    from pspnet_deploy.data import open_dataset
    from pspnet_deploy.export import export_onnx
    from pspnet_deploy.errors import UserError
    from pspnet_deploy.evaluate import onnx_miou
    from pspnet_deploy.machine import cpu_info
    from pspnet_deploy.precision.calibrate import calibrate_onnx
    from pspnet_deploy.utils import sha256_file

    a = parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ck = load_checkpoint(a.checkpoint)
    meta = ck.get("meta", {})
    train_split = (meta.get("dataset") or {}).get("train_split") or "unknown (not recorded)"
    res_path = out / "results.json"
    res = json.loads(res_path.read_text()) if res_path.is_file() else {}
    sha = sha256_file(a.checkpoint)
    if res.get("checkpoint_sha256") not in (None, sha):
        raise SystemExit(f"{res_path} holds runs of another checkpoint (sha256 {res['checkpoint_sha256'][:12]}…, "
                         f"{a.checkpoint} is {sha[:12]}…): its rows would mix two models; use another --out")
    res.update({"checkpoint": str(a.checkpoint), "checkpoint_sha256": sha, "checkpoint_train_split": train_split,
                "data": a.data,
                "calib_split": a.calib_split, "eval_split": a.eval_split, "input_size": list(a.input_size),
                "placement": a.placement,
                "machine": {**cpu_info(), "python": platform.python_version(),
                            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                            "onnx": onnx.__version__, "threads": a.threads}})
    res.setdefault("runs", {})

    def save():
        tmp = res_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1))
        tmp.replace(res_path)
        (out / "results.md").write_text(to_markdown(res))

    fp32 = out / "model.fp32.onnx"
    if not fp32.is_file():
        print(f"export {fp32}", flush=True)
        export_onnx(a.checkpoint, fp32, input_size=tuple(a.input_size), num_verify=2, threads=a.threads)
    evals = {"heldout": open_dataset(a.data, a.eval_split)}
    if a.also_val:
        evals["val"] = open_dataset(a.data, "val")
    ref: dict[str, list] = {}
    for key, ds in evals.items():
        labels_file = out / f"fp32-labels-{key}.npz"  # FP32's label maps: pixel agreement without re-running FP32
        if labels_file.is_file() and key in res.get("fp32", {}):
            with np.load(labels_file) as z:
                ref[key] = [z[f"l{i}"] for i in range(len(z.files))]
        else:
            s, ref[key] = _eval(fp32, ds, a.eval_limit, a.threads, None, f"fp32 {key}")
            res.setdefault("fp32", {})[key] = s
            np.savez_compressed(labels_file, **{f"l{i}": lab for i, lab in enumerate(ref[key])})
        print(f"FP32 {key}: mIoU {100 * res['fp32'][key]['miou']:.2f} ({res['fp32'][key]['num_images']} images)",
              flush=True)
    save()

    def measure(name: str, path: Path, row: dict) -> None:
        """Evaluate one INT8 file on every split, against FP32's labels, and record it as ``name``."""
        for key, ds in evals.items():
            s, _ = _eval(path, ds, a.eval_limit, a.threads, ref[key], f"{name} {key}")
            s["drop_points"] = 100 * (res["fp32"][key]["miou"] - s["miou"])
            row[key] = s
            took = f"  (calibrate {row['calibrate_seconds']} s)" if row.get("calibrate_seconds") is not None else ""
            print(f"{name:<18} {key}: mIoU {100 * s['miou']:.2f} drop {s['drop_points']:+.2f} points, "
                  f"agreement {100 * s['pixel_agreement']:.3f} %{took}", flush=True)
        res["runs"][name] = row
        save()

    def measured(name: str) -> bool:  # by an earlier run (delete OUT/results.json to measure again)
        return name in res["runs"] and all(k in res["runs"][name] for k in evals)

    for n in [int(x) for x in a.num_images.split(",")]:
        for spec in a.methods.split(","):
            sp = parse_spec(spec)
            name = f"{sp['name']}-{n}"
            path = out / f"model.int8.{name}.onnx"
            if measured(name):
                continue
            extra: dict = {}
            reused = name.replace("+fp16", "") if sp["budget"] is not None and sp["fallback"] == "fp16" else None
            if reused in res["runs"]:  # the same plan as the FP32-fallback run, its nodes as FP16 islands
                extra = {"keep_fp32": res["runs"][reused]["fp32_nodes"]}
            elif sp["budget"] is not None:
                reused = None
                extra = {"max_miou_drop": sp["budget"], "eval_split": "val", "evaluator": onnx_miou,
                         "eval_limit": a.eval_limit}
            t0 = time.time()
            try:
                rep = calibrate_onnx(fp32, path, a.data, split=a.calib_split, num_images=n, method=sp["method"],
                                     percentile=sp["percentile"] or 99.99, cache_dir=a.cache_dir, progress=False,
                                     placement=a.placement, threads=a.threads, bias_correction=sp["bias_correction"],
                                     fallback=sp["fallback"], **extra)
            except UserError as e:  # e.g. a budget no plan meets: say so, measure the rest
                print(f"{name}: {e}", flush=True)
                continue
            measure(name, path, {
                "method": sp["method"], "bias_correction": sp["bias_correction"], "percentile": sp["percentile"],
                "num_images": rep["images"]["count"], "budget_points": sp["budget"], "fallback": sp["fallback"],
                "fp32_nodes": rep["fp32_nodes"], "plan_reused_from": reused,
                "calibrate_seconds": round(time.time() - t0, 1),
                "stats_from_cache": bool(rep.get("cache", {}).get("stats_hit"))})
    for item in a.extra:  # files made elsewhere (QAT): evaluated like the calibrated ones
        name, _, path = item.partition("=")
        if not path or not Path(path).is_file():
            raise SystemExit(f"--extra {item!r}: give NAME=PATH of an existing INT8 ONNX")
        if measured(name) and res["runs"][name].get("extra") == str(path):
            continue
        cal = read_card(path).meta.get("calibration") or {}
        measure(name, Path(path), {"method": name, "extra": str(path), "num_images": cal.get("num_images"),
                                   "calibrate_seconds": None, "stats_from_cache": False,
                                   "fp32_nodes": cal.get("fp32_nodes", [])})
    return 0


def parse_spec(spec: str) -> dict:
    """``METHOD[:PERCENTILE][@BUDGET][+bc][+fp16]``: e.g. ``mse``, ``percentile:99.999``, ``mse+bc``,
    ``mse@0.1`` (accuracy budget of 0.1 mIoU points, evaluated on val), ``mse@0.1+fp16`` (the same
    plan with its kept nodes as FP16 islands)."""
    rest, flags = spec, set()
    while rest.endswith(("+bc", "+fp16")):
        rest, _, flag = rest.rpartition("+")
        flags.add(flag)
    rest, _, budget = rest.partition("@")
    method, _, pct = rest.partition(":")
    return {"method": method, "percentile": float(pct) if pct else None, "budget": float(budget) if budget else None,
            "bias_correction": "bc" in flags, "fallback": "fp16" if "fp16" in flags else "fp32",
            "name": f"{method}{pct}" + (f"@{budget}" if budget else "") + "".join(f"+{f}" for f in ("bc", "fp16")
                                                                                 if f in flags)}


def _order(kv) -> tuple:
    name, r = kv
    return (bool(r.get("extra")), r["num_images"] or 0, name)


def to_markdown(res: dict) -> str:
    keys = [k for k in ("heldout", "val") if k in res.get("fp32", {})]
    lines = [f"# Calibration methods x images on unseen frames ({res['checkpoint']})", "",
             *([f"Checkpoint sha256 `{res['checkpoint_sha256']}`.", ""] if res.get("checkpoint_sha256") else []),
             f"Calibrated on `{res['calib_split']}`, evaluated on `{res['eval_split']}` (heldout)"
             + (" and `val`" if "val" in keys else "") + f" at {res['input_size'][0]}x{res['input_size'][1]}, "
             f"ONNX Runtime CPU, {res['placement']} placement. Checkpoint trained on: "
             f"`{res['checkpoint_train_split']}`. Machine: {res['machine']}.", ""]
    head = "| method | images | calibrate s |" + "".join(
        f" {k} mIoU % | {k} drop (points) | {k} pixels = FP32 % |" for k in keys)
    lines += [head, "|" + "---|" * (3 + 3 * len(keys))]
    lines.append("| FP32 | — | — |" + "".join(f" {100 * res['fp32'][k]['miou']:.2f} | — | 100 |" for k in keys))
    for name, r in sorted(res.get("runs", {}).items(), key=_order):
        m = (r["method"] + (f" {r['percentile']:g}" if r.get("percentile") else "")
             + (f" ({r['extra']})" if r.get("extra") else "")
             + (" + bias correction" if r.get("bias_correction") else "")
             + (f", budget {r['budget_points']:g} on val ({len(r['fp32_nodes'])} kept {r.get('fallback', 'fp32').upper()})"
                if r.get("budget_points") is not None else ""))
        secs = "—" if r["calibrate_seconds"] is None else f"{r['calibrate_seconds']}{' (stats cached)' if r['stats_from_cache'] else ''}"
        if r.get("plan_reused_from"):
            secs += f" (plan of {r['plan_reused_from']})"
        lines.append(f"| {m} | {r['num_images'] if r['num_images'] is not None else '—'} | {secs} |"
                     + "".join(f" {100 * r[k]['miou']:.2f} | {r[k]['drop_points']:+.2f} | "
                               f"{100 * r[k]['pixel_agreement']:.3f} |" if k in r else " — | — | — |" for k in keys))
    runs = sorted(res.get("runs", {}).items(), key=_order)
    for k in keys:
        classes = list(res["fp32"][k]["per_class_iou"])
        lines += ["", f"Per-class IoU % on {k}:", "",
                  "| class | FP32 | " + " | ".join(name for name, r in runs if k in r) + " |",
                  "|---|---:|" + "---:|" * sum(k in r for _, r in runs)]
        for c in classes:
            def pc(v):
                return "—" if v is None else f"{100 * v:.2f}"
            lines.append(f"| {c} | {pc(res['fp32'][k]['per_class_iou'][c])} | "
                         + " | ".join(pc(r[k]["per_class_iou"][c]) for _, r in runs if k in r) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
