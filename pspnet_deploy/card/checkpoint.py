"""The checkpoint format (``.pt``): its payload read without running code from the file, its JSON
``meta`` string written, its weights checked finite."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from ..utils import jsonable
from .foreign import convert_hint, foreign_layout, foreign_layout_of_file
from .schema import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, ModelCard, _card_from_meta, _check_before_write

def safe_torch_load(path: str | Path, what: str = "checkpoint", hint: str = "pass a .pt written by pspnet-train or "
                    "pspnet-convert", map_location="cpu", mmap: bool = False):
    """``torch.load`` restricted to tensors and plain data (never running code from the file), with
    one-line refusals: missing, not the zip archive ``torch.save`` writes, holding Python objects,
    corrupt. PyTorch's own refusal advises ``weights_only=False``; these messages never do."""
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: cannot read {what}: not a PyTorch file ({path.stat().st_size} bytes, not the "
                        f"zip archive torch.save writes); {hint}")
    try:
        if mmap:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"{path}: refused: the file holds Python objects a {what} never contains (loading them "
                        f"could run code from the file); {hint}") from e
    except Exception as e:  # noqa: BLE001 - any failure to parse a foreign file is bad input, not a bug
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path}: cannot read {what} (corrupt, truncated or not a PyTorch file: "
                        f"{type(e).__name__}: {msg[:160]})") from e


def read_checkpoint_payload(path: str | Path, map_location="cpu", mmap: bool = False) -> dict:
    """A checkpoint's payload (``meta`` JSON-decoded), never running code from the file.

    ``torch.load`` is restricted to tensors and plain data; PyTorch's own refusal text advises
    ``weights_only=False``, which would run code from the file, so the messages here say what the
    file is instead. Refused with one line: a file that is not the zip archive ``torch.save``
    writes, a pickle holding Python objects, a foreign or newer header, a version that is not a
    number, missing or corrupt metadata, no state_dict of named tensors, a training state that is
    not a mapping. ``mmap=True`` maps the tensors instead of reading them (what :func:`read_card` uses).
    """
    import torch

    FORMAT, VERSION = CHECKPOINT_FORMAT, CHECKPOINT_VERSION
    path = Path(path)
    try:
        payload = safe_torch_load(path, map_location=map_location, mmap=mmap)
    except UserError as e:
        import pickle

        layout = foreign_layout_of_file(path) if isinstance(e.__cause__, pickle.UnpicklingError) else None
        if layout is not None:  # mmengine's meta holds Python objects: say what the file is instead
            raise UserError(convert_hint(path, layout)) from e
        raise
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        layout = foreign_layout(payload)
        if layout is not None:
            raise UserError(convert_hint(path, layout))
        raise UserError(f"{path}: not a pspnet-deploy checkpoint (no '{FORMAT}' header); train one with pspnet-train "
                        f"or convert one with pspnet-convert")
    version = payload.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise UserError(f"{path}: checkpoint version {version!r} is not a number; the file is corrupt or not ours")
    if version > VERSION:
        raise UserError(f"{path}: checkpoint version {version} is newer than this toolkit reads ({VERSION}); "
                        f"upgrade pspnet-deploy")
    try:
        meta = json.loads(payload["meta"])
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: checkpoint metadata is missing or corrupt") from e
    if not isinstance(meta, dict):
        raise UserError(f"{path}: checkpoint metadata is not a JSON object; the file is corrupt")
    payload["meta"] = meta
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                             for k, v in state.items()):
        raise UserError(f"{path}: checkpoint has no weights (no state_dict of named tensors); the file is corrupt "
                        f"or not a model checkpoint")
    ts = payload.get("train_state")
    if ts is not None and not isinstance(ts, dict):
        raise UserError(f"{path}: checkpoint's training state is corrupt; resume from another last.pt")
    if not mmap:  # the weights are in memory: a broken model is refused here, never scored
        check_finite_weights(state, path)
    return payload


def check_finite_weights(state: dict, path) -> None:
    """UserError naming the first floating tensor of ``state`` that holds NaN or Inf (a diverged
    training run, a damaged file): such a model would export, evaluate and deploy as garbage."""
    import torch

    for name, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise UserError(f"{path}: weight {name} holds {bad} NaN/Inf value{'s' if bad != 1 else ''} of {t.numel()}; "
                            f"the model is broken (diverged training or a damaged file): use an earlier checkpoint "
                            f"or retrain")


def _read_torch(path: Path) -> ModelCard:
    payload = read_checkpoint_payload(path, mmap=True)
    meta = payload["meta"]
    card = _card_from_meta(path, "torch", meta, files=[str(path.resolve())])
    card.provenance.setdefault("storage_dtype", meta.get("storage_dtype"))
    # the classifier (the head's last convolution): its output channels, from the mapped weights' shapes
    head = [(k, v) for k, v in payload["state_dict"].items() if k.startswith("head.") and k.endswith(".weight")
            and getattr(v, "ndim", 0) == 4]
    if head:
        card.graph = {"classifier": head[-1][0], "classifier_channels": int(head[-1][1].shape[0])}
    return card


def dump_checkpoint_meta(meta: dict, where: str | Path = "checkpoint") -> str:
    """The checkpoint format's ``meta`` string (validated, JSON)."""
    _check_before_write(meta, str(where), "torch")
    return json.dumps(jsonable(meta))

