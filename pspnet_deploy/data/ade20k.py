"""ADE20K (MIT Scene Parsing, 150 classes): ``ADEChallengeData2016/images/{training,validation}/*.jpg``
with ``annotations/{training,validation}/*.png``. File id 0 is "other" (ignored) and ids 1..150
become train ids 0..149 (the "reduce zero label" convention)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from .base import IGNORE_INDEX, DatasetInfo, SegmentationDataset, default_palette, pair_by_stem

# The 150 SceneParsing classes in id order (first name of each objectInfo150 entry).
ADE20K_CLASSES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel",
    "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
]
assert len(ADE20K_CLASSES) == 150
SPLITS = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}


def ade20k_info() -> DatasetInfo:
    # default_palette(151)[1:]: the bit-interleaved palette without its black entry 0
    return DatasetInfo("ade20k", list(ADE20K_CLASSES), default_palette(151)[1:], IGNORE_INDEX)


def reduce_zero_label() -> np.ndarray:
    """256-entry lookup table: 0 -> 255 (ignore), k -> k - 1. File ids above 150 map to 150..254,
    which the dataset then reports as invalid."""
    lut = (np.arange(256, dtype=np.int32) - 1).astype(np.uint8)
    lut[0] = IGNORE_INDEX
    return lut


def _base(root: Path) -> Path:
    return root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root


def detect(root: Path) -> bool:
    base = _base(root)
    return (base / "images").is_dir() and (base / "annotations").is_dir() and (
        (base / "images" / "training").is_dir() or (base / "images" / "validation").is_dir())


def open(root: str | Path, split: str = "train", **kwargs) -> SegmentationDataset:  # noqa: A001 - reader API
    base = _base(Path(root))
    if split not in SPLITS:
        raise UserError(f"ADE20K split must be train or val (training / validation), got {split!r}; "
                        f"the test images have no annotations")
    folder = SPLITS[split]
    img_dir = base / "images" / folder
    if not img_dir.is_dir():
        raise UserError(f"{img_dir}: ADE20K split {split!r} not found")
    samples = pair_by_stem(img_dir, base / "annotations" / folder)
    return SegmentationDataset(samples, ade20k_info(), reduce_zero_label(), **kwargs)
