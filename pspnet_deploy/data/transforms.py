"""Training augmentations of the paper, applied jointly to an RGB image and its label mask.

Random scale (0.5-2.0), rotation (+-10 deg), horizontal flip, Gaussian blur and a random crop
padded with the ignore label; image then normalised by the shared :class:`Preprocess`.
Each transform takes and returns ``(image uint8 HxWx3, mask uint8 HxW)``; randomness comes from
a ``numpy.random.Generator`` so runs are reproducible.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from .base import IGNORE_INDEX
from .preprocess import Preprocess


class TrainTransform:
    def __init__(self, crop_size: tuple[int, int], preprocess: Preprocess, scale: tuple[float, float] = (0.5, 2.0),
                 rotate: float = 10.0, flip: bool = True, blur_prob: float = 0.5, ignore_index: int = IGNORE_INDEX,
                 seed: int = 0):
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.preprocess = preprocess
        self.scale = scale
        self.rotate = rotate
        self.flip = flip
        self.blur_prob = blur_prob
        self.ignore_index = ignore_index
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
        if self.flip and rng.random() < 0.5:
            image = image[:, ::-1]
            mask = mask[:, ::-1]
        return random_crop(image, mask, self.crop_size, rng, self.fill, self.ignore_index)

    def __call__(self, image: np.ndarray, mask: np.ndarray):
        image, mask = self.augment(image, mask)
        return self.preprocess.normalize(image), mask.astype(np.int64)


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
