"""ONNX Runtime runner for .onnx files written by pspnet-export (metadata carries preprocessing)."""
from __future__ import annotations

import numpy as np

from ..card import ModelCard, read_card
from ..errors import UserError
from ..ort_session import make_session, ort_threads
from ..utils import sha256_file
from .base import Runner, RunnerOptions

ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def execution_providers(path, device: str, providers: list[str] | None) -> list[str]:
    """``providers`` as given, else CPU for a CPU device, else the CUDA providers installed (with CPU
    as the fallback); a CUDA device without a CUDA provider is refused."""
    if providers is not None:
        return list(providers)
    gpu: list[str] = []
    if device.startswith("cuda"):
        have = available_providers()
        gpu = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in have]
        if not gpu:
            raise UserError(f"{path}: device {device} asked for but onnxruntime has no CUDA provider "
                            f"(installed: {', '.join(have)}); install onnxruntime-gpu or use --device cpu")
    return gpu + ["CPUExecutionProvider"]


class OrtRunner(Runner):
    backend = "onnxruntime"

    def __init__(self, path: str, card: ModelCard, device: str = "cpu", threads: int | None = None,
                 providers: list[str] | None = None, graph_optimization: str = "all"):
        """The session comes from the one factory (:func:`pspnet_deploy.ort_session.make_session`):
        its thread rule (``threads``, else ``PSPNET_ORT_THREADS``), optimisation level and providers."""
        card.require("preprocess", "classes", "palette")
        super().__init__(card, sha256=sha256_file(path))
        self.path = str(path)
        self.meta = card.meta
        providers = execution_providers(path, device, providers)
        threads = ort_threads(threads)
        try:
            self.session = make_session(path, threads=threads, optimization=graph_optimization, providers=providers)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001
            raise UserError(f"{path}: ONNX Runtime cannot load this model: {str(e).splitlines()[0][:200]}") from e
        self.threads = threads
        self._device = device
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = ORT_DTYPES.get(inp.type, np.float32)
        self.output_names = [o.name for o in self.session.get_outputs()[:1]]

    @classmethod
    def from_file(cls, path: str, options: RunnerOptions | None = None, card: ModelCard | None = None,
                  **overrides) -> "OrtRunner":
        """``card``: the file's card when the caller has read it (not read again)."""
        o = RunnerOptions.make(options, **overrides)
        card = card if card is not None else read_card(path, kind="onnx")
        return cls(path, card, device=o.device, threads=o.threads, providers=o.providers,
                   graph_optimization=o.graph_optimization)

    def device(self) -> str:
        return self._device

    def describe(self) -> dict:
        d = super().describe()
        d["providers"] = self.session.get_providers() if self.session is not None else None
        d["threads"] = self.threads
        return d

    def infer(self, batch: np.ndarray) -> np.ndarray:
        x = self.model_input(batch)
        out = self.session.run(self.output_names, {self.input_name: np.ascontiguousarray(x, dtype=self.input_dtype)})[0]
        return out.astype(np.float32) if out.dtype == np.float16 else out

    def close(self) -> None:
        self.session = None
