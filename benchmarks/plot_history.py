"""Plot training curves (loss, val mIoU) from one or more history.json files written by pspnet-train.

    python benchmarks/plot_history.py runs/ref/os16/history.json runs/ref/os8/history.json \
        --labels "OS16" "OS8 fine-tune" --out benchmarks/reference/training_curve.png

Histories are stages of one run, drawn one after the other; ``--overlay`` draws separate runs from
epoch 1 each, to compare recipes. ``--val-name`` names the split the val mIoU was measured on.
"""
from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("histories", nargs="+")
    p.add_argument("--labels", nargs="+", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--overlay", action="store_true", help="separate runs, each from epoch 1")
    p.add_argument("--val-name", default="CamVid val", help="what the validation split is, for the title")
    a = p.parse_args()
    labels = a.labels or a.histories
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    offset = 0
    for path, label in zip(a.histories, labels):
        h = json.load(open(path))
        ep = [offset + r["epoch"] for r in h]
        ax1.plot(ep, [r["loss"] for r in h], label=label)
        v = [(offset + r["epoch"], 100 * r["val_miou"]) for r in h if r.get("val_miou") is not None]
        if v:
            ax2.plot(*zip(*v), marker="o", label=label)
        offset = ep[-1] if ep and not a.overlay else offset
    ax1.set(xlabel="epoch", ylabel="train loss (main head, class-weighted CE)", title="training loss")
    ax2.set(xlabel="epoch", ylabel="mIoU (%)", title=f"{a.val_name} mIoU (360x480, single scale)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(a.out)


if __name__ == "__main__":
    main()
