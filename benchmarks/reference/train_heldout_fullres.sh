#!/usr/bin/env bash
# Issue 13 experiment: fine-tune the held-out stage-1 model at the deployed resolution (whole 360x480
# frames, scale 0.75-1.25, output stride 16), the condition under which pspnet-qat's fine-tune raised
# the old model on 0006R0; selection on the held-out sequence 0006R0, as in stage 1.
cd "$(dirname "$0")/../.."
exec nice -n 5 ${PSPNET_TRAIN:-.venv/bin/pspnet-train} --data ../shared/data/camvid --train-split 'train!0006R0' \
  --val-split 'train@0006R0' --out runs/ref3/fullres --init runs/ref3/os16/best.pt --backbone resnet18 --output-stride 16 \
  --epochs 5 --batch-size 4 --crop 360 480 --scale 0.75 1.25 --lr 0.002 --head-lr-mult 1 --warmup-iters 10 \
  --class-weights sqrt-median-freq --color-jitter 0.3 --val-every 1 --workers 1 --threads ${THREADS:-2} --seed 4 "$@"
