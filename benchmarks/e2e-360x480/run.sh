#!/usr/bin/env bash
# One run on this CPU (after prepare.sh): OpenVINO INT8 fast path (uint8 in, labels out) at 360x480, batch 1,
# 2 threads: bench model scope vs end2end (file on disk -> label map in memory), then pspnet-predict on 200
# CamVid train frames (images/s from its wall time) against the bench's model-only throughput.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/data/camvid}
EXP=${EXP:-export/e2e}
REC=benchmarks/e2e-360x480
$PY -m pspnet_deploy.cli.bench --model "$EXP/model.u8.int8.xml:ov-int8-u8labels" --batch 1 --warmup 3 \
    --iterations ${ITERS:-30} --threads 2 --scope both --data "$DATA" --split val --limit 2 --no-peak --no-progress \
    --out "$REC/bench"
rm -rf "$EXP/frames200" "$EXP/pred"; mkdir -p "$EXP/frames200"
ls "$DATA/train" | sort | sed -n '1,200p' | while read f; do ln -s "$(realpath "$DATA/train/$f")" "$EXP/frames200/$f"; done
# the same command on the first 20 frames: its wall time is start-up + model compile + 20 frames, so
# (200 - 20) / (t200 - t20) is the steady-state rate a long folder sees
rm -rf "$EXP/frames20" "$EXP/pred20"; mkdir -p "$EXP/frames20"
ls "$EXP/frames200" | sort | sed -n '1,20p' | while read f; do ln -s "$(realpath "$EXP/frames200/$f")" "$EXP/frames20/$f"; done
s0=$(date +%s.%N)
$PY -m pspnet_deploy.cli.predict "$EXP/model.u8.int8.xml" "$EXP/frames20" --output "$EXP/pred20" --threads 2
s1=$(date +%s.%N)
t0=$(date +%s.%N)
$PY -m pspnet_deploy.cli.predict "$EXP/model.u8.int8.xml" "$EXP/frames200" --output "$EXP/pred" --threads 2
t1=$(date +%s.%N)
$PY - "$REC" "$t0" "$t1" "$s0" "$s1" <<'PY'
import json, sys
from pspnet_deploy.machine import environment
rec, t0, t1, s0, s1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
b = json.load(open(f"{rec}/bench/report.json"))
rows = {r["scope"]: r for r in b["results"]}
m, e = rows["model"], rows["end2end"]
pred_ips = 200 / (t1 - t0)
out = {"model_p50_ms": m["latency_ms"]["p50"], "end2end_p50_ms": e["latency_ms"]["p50"],
       "end2end_over_model_p50": e["latency_ms"]["p50"] / m["latency_ms"]["p50"], "target_end2end": 1.10,
       "model_throughput_ips": m["throughput_ips"], "predict_200_frames_ips": pred_ips,
       "predict_wall_s_incl_startup": t1 - t0,
       "model_over_predict_throughput": m["throughput_ips"] / pred_ips, "target_predict": 1.15,
       "predict_20_frames_wall_s": s1 - s0, "predict_steady_ips": 180 / ((t1 - t0) - (s1 - s0)),
       "model_over_predict_steady_throughput": m["throughput_ips"] * ((t1 - t0) - (s1 - s0)) / 180,
       "machine": environment(2, "cpu")}
json.dump(out, open(f"{rec}/result.json", "w"), indent=2)
print(json.dumps({k: v for k, v in out.items() if k != "machine"}, indent=1))
PY
