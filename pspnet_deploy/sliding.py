"""Whole-image and sliding-window inference for any runner, with optional horizontal-flip averaging
and multi-scale testing.

Sliding window (``mode="slide"``): the window is the model's fixed input size; windows overlap by
``1 - stride`` (stride 2/3 of the window by default), their logits are averaged where they overlap;
an image smaller than the window is padded (with zeros after normalisation, i.e. the mean colour)
and the padding cropped away again.

Scale: the image is *not* resized to the model size first. Training crops random windows from
images rescaled by 0.5-2.0 around their own resolution (:mod:`pspnet_deploy.data.transforms`), so
windows cut at the image's own resolution show objects at the scale the model learnt; ``scale``
rescales the image first when that is wanted (very large images, multi-scale testing).

Multi-scale testing (the PSPNet paper's evaluation: scales 0.5-1.75 and flip): ``scales`` runs the
sliding window on the image rescaled by each factor, brings each result back to the image's size
and averages the logits over scales (and flips), as mmsegmentation's test-time augmentation does.
It needs slide mode: a static-shape model sees every scale through windows of its own input size.

A runner whose ``output_kind`` is ``"labels"`` has no logits to average: its windows vote
(one-hot counts), which gives the same label map wherever windows agree.

With a window equal to the image, slide mode runs exactly the one window that whole mode runs, so
both give identical logits (tested).
"""
from __future__ import annotations

import math
from typing import Callable

import cv2
import numpy as np

from .data.io import ensure_rgb
from .errors import UserError
from .evaluate import resize_logits



