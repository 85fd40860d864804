"""Accuracy of any runner on a dataset split: confusion-matrix mIoU, pixel accuracy, per-class IoU."""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np
from tqdm import tqdm

from .errors import UserError
from .metrics import ConfusionMatrix


def resize_logits(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of CxHxW logits to ``size`` (H, W)."""
    c, h, w = logits.shape
    if (h, w) == tuple(size):
        return logits
    hw = cv2.resize(np.ascontiguousarray(logits.transpose(1, 2, 0)), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return hw.reshape(size[0], size[1], c).transpose(2, 0, 1)


def labels_at(out: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Label map at ``size`` from one model output (CxHxW logits or HxW labels)."""
    if out.ndim == 3:
        return resize_logits(out.astype(np.float32, copy=False), size).argmax(0)
    if tuple(out.shape) == tuple(size):
        return out
    return cv2.resize(out.astype(np.uint8 if out.max() < 256 else np.int32), (size[1], size[0]),
                      interpolation=cv2.INTER_NEAREST)


def evaluate(runner, dataset, limit: int | None = None, batch_size: int = 1, progress: bool = True,
             predict: Callable | None = None, desc: str = "eval") -> dict:
    """Evaluate ``runner`` (see :mod:`pspnet_deploy.runners`) on ``dataset``.

    ``predict(runner, image_rgb) -> labels at the image size`` replaces whole-image inference
    (sliding window, flip). Returns the summary dict of :class:`ConfusionMatrix` plus ``num_images``.
    """
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0:
        raise UserError("the evaluation split has no images")
    if runner.num_classes != dataset.info.num_classes:
        raise UserError(f"model predicts {runner.num_classes} classes but the dataset has "
                        f"{dataset.info.num_classes}; evaluate on the dataset the model was trained for")
    cm = ConfusionMatrix(dataset.info.num_classes, dataset.info.ignore_index)
    bs = runner.batch_limit(batch_size)
    pending: list[tuple[np.ndarray, np.ndarray]] = []

    def flush():
        if not pending:
            return
        outs = runner.infer_items([runner.prepare(img) for img, _ in pending], batch=bs)
        for o, (_, mask) in zip(outs, pending):
            cm.update(labels_at(o, mask.shape), mask)
        pending.clear()

    for i in tqdm(range(n), desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        img, mask = dataset.load(i)
        if predict is not None:
            cm.update(predict(runner, img), mask)
            continue
        pending.append((img, mask))
        if len(pending) == bs:
            flush()
    flush()
    summary = cm.summary(dataset.info.classes)
    summary["num_images"] = n
    summary["confusion_matrix"] = cm.mat.tolist()
    return summary


def onnx_miou(path, dataset, limit: int | None = None, threads: int | None = None, progress: bool = True,
              desc: str = "eval") -> float:
    """mIoU (0..1) of an ONNX file on ``dataset``, whole-image, ONNX Runtime on CPU: the evaluator
    the command layer hands to :func:`pspnet_deploy.precision.calibrate.calibrate_onnx`."""
    from .runners.ort_runner import OrtRunner

    runner = OrtRunner.from_file(str(path), threads=threads)
    return float(evaluate(runner, dataset, limit=limit, progress=progress, desc=desc)["miou"])
