#!/usr/bin/env bash
# CPU latency of MobileNetV2-PSPNet against ResNet-50-PSPNet (mmseg 1.2.2's Cityscapes d8 configs,
# converted), 1x3x512x1024, batch 1, 2 threads, in one pspnet-bench run: ONNX Runtime FP32 and
# OpenVINO INT8 (the Q/DQ ONNX of pspnet-calibrate, built with pspnet-build-engine --backend openvino).
# Random weights (latency only; no accuracy is claimed); calibration images: CamVid train, resized.
# Writes export/mbv2-r50/* (not tracked) and benchmarks/mobilenet-v2-vs-r50-cpu-512x1024/* (tracked).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
DATA=${DATA:-../shared/data/camvid}
EXP=${EXP:-export/mbv2-r50}
REC=benchmarks/mobilenet-v2-vs-r50-cpu-512x1024
mkdir -p "$EXP" "$REC"
[ -f "$EXP/r50.pt" ] || $BIN/python "$REC/make_checkpoints.py" "$EXP"
for m in mbv2 r50; do
  [ -f "$EXP/$m.fp32.onnx" ] || $BIN/pspnet-export "$EXP/$m.pt" --onnx "$EXP/$m.fp32.onnx" --input-size 512 1024 --threads 2
  [ -f "$EXP/$m.int8.onnx" ] || $BIN/pspnet-calibrate "$EXP/$m.fp32.onnx" --data "$DATA" --split train \
      --num-images ${CALIB:-16} --threads 2 --no-progress --output "$EXP/$m.int8.onnx"
  [ -f "$EXP/$m.int8.xml" ] || $BIN/pspnet-build-engine "$EXP/$m.int8.onnx" --backend openvino
done
$BIN/pspnet-bench --model "$EXP/r50.fp32.onnx:r50-ort-fp32" --model "$EXP/mbv2.fp32.onnx:mbv2-ort-fp32" \
    --model "$EXP/r50.int8.xml:r50-ov-int8" --model "$EXP/mbv2.int8.xml:mbv2-ov-int8" \
    --batch 1 --warmup ${WARMUP:-2} --iterations ${ITERS:-10} --threads 2 --scope model --no-peak --out "$REC"
echo "benchmark done"
