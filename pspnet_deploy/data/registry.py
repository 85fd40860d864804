"""Open a dataset by folder (layout detected) or by a built-in name."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .base import DatasetInfo, SegmentationDataset


def open_dataset(spec: str | Path, split: str = "train", **kwargs):
    """``spec`` is a folder in one of the supported layouts, or ``synthetic`` / ``synthetic:SEED``.

    Layouts: CamVid (SegNet), Cityscapes, ADE20K, Pascal VOC 2012, plain folder
    (``images/``, ``masks/``, ``classes.txt``), each detected from its folders.
    """
    s = str(spec)
    if s == "synthetic" or s.startswith("synthetic:"):
        from .synthetic import synthetic

        try:
            seed = int(s.split(":", 1)[1]) if ":" in s else 0
        except ValueError:
            raise UserError(f"{s}: the synthetic seed must be an integer, e.g. synthetic:1") from None
        return synthetic(split=split, seed=seed, **kwargs)
    root = Path(spec)
    if not root.exists():
        raise UserError(f"{root}: dataset folder not found; pass a dataset folder or 'synthetic'")
    if not root.is_dir():
        raise UserError(f"{root}: not a folder; pass a dataset folder or 'synthetic'")
    from . import camvid as _camvid

    if _camvid.is_camvid(root):
        return _camvid.camvid(root, split, **kwargs)
    try:
        from . import cityscapes, ade20k, voc, folder
    except ImportError:  # readers not installed in this build
        cityscapes = ade20k = voc = folder = None
    for mod in (cityscapes, ade20k, voc, folder):
        if mod is not None and mod.detect(root):
            return mod.open(root, split, **kwargs)
    if not any(root.iterdir()):
        raise UserError(f"{root}: dataset folder is empty")
    raise UserError(f"{root}: unknown dataset layout; expected CamVid (train/, trainannot/), Cityscapes "
                    f"(leftImg8bit/, gtFine/), ADE20K (ADEChallengeData2016/), VOC (JPEGImages/, SegmentationClass/) "
                    f"or a folder with images/, masks/ and classes.txt")


def dataset_info(spec: str | Path) -> DatasetInfo:
    return open_dataset(spec, split="val" if str(spec).startswith("synthetic") else _first_split(spec)).info


def _first_split(spec) -> str:
    root = Path(spec)
    for split in ("val", "train", "test"):
        if (root / split).is_dir() or (root / f"{split}annot").is_dir():
            return split
    return "val"
