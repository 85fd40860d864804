"""CamVid in the SegNet layout: train/ trainannot/ val/ valannot/ test/ testannot/."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from .base import IGNORE_INDEX, DatasetInfo, SegmentationDataset, pair_by_stem

CAMVID_CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                  "Pedestrian", "Bicyclist"]
CAMVID_PALETTE = [[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
                  [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192]]


def camvid_info() -> DatasetInfo:
    return DatasetInfo("camvid", list(CAMVID_CLASSES), [list(c) for c in CAMVID_PALETTE], IGNORE_INDEX)


def is_camvid(root: Path) -> bool:
    return (root / "trainannot").is_dir() or (root / "valannot").is_dir() or (root / "testannot").is_dir()


def camvid(root: str | Path, split: str = "train", **kwargs) -> SegmentationDataset:
    root = Path(root)
    if split not in ("train", "val", "test"):
        raise UserError(f"CamVid split must be train, val or test, got {split!r}")
    img_dir, ann_dir = root / split, root / f"{split}annot"
    if not img_dir.is_dir():
        raise UserError(f"{img_dir}: CamVid split {split!r} not found (expected {split}/ and {split}annot/)")
    lut = np.arange(256, dtype=np.uint8)
    lut[11] = IGNORE_INDEX  # 11 = Unlabelled / void
    return SegmentationDataset(pair_by_stem(img_dir, ann_dir), camvid_info(), lut, **kwargs)
