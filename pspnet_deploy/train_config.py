"""The training configuration and its checks, without torch: ``pspnet-train`` refuses bad arguments
before importing it or allocating anything."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from .errors import UserError
from .geometry import min_input_size
from .machine import AUTO_ON_OFF
from .utils import check_device, check_input_size

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
#: loss weighting per class (train.class_weights computes them)
CLASS_WEIGHTS = ("none", "median-freq", "sqrt-median-freq")


def positive(name: str, v, allow_none: bool = False) -> None:
    """``--name`` must be a whole number >= 1 (or None when ``allow_none``)."""
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise UserError(f"--{name} must be a positive whole number, got {v!r}")


def number(name: str, v, lo=None, hi=None, lo_open: bool = False) -> None:
    """``--name`` must be a finite number in [lo, hi] (``lo_open``: > lo)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise UserError(f"--{name} must be a finite number, got {v!r}")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise UserError(f"--{name} must be {'>' if lo_open else '>='} {lo:g}, got {v:g}")
    if hi is not None and v > hi:
        raise UserError(f"--{name} must be <= {hi:g}, got {v:g}")


def workers(v) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise UserError(f"--workers must be >= 0 (0 loads data in the main process), got {v!r}")


def check_augmentation(cfg) -> None:
    """The augmentation options train and QAT share: --scale MIN MAX, --rotate, --blur-prob."""
    if len(cfg.scale) != 2:
        raise UserError(f"--scale takes MIN MAX, got {list(cfg.scale)}")
    for v in cfg.scale:
        number("scale", v, lo=0, lo_open=True, hi=16)
    if cfg.scale[0] > cfg.scale[1]:
        raise UserError(f"--scale takes MIN MAX with MIN <= MAX, got {cfg.scale[0]:g} {cfg.scale[1]:g}")
    number("rotate", cfg.rotate, lo=0, hi=180)
    number("blur-prob", cfg.blur_prob, lo=0, hi=1)


@dataclass
class TrainConfig:
    data: str = "synthetic"
    train_split: str = "train"
    val_split: str = "val"
    out: str = "runs/train"
    backbone: str = "resnet18"
    output_stride: int = 8
    deep_stem: bool = False
    bins: list = field(default_factory=lambda: [1, 2, 3, 6])
    head_channels: int = 512
    epochs: int = 10
    batch_size: int = 8
    lr: float = 0.01
    head_lr_mult: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    power: float = 0.9
    warmup_iters: int = 0
    aux_weight: float = 0.4
    crop: list = field(default_factory=lambda: [256, 256])
    input_size: list | None = None
    scale: list = field(default_factory=lambda: [0.5, 2.0])
    rotate: float = 10.0
    blur_prob: float = 0.5
    color_jitter: float = 0.0
    cutmix: float = 0.0
    class_weights: str = "none"
    val_every: int = 1
    val_limit: int | None = None
    max_steps_per_epoch: int | None = None
    workers: int = 1
    threads: int | None = None
    seed: int = 0
    init: str | None = None
    backbone_weights: str | None = None
    resume: str | None = None
    amp: str = "auto"
    device: str = "auto"
    progress: bool = True

    def validate(self) -> "TrainConfig":
        """Every argument in range, in one place; UserError names the option and the rule."""
        if self.backbone not in BACKBONES:
            raise UserError(f"--backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}")
        if self.output_stride not in (8, 16):
            raise UserError(f"--output-stride must be 8 or 16, got {self.output_stride}")
        if not self.bins or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.bins):
            raise UserError(f"--bins must be positive whole numbers (e.g. 1 2 3 6), got {list(self.bins or [])}")
        if len(set(self.bins)) != len(self.bins):
            raise UserError(f"--bins must not repeat a bin, got {list(self.bins)}")
        positive("head-channels", self.head_channels)
        if self.head_channels < len(self.bins):
            raise UserError(f"--head-channels must be at least the number of bins ({len(self.bins)}), got "
                            f"{self.head_channels}")
        positive("epochs", self.epochs)
        positive("batch-size", self.batch_size)
        number("lr", self.lr, lo=0, lo_open=True)
        number("head-lr-mult", self.head_lr_mult, lo=0)
        number("momentum", self.momentum, lo=0, hi=1)
        number("weight-decay", self.weight_decay, lo=0)
        number("power", self.power, lo=0)
        number("aux-weight", self.aux_weight, lo=0)
        if isinstance(self.warmup_iters, bool) or not isinstance(self.warmup_iters, int) or self.warmup_iters < 0:
            raise UserError(f"--warmup-iters must be >= 0, got {self.warmup_iters!r}")
        check_augmentation(self)
        number("color-jitter", self.color_jitter, lo=0)
        if self.color_jitter >= 1:
            raise UserError(f"--color-jitter must be in [0, 1), got {self.color_jitter:g}")
        number("cutmix", self.cutmix, lo=0, hi=1)
        if self.class_weights not in CLASS_WEIGHTS:
            raise UserError(f"--class-weights must be one of {', '.join(CLASS_WEIGHTS)}, got {self.class_weights!r}")
        positive("val-every", self.val_every)
        positive("val-limit", self.val_limit, allow_none=True)
        positive("max-steps-per-epoch", self.max_steps_per_epoch, allow_none=True)
        workers(self.workers)
        positive("threads", self.threads, allow_none=True)
        if self.backbone_weights is not None:
            if self.init or self.resume:
                raise UserError("--backbone-weights starts a new model from ImageNet weights; it cannot be combined "
                                "with --init or --resume (their checkpoints already hold a backbone)")
            if not os.path.isfile(self.backbone_weights):
                raise UserError(f"{self.backbone_weights}: --backbone-weights file not found")
        if self.amp not in AUTO_ON_OFF:
            raise UserError(f"--amp must be auto, on or off, got {self.amp!r}")
        self.device = check_device(self.device)
        need = min_input_size(self.bins, self.output_stride)
        check_input_size(self.crop, "--crop", batch=self.batch_size, training=True, min_side=need)
        if self.input_size is not None:
            check_input_size(self.input_size, "--input-size", min_side=need)
        return self


