#!/usr/bin/env bash
# Dynamic vs static at 360x480 in one run on this CPU: ONNX Runtime FP32 and OpenVINO INT8 (Q/DQ from
# calibration on 64 CamVid train images at 360x480, default method), batch 1, 2 threads, both orders.
# Writes export/dyn/* (not tracked) and benchmarks/dynamic-shape/run3-*/ (report.json with the machine record).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
CKPT=${CKPT:-models/pspnet_r18_camvid.pt}
DATA=${DATA:-../shared/data/camvid}
EXP=${EXP:-export/dyn}
REC=benchmarks/dynamic-shape
mkdir -p "$EXP"
[ -f "$EXP/static.fp32.onnx" ] || $PY -m pspnet_deploy.cli.export "$CKPT" --onnx "$EXP/static.fp32.onnx" \
    --input-size 360 480 --verify-data "$DATA" --verify-split val --num-verify 2 --threads 2 --quiet
[ -f "$EXP/dyn.fp32.onnx" ] || $PY -m pspnet_deploy.cli.export "$CKPT" --onnx "$EXP/dyn.fp32.onnx" \
    --input-size 360 480 --dynamic-shape --verify-data "$DATA" --verify-split val --num-verify 2 --threads 2 --quiet
for m in static dyn; do
  [ -f "$EXP/$m.int8.onnx" ] || $PY -m pspnet_deploy.cli.calibrate "$EXP/$m.fp32.onnx" --data "$DATA" \
      --split train --num-images 64 --threads 2 --no-progress --output "$EXP/$m.int8.onnx"
  [ -f "$EXP/$m.int8.xml" ] || $PY -m pspnet_deploy.cli.build_engine "$EXP/$m.int8.onnx" --backend openvino
done
common="--batch 1 --warmup 3 --iterations ${ITERS:-20} --threads 2 --scope model --no-peak --no-progress"
$PY -m pspnet_deploy.cli.bench --model "$EXP/static.fp32.onnx:ort-fp32-static" --model "$EXP/dyn.fp32.onnx:ort-fp32-dynamic" \
    --model "$EXP/static.int8.xml:ov-int8-static" --model "$EXP/dyn.int8.xml:ov-int8-dynamic" $common --out "$REC/run3-static-first"
$PY -m pspnet_deploy.cli.bench --model "$EXP/dyn.fp32.onnx:ort-fp32-dynamic" --model "$EXP/static.fp32.onnx:ort-fp32-static" \
    --model "$EXP/dyn.int8.xml:ov-int8-dynamic" --model "$EXP/static.int8.xml:ov-int8-static" $common --out "$REC/run4-dynamic-first"
