#!/usr/bin/env bash
# Issue 13 stage 1: OS16 from scratch, CamVid train without sequence 0006R0; selection on 0006R0.
cd "$(dirname "$0")/../.."
exec nice -n 5 ${PSPNET_TRAIN:-.venv/bin/pspnet-train} --data ../shared/data/camvid --train-split 'train!0006R0' --val-split 'train@0006R0' \
  --out runs/ref3/os16 --backbone resnet18 --output-stride 16 --epochs 100 --batch-size 4 --crop 256 256 \
  --lr 0.02 --head-lr-mult 1 --warmup-iters 200 --class-weights sqrt-median-freq --color-jitter 0.3 \
  --val-every 5 --workers 1 --threads ${THREADS:-2} --seed 0 "$@"
