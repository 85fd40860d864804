"""Calibration images: chosen deterministically, preprocessed with the model's own preprocessing,
cached as one ``.npy`` tensor.

Images come from a dataset split, ``synthetic[:SEED]`` or a plain folder of images (no masks
needed). ``num_images`` are spread evenly over what is there. The tensor is cached under a key
made of the model hash, the chosen images (their file contents, or decoded pixels for in-memory
datasets) and the preprocessing, so a second run memory-maps it instead of decoding again.
Undecodable images are skipped (and listed) up to :data:`MAX_DECODE_FAILURES` of the choice.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..card import read_calibration_cache_record  # the contract reads the cache record
from ..data.io import IMAGE_EXTS, read_image
from ..data.preprocess import Preprocess
from ..errors import UserError
from ..utils import atomic_path, atomic_write_json, say, sha256_file

__all__ = ["DEFAULT_NUM_IMAGES", "MIN_CALIB_IMAGES", "CalibrationSet", "load_calibration_set", "is_image_folder",
           "cache_key"]

DEFAULT_NUM_IMAGES = 200
MIN_CALIB_IMAGES = 10
MAX_DECODE_FAILURES = 0.10  # fail when more than this fraction of the chosen images cannot be decoded
CACHE_VERSION = 1


@dataclass
class CalibrationSet:
    array: np.ndarray  # (N, 3, H, W) float32, memory-mapped from the cache file
    ids: list[str]
    images_hash: str
    source: dict
    skipped: list[str] = field(default_factory=list)
    cache_path: Path | None = None
    cache_hit: bool = False

    @property
    def num_images(self) -> int:
        return int(self.array.shape[0])


def is_image_folder(root: Path) -> bool:
    return root.is_dir() and any(p.suffix.lower() in IMAGE_EXTS and p.is_file() for p in root.iterdir())


def _spaced(total: int, n: int) -> list[int]:
    """``n`` indices spread evenly over ``range(total)`` (deterministic, first and last included)."""
    if n >= total:
        return list(range(total))
    if n == 1:
        return [0]
    return [int(v) for v in np.round(np.linspace(0, total - 1, n)).astype(np.int64)]


class _ImageSource:
    """Uniform access to a dataset split or a plain folder of images (no masks needed)."""

    def __init__(self, data, split: str):
        spec = str(data)
        root = Path(spec)
        if not (spec == "synthetic" or spec.startswith("synthetic:")) and not root.exists():
            raise UserError(f"{root}: calibration data not found; pass a dataset folder, a folder of images or 'synthetic'")
        if is_image_folder(root) or (root.is_dir() and not any(root.iterdir())):
            self.kind = "folder"
            self.paths = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
            self.dataset = None
            self.split = None
        else:
            from ..data import open_dataset

            self.kind = "dataset"
            self.dataset = open_dataset(data, split)
            self.split = split
            self.paths = list(getattr(self.dataset, "image_paths", []))
        self.spec = spec

    def __len__(self) -> int:
        return len(self.paths) if self.dataset is None else len(self.dataset)

    def ident(self, i: int) -> str:
        if i < len(self.paths):
            return str(self.paths[i])
        return f"{self.spec}:{self.split}:{i}"

    def content_hash(self, i: int) -> str | None:
        """sha256 of the file when the image is a real file (cheap); None otherwise."""
        if i < len(self.paths) and Path(self.paths[i]).is_file():
            return sha256_file(self.paths[i])
        return None

    def load(self, i: int) -> np.ndarray:
        if self.dataset is None:
            return read_image(self.paths[i])
        return self.dataset.load_image(i)

    def describe(self) -> dict:
        return {"data": self.spec, "kind": self.kind, "split": self.split, "available": len(self)}


def cache_key(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def choose_images(data, split: str, num_images: int, min_images: int):
    """The calibration images of ``data`` [``split``]: ``num_images`` spaced evenly (at least
    ``min_images`` must exist) and their identity hash (file contents where they are files, else
    decoded pixels). Returns (source, where, chosen indices, images hash, the images decoded for
    the hash, by index)."""
    if num_images is None or int(num_images) <= 0:
        raise UserError(f"--num-images must be positive, got {num_images}")
    src = _ImageSource(data, split)
    where = f"{data}" + (f" [{split}]" if src.kind == "dataset" else "")
    total = len(src)
    if total < min_images:
        raise UserError(f"{where}: found {total} calibration image{'s' if total != 1 else ''}; calibration needs at "
                        f"least {min_images} (a few hundred is typical); pass a bigger split or folder")
    chosen = _spaced(total, int(num_images))
    hasher = hashlib.sha256()
    decoded: dict[int, np.ndarray] = {}
    for i in chosen:
        ch = src.content_hash(i)
        if ch is None:
            try:
                img = src.load(i)
            except UserError:
                ch = "undecodable"
            else:
                decoded[i] = img
                ch = hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest()
        hasher.update(f"{Path(src.ident(i)).name}:{ch}\n".encode())
    return src, where, chosen, hasher.hexdigest(), decoded


def check_decoded(where: str, chosen: int, decoded: int, skipped: list[str], min_images: int,
                  max_decode_failures: float) -> None:
    """Refuse a calibration set with too many undecodable images or too few decodable ones."""
    if len(skipped) > max_decode_failures * chosen:
        raise UserError(f"{where}: {len(skipped)} of {chosen} calibration images could not be decoded "
                        f"(first: {skipped[0]}); fix or remove the broken files")
    if decoded < min_images:
        raise UserError(f"{where}: found {decoded} decodable calibration images; calibration needs at least "
                        f"{min_images}")


def load_calibration_set(data, split: str, num_images: int, preprocess: Preprocess, model_sha256: str,
                         cache_dir: str | Path, progress: bool = True, min_images: int = MIN_CALIB_IMAGES,
                         max_decode_failures: float = MAX_DECODE_FAILURES) -> CalibrationSet:
    """Choose ``num_images`` images deterministically, preprocess them, cache the tensor (.npy).

    The cache file is keyed by the model hash, the chosen images (their contents when they are
    files) and the preprocessing; a second call with the same inputs memory-maps it instead.
    """
    from tqdm import tqdm

    src, where, chosen, images_hash, decoded = choose_images(data, split, num_images, min_images)
    key = cache_key(CACHE_VERSION, model_sha256, images_hash, preprocess.to_dict())
    cache_dir = Path(cache_dir)
    npy = cache_dir / f"calib-{key}.npy"
    side = cache_dir / f"calib-{key}.json"
    source = src.describe() | {"chosen": len(chosen)}
    if npy.is_file() and side.is_file():
        info = read_calibration_cache_record(side)
        try:
            arr = np.load(npy, mmap_mode="r") if info is not None else None
            if arr is not None and arr.ndim == 4 and arr.shape[0] == len(info["ids"]) and arr.dtype == np.float32:
                say(progress, f"calibration images: {arr.shape[0]} from cache {npy}")
                return CalibrationSet(arr, info["ids"], images_hash, source, info.get("skipped", []), npy, True)
        except (OSError, ValueError):
            pass  # unreadable cache: rebuild it
    h, w = preprocess.input_size
    ok_ids: list[str] = []
    skipped: list[str] = []
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(npy) as tmp:
        buf = np.lib.format.open_memmap(str(tmp), mode="w+", dtype=np.float32, shape=(len(chosen), 3, h, w))
        n = 0
        for i in tqdm(chosen, desc="calibration images", disable=not progress, leave=False, dynamic_ncols=True):
            try:
                img = decoded.pop(i) if i in decoded else src.load(i)
            except UserError:
                skipped.append(src.ident(i))
                continue
            buf[n] = preprocess(img)
            ok_ids.append(src.ident(i))
            n += 1
        check_decoded(where, len(chosen), n, skipped, min_images, max_decode_failures)
        if n < len(chosen):  # compact: rewrite without the skipped rows
            buf.flush()
            data_ok = np.array(buf[:n])
            del buf
            with open(tmp, "wb") as f:
                np.save(f, data_ok)
        else:
            buf.flush()
            del buf
    atomic_write_json(side, {"ids": ok_ids, "skipped": skipped, "images_hash": images_hash, "model_sha256": model_sha256,
                             "preprocess": preprocess.to_dict(), "source": source})
    if skipped:
        say(progress, f"warning: skipped {len(skipped)} calibration image(s) that could not be decoded (first: {skipped[0]})")
    arr = np.load(npy, mmap_mode="r")
    return CalibrationSet(arr, ok_ids, images_hash, source, skipped, npy, False)

