"""pspnet-train: train PSPNet with the paper's recipe."""
from __future__ import annotations

import json
import sys

from ..machine import AUTO_ON_OFF
from ..train_config import BACKBONES, CLASS_WEIGHTS, TrainConfig
from .common import make_parser, run

PROG = "pspnet-train"


def build_parser():
    d = TrainConfig()
    p = make_parser(PROG, "Train PSPNet (SGD, poly lr, aux loss 0.4, paper augmentations). "
                          "Multi-process: torchrun --nproc_per_node N -m pspnet_deploy.cli.train ...")
    p.add_argument("--data", default=d.data, help="dataset folder (CamVid, Cityscapes, ADE20K, VOC, plain folder) or synthetic[:SEED]")
    p.add_argument("--train-split", default=d.train_split,
                   help="split or split expression: train+val joins, train!0006R0 drops files starting with 0006R0")
    p.add_argument("--val-split", default=d.val_split,
                   help="selection split ('' to skip validation), e.g. train@0006R0 to select on a held-out sequence")
    p.add_argument("--out", default=d.out, help="folder for last.pt, best.pt, history.json")
    p.add_argument("--backbone", default=d.backbone, choices=BACKBONES)
    p.add_argument("--output-stride", type=int, default=d.output_stride, choices=[8, 16])
    p.add_argument("--deep-stem", action="store_true")
    p.add_argument("--bins", type=int, nargs="+", default=d.bins)
    p.add_argument("--head-channels", type=int, default=d.head_channels)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per process")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--head-lr-mult", type=float, default=d.head_lr_mult, help="lr multiplier of the new layers (PPM, heads)")
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--power", type=float, default=d.power, help="poly lr power")
    p.add_argument("--warmup-iters", type=int, default=d.warmup_iters)
    p.add_argument("--aux-weight", type=float, default=d.aux_weight)
    p.add_argument("--crop", type=int, nargs=2, default=d.crop, metavar=("H", "W"))
    p.add_argument("--input-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="inference size stored in the checkpoint (default: the dataset's image size)")
    p.add_argument("--scale", type=float, nargs=2, default=d.scale, metavar=("MIN", "MAX"))
    p.add_argument("--rotate", type=float, default=d.rotate, help="max rotation in degrees")
    p.add_argument("--blur-prob", type=float, default=d.blur_prob)
    p.add_argument("--color-jitter", type=float, default=d.color_jitter,
                   help="brightness/contrast/saturation jitter strength in [0, 1) (0 = off)")
    p.add_argument("--cutmix", type=float, default=d.cutmix, metavar="P",
                   help="probability per batch of pasting a random box (25-50 %% of the crop, labels with it) of each "
                        "image onto the next (CutMix for segmentation); 0: off")
    p.add_argument("--class-weights", default=d.class_weights, choices=CLASS_WEIGHTS,
                   help="sqrt-median-freq: the square root of SegNet's median-frequency weights (softer)")
    p.add_argument("--val-every", type=int, default=d.val_every, help="validate every N epochs (and the last)")
    p.add_argument("--val-limit", type=int, default=None, help="validate on the first N images only")
    p.add_argument("--max-steps-per-epoch", type=int, default=None)
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--init", default=None, help="start from this checkpoint's weights and architecture (a pspnet-train or pspnet-convert "
                        "checkpoint; --backbone/--deep-stem/--bins/--head-channels are taken from it, --output-stride "
                        "still applies, classifiers are re-initialised when the class count differs)")
    p.add_argument("--backbone-weights", default=None, metavar="FILE",
                   help="start the backbone from ImageNet-pretrained ResNet weights (a torchvision or timm state "
                        "dict, loaded without running code); the paper's recipe, with --head-lr-mult 10")
    p.add_argument("--resume", default=None, help="continue exactly from a last.pt")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda")
    p.add_argument("--amp", default=d.amp, choices=AUTO_ON_OFF,
                   help="mixed precision: FP16 autocast on CUDA; on a CPU, auto measures FP32 vs BF16 autocast for "
                        "about a second and uses BF16 only if it is at least 1.10x faster (recorded in the checkpoint), "
                        "on: BF16 (refused without AVX-512 BF16 / AMX), off: FP32")
    p.add_argument("--no-progress", action="store_true")
    return p


def declare_files(cfg) -> None:
    """The run's file plan: the starting weights and the dataset are inputs, ``OUT/best.pt``,
    ``last.pt`` and ``history.json`` outputs (a --resume from OUT's own checkpoints continues the
    run that wrote them, so those are rewritten by design)."""
    import os

    from ..runfiles import RunFiles

    files = RunFiles().read_model(cfg.init, "--init checkpoint").read(cfg.backbone_weights, "--backbone-weights file")
    if cfg.resume is not None:
        out, res = os.path.realpath(cfg.out), os.path.realpath(cfg.resume)
        if not res.startswith(out + os.sep):
            files.read_model(cfg.resume, "--resume checkpoint")
    files.read_dir(cfg.data, "--data dataset")
    files.write_dir(cfg.out, "--out folder", files=("best.pt", "last.pt", "history.json")).check()


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    cfg = TrainConfig(data=a.data, train_split=a.train_split, val_split=a.val_split or None, out=a.out,
                      backbone=a.backbone, output_stride=a.output_stride, deep_stem=a.deep_stem, bins=a.bins,
                      head_channels=a.head_channels, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
                      head_lr_mult=a.head_lr_mult, momentum=a.momentum, weight_decay=a.weight_decay, power=a.power,
                      warmup_iters=a.warmup_iters, aux_weight=a.aux_weight, crop=list(a.crop),
                      input_size=list(a.input_size) if a.input_size else None, scale=list(a.scale), rotate=a.rotate,
                      blur_prob=a.blur_prob, color_jitter=a.color_jitter, cutmix=a.cutmix,
                      class_weights=a.class_weights, val_every=a.val_every,
                      val_limit=a.val_limit, max_steps_per_epoch=a.max_steps_per_epoch, workers=a.workers,
                      threads=a.threads, seed=a.seed, init=a.init, backbone_weights=a.backbone_weights, resume=a.resume,
                      device=a.device, amp=a.amp, progress=not a.no_progress)
    cfg.validate()  # before torch is imported or anything allocated
    declare_files(cfg)
    from ..train import train

    res = train(cfg)
    if res.get("best_val_miou") is not None:
        print(f"best val mIoU {100 * res['best_val_miou']:.2f} -> {res['out']}/best.pt")
    print(json.dumps({k: v for k, v in res.items() if k != "history"}))
    return 0


def entry() -> None:
    sys.exit(run(PROG, main))


if __name__ == "__main__":
    entry()
