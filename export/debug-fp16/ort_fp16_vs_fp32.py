"""ONNX Runtime CPU, one thread: the FP16 file against the FP32 file of the same export, timed in
alternation on the same CamVid val frame (a shared machine: alternation exposes both to the same load).

    python export/debug-fp16/ort_fp16_vs_fp32.py E/model.fp32.onnx E/model.fp16.onnx --data ../shared/data/camvid
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from pspnet_deploy.card import read_card
from pspnet_deploy.data.samples import verification_images
from pspnet_deploy.machine import environment
from pspnet_deploy.ort_session import make_session

ap = argparse.ArgumentParser()
ap.add_argument("fp32")
ap.add_argument("fp16")
ap.add_argument("--data", required=True)
ap.add_argument("--rounds", type=int, default=5)
a = ap.parse_args()
x, src = verification_images(read_card(a.fp32).preprocessing(), a.data, "val", 1)
sess = {k: make_session(p, threads=1, quiet=True) for k, p in (("fp32", a.fp32), ("fp16", a.fp16))}
for s in sess.values():  # warm-up
    s.run(None, {s.get_inputs()[0].name: x})
ms: dict[str, list[float]] = {k: [] for k in sess}
for _ in range(a.rounds):
    for k, s in sess.items():
        t = time.perf_counter()
        s.run(None, {s.get_inputs()[0].name: x})
        ms[k].append((time.perf_counter() - t) * 1e3)
med = {k: statistics.median(v) for k, v in ms.items()}
print(json.dumps({"median_ms": med, "fp16_over_fp32": med["fp16"] / med["fp32"], "runs_ms": ms, "image": src,
                  "machine": environment(1, "cpu")}, indent=1, default=str))
