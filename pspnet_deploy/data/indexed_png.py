"""Label masks stored as palette ("P" mode) PNGs, as Pascal VOC ships them.

OpenCV expands a palette PNG to colours; the label ids are the palette indices. We read the
file's own PLTE chunk and map every decoded colour back to its index (the first index for a
colour that the palette repeats, e.g. black padding entries), so any palette works, not just VOC's.
"""
from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from ..errors import UserError
from .io import read_mask

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_palette(data: bytes) -> np.ndarray | None:
    """The PLTE colours (N x 3 uint8, RGB) of a palette PNG; None for any other file."""
    if not data.startswith(_PNG_SIGNATURE) or len(data) < 33 or data[12:16] != b"IHDR" or data[25] != 3:
        return None
    pos = 8
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        if ctype == b"PLTE":
            body = data[pos + 8:pos + 8 + length]
            if length % 3 or len(body) != length:
                return None
            return np.frombuffer(body, np.uint8).reshape(-1, 3)
        if ctype in (b"IDAT", b"IEND"):
            return None
        pos += 12 + length
    return None


def read_label_mask(path: str | Path) -> np.ndarray:
    """Label ids as uint8 HxW: palette indices of a palette PNG, else :func:`read_mask`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: mask not found")
    data = path.read_bytes()
    palette = png_palette(data)
    if palette is None:
        return read_mask(path)
    from .io import check_image_header

    check_image_header(data, path, "mask")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise UserError(f"{path}: cannot decode mask (corrupt or not an image file)")
    key = (bgr[..., 2].astype(np.int32) << 16) | (bgr[..., 1].astype(np.int32) << 8) | bgr[..., 0]
    pal_key = (palette[:, 0].astype(np.int32) << 16) | (palette[:, 1].astype(np.int32) << 8) | palette[:, 2]
    uniq, first = np.unique(pal_key, return_index=True)  # first index of each colour
    pos = np.clip(np.searchsorted(uniq, key), 0, len(uniq) - 1)
    found = uniq[pos] == key
    if not found.all():
        k = int(key[~found][0])
        raise UserError(f"{path}: pixel colour ({k >> 16}, {(k >> 8) & 255}, {k & 255}) is not in the PNG's "
                        f"palette; re-save the mask as a palette or single-channel label PNG")
    idx = first[pos]
    if idx.max(initial=0) > 255:
        raise UserError(f"{path}: palette has more than 256 entries")
    return idx.astype(np.uint8)
