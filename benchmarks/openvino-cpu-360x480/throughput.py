"""OpenVINO throughput curve: images/s against batch, per IR, in latency mode (1 stream, 1 request)
and throughput mode (N streams, asynchronous requests, one image per request).

    python benchmarks/openvino-cpu-360x480/throughput.py A.xml B.xml ... --threads 2 --out DIR

Writes DIR/throughput.json and DIR/throughput.png. Inputs: random images preprocessed at the
model size (model scope: the batch is already in memory). Each point: 1 warm-up call, then calls
for at least --seconds (and at least --min-calls); images/s = images / wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm


def measure(runner, batch: int, seconds: float, min_calls: int) -> dict:
    h, w = runner.input_size
    x = np.random.default_rng(0).standard_normal((batch, 3, h, w)).astype(np.float32)
    runner.infer(x)  # warm-up
    n, t0 = 0, time.perf_counter()
    while n < min_calls or time.perf_counter() - t0 < seconds:
        runner.infer(x)
        n += 1
    el = time.perf_counter() - t0
    return {"batch": batch, "calls": n, "seconds": el, "images_per_s": batch * n / el, "ms_per_call": 1e3 * el / n}


def main() -> None:
    from pspnet_deploy.runners import load_runner
    from pspnet_deploy.utils import atomic_write_bytes, atomic_write_json, versions

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="OpenVINO .xml files (with sidecars)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--streams", type=int, default=2, help="streams in throughput mode")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--min-calls", type=int, default=3)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    out = Path(a.out)
    modes = [("latency", None), ("throughput", a.streams)]
    points = []
    bar = tqdm(total=len(a.models) * len(modes) * len(a.batches), desc="throughput", dynamic_ncols=True)
    env = None
    for path in a.models:
        for mode, streams in modes:
            r = load_runner(path, threads=a.threads, performance_mode=mode, streams=streams)
            try:
                d = r.describe()
                env = env or {"cpu": d["cpu"], "isa": d["isa"], "openvino": d["openvino"]}
                for b in a.batches:
                    p = measure(r, b, a.seconds, a.min_calls)
                    p.update(model=Path(path).name, precision=r.precision, runs_as=d["precision_used"], mode=mode,
                             streams=d["streams"], requests=r.requests, threads=d["threads"])
                    points.append(p)
                    bar.update()
            finally:
                r.close()
    bar.close()
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    rep = {"format": "pspnet-deploy/openvino-throughput", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "environment": {**(env or {}), "threads": a.threads, "versions": versions(), "load_average_at_end": load},
           "settings": {"batches": a.batches, "seconds": a.seconds, "min_calls": a.min_calls, "streams": a.streams},
           "points": points}

    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (model, mode), style in zip(sorted({(p["model"], p["mode"]) for p in points}), [None] * len(points)):
        pts = [p for p in points if p["model"] == model and p["mode"] == mode]
        lab = f"{pts[0]['precision']} (runs as {pts[0]['runs_as']}), {mode}, {pts[0]['streams']} stream(s)"
        ax.plot([p["batch"] for p in pts], [p["images_per_s"] for p in pts], marker="o",
                linestyle="-" if mode == "throughput" else "--", label=lab)
    ax.set_xlabel("images per call (batch)")
    ax.set_ylabel("images / s")
    ax.set_xticks(a.batches)
    ax.set_title(f"OpenVINO {rep['environment'].get('openvino')} on {rep['environment'].get('cpu')}, "
                 f"{a.threads} threads", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(out / "throughput.png", buf.getvalue())
    atomic_write_json(out / "throughput.json", rep)
    for p in points:
        print(f"{p['model']:<16} {p['mode']:<10} streams {p['streams']} batch {p['batch']}: "
              f"{p['images_per_s']:.2f} images/s ({p['ms_per_call']:.0f} ms per call)")


if __name__ == "__main__":
    main()
