"""Training with the paper's recipe: SGD (momentum 0.9, wd 1e-4), poly lr (power 0.9) with a 10x
rate on the new layers, loss = main + 0.4 * aux (ignore index excluded), mixed precision on CUDA,
validation mIoU, best/last checkpoints, exact resume, and multi-process training under torchrun
(gloo on CPU, NCCL on GPUs).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from .checkpoint import CheckpointSet, fit_state_dict, load_checkpoint, save_checkpoint
from .data import Preprocess, open_dataset
from .data.transforms import TrainTransform
from .errors import UserError
from .evaluate import evaluate
from .machine import bf16_decision
from .model import PSPNet, min_input_size
from .runners.torch_runner import TorchRunner
from .train_config import CLASS_WEIGHTS, TrainConfig  # noqa: F401 - TrainConfig re-exported
from .utils import check_output_dir, nonfinite_loss_error, torch_device, versions


class SeededAugment(torch.utils.data.Dataset):
    """Applies the training transform with randomness seeded by (seed, epoch, index): identical
    across worker counts and after a resume."""

    def __init__(self, dataset, transform: TrainTransform, seed: int):
        self.dataset, self.transform, self.seed, self.epoch = dataset, transform, seed, 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        img, mask = self.dataset.load(i)
        self.transform.reseed(np.random.SeedSequence([self.seed, self.epoch, i]).generate_state(1)[0])
        x, y = self.transform(img, mask)
        return torch.from_numpy(x), torch.from_numpy(y)


def _worker_init(_):
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def median_frequency_weights(dataset, num_classes: int, ignore_index: int) -> torch.Tensor:
    """SegNet's median frequency balancing: w_c = median(freq) / freq_c over the training masks."""
    counts = np.zeros(num_classes, np.int64)
    present = np.zeros(num_classes, np.int64)
    for i in range(len(dataset)):
        m = dataset.load_mask(i)
        m = m[m != ignore_index]
        c = np.bincount(m.ravel(), minlength=num_classes)[:num_classes]
        counts += c
        present += (c > 0) * m.size
    freq = counts / np.maximum(present, 1)
    w = np.where(freq > 0, np.median(freq[freq > 0]) / np.maximum(freq, 1e-12), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def class_weights(dataset, mode: str) -> torch.Tensor | None:
    """Loss weights per class: ``none``; ``median-freq`` (SegNet's median frequency balancing);
    ``sqrt-median-freq``, its square root: rare classes still count more, frequent ones (Building,
    Road) are traded away less."""
    if mode not in CLASS_WEIGHTS:
        raise UserError(f"--class-weights must be one of {', '.join(CLASS_WEIGHTS)}, got {mode!r}")
    if mode == "none":
        return None
    w = median_frequency_weights(dataset, dataset.info.num_classes, dataset.info.ignore_index)
    return w.sqrt() if mode == "sqrt-median-freq" else w


def cutmix(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator, prob: float):
    """CutMix for segmentation (Yun et al., 2019; French et al., 2020): with probability ``prob``, one
    random box covering 25-50 % of the crop is copied, pixels and labels together, from each image of
    the batch onto the next one (a roll by one), so every label still describes its pixel. Returns new
    tensors; the inputs are not changed."""
    if prob <= 0 or x.shape[0] < 2 or rng.random() >= prob:
        return x, y
    h, w = y.shape[-2:]
    side = math.sqrt(rng.uniform(0.25, 0.5))
    bh, bw = max(1, round(h * side)), max(1, round(w * side))
    top, left = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
    x, y = x.clone(), y.clone()
    x[..., top:top + bh, left:left + bw] = x.roll(1, 0)[..., top:top + bh, left:left + bw]
    y[..., top:top + bh, left:left + bw] = y.roll(1, 0)[..., top:top + bh, left:left + bw]
    return x, y


def poly_lr(base: float, it: int, max_it: int, power: float, warmup: int = 0) -> float:
    if warmup and it < warmup:
        return base * (it + 1) / warmup
    return base * (1 - min(it, max_it - 1) / max_it) ** power


def _setup_distributed(device: str):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def _rng_state(device: torch.device) -> dict:
    st = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def _architecture(cfg: TrainConfig, num_classes: int, init_payload: dict | None) -> dict:
    """PSPNet constructor arguments: from the options, or with ``--init`` the init checkpoint's
    architecture (every model option, e.g. of a converted mmseg/semseg model) with this dataset's
    class count and ``cfg.output_stride`` (changing it re-derives the stage strides/dilations)."""
    if init_payload is None:
        return dict(num_classes=num_classes, backbone=cfg.backbone, output_stride=cfg.output_stride,
                    deep_stem=cfg.deep_stem, bins=list(cfg.bins), head_channels=cfg.head_channels)
    arch = dict(init_payload["meta"].get("model") or {})
    if not arch:
        raise UserError(f"{cfg.init}: checkpoint has no model description to start from")
    arch.pop("aux", None)
    arch["num_classes"] = num_classes
    if int(arch.get("output_stride", 8)) != int(cfg.output_stride):
        arch["output_stride"] = int(cfg.output_stride)
        arch.pop("strides", None)
        arch.pop("dilations", None)
    return arch


def _mismatch_hint(meta: dict, model, info, option: str) -> str:
    """Which model or dataset options differ between a checkpoint and this run (for {option})."""
    theirs = meta.get("model") if isinstance(meta.get("model"), dict) else {}
    ours = dict(model.config)
    diff = [f"{k} {theirs[k]} vs {ours[k]}" for k in ours if k in theirs and theirs[k] != ours[k]]
    classes = meta.get("classes")
    if isinstance(classes, list) and list(classes) != list(info.classes):
        diff.append(f"{len(classes)} classes vs {len(info.classes)} in this dataset")
    if diff:
        return f"the checkpoint was made with other options ({'; '.join(diff)}); {option} needs the same ones"
    return f"{option} needs a checkpoint of the same model"


def autocast_choice(device: torch.device, amp: str, probe: dict | None = None) -> tuple[torch.dtype | None, dict]:
    """The autocast precision of training steps (None for FP32) and the record of how it was
    chosen. CUDA: FP16 (with loss scaling) unless ``amp == "off"``. CPU: ``auto`` measures FP32
    against BF16 autocast here and takes BF16 only when it is faster by a margin; ``on`` is refused
    on a CPU without native BF16 (:func:`pspnet_deploy.machine.bf16_decision`; ``probe``: a
    measurement to decide from instead)."""
    if device.type == "cuda":
        dtype = None if amp == "off" else torch.float16
        return dtype, {"mode": amp, "device": "cuda", "dtype": "float16" if dtype else None,
                       "decided_by": amp, "measured": None, "reason": f"--amp {amp} on CUDA: "
                       + ("FP16 with loss scaling" if dtype else "FP32")}
    decision = bf16_decision(amp, "--amp", probe=probe)
    dtype = torch.bfloat16 if decision["use_bf16"] else None
    return dtype, {**decision, "device": device.type, "dtype": "bfloat16" if dtype else None}


def _recorded_amp_probe(cfg: TrainConfig, device: torch.device) -> dict | None:
    """A resumed run decides ``--amp auto`` from the measurement its checkpoint recorded, so it
    continues in the precision it started with (None: measure here)."""
    if not cfg.resume or device.type != "cpu" or cfg.amp != "auto":
        return None
    from .card import read_card

    try:
        choice = read_card(cfg.resume, kind="torch").meta.get("autocast_choice") or {}
    except UserError:
        return None  # the resume checkpoint is checked (and refused) below
    return choice.get("measured") if isinstance(choice, dict) else None


def autocast_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """The dtype of :func:`autocast_choice`."""
    return autocast_choice(device, amp)[0]


@dataclass
class _Place:
    """Where this process trains: its device, its rank among ``world`` processes, the autocast dtype."""
    device: torch.device
    rank: int
    world: int
    local_rank: int
    amp_dtype: torch.dtype | None
    amp_record: dict  # how --amp chose amp_dtype (measured for auto on a CPU)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def use_amp(self) -> bool:  # FP16 needs loss scaling; BF16 has FP32's exponent range and does not
        return self.amp_dtype == torch.float16


def _place(cfg: TrainConfig) -> _Place:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dev = torch_device(cfg.device)  # UserError when CUDA is asked for but not usable
    want = dev.type if dev.index is None else str(dev)
    rank, world, local_rank = _setup_distributed(want)
    device = torch.device(f"cuda:{local_rank}") if want == "cuda" else dev
    if device.type == "cuda":
        torch.cuda.set_device(device)
    amp_dtype, amp_record = autocast_choice(device, cfg.amp, probe=_recorded_amp_probe(cfg, device))
    if world > 1 and device.type == "cpu" and cfg.amp == "auto":  # every rank takes rank 0's measured choice
        shared = [amp_record]
        dist.broadcast_object_list(shared, src=0)
        amp_record = shared[0]
        amp_dtype = torch.bfloat16 if amp_record["use_bf16"] else None
    if rank == 0 and cfg.progress:
        print(f"autocast: {amp_record['reason']}", flush=True)
    return _Place(device, rank, world, local_rank, amp_dtype, amp_record)


def _open_splits(cfg: TrainConfig):
    """The training and validation datasets; fills in ``cfg.input_size`` from the data when unset."""
    train_ds = open_dataset(cfg.data, cfg.train_split)
    val_ds = open_dataset(cfg.data, cfg.val_split) if cfg.val_split else None
    if len(train_ds) == 0:
        raise UserError(f"{cfg.data}: training split {cfg.train_split!r} has no images")
    if cfg.input_size is None:
        default = getattr(train_ds, "default_input_size", None)
        if default is None:
            img = train_ds.load_image(0)
            default = img.shape[:2]
        cfg.input_size = [int(default[0]), int(default[1])]
    return train_ds, val_ds


def _model_options(cfg: TrainConfig, info, init_payload: dict | None) -> dict:
    """The architecture to build: from the options or ``--init`` (:func:`_architecture`), or with
    ``--resume`` exactly the model that was being trained; refuses a crop or input size too small."""
    arch = _architecture(cfg, info.num_classes, init_payload)
    if cfg.resume:
        resume_meta = load_checkpoint(cfg.resume)["meta"]
        classes = resume_meta.get("classes")
        if isinstance(classes, list) and list(classes) != list(info.classes):
            raise UserError(f"{cfg.resume}: was trained on {len(classes)} classes of another dataset "
                            f"({(resume_meta.get('dataset') or {}).get('name', '?')}); {cfg.data} has "
                            f"{len(info.classes)}: resume with the same --data, or start from it with --init")
        resume_model = resume_meta.get("model")
        if isinstance(resume_model, dict) and resume_model:
            arch = {k: v for k, v in resume_model.items() if k != "aux"}
    need = min_input_size(arch["bins"], arch.get("output_stride", cfg.output_stride))
    if min(cfg.crop) < need or min(cfg.input_size) < need:
        raise UserError(f"crop {cfg.crop} / input size {cfg.input_size} too small for bins {arch['bins']} at output "
                        f"stride {cfg.output_stride}: each side must be at least {need} pixels")
    return arch


def _preprocessing(cfg: TrainConfig, init_payload: dict | None) -> Preprocess:
    if init_payload is not None and "preprocess" in init_payload["meta"]:
        # fine-tuning keeps the normalisation the weights were trained with (e.g. a converted mmseg model's)
        return Preprocess.from_dict(init_payload["meta"]["preprocess"]).with_size(*cfg.input_size)
    return Preprocess(input_size=tuple(cfg.input_size))


def _build_model(cfg: TrainConfig, arch: dict, init_payload: dict | None, info, device: torch.device):
    """The seeded model with its starting weights (``--init``, ``--backbone-weights``), on ``device``;
    returns it and the backbone weights' description (or None)."""
    torch.manual_seed(cfg.seed)
    model = PSPNet(aux=True, **arch)
    if init_payload is not None:
        state = {k: v.float() if v.is_floating_point() else v for k, v in init_payload["state_dict"].items()}
        own = model.state_dict()
        # another class count: the classifiers (head.4, aux_head.4) start fresh, everything else is kept
        fresh = {k for k, v in state.items()
                 if k.startswith(("head.4.", "aux_head.4.")) and k in own and own[k].shape != v.shape}
        state = {k: v for k, v in state.items() if k not in fresh}
        fit_state_dict(model, state, cfg.init, ignore_missing=("aux_head.", *sorted(fresh)),
                       hint=_mismatch_hint(init_payload["meta"], model, info, "--init"))
    backbone_info = None
    if cfg.backbone_weights:
        from .interop.imagenet import read_imagenet_backbone

        bstate, backbone_info = read_imagenet_backbone(cfg.backbone_weights)
        fit_state_dict(model, bstate, cfg.backbone_weights, ignore_missing=("ppm.", "head.", "aux_head."),
                       hint=f"the file's ResNet does not match --backbone {cfg.backbone}"
                            f"{' with --deep-stem' if cfg.deep_stem else ''}")
    model.to(device)
    return model, backbone_info


def _optimizer(cfg: TrainConfig, model) -> torch.optim.SGD:
    """SGD with two parameter groups: the pretrained trunk at the base rate, the new layers at
    ``head_lr_mult`` times it (``lr_mult`` is read by the schedule)."""
    new_params = {id(p) for m in model.new_modules for p in m.parameters()}
    groups = [
        {"params": [p for p in model.parameters() if id(p) not in new_params], "lr_mult": 1.0},
        {"params": [p for p in model.parameters() if id(p) in new_params], "lr_mult": cfg.head_lr_mult},
    ]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _train_loader(cfg: TrainConfig, train_ds, preprocess: Preprocess, place: _Place):
    """The seeded augmentation, its distributed sampler and loader, and the steps per epoch."""
    info = train_ds.info
    transform = TrainTransform(tuple(cfg.crop), preprocess, tuple(cfg.scale), cfg.rotate, True, cfg.blur_prob,
                               info.ignore_index, cfg.seed, color_jitter=cfg.color_jitter)
    aug = SeededAugment(train_ds, transform, cfg.seed)
    sampler = DistributedSampler(aug, num_replicas=place.world, rank=place.rank, shuffle=True, seed=cfg.seed,
                                 drop_last=True)
    loader = DataLoader(aug, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers, drop_last=True,
                        worker_init_fn=_worker_init, pin_memory=place.device.type == "cuda")
    steps = len(loader) if cfg.max_steps_per_epoch is None else min(len(loader), cfg.max_steps_per_epoch)
    if steps == 0:
        raise UserError(f"{cfg.data}: {len(train_ds)} training images are fewer than one batch of "
                        f"{cfg.batch_size * place.world}; lower --batch-size")
    return aug, sampler, loader, steps


def _resume(cfg: TrainConfig, model, optimizer, scaler, place: _Place, info) -> tuple[int, int, float, list]:
    """Restore weights, optimizer, loss scaler and random state from ``--resume``; returns
    (start epoch, global step, best mIoU, history) - a fresh start without ``--resume``."""
    if not cfg.resume:
        return 0, 0, -1.0, []
    payload = load_checkpoint(cfg.resume)
    ts = payload.get("train_state")
    if ts is None:
        raise UserError(f"{cfg.resume}: has no training state (a release checkpoint?); resume from last.pt")
    fit_state_dict(model, payload["state_dict"], cfg.resume,
                   hint=_mismatch_hint(payload["meta"], model, info, "--resume"))
    try:
        optimizer.load_state_dict(ts["optimizer"])
        if place.use_amp and ts.get("scaler"):
            scaler.load_state_dict(ts["scaler"])
        start_epoch, global_step = int(ts["epoch"]), int(ts["global_step"])
        best, history = float(ts["best_miou"]), json.loads(ts["history"])
        rng = ts["rng"]
        torch.set_rng_state(rng["torch"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"{cfg.resume}: training state is incomplete or corrupt ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:120] if str(e) else ''}); resume from another last.pt") from e
    if place.device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], place.device)
    if start_epoch >= cfg.epochs:
        raise UserError(f"{cfg.resume}: already trained {start_epoch} epochs; pass --epochs larger than that "
                        f"to train more")
    return start_epoch, global_step, best, history


