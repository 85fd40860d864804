"""Image and mask reading with clear errors."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import UserError


#: image file suffixes every reader of image folders accepts (what OpenCV decodes), lower case
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def ensure_rgb(image: np.ndarray, what: str = "image", order: str = "rgb") -> np.ndarray:
    """HxWx3 RGB uint8 from a pixel array; the one converter for decoded files and in-memory images.

    ``order`` is the channel order of ``image``: ``"rgb"`` (arrays from callers) or ``"bgr"``
    (OpenCV's decoders). Grayscale (HxW or HxWx1) is expanded, 16-bit scaled to 8-bit (/257), and
    an alpha channel dropped: the colour channels are kept as they are, not blended over any
    background (a transparent pixel keeps its stored colour), so a file and the same pixels in
    memory give the same image.
    """
    if order not in ("rgb", "bgr"):
        raise ValueError(f"channel order must be 'rgb' or 'bgr', got {order!r}")
    img = np.asarray(image)
    if img.dtype == np.uint16:
        img = (img / 257.0).round().astype(np.uint8)
    elif img.dtype != np.uint8:
        raise UserError(f"{what}: pixel type {img.dtype} is not supported; give an 8-bit (or 16-bit) RGB image")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.ndim == 3 and img.shape[2] in (3, 4):
        img = img[..., :3]  # alpha dropped, colour kept
        if order == "bgr":
            img = img[..., ::-1]
    else:
        raise UserError(f"{what}: expected an HxW or HxWxC image with 1, 3 or 4 channels, got shape {img.shape}")
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise UserError(f"{what}: image is empty ({img.shape[1]}x{img.shape[0]})")
    return np.ascontiguousarray(img)


#: the largest image any reader decodes: each side at most MAX_SIDE (the size rule of the README)
#: and at most this many pixels; a larger one (a decompression bomb: a tiny file that inflates to
#: gigabytes) is refused from its header, before a byte of pixels is decoded
MAX_IMAGE_PIXELS = 16384 * 16384


def check_image_header(data, path, what: str = "image") -> None:
    """Refuse an encoded image whose header declares more pixels than :data:`MAX_IMAGE_PIXELS` (or a
    side above the size limit), without decoding it. Formats the header reader does not know pass
    (OpenCV's own limit then applies)."""
    import io

    from ..utils import MAX_SIDE

    try:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None  # this check is the limit; PIL's own warning would be noise
        with Image.open(io.BytesIO(data if isinstance(data, (bytes, bytearray)) else data.tobytes())) as im:
            w, h = im.size
    except Exception:  # noqa: BLE001 - unknown or damaged header: the decoder says what is wrong
        return
    if w * h > MAX_IMAGE_PIXELS or max(w, h) > MAX_SIDE:
        raise UserError(f"{path}: {what} declares {w}x{h} = {w * h:,} pixels, more than the limit of "
                        f"{MAX_IMAGE_PIXELS:,} pixels and {MAX_SIDE} per side (a decompression bomb or a huge "
                        f"scan); refused before decoding: downscale or tile it first")


def _decode(path: str | Path, what: str) -> np.ndarray:
    """The file's pixels as OpenCV decodes them (unchanged depth and channels); UserError if it cannot."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    from ..utils import native_stderr_captured

    data = np.fromfile(str(path), dtype=np.uint8)
    img = None
    if data.size:
        check_image_header(data, path, what)
        with native_stderr_captured():  # libpng/libjpeg warnings: the one line below says it instead
            img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise UserError(f"{path}: cannot decode {what} (corrupt or not an image file)")
    return img


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8 HxWx3 (see :func:`ensure_rgb`: gray expanded, alpha dropped,
    16-bit scaled)."""
    return ensure_rgb(_decode(path, "image"), str(path), order="bgr")


def read_mask(path: str | Path) -> np.ndarray:
    """Read a label-id mask as uint8 HxW (single channel or palette PNG indices)."""
    m = _decode(path, "mask")
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
