#!/usr/bin/env bash
# The reference model's recorded figures, from the committed checkpoint, in one run (2 CPU cores).
# Writes export/ref/* (ONNX files, not tracked) and benchmarks/reference/* (tracked records).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=.venv/bin
CKPT=${CKPT:-models/pspnet_r18_camvid.pt}
DATA=${DATA:-../shared/data/camvid}
EXP=${EXP:-export/ref}
REC=benchmarks/reference
NV=${NUM_VERIFY:-20}
mkdir -p "$EXP" "$REC"

# 1. PyTorch accuracy of the committed checkpoint, CamVid val, 360x480 single scale
$BIN/pspnet-eval "$CKPT" --data "$DATA" --split val --threads 2 --no-progress --json "$REC/eval_val_torch.json"
# ... and on the sequence held out of training and used for selection (CamVid train 0006R0, 101 frames),
# with a picture of four of its predictions (image, prediction, ground truth, errors)
$BIN/pspnet-eval "$CKPT" --data "$DATA" --split 'train@0006R0' --threads 2 --no-progress \
    --json "$REC/eval_heldout_0006R0_torch.json"
$BIN/python benchmarks/prediction_grid.py "$CKPT" --data "$DATA" --split 'train@0006R0' --images 4 --threads 2 \
    --out "$REC/predictions_heldout_0006R0.png"

# 2. FP32 and FP16 ONNX with the parity gate on CamVid val images
$BIN/pspnet-export "$CKPT" --onnx "$EXP/model.fp32.onnx" --input-size 360 480 --verify-data "$DATA" \
    --verify-split val --num-verify "$NV" --threads 2 --json "$REC/export_fp32_360x480.json"
$BIN/pspnet-export "$CKPT" --onnx "$EXP/model.fp16.onnx" --fp16 --input-size 360 480 --verify-data "$DATA" \
    --verify-split val --num-verify "$NV" --threads 2 --json "$REC/export_fp16_360x480.json"
# parity at a size whose feature map the bins do not divide (512x1024 -> 64x128: bins 3 and 6)
$BIN/pspnet-export "$CKPT" --onnx "$EXP/model.fp32.512x1024.onnx" --input-size 512 1024 --verify-data "$DATA" \
    --verify-split val --num-verify 4 --threads 2 --json "$REC/export_fp32_512x1024.json"
$BIN/pspnet-export "$CKPT" --onnx "$EXP/model.fp16.512x1024.onnx" --fp16 --input-size 512 1024 --verify-data "$DATA" \
    --verify-split val --num-verify 4 --threads 2 --json "$REC/export_fp16_512x1024.json"
rm -f "$EXP"/model.fp*.512x1024.onnx

# 3. INT8: calibrate on train (never val), every method tried, budget 0.5 mIoU points on val
$BIN/pspnet-calibrate "$EXP/model.fp32.onnx" --data "$DATA" --split train --num-images 100 --method auto \
    --max-miou-drop 0.5 --eval-split val --threads 2 --no-progress --output "$EXP/model.int8.onnx" \
    --json "$REC/calibration_int8.json" || echo "calibration: budget not met (see $REC/calibration_int8.json)"
# the same ranges with ONNX Runtime's Q/DQ placement (what its CPU kernels run in INT8)
$BIN/pspnet-calibrate "$EXP/model.fp32.onnx" --calib-table "$EXP/model.int8.calib.json" --placement ort \
    --threads 2 --no-progress --output "$EXP/model.int8-ort.onnx" --json "$REC/calibration_int8_ort.json"
rm -f "$REC"/model.int8.sensitivity.*  # a report of an earlier model would read as this one's
cp "$EXP"/model.int8.sensitivity.* "$REC"/ 2>/dev/null || true  # only when the budget needed a search

# 4. one benchmark run, side by side: latency (model and end-to-end scopes) and val accuracy
$BIN/pspnet-bench --model "$CKPT:torch-fp32" --model "$EXP/model.fp32.onnx:ort-fp32" \
    --model "$EXP/model.fp16.onnx:ort-fp16" --model "$EXP/model.int8.onnx:ort-int8-trtqdq" \
    --model "$EXP/model.int8-ort.onnx:ort-int8" --batch 1 --warmup 5 --iterations ${ITERS:-30} --threads 2 \
    --scope both --data "$DATA" --split val --out "$REC/bench-cpu-360x480"
echo "reference run done"