def _checkpoint_meta(cfg: TrainConfig, model, info, preprocess: Preprocess, place: _Place, backbone_info) -> dict:
    """What every checkpoint of this run says about itself (the model-file contract's source)."""
    return {
        "model": dict(model.config),
        "classes": list(info.classes),
        "palette": [list(c) for c in info.palette],
        "ignore_index": int(info.ignore_index),
        "preprocess": preprocess.to_dict(),
        "dataset": {"name": info.name, "path": str(cfg.data), "train_split": cfg.train_split, "val_split": cfg.val_split},
        "train_config": asdict(cfg),
        "autocast": str(place.amp_dtype).replace("torch.", "") if place.amp_dtype is not None else None,
        "autocast_choice": place.amp_record,  # how --amp chose it (measured for auto on a CPU)
        "backbone_weights": backbone_info,
        "versions": versions(),
    }


@dataclass
class _Loop:
    """What every training step needs and does not change from step to step."""
    cfg: TrainConfig
    place: _Place
    model: torch.nn.Module  # the one to save and evaluate
    ddp_model: torch.nn.Module  # the one to step (the model itself, or its DistributedDataParallel wrapper)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    weight: torch.Tensor | None
    ignore_index: int
    loader: DataLoader
    steps: int
    max_iters: int


def _train_epoch(loop: _Loop, epoch: int, global_step: int, bar) -> tuple[list[float], float, int]:
    """One epoch of SGD steps; returns the main losses, the last learning rate and the new global step."""
    cfg, device, amp_dtype = loop.cfg, loop.place.device, loop.place.amp_dtype
    loop.ddp_model.train()
    losses = []
    for step, (x, y) in enumerate(loop.loader):
        if step >= loop.steps:
            break
        lr = poly_lr(cfg.lr, global_step, loop.max_iters, cfg.power, cfg.warmup_iters)
        for g in loop.optimizer.param_groups:
            g["lr"] = lr * g["lr_mult"]
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if cfg.cutmix:  # its randomness depends on (seed, step, rank) only, so --resume repeats it exactly
            x, y = cutmix(x, y, np.random.default_rng([cfg.seed, global_step, loop.place.rank]), cfg.cutmix)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out, aux = loop.ddp_model(x)
            loss = F.cross_entropy(out.float(), y, weight=loop.weight, ignore_index=loop.ignore_index)
            aux_loss = F.cross_entropy(aux.float(), y, weight=loop.weight, ignore_index=loop.ignore_index)
            total = loss + cfg.aux_weight * aux_loss
        if not torch.isfinite(total):
            raise nonfinite_loss_error(total.item(), y, loop.ignore_index, global_step)  # all-ignore masks say so
        loop.optimizer.zero_grad(set_to_none=True)
        loop.scaler.scale(total).backward()
        loop.scaler.step(loop.optimizer)
        loop.scaler.update()
        global_step += 1
        losses.append(float(loss.item()))
        bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{np.mean(losses[-20:]):.3f}", lr=f"{lr:.2e}",
                        refresh=False)
        bar.update(1)
    return losses, lr, global_step


