#!/usr/bin/env bash
# The fast path's files for the e2e record: the reference model exported with uint8 pixels in and labels out
# at 360x480 (parity gate on 4 val images), INT8 by calibration (64 train images, default method), OpenVINO IR.
# Writes export/e2e/* (not tracked).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
CKPT=${CKPT:-models/pspnet_r18_camvid.pt}
DATA=${DATA:-../shared/data/camvid}
EXP=${EXP:-export/e2e}
REC=benchmarks/e2e-360x480
mkdir -p "$EXP"
[ -f "$EXP/model.u8.fp32.onnx" ] || $PY -m pspnet_deploy.cli.export "$CKPT" --onnx "$EXP/model.u8.fp32.onnx" \
    --input-size 360 480 --input-kind uint8 --output-kind labels --verify-data "$DATA" --verify-split val \
    --num-verify 4 --threads 2 --json "$REC/export_u8.json" --quiet
[ -f "$EXP/model.u8.int8.onnx" ] || $PY -m pspnet_deploy.cli.calibrate "$EXP/model.u8.fp32.onnx" --data "$DATA" \
    --split train --num-images 64 --threads 2 --no-progress --output "$EXP/model.u8.int8.onnx" \
    --json "$REC/calibration_u8_int8.json"
[ -f "$EXP/model.u8.int8.xml" ] || $PY -m pspnet_deploy.cli.build_engine "$EXP/model.u8.int8.onnx" --backend openvino
cp "$EXP/model.u8.int8.xml.json" "$REC/"
