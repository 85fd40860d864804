#!/usr/bin/env bash
# Issue 13, the released model: the recipe chosen on the held-out sequence 0006R0, continued from the
# held-out run's selected checkpoint on ALL of CamVid train (0006R0 added: a third drive), for a fixed
# number of epochs with no selection (the last epoch is released); val is measured once at the end,
# reported and never selected on. Then output stride 8 at 320x320 crops, as in stage 2, and the release.
#   INIT    the held-out run's best.pt (default runs/ref3/os16/best.pt: stage 1, the best held-out recipe so far)
#   RECIPE  the options the held-out comparison chose (default: stage 1's)
set -euo pipefail
cd "$(dirname "$0")/../.."
T=${PSPNET_TRAIN:-.venv/bin/pspnet-train}
INIT=${INIT:-runs/ref3/os16/best.pt}
RECIPE=${RECIPE:---class-weights sqrt-median-freq --color-jitter 0.3}
COMMON="--data ../shared/data/camvid --train-split train --val-split val --val-every 1000 --backbone resnet18
  --batch-size 4 --head-lr-mult 1 --workers 1 --threads ${THREADS:-2} $RECIPE"
# stage A: output stride 16, all of train, restarted from the held-out model
nice -n 5 $T $COMMON --out runs/rel/os16 --init "$INIT" --output-stride 16 --epochs ${EPOCHS_A:-15} \
  --crop 256 256 --lr 0.01 --warmup-iters 50 --seed 2
# stage B: output stride 8 (the deployed model) at 320x320 crops
nice -n 5 $T $COMMON --out runs/rel/os8 --init runs/rel/os16/last.pt --output-stride 8 --epochs ${EPOCHS_B:-3} \
  --crop 320 320 --lr 0.004 --warmup-iters 20 --seed 3
# release: FP16 storage, aux head dropped
.venv/bin/python -m pspnet_deploy.checkpoint release runs/rel/os8/last.pt models/pspnet_r18_camvid.pt
