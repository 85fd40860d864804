"""Accuracy of a benchmarked model (mIoU, pixel accuracy, per-class IoU, through
:func:`pspnet_deploy.evaluate.evaluate`) and its pixel agreement with the reference model's labels."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def pixel_agreement(reference: np.ndarray, candidate: np.ndarray) -> tuple[int, int]:
    """(pixels with the same label, total pixels) of two label maps of the same shape."""
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    if reference.shape != candidate.shape:
        raise ValueError(f"label maps differ in shape: {reference.shape} vs {candidate.shape}")
    return int(np.count_nonzero(reference.astype(np.int64) == candidate.astype(np.int64))), int(reference.size)


class _Capture:
    """``predict`` for :func:`pspnet_deploy.evaluate.evaluate`: whole-image inference (as eval does),
    recording pixel agreement with the reference model's labels stored in ``folder``."""

    def __init__(self, folder: Path, is_reference: bool):
        self.folder = folder
        self.is_reference = is_reference
        self.i = 0
        self.same = 0
        self.total = 0

    def __call__(self, runner, image: np.ndarray) -> np.ndarray:
        import cv2

        from ..evaluate import labels_at

        labels = labels_at(runner.infer_items([runner.prepare(image)], batch=1)[0], image.shape[:2])
        lab16 = labels.astype(np.uint16)
        path = self.folder / f"{self.i:06d}.png"
        if self.is_reference:
            cv2.imwrite(str(path), lab16)
        else:
            ref = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if ref is not None:
                s, t = pixel_agreement(ref, lab16)
                self.same += s
                self.total += t
        self.i += 1
        return labels


def measure_accuracy(runner, dataset, folder: Path, is_reference: bool, limit: int | None, progress: bool,
                     desc: str) -> dict:
    """The model row's accuracy fields on the first ``limit`` images of ``dataset``: ``miou``,
    ``pixel_accuracy``, ``per_class_iou``, ``num_images`` and ``pixel_agreement`` with the reference
    (whose labels the reference run stores in ``folder``; 1.0 for the reference itself)."""
    from ..evaluate import evaluate

    cap = _Capture(folder, is_reference=is_reference)
    acc = evaluate(runner, dataset, limit=limit, batch_size=1, progress=progress, predict=cap, desc=desc)
    return {"miou": acc["miou"], "pixel_accuracy": acc["pixel_accuracy"], "per_class_iou": acc["per_class_iou"],
            "num_images": acc["num_images"],
            "pixel_agreement": 1.0 if is_reference else (cap.same / cap.total if cap.total else None)}