def _as_scores(out: np.ndarray, num_classes: int) -> np.ndarray:
    """CxHxW float32 from one model output: logits as they are, labels as one-hot votes."""
    if out.ndim == 3:
        return out.astype(np.float32, copy=False)
    votes = np.zeros((num_classes,) + out.shape, np.float32)
    lab = out.astype(np.int64)
    valid = (lab >= 0) & (lab < num_classes)
    yy, xx = np.nonzero(valid)
    votes[lab[valid], yy, xx] = 1.0
    return votes


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets covering ``length`` with windows of ``window`` every ``stride`` (last one flush)."""
    if length <= window:
        return [0]
    n = math.ceil((length - window) / stride) + 1
    return sorted({min(i * stride, length - window) for i in range(n)})


def whole_logits(runner, image_rgb: np.ndarray) -> np.ndarray:
    """Scores (CxHxW) at the image's size from one pass at the model's input size."""
    img = ensure_rgb(image_rgb)
    out = runner.infer_items([runner.prepare(img)], batch=1)[0]
    scores = _as_scores(out, runner.num_classes)
    size = img.shape[:2]
    if out.ndim == 2 and tuple(out.shape) != tuple(size):  # votes: nearest keeps them one-hot
        lab = cv2.resize(out.astype(np.int32), (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
        return _as_scores(lab, runner.num_classes)
    return resize_logits(scores, size)


def slide_logits(runner, image_rgb: np.ndarray, stride_frac: float = 2 / 3, scale: float = 1.0,
                 batch: int | None = None) -> np.ndarray:
    """Sliding-window scores (CxHxW float32) at the image's size.

    Window = the runner's input size; stride = ``stride_frac`` of it (at least one pixel); the image
    is normalised at its own resolution (times ``scale``) and windows are cut from that.
    """
    if not (0 < stride_frac <= 1):
        raise UserError(f"sliding-window stride must be a fraction in (0, 1] of the window, got {stride_frac}")
    if not (scale > 0):
        raise UserError(f"scale must be positive, got {scale}")
    img = ensure_rgb(image_rgb)
    H, W = img.shape[:2]
    work = img
    if scale != 1.0:
        work = cv2.resize(img, (max(1, round(W * scale)), max(1, round(H * scale))), interpolation=cv2.INTER_LINEAR)
    h, w = work.shape[:2]
    wh, ww = runner.input_size
    norm = runner.preprocess.normalize(work)
    ph, pw = max(wh - h, 0), max(ww - w, 0)
    if ph or pw:  # zero after normalisation = the mean colour, as training pads
        norm = np.pad(norm, ((0, 0), (0, ph), (0, pw)))
    hp, wp = norm.shape[1:]
    sh, sw = max(1, int(wh * stride_frac)), max(1, int(ww * stride_frac))
    boxes = [(y, x) for y in window_starts(hp, wh, sh) for x in window_starts(wp, ww, sw)]
    crops = [np.ascontiguousarray(norm[:, y:y + wh, x:x + ww]) for y, x in boxes]
    outs = runner.infer_items(crops, batch=batch)
    c = runner.num_classes
    acc = np.zeros((c, hp, wp), np.float32)
    count = np.zeros((hp, wp), np.float32)
    for (y, x), out in zip(boxes, outs):
        acc[:, y:y + wh, x:x + ww] += _as_scores(out, c)
        count[y:y + wh, x:x + ww] += 1
    scores = acc[:, :h, :w] / count[None, :h, :w]
    if (h, w) != (H, W):
        scores = resize_logits(np.ascontiguousarray(scores), (H, W))
    return scores


PAPER_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def check_scales(scales, mode: str) -> tuple[float, ...]:
    """The scales as a tuple of positive floats; more than ``(1.0,)`` needs slide mode."""
    scales = tuple(float(s) for s in scales)
    if not scales or any(not (0 < s <= 4) for s in scales):
        raise UserError(f"test scales must be in (0, 4], got {list(scales)}; the paper's are "
                        f"{' '.join(f'{s:g}' for s in PAPER_SCALES)}")
    if len(set(scales)) != len(scales):
        raise UserError(f"test scales repeat: {list(scales)}; give each scale once")
    if mode == "whole" and scales != (1.0,):
        raise UserError("multi-scale testing needs --mode slide (a fixed-size model sees each scale through "
                        "windows of its input size); add --mode slide")
    return scales


def predict_scores(runner, image_rgb: np.ndarray, mode: str = "whole", flip: bool = False,
                   stride: float = 2 / 3, scales=(1.0,)) -> np.ndarray:
    """CxHxW scores at the image's size: logits averaged over ``scales`` and, with ``flip``, mirror images."""
    img = ensure_rgb(image_rgb)
    if mode not in ("whole", "slide"):
        raise UserError(f"inference mode must be 'whole' or 'slide', got {mode!r}")
    scales = check_scales(scales, mode)
    views = [img, np.ascontiguousarray(img[:, ::-1])] if flip else [img]
    total = None
    for scale in scales:
        for i, view in enumerate(views):
            s = whole_logits(runner, view) if mode == "whole" else slide_logits(runner, view, stride, scale)
            if i:
                s = s[:, :, ::-1]
            total = s.copy() if total is None else total + s
    if len(scales) * len(views) > 1:
        total *= 1.0 / (len(scales) * len(views))
    return total


def make_predictor(mode: str = "whole", flip: bool = False, stride: float = 2 / 3,
                   scales=(1.0,)) -> Callable[[object, np.ndarray], np.ndarray]:
    """``predict(runner, image_rgb) -> HxW label map (int64) at the image's size``."""
    if mode not in ("whole", "slide"):
        raise UserError(f"inference mode must be 'whole' or 'slide', got {mode!r}")
    if not (0 < stride <= 1):
        raise UserError(f"sliding-window stride must be a fraction in (0, 1] of the window, got {stride}")
    scales = check_scales(scales, mode)

    def predict(runner, image_rgb: np.ndarray) -> np.ndarray:
        return predict_scores(runner, image_rgb, mode=mode, flip=flip, stride=stride, scales=scales).argmax(0)

    predict.mode, predict.flip, predict.stride, predict.scales = mode, flip, stride, scales  # type: ignore[attr-defined]
    return predict


def describe(mode: str, flip: bool, scales=(1.0,)) -> str:
    """How a prediction was made, for summary lines: 'slide + flip, scales 0.5 1 1.5'."""
    text = mode + (" + flip" if flip else "")
    scales = tuple(scales)
    if scales != (1.0,):
        text += f", scales {' '.join(f'{s:g}' for s in scales)}"
    return text
