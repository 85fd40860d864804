"""Small shared helpers: atomic writes, hashing, versions, strict-JSON copies."""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import UserError


@contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the destination folder; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=parent)
    except OSError as e:
        raise UserError(f"{path}: cannot write here ({e.strerror}); choose a writable output path") from e
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; finished files get the usual mode
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


class _ProbeDone(Exception):
    pass


def check_writable(path: str | Path, expect: str = "a file path") -> None:
    """Fail early (before minutes of work) when a file cannot be written at ``path``; leaves nothing.
    ``expect`` says what to give instead of a folder (e.g. "an .onnx file path")."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give {expect}")
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"")
            raise _ProbeDone  # leave nothing behind
    except _ProbeDone:
        pass
    except PermissionError as e:
        raise UserError(f"{path}: cannot write here ({e.strerror}); choose a writable output path") from e


def say(progress: bool, msg: str) -> None:
    """A progress line on stderr (stdout carries a command's result); nothing when ``progress`` is off."""
    if progress:
        print(msg, file=sys.stderr, flush=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def versions() -> dict:
    """Versions of the toolkit and the libraries that matter to numbers (those installed)."""
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version()}
    for name in ("pspnet-deploy", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "openvino", "numpy",
                 "opencv-python-headless"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def jsonable(obj):
    """Copy of ``obj`` safe for strict JSON: NaN/Inf floats become strings, numpy scalars and arrays
    Python values, anything else that JSON has no type for (paths, ...) its ``str``."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return str(obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)
