"""The calibration table format (``<int8 model>.calib.json`` beside a Q/DQ ONNX) and the calibration
image cache's record (``calib-<key>.json`` beside its ``.npy``): their readers. The table's writer
is :func:`pspnet_deploy.precision.table.make_table` (it needs the calibration's ranges)."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError

TABLE_FORMAT = "pspnet-deploy/calibration-table"
TABLE_VERSION = 1


def read_calibration_table(path: str | Path) -> dict:
    """A table written by :func:`pspnet_deploy.precision.table.make_table` (checked header); one
    clear UserError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: calibration table not found")
    try:
        t = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: calibration table is not valid JSON ({e}); recalibrate to rewrite it") from e
    if not isinstance(t, dict) or t.get("format") != TABLE_FORMAT or not isinstance(t.get("tensors"), dict):
        raise UserError(f"{path}: not a pspnet-deploy calibration table (no '{TABLE_FORMAT}' header)")
    return t


def read_calibration_cache_record(path: str | Path) -> dict | None:
    """The record of a cached set of preprocessed calibration images (``ids``, ``skipped``, hashes),
    or None when it is missing or unreadable (the cache is then rebuilt, never trusted)."""
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(info, dict) or not isinstance(info.get("ids"), list):
        return None
    return info
