"""Checkpoints: a state dict plus JSON-serialisable metadata, written atomically, loaded safely.

Format (a dict saved with ``torch.save``, loaded with ``weights_only=True``):
``{"format": "pspnet-deploy/checkpoint", "version": 1, "meta": "<json>", "state_dict": {...},
  "train_state": {...} (optional: optimizer, epoch, RNG; only in training checkpoints)}``.
``meta`` holds ``model`` (PSPNet constructor arguments), ``classes``, ``palette``,
``ignore_index``, ``preprocess`` (see :class:`~pspnet_deploy.data.Preprocess`), ``dataset``,
``metrics`` and anything else the trainer records.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from .card import CHECKPOINT_FORMAT as FORMAT
from .card import CHECKPOINT_VERSION as VERSION
from .card import dump_checkpoint_meta, read_checkpoint_payload
from .data.preprocess import Preprocess
from .errors import UserError
from .model import PSPNet, build_model
from .utils import atomic_path, sha256_file


def save_checkpoint(path: str | Path, model: torch.nn.Module, meta: dict, train_state: dict | None = None,
                    half: bool = False, drop_aux: bool = False) -> Path:
    """Write atomically. ``half`` stores floating tensors as FP16; ``drop_aux`` omits the aux head."""
    state = model.state_dict()
    if drop_aux:
        state = {k: v for k, v in state.items() if not k.startswith("aux_head.")}
    if half:
        state = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    meta = dict(meta)
    meta.setdefault("model", dict(getattr(model, "config", {})))
    meta["storage_dtype"] = "float16" if half else "float32"
    meta["has_aux_head"] = not drop_aux and getattr(model, "aux_head", None) is not None
    payload = {"format": FORMAT, "version": VERSION, "meta": dump_checkpoint_meta(meta, path), "state_dict": state}
    if train_state is not None:
        payload["train_state"] = train_state
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load and validate; returns the payload with ``meta`` decoded. Never runs pickled code."""
    return read_checkpoint_payload(path, map_location=map_location)


def load_model(path: str | Path, map_location="cpu", aux: bool = False) -> tuple[PSPNet, dict]:
    """Build the model described by the checkpoint and load its weights (FP32, eval mode)."""
    payload = load_checkpoint(path, map_location)
    meta = payload["meta"]
    try:
        model = build_model(meta["model"], aux=aux)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: checkpoint has no usable model description ({e})") from e
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    if not aux:
        state = {k: v for k, v in state.items() if not k.startswith("aux_head.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{path}: weights do not match the model it describes "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.eval()
    meta["sha256"] = sha256_file(path)
    return model, meta


def preprocess_of(meta: dict) -> Preprocess:
    return Preprocess.from_dict(meta["preprocess"])


def read_bytes_checkpoint(data: bytes) -> dict:  # pragma: no cover - convenience for in-memory use
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def release_checkpoint(src: str | Path, dst: str | Path, note: str | None = None) -> dict:
    """Write a deployable copy of a training checkpoint: FP16 storage, no auxiliary head, no
    optimizer state. Loads back to the same FP32 model (FP16 rounding of the weights aside)."""
    payload = load_checkpoint(src)
    meta = dict(payload["meta"])
    model = build_model(meta["model"], aux=True)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()},
                          strict=False)
    meta["released_from"] = {"file": Path(src).name, "sha256": sha256_file(src)}
    meta.pop("history", None)
    if note:
        meta["note"] = note
    save_checkpoint(dst, model, meta, half=True, drop_aux=True)
    return {"path": str(dst), "bytes": Path(dst).stat().st_size, "sha256": sha256_file(dst)}


if __name__ == "__main__":  # python -m pspnet_deploy.checkpoint release SRC DST
    import sys

    if len(sys.argv) != 4 or sys.argv[1] != "release":
        print("usage: python -m pspnet_deploy.checkpoint release SRC.pt DST.pt", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(release_checkpoint(sys.argv[2], sys.argv[3])))
