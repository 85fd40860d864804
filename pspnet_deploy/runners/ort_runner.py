"""ONNX Runtime runner for .onnx files written by pspnet-export (metadata carries preprocessing)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..data.preprocess import Preprocess
from ..errors import UserError
from ..utils import sha256_file
from .base import Runner

ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def read_onnx_metadata(path: str | Path) -> dict:
    """The ``pspnet.*`` metadata_props of an ONNX file, JSON-decoded, without loading weights."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - onnx raises several types for bad files
        raise UserError(f"{path}: cannot read ONNX model ({type(e).__name__}); is it a valid .onnx file?") from e
    return metadata_from_proto(model)


def metadata_from_proto(model) -> dict:
    """The ``pspnet.*`` metadata_props of a loaded ``onnx.ModelProto``, JSON-decoded."""
    meta = {}
    for p in model.metadata_props:
        if p.key.startswith("pspnet."):
            try:
                meta[p.key[len("pspnet."):]] = json.loads(p.value)
            except json.JSONDecodeError:
                meta[p.key[len("pspnet."):]] = p.value
    return meta


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


class OrtRunner(Runner):
    backend = "onnxruntime"

    def __init__(self, path: str, meta: dict, device: str = "cpu", threads: int | None = None,
                 providers: list[str] | None = None, graph_optimization: str = "all"):
        import onnxruntime as ort

        for key in ("preprocess", "classes", "palette"):
            if key not in meta:
                raise UserError(f"{path}: ONNX has no pspnet.{key} metadata; export it with pspnet-export")
        super().__init__(Preprocess.from_dict(meta["preprocess"]), meta["classes"], meta["palette"],
                         int(meta.get("ignore_index", 255)), path=str(path), sha256=sha256_file(path))
        self.meta = meta
        self.precision = str(meta.get("precision", "fp32"))
        self.output_kind = str(meta.get("output_kind", "logits"))
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
        b = inp.shape[0]
        self.fixed_batch = int(b) if isinstance(b, int) else None
        h, w = inp.shape[2], inp.shape[3]
        if isinstance(h, int) and isinstance(w, int):
            self.preprocess = self.preprocess.with_size(h, w)

    @classmethod
    def from_file(cls, path: str, device: str = "cpu", threads: int | None = None, **kwargs) -> "OrtRunner":
        if threads is None and os.environ.get("PSPNET_ORT_THREADS"):
            threads = int(os.environ["PSPNET_ORT_THREADS"])
        return cls(path, read_onnx_metadata(path), device=device, threads=threads, **kwargs)

    def device(self) -> str:
        return self._device

    def describe(self) -> dict:
        d = super().describe()
        d["providers"] = self.session.get_providers()
        d["threads"] = self.threads
        return d

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.check_batch(batch)
        out = self.session.run(self.output_names, {self.input_name: np.ascontiguousarray(batch, dtype=self.input_dtype)})[0]
        return out.astype(np.float32) if out.dtype == np.float16 else out