@dataclass
class QATConfig:
    """pspnet-qat's fine-tuning options (the export size and the start ranges are run_qat's arguments)."""

    data: str = "synthetic"
    split: str = "train"
    epochs: int = 1
    batch_size: int = 4
    lr: float = 1e-4
    range_lr: float | None = None  # default: lr
    momentum: float = 0.9
    weight_decay: float = 1e-4
    power: float = 0.9
    crop: list | None = None  # default: the export input size
    scale: list = field(default_factory=lambda: [0.75, 1.5])
    rotate: float = 5.0
    blur_prob: float = 0.0
    max_steps_per_epoch: int | None = None
    seed: int = 0
    threads: int | None = None
    bf16: str = "auto"  # auto | on | off
    workers: int = 0
    stop_after_epochs: int | None = None  # end this invocation after N more epochs (state saved; --resume later)
    progress: bool = True

    def validate(self) -> "QATConfig":
        """The same rules as :meth:`TrainConfig.validate` for the options the two share, in one place
        (sizes are checked against the checkpoint by the caller: :meth:`pspnet_deploy.card.ModelCard.check_size`)."""
        positive("epochs", self.epochs)
        positive("batch-size", self.batch_size)
        number("lr", self.lr, lo=0, lo_open=True)
        if self.range_lr is not None:
            number("range-lr", self.range_lr, lo=0, lo_open=True)
        number("momentum", self.momentum, lo=0, hi=1)
        number("weight-decay", self.weight_decay, lo=0)
        number("power", self.power, lo=0)
        check_augmentation(self)
        positive("max-steps-per-epoch", self.max_steps_per_epoch, allow_none=True)
        positive("stop-after-epochs", self.stop_after_epochs, allow_none=True)
        positive("threads", self.threads, allow_none=True)
        workers(self.workers)
        if self.bf16 not in AUTO_ON_OFF:
            raise UserError(f"--bf16 must be auto, on or off, got {self.bf16!r}")
        return self
