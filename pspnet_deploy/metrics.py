"""Confusion-matrix segmentation metrics (ignore index excluded)."""
from __future__ import annotations

import numpy as np


class ConfusionMatrix:
    """Accumulates a num_classes x num_classes matrix (rows: ground truth, columns: prediction)."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.mat = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        pred = np.asarray(pred).reshape(-1).astype(np.int64)
        target = np.asarray(target).reshape(-1).astype(np.int64)
        if pred.shape != target.shape:
            raise ValueError(f"prediction has {pred.size} pixels, target {target.size}")
        keep = (target != self.ignore_index) & (target >= 0) & (target < self.num_classes)
        n = self.num_classes
        idx = target[keep] * n + np.clip(pred[keep], 0, n - 1)
        self.mat += np.bincount(idx, minlength=n * n).reshape(n, n)

    def merge(self, other: "ConfusionMatrix") -> None:
        self.mat += other.mat

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for a class absent from both ground truth and prediction."""
        tp = np.diag(self.mat).astype(np.float64)
        union = self.mat.sum(0) + self.mat.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def miou(self) -> float:
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.mat.sum()
        return float(np.trace(self.mat) / total) if total else float("nan")

    def summary(self, class_names: list[str] | None = None) -> dict:
        names = class_names or [str(i) for i in range(self.num_classes)]
        iou = self.iou()
        return {
            "miou": self.miou(),
            "pixel_accuracy": self.pixel_accuracy(),
            "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou)},
            "num_pixels": int(self.mat.sum()),
        }


def format_table(summary: dict, title: str = "") -> str:
    """A plain-text table of per-class IoU plus mIoU and pixel accuracy."""
    rows = [(n, "-" if v is None else f"{100 * v:6.2f}") for n, v in summary["per_class_iou"].items()]
    width = max([len(r[0]) for r in rows] + [14])
    lines = [title] if title else []
    lines.append(f"{'class':<{width}}  IoU (%)")
    lines.append("-" * (width + 9))
    lines += [f"{n:<{width}}  {v}" for n, v in rows]
    lines.append("-" * (width + 9))
    lines.append(f"{'mIoU':<{width}}  {100 * summary['miou']:6.2f}")
    lines.append(f"{'pixel accuracy':<{width}}  {100 * summary['pixel_accuracy']:6.2f}")
    return "\n".join(lines)
