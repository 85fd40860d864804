"""ImageNet-pretrained ResNet weights as the starting backbone of ``pspnet-train``
(``--backbone-weights FILE``): the paper's recipe (a dilated ResNet initialised from ImageNet
classification, new layers at 10x the learning rate).

Accepted: a state dict in the torchvision / timm ResNet layout (``conv1``, ``bn1``,
``layer1..4.N.{conv,bn}K``, ``layerN.0.downsample.{0,1}``, classifier ``fc.*`` dropped), bare or
under ``state_dict`` / ``model``, with an optional ``module.`` prefix; loaded with the safe
unpickler (nothing in the file is executed). Dilation does not change a weight's shape, so the
same file serves output strides 8 and 16. Anything else is refused with one line.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import UserError
from ..utils import sha256_file
from .safe_pickle import safe_load

__all__ = ["read_imagenet_backbone"]

_STEM = {"conv1.": "backbone.stem.0.", "bn1.": "backbone.stem.1."}
_LAYER = re.compile(r"^layer[1-4]\.\d+\.(conv[1-3]|bn[1-3]|downsample\.[01])\.")


def read_imagenet_backbone(path: str | Path) -> tuple[dict, dict]:
    """``(state, info)``: the file's weights under this project's ``backbone.*`` names, and what
    was read (path, sha256, tensors mapped, classifier tensors dropped)."""
    import torch

    path = Path(path)
    raw = safe_load(path)
    state = raw
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: no state dict of tensors in the file; --backbone-weights takes an ImageNet ResNet "
                        f"state dict (torchvision or timm layout)")
    out, dropped, unknown = {}, [], []
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            continue
        k = k[len("module."):] if k.startswith("module.") else k
        new = next((b + k[len(a):] for a, b in _STEM.items() if k.startswith(a)), None)
        if new is None and _LAYER.match(k):
            new = "backbone." + k
        if new is None:
            (dropped if k.startswith("fc.") else unknown).append(k)
            continue
        out[new] = v
    if unknown or "backbone.stem.0.weight" not in out:
        example = unknown[0] if unknown else "conv1.weight (missing)"
        raise UserError(f"{path}: not a torchvision/timm ResNet state dict ({len(unknown)} unknown tensor(s), e.g. "
                        f"{example!r}); --backbone-weights takes torchvision's resnet18/34/50/101 .pth files; for a "
                        f"whole PSPNet from mmseg or semseg use pspnet-convert")
    return out, {"path": str(path), "sha256": sha256_file(path), "tensors": len(out), "dropped": len(dropped)}
