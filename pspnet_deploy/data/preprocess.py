"""The one preprocessing definition shared by training, calibration, export checks and inference.

It is stored as a plain dict in checkpoints and ONNX metadata (``Preprocess.to_dict``) so that no
stage can drift from another.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class Preprocess:
    """Resize to ``input_size`` (H, W) with bilinear interpolation, then (x - mean) / std per RGB
    channel on 0-255 values, NCHW float32. Images are given as RGB uint8 HxWx3."""

    input_size: tuple[int, int] = (360, 480)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"
    interpolation: str = "bilinear"
    layout: str = "NCHW"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(input_size=tuple(int(v) for v in d["input_size"]), mean=tuple(float(v) for v in d["mean"]),
                   std=tuple(float(v) for v in d["std"]), channel_order=d.get("channel_order", "RGB"),
                   interpolation=d.get("interpolation", "bilinear"), layout=d.get("layout", "NCHW"),
                   extra=dict(d.get("extra", {})))

    def with_size(self, h: int, w: int) -> "Preprocess":
        return Preprocess(input_size=(int(h), int(w)), mean=self.mean, std=self.std, channel_order=self.channel_order,
                          interpolation=self.interpolation, layout=self.layout, extra=dict(self.extra))

    def normalize(self, image_rgb: np.ndarray) -> np.ndarray:
        """HxWx3 RGB uint8 (any size) -> 3xHxW float32, normalised, no resize."""
        img = image_rgb.astype(np.float32)
        if self.channel_order.upper() == "BGR":
            img = img[..., ::-1]
        img = (img - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(img.transpose(2, 0, 1))

    def __call__(self, image_rgb: np.ndarray) -> np.ndarray:
        """HxWx3 RGB uint8 -> 3xHxW float32 at ``input_size``."""
        h, w = self.input_size
        if image_rgb.shape[:2] != (h, w):
            interp = cv2.INTER_LINEAR if self.interpolation == "bilinear" else cv2.INTER_NEAREST
            image_rgb = cv2.resize(image_rgb, (w, h), interpolation=interp)
        return self.normalize(image_rgb)

    def batch(self, images: list[np.ndarray]) -> np.ndarray:
        return np.stack([self(im) for im in images])


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map to (H, W)."""
    h, w = size
    if labels.shape[:2] == (h, w):
        return labels
    return cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
