"""Cityscapes: ``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` with
``gtFine/{split}/{city}/*_gtFine_labelIds.png``; label ids mapped to the 19 official train ids."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from .base import IGNORE_INDEX, DatasetInfo, SegmentationDataset

# (label id, train id) of the 19 evaluated classes (cityscapesScripts labels.py); every other id -> ignore
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                        26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_CLASSES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                      "bicycle"]
CITYSCAPES_PALETTE = [[128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153],
                      [153, 153, 153], [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152],
                      [70, 130, 180], [220, 20, 60], [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100],
                      [0, 80, 100], [0, 0, 230], [119, 11, 32]]
IMAGE_SUFFIX = "_leftImg8bit.png"
MASK_SUFFIX = "_gtFine_labelIds.png"


def cityscapes_info() -> DatasetInfo:
    return DatasetInfo("cityscapes", list(CITYSCAPES_CLASSES), [list(c) for c in CITYSCAPES_PALETTE], IGNORE_INDEX)


def label_ids_to_train_ids() -> np.ndarray:
    """256-entry lookup table: Cityscapes label id -> train id (255 for void and unevaluated classes)."""
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
        lut[label_id] = train_id
    return lut


def detect(root: Path) -> bool:
    return (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir()


def open(root: str | Path, split: str = "train", **kwargs) -> SegmentationDataset:  # noqa: A001 - reader API
    root = Path(root)
    img_root, gt_root = root / "leftImg8bit" / split, root / "gtFine" / split
    if not img_root.is_dir():
        have = sorted(p.name for p in (root / "leftImg8bit").iterdir() if p.is_dir()) if (root / "leftImg8bit").is_dir() else []
        raise UserError(f"{img_root}: Cityscapes split {split!r} not found (splits here: {', '.join(have) or 'none'})")
    images = sorted(img_root.glob(f"*/*{IMAGE_SUFFIX}"))
    if not images:
        raise UserError(f"{img_root}: no *{IMAGE_SUFFIX} images in its city folders")
    samples = []
    for img in images:
        mask = gt_root / img.parent.name / (img.name[: -len(IMAGE_SUFFIX)] + MASK_SUFFIX)
        if not mask.is_file():
            raise UserError(f"{img}: no mask {mask.name} in {mask.parent}")
        samples.append((img, mask))
    return SegmentationDataset(samples, cityscapes_info(), label_ids_to_train_ids(), **kwargs)
