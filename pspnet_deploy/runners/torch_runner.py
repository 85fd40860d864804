"""PyTorch runner for .pt checkpoints (CPU or CUDA, FP32 or FP16 autocast)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..card import ModelCard, card_from_meta
from .base import Runner, RunnerOptions


class TorchRunner(Runner):
    backend = "torch"

    def __init__(self, model: torch.nn.Module, meta: dict | ModelCard, device: str = "cpu", precision: str = "fp32",
                 path: str | None = None, output_kind: str = "logits"):
        card = meta if isinstance(meta, ModelCard) else card_from_meta(meta, path or "<in memory>")
        super().__init__(card, sha256=card.meta.get("sha256"))
        if path is not None:
            self.path = str(path)
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"precision must be fp32 or fp16, got {precision}")
        self.precision = precision
        self.output_kind = output_kind
        self.meta = card.meta
        self._device = torch.device(device)
        self.model = model.to(self._device).eval()

    @classmethod
    def from_file(cls, path: str, options: RunnerOptions) -> "TorchRunner":
        from ..checkpoint import load_model

        from ..geometry import min_input_size
        from ..utils import check_input_size, torch_device

        torch_device(options.device)  # CUDA asked for but not usable: one line, before anything moves
        model, meta = load_model(path)
        r = cls(model, meta, device=options.device, precision=options.precision or "fp32", path=str(path),
                output_kind=options.output_kind or "logits")
        cfg = meta["model"]
        need = min_input_size(cfg.get("bins", (1, 2, 3, 6)), cfg.get("output_stride", 8))
        # the same bounds export applies: too small for the pyramid, or more than memory can hold
        size = options.input_size
        check_input_size(size if size is not None else r.input_size,
                         "--input-size" if size is not None else f"{path}: stored input size", min_side=need)
        if size is not None:
            r.preprocess = r.preprocess.with_size(*size)
        return r

    @classmethod
    def from_checkpoint(cls, path: str, device: str = "cpu", precision: str = "fp32", input_size=None,
                        output_kind: str = "logits") -> "TorchRunner":
        return cls.from_file(path, RunnerOptions(device=device, precision=precision, input_size=input_size,
                                                 output_kind=output_kind))

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
        return self.infer_tensor(torch.from_numpy(self.model_input(batch))).cpu().numpy()

    def model_timer(self, batch: np.ndarray) -> tuple[Callable[[], float], str]:
        """On CUDA: CUDA events around the call, input staged on the GPU and output left there."""
        if self._device.type != "cuda":
            return super().model_timer(batch)
        x = torch.from_numpy(self.model_input(batch)).to(self._device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def call() -> float:
            start.record()
            self.infer_tensor(x)
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))
        return call, "CUDA events (input and output on the GPU)"
