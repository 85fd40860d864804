"""One small interface over every backend (after polygraphy's runners).

A runner is made by :func:`pspnet_deploy.runners.load_runner` from a model file and offers:

- ``infer(batch)``: float32 NCHW array already preprocessed at ``input_size`` -> numpy logits
  (N, C, H, W) float32 or labels (N, H, W) integer, per ``output_kind``;
- ``describe()``: a dict with backend, precision, input size, device, file and its hash;
- ``preprocess`` (:class:`~pspnet_deploy.data.Preprocess`), ``classes``, ``palette``,
  ``ignore_index``, ``output_kind``, ``input_size``, ``fixed_batch`` (int or None).
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..data.preprocess import Preprocess


class Runner(ABC):
    backend: str = "?"
    precision: str = "fp32"
    output_kind: str = "logits"
    fixed_batch: int | None = None
    #: batch sizes an engine with a dynamic profile accepts (min, max); None when unconstrained
    batch_range: tuple[int, int] | None = None

    def __init__(self, preprocess: Preprocess, classes: list[str], palette: list[list[int]], ignore_index: int = 255,
                 path: str | None = None, sha256: str | None = None):
        self.preprocess = preprocess
        self.classes = list(classes)
        self.palette = [list(c) for c in palette]
        self.ignore_index = ignore_index
        self.path = path
        self.sha256 = sha256

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.preprocess.input_size)

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch (float32 NCHW at ``input_size``); returns logits or labels as numpy."""

    def infer_labels(self, batch: np.ndarray) -> np.ndarray:
        out = self.infer(batch)
        return out.argmax(1) if out.ndim == 4 else out

    def device(self) -> str:
        return "cpu"

    def describe(self) -> dict:
        return {"backend": self.backend, "precision": self.precision, "input_size": list(self.input_size),
                "output_kind": self.output_kind, "device": self.device(), "path": self.path, "sha256": self.sha256,
                "fixed_batch": self.fixed_batch, "num_classes": self.num_classes}

    def check_batch(self, batch: np.ndarray) -> None:
        from ..errors import UserError

        h, w = self.input_size
        if batch.ndim != 4 or batch.shape[1] != 3 or tuple(batch.shape[2:]) != (h, w):
            raise UserError(f"{self.path}: model takes Nx3x{h}x{w} input, got {'x'.join(map(str, batch.shape))}; "
                            f"preprocess images with the model's preprocessing")
        if self.fixed_batch is not None and batch.shape[0] != self.fixed_batch:
            raise UserError(f"{self.path}: model has a fixed batch of {self.fixed_batch}, got a batch of "
                            f"{batch.shape[0]}; re-export with --batch {batch.shape[0]} or --dynamic-batch")
        if self.batch_range is not None and not (self.batch_range[0] <= batch.shape[0] <= self.batch_range[1]):
            raise UserError(f"{self.path}: model accepts batches of {self.batch_range[0]}..{self.batch_range[1]}, got "
                            f"{batch.shape[0]}; rebuild with a wider --batch range")

    def close(self) -> None:
        pass
