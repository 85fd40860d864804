#!/usr/bin/env bash
# Issue 13, the released model: the recipe chosen on the held-out sequence 0006R0 (stage 1's:
# sqrt-median-frequency weights, colour jitter 0.3, OS16 at 256x256 crops), trained from scratch on ALL
# of CamVid train (0006R0 added: a third drive) for a fixed number of epochs with no selection (the
# last epoch is released); val is measured once at the end, reported and never selected on. Then
# output stride 8 (the deployed model) at 320x320 crops, as in stage 2, and the release.
#   EPOCHS_A  stage A epochs (default 70: ~6.4k steps, against stage 1's 5.7k on 266 images)
#   EPOCHS_B  stage B epochs (default 3)
#   THREADS   torch threads (default 2)
# Re-running it after a stop continues stage A from runs/rel/os16/last.pt (exact resume) and skips it
# once it has all its epochs.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=benchmarks/reference
SPLITS="--train-split train --val-split val --val-every 1000"
EPOCHS_A=${EPOCHS_A:-70}
# stage A: output stride 16, all of train, from scratch (stage 1's script and recipe, other splits)
DONE_A=$(.venv/bin/python -c "import json,sys; print(len(json.load(open(sys.argv[1]))))" runs/rel/os16/history.json \
  2>/dev/null || echo 0)
if [ "$DONE_A" = 0 ]; then
  $HERE/train_heldout_stage1.sh $SPLITS --out runs/rel/os16 --epochs $EPOCHS_A --seed 2 --no-progress
elif [ "$DONE_A" -lt "$EPOCHS_A" ]; then
  $HERE/train_heldout_stage1.sh $SPLITS --out runs/rel/os16 --epochs $EPOCHS_A --seed 2 --no-progress \
    --resume runs/rel/os16/last.pt
fi
# stage B: output stride 8 at 320x320 crops from stage A's last epoch (stage 2's script and recipe)
$HERE/train_heldout_stage2.sh $SPLITS --out runs/rel/os8 --init runs/rel/os16/last.pt --epochs ${EPOCHS_B:-3} \
  --seed 3 --no-progress
# release: FP16 storage, aux head dropped
.venv/bin/python -m pspnet_deploy.checkpoint release runs/rel/os8/last.pt models/pspnet_r18_camvid.pt
