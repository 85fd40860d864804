"""Pascal VOC 2012: ``JPEGImages/*.jpg``, ``SegmentationClass/*.png`` (palette PNGs whose indices
are the class ids, 255 = object borders / void, ignored) and ``ImageSets/Segmentation/{split}.txt``.
The root may be the VOC2012 folder or the VOCdevkit folder above it."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .base import IGNORE_INDEX, DatasetInfo, SegmentationDataset, default_palette

VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor"]


def voc_info() -> DatasetInfo:
    return DatasetInfo("voc", list(VOC_CLASSES), default_palette(len(VOC_CLASSES)), IGNORE_INDEX)


def _base(root: Path) -> Path:
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir() and (cand / "SegmentationClass").is_dir():
            return cand
    return root


def detect(root: Path) -> bool:
    base = _base(root)
    return (base / "JPEGImages").is_dir() and (base / "SegmentationClass").is_dir()


def open(root: str | Path, split: str = "train", **kwargs) -> SegmentationDataset:  # noqa: A001 - reader API
    base = _base(Path(root))
    list_file = base / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not list_file.is_file():
        have = sorted(p.stem for p in list_file.parent.glob("*.txt")) if list_file.parent.is_dir() else []
        raise UserError(f"{list_file}: VOC split list not found (splits here: {', '.join(have) or 'none'})")
    stems = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
    if not stems:
        raise UserError(f"{list_file}: split list is empty")
    samples = []
    for stem in stems:
        img = base / "JPEGImages" / f"{stem}.jpg"
        mask = base / "SegmentationClass" / f"{stem}.png"
        if not img.is_file():
            raise UserError(f"{list_file}: lists {stem!r} but {img} does not exist")
        if not mask.is_file():
            raise UserError(f"{list_file}: lists {stem!r} but its mask {mask} does not exist")
        samples.append((img, mask))
    return SegmentationDataset(samples, voc_info(), None, **kwargs)
