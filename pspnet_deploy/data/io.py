"""Image and mask reading with clear errors."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import UserError


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8 HxWx3. Grayscale is expanded, alpha dropped, 16-bit scaled."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: image not found")
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise UserError(f"{path}: cannot decode image (corrupt or not an image file)")
    if img.dtype == np.uint16:
        img = (img / 257.0).round().astype(np.uint8)
    elif img.dtype != np.uint8:
        raise UserError(f"{path}: unsupported image dtype {img.dtype}; convert it to 8-bit RGB")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    elif img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    else:
        raise UserError(f"{path}: image has {img.shape[2]} channels; expected 1, 3 or 4")
    return np.ascontiguousarray(img)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a label-id mask as uint8 HxW (single channel or palette PNG indices)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: mask not found")
    data = np.fromfile(str(path), dtype=np.uint8)
    m = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if m is None:
        raise UserError(f"{path}: cannot decode mask (corrupt or not an image file)")
    if m.ndim == 3:
        if m.shape[2] >= 3 and np.array_equal(m[..., 0], m[..., 1]) and np.array_equal(m[..., 1], m[..., 2]):
            m = m[..., 0]
        else:
            raise UserError(f"{path}: mask has {m.shape[2]} distinct colour channels; expected single-channel label ids")
    if m.dtype != np.uint8:
        if m.max() > 255:
            raise UserError(f"{path}: mask holds label ids above 255 (dtype {m.dtype}); expected 8-bit label ids")
        m = m.astype(np.uint8)
    return m


def write_png_atomic(path: str | Path, array: np.ndarray) -> None:
    """Write a PNG via a temporary file + rename. ``array`` is HxW or HxWx3 RGB."""
    path = Path(path)
    img = array if array.ndim == 2 else cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise UserError(f"{path}: could not encode PNG")
    from ..utils import atomic_write_bytes
    atomic_write_bytes(path, buf.tobytes())
