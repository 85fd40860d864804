"""Runners: one interface over PyTorch, ONNX Runtime and TensorRT model files."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .base import Runner


def load_runner(path: str | Path, device: str = "cpu", precision: str | None = None, **kwargs) -> Runner:
    """Pick the runner from the file: ``.pt`` (PyTorch), ``.onnx`` (ONNX Runtime), ``.engine`` (TensorRT)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: model file not found")
    suffix = p.suffix.lower()
    if suffix in (".pt", ".pth"):
        from .torch_runner import TorchRunner

        return TorchRunner.from_checkpoint(str(p), device=device, precision=precision or "fp32", **kwargs)
    if suffix == ".onnx":
        try:
            from .ort_runner import OrtRunner
        except ImportError as e:  # pragma: no cover
            raise UserError(f"{p}: ONNX models need onnxruntime ({e}); pip install onnxruntime") from e
        return OrtRunner.from_file(str(p), device=device, **kwargs)
    if suffix in (".engine", ".plan", ".trt"):
        from .trt_runner import TrtRunner

        return TrtRunner.from_file(str(p), device=device, **kwargs)
    raise UserError(f"{p}: unknown model file type {suffix!r}; expected .pt, .onnx or .engine")


__all__ = ["Runner", "load_runner"]
