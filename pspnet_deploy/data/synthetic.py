"""Synthetic street and harbour scenes, generated on the fly (no files, no download).

Each image is a street scene (road with lane markings) or a harbour scene (water with waves)
under a sky with a skyline of buildings or hills (either kind in either scene, so the skyline
says nothing). Vehicles are drawn by one function whatever the scene: the same shape, colours
and texture are a ``car`` on a road and a ``boat`` on water. Only the surface around an object
decides its class, which is the paper's boat-versus-car case for context; large close-up objects
leave little surface in view, so the decision needs context from far across the image. Surface
colours overlap between the scenes (wet grey-blue roads, overcast grey water), so texture and
layout matter, and noise, lighting and blur keep it from being trivial.

Deterministic by (seed, split, index); splits use different random streams.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from ..errors import UserError
from .base import IGNORE_INDEX, DatasetInfo, SegmentationDataset

SYNTHETIC_CLASSES = ["background", "road", "water", "car", "boat"]
SYNTHETIC_PALETTE = [[70, 130, 180], [128, 64, 128], [0, 170, 200], [220, 20, 60], [255, 200, 0]]
BACKGROUND, ROAD, WATER, CAR, BOAT = range(5)
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
DEFAULT_SIZES = {"train": 200, "val": 40, "test": 40}
# vehicle body colours, shared by cars and boats
_VEHICLE_COLOURS = np.array([[200, 30, 30], [230, 230, 230], [30, 60, 170], [240, 200, 40], [40, 140, 60],
                             [30, 30, 30], [240, 120, 20], [150, 150, 160]], np.float32)


def synthetic_info() -> DatasetInfo:
    return DatasetInfo("synthetic", list(SYNTHETIC_CLASSES), [list(c) for c in SYNTHETIC_PALETTE], IGNORE_INDEX)


def _sky(img: np.ndarray, horizon: int, rng: np.random.Generator) -> None:
    top = np.array([rng.uniform(60, 120), rng.uniform(110, 170), rng.uniform(190, 250)], np.float32)
    bottom = np.array([rng.uniform(170, 230), rng.uniform(180, 230), rng.uniform(200, 240)], np.float32)
    t = np.linspace(0, 1, max(horizon, 1), dtype=np.float32)[:, None, None]
    img[:horizon] = top * (1 - t) + bottom * t


def _skyline(img: np.ndarray, horizon: int, rng: np.random.Generator) -> None:
    """Buildings or hills above the horizon (background class either way)."""
    h, w = img.shape[:2]
    if rng.random() < 0.5:  # buildings
        x = int(rng.integers(-8, 4))
        while x < w:
            bw, bh = int(rng.integers(6, 20)), int(rng.uniform(0.05, 0.25) * h)
            c = rng.uniform(60, 170) + rng.uniform(-20, 20, 3)
            img[max(horizon - bh, 0):horizon, max(x, 0):x + bw] = c
            for wy in range(horizon - bh + 2, horizon - 2, 4):  # window rows
                img[max(wy, 0), max(x + 1, 0):x + bw - 1:3] = c + 50
            x += bw + int(rng.integers(0, 6))
    else:  # hills
        xs = np.arange(w, dtype=np.float32)
        ridge = horizon - h * (0.06 + 0.08 * (1 + np.sin(xs / rng.uniform(8, 25) + rng.uniform(0, 6))) / 2
                               + 0.04 * np.sin(xs / rng.uniform(3, 7)))
        c = np.array([rng.uniform(50, 110), rng.uniform(90, 140), rng.uniform(60, 120)], np.float32)
        ys = np.arange(h, dtype=np.float32)[:, None]
        hill = (ys >= ridge[None, :]) & (ys < horizon)
        img[hill] = c


def _road(img: np.ndarray, horizon: int, rng: np.random.Generator) -> None:
    h, w = img.shape[:2]
    g = rng.uniform(80, 140)
    base = np.array([g, g, g + rng.uniform(0, 30)], np.float32)  # sometimes wet, blue-grey
    img[horizon:] = base + rng.normal(0, 6, (h - horizon, w, 1)).astype(np.float32)
    vx = rng.uniform(0.3, 0.7) * w  # vanishing point on the horizon
    for bx in rng.uniform(-0.3, 1.3, int(rng.integers(1, 4))) * w:  # lane markings, dashed, towards vx
        for y in range(horizon + 2, h):
            t = (y - horizon) / max(h - horizon, 1)
            if int(t * 12 + rng.uniform(0, 0.1)) % 2 == 0:
                x = int(vx + (bx - vx) * t)
                half = max(int(t * 2), 0)
                if 0 <= x < w:
                    img[y, max(x - half, 0):x + half + 1] = 225


def _water(img: np.ndarray, horizon: int, rng: np.random.Generator) -> None:
    h, w = img.shape[:2]
    if rng.random() < 0.3:  # overcast: grey water
        g = rng.uniform(90, 140)
        base = np.array([g - 10, g, g + rng.uniform(5, 30)], np.float32)
    else:
        base = np.array([rng.uniform(10, 70), rng.uniform(70, 140), rng.uniform(120, 190)], np.float32)
    ys = np.arange(horizon, h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    t = (ys - horizon + 1) / max(h - horizon, 1)
    waves = np.sin(ys / (0.6 + 2.5 * t) + 0.4 * np.sin(xs / rng.uniform(5, 12) + rng.uniform(0, 6)))
    img[horizon:] = base + (18 * waves)[..., None] + rng.normal(0, 6, (h - horizon, w, 1)).astype(np.float32)
    for _ in range(int(rng.integers(5, 20))):  # glints
        y, x = int(rng.integers(horizon, h)), int(rng.integers(0, w))
        img[y, x:x + int(rng.integers(2, 6))] = 235


def _vehicle(img: np.ndarray, mask: np.ndarray, label: int, x0: int, bottom: int, width: int,
             rng: np.random.Generator) -> None:
    """A body with a cabin and a dark base stripe; identical for cars and boats."""
    bh, ch = max(int(0.35 * width), 3), max(int(0.25 * width), 2)
    colour = _VEHICLE_COLOURS[int(rng.integers(len(_VEHICLE_COLOURS)))] + rng.uniform(-25, 25, 3)
    cab_x = x0 + int(rng.uniform(0.1, 0.4) * width)
    cab_w = max(int(0.5 * width), 2)
    body = np.array([[x0, bottom - bh], [x0 + width, bottom - bh], [x0 + width - bh // 3, bottom],
                     [x0 + bh // 3, bottom]], np.int32)
    cabin = np.array([[cab_x + ch // 2, bottom - bh - ch], [cab_x + cab_w - ch // 2, bottom - bh - ch],
                      [cab_x + cab_w, bottom - bh], [cab_x, bottom - bh]], np.int32)
    for poly, c in ((body, colour), (cabin, colour * 0.8)):
        cv2.fillPoly(img, [poly], tuple(float(v) for v in c))
        cv2.fillPoly(mask, [poly], label)
    win = (max(cab_x + ch // 2 + 1, 0), bottom - bh - ch + max(ch // 4, 1))
    cv2.rectangle(img, win, (cab_x + cab_w - ch // 2 - 1, bottom - bh - 1), (60.0, 70.0, 90.0), -1)
    stripe = max(bh // 4, 1)
    cv2.rectangle(img, (x0 + bh // 3, bottom - stripe), (x0 + width - bh // 3, bottom), (25.0, 25.0, 25.0), -1)


def render_scene(rng: np.random.Generator, size: tuple[int, int] = (96, 128)) -> tuple[np.ndarray, np.ndarray]:
    """One (RGB uint8 HxWx3, label uint8 HxW) pair drawn from ``rng``."""
    h, w = size
    img = np.zeros((h, w, 3), np.float32)
    mask = np.zeros((h, w), np.uint8)
    street = rng.random() < 0.5
    horizon = int(rng.uniform(0.3, 0.5) * h)
    _sky(img, horizon, rng)
    _skyline(img, horizon, rng)
    (_road if street else _water)(img, horizon, rng)
    mask[horizon:] = ROAD if street else WATER
    label = CAR if street else BOAT
    if rng.random() < 0.2:  # close-up: one large vehicle covering most of the surface
        width = int(rng.uniform(0.7, 0.95) * w)
        objects = [(int(rng.integers(-w // 10, w - width + w // 10 + 1)), int(rng.uniform(0.9, 1.0) * h), width)]
    else:
        objects = []
        for _ in range(int(rng.integers(1, 4))):
            bottom = int(rng.uniform(horizon + 0.12 * h, h))
            depth = (bottom - horizon) / max(h - horizon, 1)  # nearer (lower) objects are larger
            width = max(int(w * rng.uniform(0.15, 0.45) * (0.4 + depth)), 6)
            objects.append((int(rng.integers(-width // 4, w - width // 2)), bottom, width))
        objects.sort(key=lambda o: o[1])  # far to near
    for x0, bottom, width in objects:
        _vehicle(img, mask, label, x0, bottom, width, rng)
    gain, bias = rng.uniform(0.75, 1.2), rng.uniform(-20, 20)
    img = img * gain + bias + rng.normal(0, rng.uniform(3, 10), img.shape).astype(np.float32)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (3, 3), 0)
    return np.clip(img, 0, 255).round().astype(np.uint8), mask


class SyntheticDataset(SegmentationDataset):
    """A :class:`~pspnet_deploy.data.base.SegmentationDataset` generated on the fly (no files)."""

    def __init__(self, split: str = "train", seed: int = 0, num_images: int | None = None,
                 size: tuple[int, int] = (96, 128), transform: Callable | None = None, cache: bool = True):
        if split not in SPLIT_CODES:
            raise UserError(f"synthetic split must be train, val or test, got {split!r}")
        h, w = (int(v) for v in size)
        if h < 32 or w < 32:
            raise UserError(f"synthetic image size must be at least 32x32, got {h}x{w}")
        n = DEFAULT_SIZES[split] if num_images is None else int(num_images)
        if n <= 0:
            raise UserError(f"synthetic num_images must be positive, got {n}")
        self.split, self.seed, self.num_images = split, int(seed), n
        self.default_input_size = (h, w)
        self.info = synthetic_info()
        self.label_map = None
        self.transform = transform
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def __len__(self) -> int:
        return self.num_images

    @property
    def image_paths(self) -> list[Path]:
        return [Path(f"synthetic-{self.seed}") / self.split / f"{i:05d}.png" for i in range(self.num_images)]

    def _generate(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.num_images:
            raise IndexError(f"synthetic {self.split} has {self.num_images} images, asked for index {index}")
        rng = np.random.default_rng([self.seed, SPLIT_CODES[self.split], index])
        return render_scene(rng, self.default_input_size)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        index = int(index)
        if self._cache is None:
            return self._generate(index)
        if index not in self._cache:
            self._cache[index] = self._generate(index)
        img, mask = self._cache[index]
        return img.copy(), mask.copy()

    def load_image(self, index: int) -> np.ndarray:
        return self.load(index)[0]

    def load_mask(self, index: int, shape: tuple[int, int] | None = None) -> np.ndarray:
        return self.load(index)[1]


def synthetic(split: str = "train", seed: int = 0, num_images: int | None = None, size: tuple[int, int] = (96, 128),
              **kwargs) -> SyntheticDataset:
    """The synthetic street/harbour dataset; ``kwargs``: ``transform``, ``cache`` (as SegmentationDataset)."""
    unknown = set(kwargs) - {"transform", "cache"}
    if unknown:
        raise TypeError(f"synthetic() got unexpected arguments {sorted(unknown)}")
    return SyntheticDataset(split, seed, num_images, size, **kwargs)
