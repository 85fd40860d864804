"""Calibration images at their own sizes, for a dynamic-shape model (``pspnet-export --dynamic-shape``).

A static model is calibrated on images resized to its one input size (:mod:`.calib_data`). A
dynamic-shape model runs every image at the image's own size, so its activation ranges (and the
bias correction and sensitivity ranking measured on the same images) come from the images at their
own sizes: resizing them all to the optimise-for size would calibrate a distribution the model
never sees (a different scale of objects, of padding borders, of pooled context).

An image whose size is inside the model's bounds (``ModelCard.check_bounds``) is used as it is; one
outside them is scaled, keeping its aspect ratio, to the nearest size inside (down to the maximum,
up to the minimum; a side is clipped on its own only when the aspect ratio cannot fit the bounds).
The sizes used and how many images were rescaled are recorded (:meth:`MixedSizeSet.size_record`),
and go to the calibration table and the INT8 file's ``pspnet.calibration`` record.

The preprocessed images are cached as one raw float32 file (``calib-<key>.f32``, written image by
image, memory-mapped) with their shapes in the JSON beside it, keyed like the one-size cache plus
the bounds.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..card import read_calibration_cache_record  # the contract reads the cache record
from ..data.preprocess import Preprocess
from ..errors import UserError
from ..utils import atomic_path, atomic_write_json, say
from .batches import batch_indices, iter_batches
from .calib_data import (CACHE_VERSION, MAX_DECODE_FAILURES, MIN_CALIB_IMAGES, CalibrationSet, cache_key,
                         check_decoded, choose_images)

__all__ = ["MixedSizeSet", "fit_to_bounds", "load_mixed_calibration_set", "calibration_batches", "stacked_outputs"]


def fit_to_bounds(h: int, w: int, size_range) -> tuple[int, int]:
    """(H, W) of an ``h`` x ``w`` image inside ``size_range`` = ((min H, min W), opt, (max H, max W)):
    itself when inside, else scaled with its aspect ratio kept (each side clipped only when the
    ratio cannot fit)."""
    (lo_h, lo_w), _opt, (hi_h, hi_w) = size_range
    if lo_h <= h <= hi_h and lo_w <= w <= hi_w:
        return int(h), int(w)
    s = min(1.0, hi_h / h, hi_w / w)
    s = max(s, lo_h / h, lo_w / w)
    nh, nw = int(round(h * s)), int(round(w * s))
    return min(max(nh, lo_h), hi_h), min(max(nw, lo_w), hi_w)


@dataclass
class MixedSizeSet:
    """Preprocessed calibration images of several sizes (each 3 x H x W float32), in choice order."""
    flat: np.ndarray  # all images raveled one after the other (memory-mapped from the cache)
    shapes: list[tuple[int, int]]
    ids: list[str]
    images_hash: str
    source: dict
    skipped: list[str] = field(default_factory=list)
    cache_path: Path | None = None
    cache_hit: bool = False
    resized: int = 0  # images rescaled into the bounds
    size_range: tuple | None = None

    def __post_init__(self):
        self._offsets = np.concatenate([[0], np.cumsum([3 * h * w for h, w in self.shapes])]).astype(np.int64)

    @property
    def num_images(self) -> int:
        return len(self.shapes)

    def image(self, i: int) -> np.ndarray:
        start = int(self._offsets[i])
        h, w = self.shapes[i]
        return self.flat[start:start + 3 * h * w].reshape(3, h, w)

    def size_record(self) -> dict:
        """What the table and the INT8 file record: every size used with its image count."""
        counts: dict[str, int] = {}
        for h, w in self.shapes:
            counts[f"{h}x{w}"] = counts.get(f"{h}x{w}", 0) + 1
        return {"mixed_sizes": True, "sizes": counts, "resized_to_bounds": self.resized,
                "size_range": [list(s) for s in self.size_range] if self.size_range else None}

    def batches(self, batch: int | None = None, limit: int | None = None) -> Iterator[tuple[np.ndarray, int]]:
        """``(batch, real rows)`` over the first ``limit`` images, images of one size batched together
        (in order of first appearance), a fixed ``batch`` filled as :func:`.batches.iter_batches` does."""
        n = self.num_images if limit is None else min(int(limit), self.num_images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i in range(n):
            groups.setdefault(self.shapes[i], []).append(i)
        for group in groups.values():  # one batch in memory at a time (the set itself stays memory-mapped)
            for idx, real in batch_indices(len(group), batch):
                yield np.stack([self.image(group[k]) for k in idx]).astype(np.float32, copy=False), real


def calibration_batches(calib, batch: int | None = None, limit: int | None = None) -> Iterator[tuple[np.ndarray, int]]:
    """Batches of either kind of calibration set (one size: :func:`.batches.iter_batches` over its tensor)."""
    if isinstance(calib, MixedSizeSet):
        return calib.batches(batch, limit)
    return iter_batches(calib.array, batch, limit=limit)


def num_batches(calib, batch: int | None = None, limit: int | None = None) -> int:
    """How many batches :func:`calibration_batches` yields (for progress bars)."""
    b = int(batch or 1)
    n = calib.num_images if limit is None else min(int(limit), calib.num_images)
    if not isinstance(calib, MixedSizeSet):
        return -(-n // b)
    return sum(-(-k // b) for k in Counter(calib.shapes[:n]).values())


def stacked_outputs(outputs: list[np.ndarray]) -> np.ndarray:
    """Model outputs of several sizes (each N x C x H x W) as one 1 x C x P x 1 array (P every pixel),
    so logits of mixed-size images compare as one tensor (channel axis kept for argmax)."""
    if len({o.shape[2:] for o in outputs}) <= 1:
        return np.concatenate(outputs)
    cols = [np.moveaxis(o, 1, 0).reshape(o.shape[1], -1) for o in outputs]
    return np.concatenate(cols, axis=1)[None, :, :, None]


def load_mixed_calibration_set(data, split: str, num_images: int, preprocess: Preprocess, model_sha256: str,
                               cache_dir: str | Path, size_range, progress: bool = True,
                               min_images: int = MIN_CALIB_IMAGES,
                               max_decode_failures: float = MAX_DECODE_FAILURES) -> MixedSizeSet:
    """:func:`.calib_data.load_calibration_set` for a dynamic-shape model: the same choice of
    images, each preprocessed at its own size fitted into ``size_range`` (:func:`fit_to_bounds`)."""
    from tqdm import tqdm

    src, where, chosen, images_hash, decoded = choose_images(data, split, num_images, min_images)
    bounds = [list(map(int, s)) for s in size_range]
    key = cache_key(CACHE_VERSION, "mixed-sizes", model_sha256, images_hash, preprocess.to_dict(), bounds)
    cache_dir = Path(cache_dir)
    raw, side = cache_dir / f"calib-{key}.f32", cache_dir / f"calib-{key}.json"
    source = src.describe() | {"chosen": len(chosen)}
    size_range = tuple(tuple(s) for s in bounds)
    if raw.is_file() and side.is_file():
        info = read_calibration_cache_record(side)  # the contract reads the cache record (None: rebuild)
        try:
            shapes = [tuple(s) for s in info["shapes"]]
            if raw.stat().st_size == 4 * sum(3 * h * w for h, w in shapes) and len(shapes) == len(info["ids"]):
                say(progress, f"calibration images: {len(shapes)} (mixed sizes) from cache {raw}")
                return MixedSizeSet(np.memmap(raw, np.float32, "r"), shapes, info["ids"], images_hash, source,
                                    info.get("skipped", []), raw, True, int(info.get("resized", 0)), size_range)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable cache: rebuild it
    shapes, ok_ids, skipped, resized = [], [], [], 0
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(raw) as tmp, open(tmp, "wb") as f:  # written image by image: memory stays one image
        for i in tqdm(chosen, desc="calibration images", disable=not progress, leave=False, dynamic_ncols=True):
            try:
                img = decoded.pop(i) if i in decoded else src.load(i)
            except UserError:
                skipped.append(src.ident(i))
                continue
            h, w = fit_to_bounds(img.shape[0], img.shape[1], size_range)
            resized += (h, w) != tuple(img.shape[:2])
            f.write(np.ascontiguousarray(preprocess.with_size(h, w)(img), np.float32).tobytes())
            shapes.append((h, w))
            ok_ids.append(src.ident(i))
        check_decoded(where, len(chosen), len(shapes), skipped, min_images, max_decode_failures)
    atomic_write_json(side, {"ids": ok_ids, "skipped": skipped, "images_hash": images_hash,
                             "model_sha256": model_sha256, "preprocess": preprocess.to_dict(), "source": source,
                             "shapes": [list(s) for s in shapes], "resized": resized, "size_range": bounds})
    if skipped:
        say(progress, f"warning: skipped {len(skipped)} calibration image(s) that could not be decoded (first: {skipped[0]})")
    return MixedSizeSet(np.memmap(raw, np.float32, "r"), shapes, ok_ids, images_hash, source, skipped, raw, False,
                        resized, size_range)


def load_set(data, split: str, num_images: int, preprocess: Preprocess, model_sha256: str, cache_dir, progress: bool,
             min_images: int, size_range=None) -> CalibrationSet | MixedSizeSet:
    """The calibration set a model takes: its own sizes within ``size_range`` (a dynamic-shape
    model), else every image at ``preprocess``'s size (:func:`.calib_data.load_calibration_set`)."""
    if size_range is not None:
        return load_mixed_calibration_set(data, split, num_images, preprocess, model_sha256, cache_dir, size_range,
                                          progress, min_images=min_images)
    from .calib_data import load_calibration_set

    return load_calibration_set(data, split, num_images, preprocess, model_sha256, cache_dir, progress,
                                min_images=min_images)
