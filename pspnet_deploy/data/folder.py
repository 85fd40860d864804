"""A plain folder: ``images/``, ``masks/`` (PNG label ids, same stem as the image, 255 = ignore),
``classes.txt`` (one class name per line) and optionally ``palette.txt`` ("r g b" per class).

Splits, first match wins: ``images/{split}/`` + ``masks/{split}/`` subfolders; a ``{split}.txt``
list of stems next to ``classes.txt``; otherwise the whole folder serves every split.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .base import IGNORE_INDEX, DatasetInfo, SegmentationDataset, default_palette, pair_by_stem
from .io import IMAGE_EXTS

_NOT_SPLIT_LISTS = {"classes.txt", "palette.txt"}
_COMMON_SPLITS = {"train", "val", "test", "trainval"}  # lists that mean "this folder is split by lists"


def detect(root: Path) -> bool:
    return (root / "images").is_dir() and (root / "masks").is_dir()


def read_classes(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"{path}: missing; write one class name per line (line 1 = label id 0)")
    classes = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not classes:
        raise UserError(f"{path}: no class names; write one class name per line")
    if len(classes) > 255:
        raise UserError(f"{path}: {len(classes)} classes; at most 255 fit 8-bit masks (255 is the ignore id)")
    dup = sorted({c for c in classes if classes.count(c) > 1})
    if dup:
        raise UserError(f"{path}: class names repeat ({', '.join(dup[:5])}); each line must name a different class")
    return classes


def read_palette(path: Path, num_classes: int) -> list[list[int]]:
    """``palette.txt``: "r g b" (spaces or commas) per line, one line per class; default if absent."""
    if not path.is_file():
        return default_palette(num_classes)
    palette = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.replace(",", " ").split()
        try:
            rgb = [int(v) for v in parts]
        except ValueError:
            rgb = []
        if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise UserError(f"{path}:{n}: expected 'r g b' with values 0..255, got {line.strip()!r}")
        palette.append(rgb)
    if len(palette) != num_classes:
        raise UserError(f"{path}: {len(palette)} colours for {num_classes} classes in classes.txt; give one per class")
    return palette


def _from_list(root: Path, list_file: Path) -> list[tuple[Path, Path]]:
    img_dir, mask_dir = root / "images", root / "masks"
    stems = [Path(line.strip()).stem for line in list_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not stems:
        raise UserError(f"{list_file}: split list is empty")
    samples = []
    for stem in stems:
        imgs = [img_dir / f"{stem}{ext}" for ext in IMAGE_EXTS if (img_dir / f"{stem}{ext}").is_file()]
        if not imgs:
            raise UserError(f"{list_file}: lists {stem!r} but {img_dir} has no image with that name")
        mask = mask_dir / f"{stem}.png"
        if not mask.is_file():
            raise UserError(f"{list_file}: lists {stem!r} but its mask {mask} does not exist")
        samples.append((imgs[0], mask))
    return samples


def open(root: str | Path, split: str = "train", **kwargs) -> SegmentationDataset:  # noqa: A001 - reader API
    root = Path(root)
    img_dir, mask_dir = root / "images", root / "masks"
    classes = read_classes(root / "classes.txt")
    info = DatasetInfo(root.resolve().name or "folder", classes, read_palette(root / "palette.txt", len(classes)),
                       IGNORE_INDEX)
    split_dirs = sorted(p.name for p in img_dir.iterdir() if p.is_dir()) if img_dir.is_dir() else []
    split_lists = sorted(p.stem for p in root.glob("*.txt") if p.name not in _NOT_SPLIT_LISTS)
    if split in split_dirs:
        samples = pair_by_stem(img_dir / split, mask_dir / split, IMAGE_EXTS)
    elif split in split_lists:
        samples = _from_list(root, root / f"{split}.txt")
    elif split_dirs:
        raise UserError(f"{img_dir}: no split folder {split!r} (found {', '.join(split_dirs)})")
    elif _COMMON_SPLITS.intersection(split_lists):
        found = ", ".join(s + ".txt" for s in split_lists if s in _COMMON_SPLITS)
        raise UserError(f"{root}: no split list {split}.txt (found {found})")
    else:
        samples = pair_by_stem(img_dir, mask_dir, IMAGE_EXTS)
    return SegmentationDataset(samples, info, None, **kwargs)
