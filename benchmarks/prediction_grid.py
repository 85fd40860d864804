"""A picture of a few predictions: one row per image (image, prediction, ground truth, errors).

    python benchmarks/prediction_grid.py MODEL --data ../shared/data/camvid --split 'train@0006R0' \
        --images 4 --out benchmarks/reference/predictions_heldout.png

Any model file the runners load (.pt, .onnx, .engine, ...). Images are spread evenly over the
split; void pixels are black in the ground truth and not counted as errors.
"""
from __future__ import annotations

import argparse
import io
import os
import sys

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True, help="PNG to write")
    a = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pspnet_deploy.data import open_dataset
    from pspnet_deploy.predict import colorize, palette_array
    from pspnet_deploy.runners import load_runner
    from pspnet_deploy.sliding import make_predictor
    from pspnet_deploy.utils import atomic_write_bytes

    ds = open_dataset(a.data, a.split)
    picks = np.linspace(0, len(ds) - 1, num=min(a.images, len(ds))).round().astype(int)
    predict = make_predictor("whole")
    with load_runner(a.model, threads=a.threads) as runner:
        lut = palette_array(runner.palette, runner.num_classes)
        fig, axes = plt.subplots(len(picks), 4, figsize=(16, 3.1 * len(picks)), squeeze=False)
        for row, i in zip(axes, picks):
            img, gt = ds.load(int(i))
            pred = predict(runner, img)
            valid = gt != ds.info.ignore_index
            wrong = (pred != gt) & valid
            gt_rgb = colorize(np.where(valid, gt, 0), lut)
            gt_rgb[~valid] = 0
            err = img.copy() // 3
            err[wrong] = (255, 40, 40)
            acc = 100.0 * (1 - wrong.sum() / max(valid.sum(), 1))
            for ax, pic, title in zip(row, (img, colorize(pred, lut), gt_rgb, err),
                                      (ds.image_paths[i].name, "prediction", "ground truth",
                                       f"errors (pixel acc {acc:.1f} %)")):
                ax.imshow(pic)
                ax.set_title(title, fontsize=9)
                ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=np.array(c) / 255) for c in runner.palette]
    fig.legend(handles, runner.classes, loc="lower center", ncol=min(len(handles), 11), fontsize=8)
    fig.suptitle(f"{os.path.basename(a.model)} on {a.split}", fontsize=11)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    atomic_write_bytes(a.out, buf.getvalue())
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