def _validate(loop: _Loop, meta: dict, val_ds, record: dict, tty: bool) -> None:
    """Validation mIoU of the main process's model into ``record``."""
    cfg = loop.cfg
    runner = TorchRunner(loop.model, meta, device=str(loop.place.device))
    res = evaluate(runner, val_ds, limit=cfg.val_limit, progress=cfg.progress and tty, desc="val")
    record["val_miou"] = res["miou"]
    record["val_pixel_accuracy"] = res["pixel_accuracy"]
    record["val_per_class_iou"] = res["per_class_iou"]


def _save_epoch(loop: _Loop, ckpts: CheckpointSet, meta: dict, record: dict, history: list, best: float,
                global_step: int, has_val: bool) -> float:
    """last.pt (with the training state) every epoch, best.pt when val mIoU improved (every epoch
    without validation), history.json: one set; returns the best mIoU so far."""
    epoch = record["epoch"]
    improved = record.get("val_miou", -1.0) > best
    if improved:
        best = record["val_miou"]
    meta_e = dict(meta, metrics={"epoch": epoch, "val_miou": record.get("val_miou"), "best_val_miou": best,
                                 "val_pixel_accuracy": record.get("val_pixel_accuracy")},
                  history=history)
    ts = {"optimizer": loop.optimizer.state_dict(), "scaler": loop.scaler.state_dict() if loop.place.use_amp else {},
          "epoch": epoch, "global_step": global_step, "best_miou": best,
          "history": json.dumps(history), "rng": _rng_state(loop.place.device)}
    meta_b = dict(meta_e, metrics=dict(meta_e["metrics"], val_miou=record.get("val_miou")))
    model = loop.model
    ckpts.save(epoch, lambda p: save_checkpoint(p, model, meta_e, train_state=ts),
               (lambda p: save_checkpoint(p, model, meta_b)) if improved or not has_val else None, history)
    return best


