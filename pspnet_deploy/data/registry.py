"""Open a dataset by folder (layout detected) or by a built-in name."""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import UserError
from .base import DatasetInfo, SegmentationDataset


def open_dataset(spec: str | Path, split: str = "train", **kwargs):
    """``spec`` is a folder in one of the supported layouts, or ``synthetic`` / ``synthetic:SEED``.

    Layouts: CamVid (SegNet), Cityscapes, ADE20K, Pascal VOC 2012, plain folder
    (``images/``, ``masks/``, ``classes.txt``), each detected from its folders.

    ``split`` is a split name or a split expression (:func:`parse_split`): ``train+val`` joins
    splits, ``train!0006R0`` drops the images whose file name starts with ``0006R0`` (a CamVid
    sequence) and ``train@0006R0`` keeps only those, so one sequence can be held out of training
    and used for selection.
    """
    terms = parse_split(split)
    if len(terms) == 1 and not terms[0][2]:
        return _open_one(spec, terms[0][0], **kwargs)
    parts = []
    for name, mode, prefixes in terms:
        ds = _open_one(spec, name, **kwargs)
        if not hasattr(ds, "samples"):
            raise UserError(f"{spec}: split expressions ({split!r}) need a dataset of image files, not a generated one")
        if mode:
            keep = [i for i, p in enumerate(ds.image_paths) if p.name.startswith(prefixes) == (mode == "@")]
            if not keep:
                seen = sorted({p.name.split("_")[0] for p in ds.image_paths})
                raise UserError(f"{spec}: split {name!r} has no images {'starting' if mode == '@' else 'left after removing those starting'} "
                                f"with {', '.join(prefixes)} (file names start with e.g. {', '.join(seen[:6])})")
            ds = ds.subset(keep)
        parts.append(ds)
    return parts[0] if len(parts) == 1 else parts[0].concat(parts[1:])


def parse_split(split: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """``'train!0006R0+val'`` -> ``[('train', '!', ('0006R0',)), ('val', '', ())]``.

    A term is ``NAME``, ``NAME@P1,P2`` (only files whose name starts with one of the prefixes) or
    ``NAME!P1,P2`` (all but those); terms are joined with ``+``.
    """
    terms = []
    for term in str(split).split("+"):
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:([@!])([^@!+]+))?", term.strip())
        if not m or (m.group(2) and not all(p.strip() for p in m.group(3).split(","))):
            raise UserError(f"split {split!r}: expected NAME, NAME@PREFIX[,PREFIX] or NAME!PREFIX[,PREFIX], "
                            f"joined with '+' (e.g. train!0006R0 or train@0006R0)")
        prefixes = tuple(p.strip() for p in m.group(3).split(",")) if m.group(2) else ()
        terms.append((m.group(1), m.group(2) or "", prefixes))
    return terms


def _open_one(spec: str | Path, split: str, **kwargs):
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
