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

    # ---- uint8 models (pspnet-export --input-kind uint8): cast, mean/std and transpose run in the graph
    def resized_uint8(self, image_rgb: np.ndarray, channel_order: str = "RGB") -> np.ndarray:
        """HxWx3 RGB uint8 -> HxWx3 uint8 at ``input_size`` in ``channel_order`` (what a uint8 model takes)."""
        h, w = self.input_size
        if image_rgb.shape[:2] != (h, w):
            interp = cv2.INTER_LINEAR if self.interpolation == "bilinear" else cv2.INTER_NEAREST
            image_rgb = cv2.resize(image_rgb, (w, h), interpolation=interp)
        if channel_order.upper() == "BGR":
            image_rgb = image_rgb[..., ::-1]
        return np.ascontiguousarray(image_rgb, dtype=np.uint8)

    def from_uint8(self, batch_nhwc: np.ndarray, channel_order: str = "RGB") -> np.ndarray:
        """N x H x W x 3 uint8 in ``channel_order`` -> N x 3 x H x W float32 normalised: the NumPy
        twin of a uint8 graph's own preprocessing (same float32 ops, same order)."""
        x = np.asarray(batch_nhwc)
        if channel_order.upper() != "RGB":
            x = x[..., ::-1]
        return np.stack([self.normalize(im) for im in x]) if len(x) else np.zeros((0, 3) + x.shape[1:3], np.float32)

    def to_uint8(self, batch_nchw: np.ndarray, channel_order: str = "RGB") -> np.ndarray:
        """N x 3 x H x W normalised float -> N x H x W x 3 uint8 in ``channel_order``: the inverse of
        :meth:`normalize` (exact for images that were uint8; a zero-padded border becomes the mean
        colour rounded to integers)."""
        x = np.asarray(batch_nchw, np.float32).transpose(0, 2, 3, 1)
        x = x * np.asarray(self.std, np.float32) + np.asarray(self.mean, np.float32)
        if self.channel_order.upper() == "BGR":  # the model's order -> RGB
            x = x[..., ::-1]
        if channel_order.upper() == "BGR":
            x = x[..., ::-1]
        return np.ascontiguousarray(np.clip(np.rint(x), 0, 255).astype(np.uint8))


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map to (H, W)."""
    h, w = size
    if labels.shape[:2] == (h, w):
        return labels
    return cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
