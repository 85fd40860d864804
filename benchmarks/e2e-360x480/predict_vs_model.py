"""pspnet-predict's pipelined path against the model alone, in one process, round by round.

The runner is loaded once (as pspnet-predict loads it); each round times ``--calls`` model-only calls
on a staged frame (the bench's model scope) and then one pipelined Predictor run over ``--frames``
frames (decode, infer, colour, write two PNGs: what pspnet-predict does per image), into a fresh
folder. Start-up and compile are outside both. The rounds alternate, so drift of the machine's speed
weighs on both; the ratio is reported per round and as the median.

    python benchmarks/e2e-360x480/predict_vs_model.py export/e2e/model.u8.int8.xml ../shared/data/camvid/train \
        --frames 40 --rounds 5 --threads 2 --json benchmarks/e2e-360x480/predict_vs_model.json
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from pspnet_deploy.data.io import read_image
from pspnet_deploy.machine import environment
from pspnet_deploy.predict import Predictor
from pspnet_deploy.runners import load_runner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("frames_dir")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    a = ap.parse_args()
    frames = sorted(p for p in Path(a.frames_dir).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    frames = frames[: a.frames]
    rounds = []
    with load_runner(a.model, threads=a.threads) as runner, tempfile.TemporaryDirectory() as tmp:
        staged = runner.prepare(read_image(frames[0]))[None]
        for _ in range(3):  # warm-up, as the bench does
            runner.infer(staged)
        Predictor(runner, Path(tmp) / "warm").run(frames[:4])
        for r in range(a.rounds):
            t = time.perf_counter()
            for _ in range(a.calls):
                runner.infer(staged)
            model_ips = a.calls / (time.perf_counter() - t)
            out = Path(tmp) / f"r{r}"
            t = time.perf_counter()
            res = Predictor(runner, out).run(frames)
            predict_ips = res.images / (time.perf_counter() - t)
            shutil.rmtree(out)
            rounds.append({"model_ips": model_ips, "predict_ips": predict_ips,
                           "model_over_predict": model_ips / predict_ips})
            print(f"round {r + 1}: model {model_ips:.2f} img/s, predict {predict_ips:.2f} img/s, "
                  f"ratio {model_ips / predict_ips:.3f}", flush=True)
    ratios = [x["model_over_predict"] for x in rounds]
    rec = {"model": a.model, "frames": len(frames), "calls": a.calls, "rounds": rounds,
           "median_model_over_predict": statistics.median(ratios), "target": 1.15,
           "machine": environment(a.threads, "cpu")}
    print(f"median model / predict throughput: {rec['median_model_over_predict']:.3f} (target <= 1.15)")
    if a.json:
        Path(a.json).write_text(json.dumps(rec, indent=2))


if __name__ == "__main__":
    main()
