"""Does pyramid pooling help on the synthetic street/harbour scenes?

Trains the same tiny PSPNet (ResNet-18, output stride 8) twice with identical data, augmentation,
initialisation and steps, and compares validation mIoU:

- ``ppm``: the pyramid pooling module with bins (1, 2, 3, 6);
- ``no-pool``: the same module with every pooling replaced by the identity, so each branch's
  1x1 conv + BN + ReLU sees only its own position. Same parameters, same head: the only thing
  removed is the pooled context. (The model has no switch for this; the script swaps
  ``model.ppm.pools`` for ``nn.Identity``.)

Besides mIoU it reports car/boat confusion: the share of vehicle pixels predicted as the other
vehicle class, which only the scene around a vehicle can decide (see pspnet_deploy.data.synthetic).

    nice -n 19 python benchmarks/ppm_ablation.py --steps 100 --out benchmarks/ppm_ablation.md
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pspnet_deploy.data import Preprocess
from pspnet_deploy.data.synthetic import BOAT, CAR, synthetic
from pspnet_deploy.data.transforms import TrainTransform
from pspnet_deploy.evaluate import evaluate
from pspnet_deploy.model import PSPNet
from pspnet_deploy.runners.torch_runner import TorchRunner
from pspnet_deploy.train import poly_lr
from pspnet_deploy.utils import atomic_write_json, atomic_write_text, versions


def build(variant: str, num_classes: int, head_channels: int, seed: int) -> PSPNet:
    torch.manual_seed(seed)
    model = PSPNet(num_classes, "resnet18", output_stride=8, bins=(1, 2, 3, 6), head_channels=head_channels,
                   aux=True, aux_channels=64)
    if variant == "no-pool":
        model.ppm.pools = nn.ModuleList(nn.Identity() for _ in model.ppm.pools)
    elif variant != "ppm":
        raise ValueError(variant)
    return model


def batches(ds, transform: TrainTransform, steps: int, batch_size: int, seed: int):
    """The same sequence of augmented batches for every variant: (seed, step, slot) seeds each sample."""
    order = np.random.default_rng(seed).permutation(np.tile(np.arange(len(ds)), steps * batch_size // len(ds) + 1))
    for step in range(steps):
        xs, ys = [], []
        for slot in range(batch_size):
            img, mask = ds.load(int(order[step * batch_size + slot]))
            transform.reseed(np.random.SeedSequence([seed, step, slot]).generate_state(1)[0])
            x, y = transform(img, mask)
            xs.append(torch.from_numpy(x))
            ys.append(torch.from_numpy(y))
        yield torch.stack(xs), torch.stack(ys)


def run(variant: str, a, train_ds, val_ds) -> dict:
    info = train_ds.info
    model = build(variant, info.num_classes, a.head_channels, a.seed)
    new = {id(p) for m in model.new_modules for p in m.parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) not in new], "lr_mult": 1.0},
              {"params": [p for p in model.parameters() if id(p) in new], "lr_mult": a.head_lr_mult}]
    opt = torch.optim.SGD(groups, lr=a.lr, momentum=0.9, weight_decay=1e-4)
    pre = Preprocess(input_size=tuple(train_ds.default_input_size))
    transform = TrainTransform(tuple(a.crop), pre, scale=(0.75, 1.25), rotate=5.0, blur_prob=0.3,
                               ignore_index=info.ignore_index, seed=a.seed)
    model.train()
    t0, losses = time.time(), []
    for step, (x, y) in enumerate(batches(train_ds, transform, a.steps, a.batch_size, a.seed)):
        lr = poly_lr(a.lr, step, a.steps, 0.9, a.warmup)
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_mult"]
        out, aux = model(x)
        loss = F.cross_entropy(out, y, ignore_index=info.ignore_index)
        total = loss + 0.4 * F.cross_entropy(aux, y, ignore_index=info.ignore_index)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        losses.append(loss.item())
        if (step + 1) % 20 == 0:
            print(f"  {variant} step {step + 1}/{a.steps} loss {np.mean(losses[-20:]):.3f} ({time.time() - t0:.0f}s)",
                  flush=True)
    train_s = time.time() - t0
    meta = {"classes": info.classes, "palette": info.palette, "ignore_index": info.ignore_index,
            "preprocess": pre.to_dict()}
    res = evaluate(TorchRunner(model.eval(), meta), val_ds, progress=False)
    cm = np.array(res["confusion_matrix"])
    vehicles = cm[CAR].sum() + cm[BOAT].sum()
    swapped = (cm[CAR, BOAT] + cm[BOAT, CAR]) / max(vehicles, 1)
    return {"variant": variant, "miou": res["miou"], "pixel_accuracy": res["pixel_accuracy"],
            "per_class_iou": res["per_class_iou"], "car_boat_swapped": float(swapped),
            "final_loss": float(np.mean(losses[-20:])), "train_s": train_s,
            "params": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def report_md(results: list[dict], a, env: dict) -> str:
    classes = list(results[0]["per_class_iou"])
    lines = ["# PPM ablation on the synthetic street/harbour scenes", "",
             f"Same tiny PSPNet (ResNet-18, output stride 8, head {a.head_channels} channels), same data order, "
             f"augmentation and initialisation; {a.steps} SGD steps of batch {a.batch_size}, crop "
             f"{a.crop[0]}x{a.crop[1]}, lr {a.lr} (poly 0.9, new layers x{a.head_lr_mult}), seed {a.seed}. "
             f"Validation: synthetic val split ({env['val_images']} images, {env['input_size'][0]}x"
             f"{env['input_size'][1]}, whole image).", "",
             "`no-pool` keeps the pyramid pooling module's branches and parameters but replaces every pooling by "
             "the identity, so no branch sees beyond its own position (beyond the backbone's receptive field). "
             "`car<->boat` is the share of car and boat pixels labelled as the other vehicle: vehicles are drawn "
             "alike and only the surrounding road or water decides.", "",
             "| variant | mIoU (%) | pixel acc. (%) | car<->boat (%) | " + " | ".join(classes) + " | final loss | train s |",
             "|---|---:|---:|---:|" + "---:|" * len(classes) + "---:|---:|"]
    for r in results:
        per = " | ".join("-" if r["per_class_iou"][c] is None else f"{100 * r['per_class_iou'][c]:.1f}"
                         for c in classes)
        lines.append(f"| {r['variant']} | {100 * r['miou']:.2f} | {100 * r['pixel_accuracy']:.2f} | "
                     f"{100 * r['car_boat_swapped']:.2f} | {per} | {r['final_loss']:.3f} | {r['train_s']:.0f} |")
    d = {r["variant"]: r for r in results}
    if "ppm" in d and "no-pool" in d:
        gain = 100 * (d["ppm"]["miou"] - d["no-pool"]["miou"])
        lines += ["", f"PPM minus no-pool: {gain:+.2f} mIoU points, car<->boat confusion "
                      f"{100 * d['ppm']['car_boat_swapped']:.2f}% vs {100 * d['no-pool']['car_boat_swapped']:.2f}%."]
    lines += ["", f"One seed, one short run each: differences of a point or two are within run-to-run noise. "
                  f"Machine: {env['machine']}, {env['threads']} torch thread(s), load average at start "
                  f"{env['load_start']}, at end {env['load_end']}; versions {json.dumps(env['versions'])}.",
              "", "Reproduce: `nice -n 19 python benchmarks/ppm_ablation.py "
                  f"--steps {a.steps} --batch-size {a.batch_size} --size {a.size[0]} {a.size[1]} --crop {a.crop[0]} {a.crop[1]} "
                  f"--head-channels {a.head_channels} --seed {a.seed}`", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--size", type=int, nargs=2, default=[96, 128], metavar=("H", "W"), help="synthetic image size")
    p.add_argument("--crop", type=int, nargs=2, default=None, metavar=("H", "W"), help="training crop (default: --size)")
    p.add_argument("--head-channels", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--head-lr-mult", type=float, default=1.0)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", nargs="+", default=["ppm", "no-pool"], choices=["ppm", "no-pool"])
    p.add_argument("--out", default=str(Path(__file__).with_name("ppm_ablation.md")))
    a = p.parse_args(argv)
    a.crop = a.crop or a.size
    torch.set_num_threads(a.threads)
    load_start = os.getloadavg()
    train_ds = synthetic("train", seed=a.seed, size=tuple(a.size))
    val_ds = synthetic("val", seed=a.seed, size=tuple(a.size))
    train_ds.preload()
    results = []
    for v in a.variants:
        print(f"training {v}", flush=True)
        results.append(run(v, a, train_ds, val_ds))
        print(f"  {v}: val mIoU {100 * results[-1]['miou']:.2f}, car<->boat {100 * results[-1]['car_boat_swapped']:.2f}%",
              flush=True)
    env = {"machine": f"{platform.processor() or platform.machine()} ({os.cpu_count()} CPUs)", "threads": a.threads,
           "load_start": [round(v, 2) for v in load_start], "load_end": [round(v, 2) for v in os.getloadavg()],
           "versions": {k: v for k, v in versions().items() if k in ("torch", "numpy", "python")},
           "val_images": len(val_ds), "input_size": list(val_ds.default_input_size)}
    out = Path(a.out)
    atomic_write_text(out, report_md(results, a, env))
    atomic_write_json(out.with_suffix(".json"), {"args": vars(a), "env": env, "results": results})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
