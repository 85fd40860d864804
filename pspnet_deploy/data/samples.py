"""Sample images for checks that need pixels but no labels (parity gates, FP16 ranges, benchmarks).

:func:`generated_images` is the one generator of stand-in photos (no files, no download);
:func:`verification_images` picks evenly spaced images of a dataset split, or generated ones, and
preprocesses them.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import UserError

__all__ = ["generated_images", "verification_images"]


def generated_images(h: int, w: int, num: int, seed: int = 0) -> list[np.ndarray]:
    """Scene-like RGB uint8 images: smooth colour fields, a few solid shapes, mild noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num):
        low = rng.integers(0, 256, size=(rng.integers(3, 8), rng.integers(3, 8), 3)).astype(np.uint8)
        img = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.int16)
        for _ in range(rng.integers(2, 6)):
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            y1, x1 = min(h, y0 + rng.integers(h // 8 + 1, h // 2 + 2)), min(w, x0 + rng.integers(w // 8 + 1, w // 2 + 2))
            img[y0:y1, x0:x1] = rng.integers(0, 256, size=3)
        img = img + rng.normal(0, 6, size=img.shape)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def verification_images(preprocess, verify_data: str | Path | None = None, split: str = "val", num: int = 4,
                        seed: int = 0) -> tuple[np.ndarray, dict]:
    """``num`` preprocessed images (float32 NCHW at ``preprocess.input_size``) and where they came
    from: evenly spaced images of ``verify_data`` / ``split`` (any layout :func:`open_dataset` reads)
    or generated ones when ``verify_data`` is None."""
    h, w = preprocess.input_size
    if num < 1:
        raise UserError(f"number of verification images must be at least 1, got {num}")
    if verify_data is not None:
        from .registry import open_dataset

        ds = open_dataset(verify_data, split)
        if len(ds) == 0:
            raise UserError(f"{verify_data}: split {split!r} has no images to verify with")
        idx = sorted(set(np.linspace(0, len(ds) - 1, min(num, len(ds))).round().astype(int).tolist()))
        imgs = [ds.load_image(i) for i in idx]
        src = {"kind": "dataset", "path": str(verify_data), "split": split,
               "files": [Path(ds.image_paths[i]).name for i in idx] if hasattr(ds, "image_paths") else idx}
    else:
        imgs = generated_images(h, w, num, seed)
        src = {"kind": "generated", "seed": seed, "count": num}
    return preprocess.batch(imgs).astype(np.float32), src
