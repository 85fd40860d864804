"""Training augmentations of the paper, applied jointly to an RGB image and its label mask.

Random scale (0.5-2.0), rotation (+-10 deg), horizontal flip, Gaussian blur and a random crop
padded with the ignore label; optionally colour jitter (brightness, contrast, saturation: street
scenes of another drive differ mostly in light); image then normalised by the shared
:class:`Preprocess`.
Each transform takes and returns ``(image uint8 HxWx3, mask uint8 HxW)``; randomness comes from
a ``numpy.random.Generator`` so runs are reproducible.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from ..errors import UserError
from .base import IGNORE_INDEX
from .preprocess import Preprocess


class TrainTransform:
    def __init__(self, crop_size: tuple[int, int], preprocess: Preprocess, scale: tuple[float, float] = (0.5, 2.0),
                 rotate: float = 10.0, flip: bool = True, blur_prob: float = 0.5, ignore_index: int = IGNORE_INDEX,
                 seed: int = 0, color_jitter: float = 0.0):
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.preprocess = preprocess
        self.scale = scale
        self.rotate = rotate
        self.flip = flip
        self.blur_prob = blur_prob
        self.ignore_index = ignore_index
        if not 0.0 <= color_jitter < 1.0:
            raise UserError(f"colour jitter strength must be in [0, 1) (--color-jitter), got {color_jitter}")
        self.color_jitter = float(color_jitter)
        self.rng = np.random.default_rng(seed)
        self.fill = tuple(float(m) for m in preprocess.mean)  # pads become zero after normalisation

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def augment(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Geometric + photometric augmentation; returns uint8 image and mask of ``crop_size``."""
        rng = self.rng
        s = rng.uniform(*self.scale)
        image = cv2.resize(image, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(mask, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
        if self.rotate:
            angle = rng.uniform(-self.rotate, self.rotate)
            h, w = mask.shape
            m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
            image = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                   borderValue=self.fill)
            mask = cv2.warpAffine(mask, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                                  borderValue=self.ignore_index)
        if self.blur_prob and rng.random() < self.blur_prob:
            image = cv2.GaussianBlur(image, (5, 5), 0)
        if self.color_jitter:
            image = jitter_colors(image, rng, self.color_jitter)
        if self.flip and rng.random() < 0.5:
            image = image[:, ::-1]
            mask = mask[:, ::-1]
        return random_crop(image, mask, self.crop_size, rng, self.fill, self.ignore_index)

    def __call__(self, image: np.ndarray, mask: np.ndarray):
        image, mask = self.augment(image, mask)
        return self.preprocess.normalize(image), mask.astype(np.int64)


def jitter_colors(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Brightness, contrast and saturation each scaled by a factor in [1 - strength, 1 + strength],
    in a random order (uint8 RGB in and out). Contrast pivots on the image's mean grey level,
    saturation blends with the per-pixel grey (ITU-R BT.601 weights)."""
    img = image.astype(np.float32)
    factors = rng.uniform(1.0 - strength, 1.0 + strength, size=3)
    for op in rng.permutation(3):
        f = float(factors[op])
        if op == 0:
            img *= f
        else:
            grey = img @ np.array([0.299, 0.587, 0.114], np.float32)
            if op == 1:
                img = (img - grey.mean()) * f + grey.mean()
            else:
                img = (img - grey[..., None]) * f + grey[..., None]
        np.clip(img, 0.0, 255.0, out=img)
    return img.round().astype(np.uint8)


def random_crop(image: np.ndarray, mask: np.ndarray, size: tuple[int, int], rng: np.random.Generator,
                fill: Sequence[float], ignore_index: int) -> tuple[np.ndarray, np.ndarray]:
    ch, cw = size
    h, w = mask.shape
    ph, pw = max(ch - h, 0), max(cw - w, 0)
    if ph or pw:
        top, left = ph // 2, pw // 2
        image = cv2.copyMakeBorder(np.ascontiguousarray(image), top, ph - top, left, pw - left, cv2.BORDER_CONSTANT,
                                   value=tuple(fill))
        mask = cv2.copyMakeBorder(np.ascontiguousarray(mask), top, ph - top, left, pw - left, cv2.BORDER_CONSTANT,
                                  value=ignore_index)
        h, w = mask.shape
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    return np.ascontiguousarray(image[y:y + ch, x:x + cw]), np.ascontiguousarray(mask[y:y + ch, x:x + cw])


class EvalTransform:
    """Resize the image to the model size with the shared preprocessing; the mask stays as is."""

    def __init__(self, preprocess: Preprocess):
        self.preprocess = preprocess

    def __call__(self, image: np.ndarray, mask: np.ndarray):
        return self.preprocess(image), mask.astype(np.int64)
