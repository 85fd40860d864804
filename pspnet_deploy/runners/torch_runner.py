"""PyTorch runner for .pt checkpoints (CPU or CUDA, FP32 or FP16 autocast)."""
from __future__ import annotations

import numpy as np
import torch

from ..data.preprocess import Preprocess
from .base import Runner


class TorchRunner(Runner):
    backend = "torch"

    def __init__(self, model: torch.nn.Module, meta: dict, device: str = "cpu", precision: str = "fp32",
                 path: str | None = None, output_kind: str = "logits"):
        super().__init__(Preprocess.from_dict(meta["preprocess"]), meta["classes"], meta["palette"],
                         meta.get("ignore_index", 255), path=path, sha256=meta.get("sha256"))
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"precision must be fp32 or fp16, got {precision}")
        self.precision = precision
        self.output_kind = output_kind
        self.meta = meta
        self._device = torch.device(device)
        self.model = model.to(self._device).eval()

    @classmethod
    def from_checkpoint(cls, path: str, device: str = "cpu", precision: str = "fp32", input_size=None,
                        output_kind: str = "logits") -> "TorchRunner":
        from ..checkpoint import load_model

        model, meta = load_model(path)
        r = cls(model, meta, device=device, precision=precision, path=str(path), output_kind=output_kind)
        if input_size is not None:
            r.preprocess = r.preprocess.with_size(*input_size)
        return r

    def device(self) -> str:
        return str(self._device)

    @torch.inference_mode()
    def infer_tensor(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self._device, non_blocking=True)
        if self.precision == "fp16":
            with torch.autocast(self._device.type, dtype=torch.float16 if self._device.type == "cuda" else torch.bfloat16):
                out = self.model(x)
            out = out.float()
        else:
            out = self.model(x)
        return out.argmax(1).to(torch.int32) if self.output_kind == "labels" else out

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.check_batch(batch)
        return self.infer_tensor(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).cpu().numpy()
