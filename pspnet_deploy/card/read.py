"""The readers' table and :func:`read_card`, the one entry every stage reads a model file through:
the format's reader, then :func:`~pspnet_deploy.card.schema.validate_card` (each fact well formed),
then :func:`~pspnet_deploy.card.crosscheck.crosscheck_card` (the facts agree with each other)."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .checkpoint import _read_torch
from .crosscheck import crosscheck_card
from .names import model_kind
from .onnx_format import _read_onnx
from .schema import ModelCard, validate_card
from .sidecar import _read_sidecar_card

#: kind -> reader; a compiled backend that writes the same sidecar contract reuses _read_sidecar_card
READERS = {"torch": _read_torch, "onnx": _read_onnx, "tensorrt": _read_sidecar_card,
           "openvino": _read_sidecar_card}


def read_card(path: str | Path, kind: str | None = None) -> ModelCard:
    """The :class:`ModelCard` of any model file, validated and cross-checked. ``kind`` overrides the
    suffix (a temporary file being written, for instance)."""
    p = Path(path)
    kind = kind or model_kind(p)
    if not p.is_file():
        raise UserError(f"{p}: model file not found")
    return crosscheck_card(validate_card(READERS[kind](p)))
