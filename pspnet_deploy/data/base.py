"""Dataset base: a list of (image, mask) files plus class names, palette and ignore index."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import UserError
from .indexed_png import read_label_mask
from .io import IMAGE_EXTS, read_image

IGNORE_INDEX = 255


@dataclass
class DatasetInfo:
    name: str
    classes: list[str]
    palette: list[list[int]]
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict:
        return {"name": self.name, "classes": list(self.classes), "palette": [list(map(int, c)) for c in self.palette],
                "ignore_index": int(self.ignore_index)}


def default_palette(n: int) -> list[list[int]]:
    """Pascal-VOC style bit-interleaved palette for n classes."""
    pal = []
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal.append([r, g, b])
    return pal


class SegmentationDataset:
    """Indexable dataset of (RGB uint8 HxWx3, label uint8 HxW) pairs.

    ``label_map`` is a 256-entry lookup table from file ids to train ids (``ignore_index`` for
    void). Every label outside ``[0, num_classes)`` that is not the ignore index is an error that
    names the file. ``transform(image, mask)`` is applied by ``__getitem__``; ``load`` gives the
    raw pair.
    """

    def __init__(self, samples: Sequence[tuple[Path, Path | None]], info: DatasetInfo,
                 label_map: np.ndarray | None = None, transform: Callable | None = None, cache: bool = False):
        self.samples = [(Path(i), Path(m) if m is not None else None) for i, m in samples]
        self.info = info
        self.label_map = label_map
        self.transform = transform
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def image_paths(self) -> list[Path]:
        return [s[0] for s in self.samples]

    def load_image(self, index: int) -> np.ndarray:
        return read_image(self.samples[index][0])

    def load_mask(self, index: int, shape: tuple[int, int] | None = None) -> np.ndarray:
        mpath = self.samples[index][1]
        if mpath is None:
            raise UserError(f"{self.samples[index][0]}: no mask for this image")
        raw = read_label_mask(mpath)
        mask = self.label_map[raw] if self.label_map is not None else raw
        if shape is not None and mask.shape != tuple(shape):
            raise UserError(f"{mpath}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                            f"{shape[1]}x{shape[0]}; masks must match their images")
        bad = (mask >= self.info.num_classes) & (mask != self.info.ignore_index)
        if bad.any():
            ids = np.unique(raw[bad]).tolist()  # as stored in the file, before any id mapping
            what = (f"outside 0..{self.info.num_classes - 1} and not the ignore id {self.info.ignore_index}"
                    if self.label_map is None else f"not valid {self.info.name} label ids")
            raise UserError(f"{mpath}: label ids {ids[:8]} are {what}; fix the mask or the class list")
        return mask

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is not None and index in self._cache:
            img, mask = self._cache[index]
            return img.copy(), mask.copy()
        img = self.load_image(index)
        mask = self.load_mask(index, img.shape[:2])
        if self._cache is not None:
            self._cache[index] = (img, mask)
        return img, mask

    def subset(self, indices: Sequence[int]) -> "SegmentationDataset":
        """The same dataset restricted to ``indices`` (in that order)."""
        return SegmentationDataset([self.samples[i] for i in indices], self.info, self.label_map, self.transform)

    def concat(self, others: Sequence["SegmentationDataset"]) -> "SegmentationDataset":
        """This dataset followed by ``others`` (same classes; e.g. two splits of one dataset)."""
        samples = list(self.samples)
        for o in others:
            if o.info.classes != self.info.classes or not hasattr(o, "samples"):
                raise UserError(f"cannot join splits with different classes ({self.info.name} and {o.info.name})")
            samples += o.samples
        return SegmentationDataset(samples, self.info, self.label_map, self.transform)

    def preload(self) -> None:
        """Decode every sample once and keep it in memory."""
        if self._cache is None:
            self._cache = {}
        for i in range(len(self)):
            self.load(i)

    def __getitem__(self, index: int):
        img, mask = self.load(index)
        if self.transform is not None:
            return self.transform(img, mask)
        return img, mask


def pair_by_stem(image_dir: Path, mask_dir: Path, image_exts=IMAGE_EXTS,
                 mask_suffix: str = "", mask_ext: str = ".png") -> list[tuple[Path, Path]]:
    """Pair images with masks of the same stem (plus ``mask_suffix``); a missing mask is an error."""
    if not image_dir.is_dir():
        raise UserError(f"{image_dir}: image folder not found")
    if not mask_dir.is_dir():
        raise UserError(f"{mask_dir}: mask folder not found")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in image_exts)
    if not images:
        raise UserError(f"{image_dir}: no images found (looked for {', '.join(image_exts)})")
    pairs = []
    for img in images:
        m = mask_dir / f"{img.stem}{mask_suffix}{mask_ext}"
        if not m.is_file():
            raise UserError(f"{img}: no mask {m.name} in {mask_dir}")
        pairs.append((img, m))
    return pairs
