"""ONNX Runtime runner for .onnx files written by pspnet-export (metadata carries preprocessing)."""
from __future__ import annotations

import os

import numpy as np

from ..card import ModelCard, read_card
from ..errors import UserError
from ..utils import sha256_file
from .base import Runner, RunnerOptions

ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


class OrtRunner(Runner):
    backend = "onnxruntime"

    def __init__(self, path: str, card: ModelCard, device: str = "cpu", threads: int | None = None,
                 providers: list[str] | None = None, graph_optimization: str = "all"):
        import onnxruntime as ort

        card.require("preprocess", "classes", "palette")
        super().__init__(card, sha256=sha256_file(path))
        self.path = str(path)
        self.meta = card.meta
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        so.graph_optimization_level = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[graph_optimization]
        if providers is None:
            have = available_providers()
            if device.startswith("cuda"):
                providers = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in have]
                if not providers:
                    raise UserError(f"{path}: device {device} asked for but onnxruntime has no CUDA provider "
                                    f"(installed: {', '.join(have)}); install onnxruntime-gpu or use --device cpu")
            providers = list(providers or []) + ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as e:  # noqa: BLE001
            raise UserError(f"{path}: ONNX Runtime cannot load this model: {str(e).splitlines()[0][:200]}") from e
        self.threads = threads
        self._device = device
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = ORT_DTYPES.get(inp.type, np.float32)
        self.output_names = [o.name for o in self.session.get_outputs()[:1]]

    @classmethod
    def from_file(cls, path: str, options: RunnerOptions | None = None, **overrides) -> "OrtRunner":
        o = RunnerOptions.make(options, **overrides)
        threads = o.threads
        if threads is None and os.environ.get("PSPNET_ORT_THREADS"):
            threads = int(os.environ["PSPNET_ORT_THREADS"])
        return cls(path, read_card(path, kind="onnx"), device=o.device, threads=threads, providers=o.providers,
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
