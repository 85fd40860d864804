"""Runners: one interface over PyTorch, ONNX Runtime, TensorRT and OpenVINO model files.

``with load_runner(path, **options) as runner: runner.infer(batch)``; the options are the fields
of :class:`RunnerOptions` (every backend accepts all of them and ignores what does not apply).
"""
from __future__ import annotations

from pathlib import Path

from ..card import model_kind
from ..errors import UserError
from .base import Runner, RunnerOptions


def _torch(path, options, card=None):  # the runner loads the checkpoint itself (weights and facts together)
    from .torch_runner import TorchRunner

    return TorchRunner.from_file(path, options)


def _onnx(path, options, card=None):
    from .ort_runner import OrtRunner

    return OrtRunner.from_file(path, options, card=card)


def _tensorrt(path, options, card=None):  # reads its card beside the engine's checks
    from .trt_runner import TrtRunner

    return TrtRunner.from_file(path, options)


def _openvino(path, options, card=None):
    from .openvino_runner import OpenVINORunner

    return OpenVINORunner.from_file(path, options, card=card)


#: model kind (pspnet_deploy.card.model_kind) -> factory(path, RunnerOptions, card=None)
FACTORIES = {"torch": _torch, "onnx": _onnx, "tensorrt": _tensorrt, "openvino": _openvino}


def load_runner(path: str | Path, options: RunnerOptions | None = None, *, card=None, **overrides) -> Runner:
    """The runner for a model file, by its kind (``.pt`` PyTorch, ``.onnx`` ONNX Runtime,
    ``.engine`` TensorRT, ``.xml`` OpenVINO IR). ``options`` and/or keyword overrides: see :class:`RunnerOptions`.
    ``card``: the file's :class:`~pspnet_deploy.card.ModelCard` when the caller has read it already
    (ONNX and OpenVINO runners use it instead of reading the file's facts again).
    Use it as a context manager (``with load_runner(...) as r:``) so it is closed."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: model file not found")
    kind = model_kind(p)
    return FACTORIES[kind](str(p), RunnerOptions.make(options, **overrides), card=card)


__all__ = ["FACTORIES", "Runner", "RunnerOptions", "load_runner"]
