#!/usr/bin/env bash
# Issue 13 stage 2: output-stride-8 fine-tune of stage 1's held-out-selected best.pt at larger crops;
# selection on the held-out sequence 0006R0 again. BF16 autocast where the CPU has it (--amp auto).
cd "$(dirname "$0")/../.."
exec nice -n 5 ${PSPNET_TRAIN:-.venv/bin/pspnet-train} --data ../shared/data/camvid --train-split 'train!0006R0' --val-split 'train@0006R0' \
  --out runs/ref3/os8 --init runs/ref3/os16/best.pt --backbone resnet18 --output-stride 8 --epochs 5 --batch-size 4 \
  --crop 320 320 --lr 0.004 --head-lr-mult 1 --warmup-iters 20 --class-weights sqrt-median-freq --color-jitter 0.3 \
  --val-every 1 --workers 1 --threads ${THREADS:-2} --seed 1 "$@"
