#!/usr/bin/env bash
# OpenVINO on this CPU next to ONNX Runtime, one run: the reference model at 1x3x360x480, batch 1,
# 2 threads; then the OpenVINO throughput curve (images/s against batch and streams).
# Writes export/ov/* (ONNX and IR files, not tracked) and benchmarks/openvino-cpu-360x480/* (tracked).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
CKPT=${CKPT:-models/pspnet_r18_camvid.pt}
DATA=${DATA:-../shared/data/camvid}
EXP=${EXP:-export/ov}
REC=benchmarks/openvino-cpu-360x480
mkdir -p "$EXP" "$REC"

# 1. FP32 ONNX (parity gate on 4 val images) and INT8 Q/DQ: the default range method (mse, chosen on the
#    held-out sequence: calibration/heldout-r18) on 100 train images, 0.5 mIoU-point budget on val; then the
#    same ranges with ONNX Runtime's Q/DQ placement (see benchmarks/reference/run_reference.sh)
[ -f "$EXP/model.fp32.onnx" ] || $BIN/pspnet-export "$CKPT" --onnx "$EXP/model.fp32.onnx" --input-size 360 480 \
    --verify-data "$DATA" --verify-split val --num-verify 4 --threads 2 --json "$EXP/export_fp32.json"
[ -f "$EXP/model.int8.onnx" ] || $BIN/pspnet-calibrate "$EXP/model.fp32.onnx" --data "$DATA" --split train \
    --num-images 100 --max-miou-drop 0.5 --eval-split val --threads 2 --no-progress \
    --output "$EXP/model.int8.onnx" --json "$REC/calibration_int8.json" || echo "calibration: budget not met"
[ -f "$EXP/model.int8-ort.onnx" ] || $BIN/pspnet-calibrate "$EXP/model.fp32.onnx" \
    --calib-table "$EXP/model.int8.calib.json" --placement ort --threads 2 --no-progress \
    --output "$EXP/model.int8-ort.onnx" --json "$REC/calibration_int8_ort.json"

# 2. OpenVINO IRs: FP32, BF16 (the FP32 IR with the BF16 inference precision), INT8 from the TensorRT Q/DQ file as it is
$BIN/pspnet-build-engine "$EXP/model.fp32.onnx" --backend openvino
$BIN/pspnet-build-engine "$EXP/model.fp32.onnx" --backend openvino --bf16
$BIN/pspnet-build-engine "$EXP/model.int8.onnx" --backend openvino
cp "$EXP"/model.*.xml.json "$REC"/

# 3. one benchmark run, all rows side by side (latency in both scopes; accuracy and agreement with ORT FP32 on the
#    first LIMIT CamVid val images: full-val INT8 mIoU is in calibration_int8.json; LIMIT=101 for all of val)
$BIN/pspnet-bench --model "$EXP/model.fp32.onnx:ort-fp32" --model "$EXP/model.int8-ort.onnx:ort-int8" \
    --model "$EXP/model.int8.onnx:ort-int8-trtqdq" --model "$EXP/model.fp32.xml:ov-fp32" \
    --model "$EXP/model.bf16.xml:ov-bf16" --model "$EXP/model.int8.xml:ov-int8-trtqdq" \
    --batch 1 --warmup 3 --iterations ${ITERS:-20} --threads 2 --scope both --data "$DATA" --split val --limit ${LIMIT:-25} \
    --out "$REC"

# 4. throughput: images/s against batch (1, 2, 4) in latency mode and in throughput mode with 2 streams
$BIN/python "$REC/throughput.py" "$EXP/model.fp32.xml" "$EXP/model.bf16.xml" "$EXP/model.int8.xml" --threads 2 \
    --out "$REC"
echo "openvino benchmark done"