def train(cfg: TrainConfig) -> dict:
    cfg.validate()
    place = _place(cfg)
    train_ds, val_ds = _open_splits(cfg)
    info = train_ds.info
    init_payload = load_checkpoint(cfg.init) if cfg.init else None
    arch = _model_options(cfg, info, init_payload)
    preprocess = _preprocessing(cfg, init_payload)
    out_dir = Path(cfg.out)
    if place.main:
        check_output_dir(out_dir)  # created at the first save, so a failed start leaves no empty folder

    if len(train_ds) <= 2000 and hasattr(train_ds, "preload"):
        train_ds.preload()  # decode once; forked workers share it

    model, backbone_info = _build_model(cfg, arch, init_payload, info, place.device)
    optimizer = _optimizer(cfg, model)
    scaler = torch.amp.GradScaler("cuda", enabled=place.use_amp)
    weight = class_weights(train_ds, cfg.class_weights)
    weight = weight.to(place.device) if weight is not None else None
    aug, sampler, loader, steps = _train_loader(cfg, train_ds, preprocess, place)
    start_epoch, global_step, best, history = _resume(cfg, model, optimizer, scaler, place, info)

    ddp_model = model
    if place.world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[place.local_rank] if place.device.type == "cuda" else None)
    loop = _Loop(cfg, place, model, ddp_model, optimizer, scaler, weight, info.ignore_index, loader, steps,
                 steps * cfg.epochs)
    meta = _checkpoint_meta(cfg, model, info, preprocess, place, backbone_info)

    # best.pt, last.pt and history.json are written as one set (see CheckpointSet); a run resumed
    # from this folder's last.pt continues its set, a new run starts its own
    resumes_here = bool(cfg.resume) and os.path.abspath(Path(cfg.resume).parent) == os.path.abspath(out_dir)
    ckpts = CheckpointSet(out_dir, continues=resumes_here)
    tty = sys.stderr.isatty()
    bar = tqdm(total=loop.max_iters, initial=global_step, desc="train", disable=not (place.main and cfg.progress),
               dynamic_ncols=True, mininterval=0.5 if tty else 30)
    t_start = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        aug.epoch = epoch
        t0 = time.time()
        losses, lr, global_step = _train_epoch(loop, epoch, global_step, bar)
        record = {"epoch": epoch + 1, "step": global_step, "loss": float(np.mean(losses)), "lr": lr,
                  "epoch_time_s": time.time() - t0}
        last_epoch = epoch + 1 == cfg.epochs
        if val_ds is not None and ((epoch + 1) % cfg.val_every == 0 or last_epoch):
            if place.main:
                _validate(loop, meta, val_ds, record, tty)
            model.train()
        history.append(record)
        if place.main:
            best = _save_epoch(loop, ckpts, meta, record, history, best, global_step, val_ds is not None)
            msg = f"epoch {epoch + 1}/{cfg.epochs} loss {record['loss']:.4f} lr {lr:.2e} ({record['epoch_time_s']:.0f}s)"
            if "val_miou" in record:
                msg += f" val mIoU {100 * record['val_miou']:.2f} (best {100 * best:.2f})"
            bar.write(msg)
        if place.world > 1:
            dist.barrier()
    bar.close()
    result = {"best_val_miou": best if best >= 0 else None, "epochs": cfg.epochs, "steps": global_step,
              "wall_time_s": time.time() - t_start, "out": str(out_dir), "history": history,
              "autocast_choice": place.amp_record}
    if place.world > 1:
        dist.destroy_process_group()
    return result
