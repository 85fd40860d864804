"""TensorRT runner for .engine files built by pspnet-build-engine.

The engine's sidecar (``<engine>.json``) is checked before anything touches TensorRT: a missing
sidecar, a truncated or replaced file, another TensorRT version or another GPU is refused with
one line that includes the rebuild command. The sidecar also carries the model metadata
(classes, palette, preprocessing, output kind), so the ONNX is not needed at run time.

All TensorRT and pycuda calls are in :mod:`pspnet_deploy.engine` (:class:`EngineSession`): pinned
host buffers, device buffers, one CUDA stream, name-based IO and ``execute_async_v3``, optionally
a CUDA graph per batch size.
"""
from __future__ import annotations

import numpy as np

from ..data.preprocess import Preprocess
from .base import Runner


class TrtRunner(Runner):
    backend = "tensorrt"

    def __init__(self, session, sidecar: dict, path: str, device_index: int = 0):
        model = sidecar["model"]
        super().__init__(Preprocess.from_dict(model["preprocess"]), model["classes"], model["palette"],
                         int(model.get("ignore_index", 255)), path=str(path), sha256=sidecar["engine"].get("sha256"))
        self.session = session
        self.sidecar = sidecar
        self.precision = str(sidecar.get("precision", "fp32"))
        self.output_kind = str(model.get("output_kind", "logits"))
        self.fixed_batch = session.fixed_batch
        self.batch_range = session.batch_range
        h, w = session.input_shape[2], session.input_shape[3]
        self.preprocess = self.preprocess.with_size(h, w)
        self._device = f"cuda:{device_index}"

    @classmethod
    def from_file(cls, path: str, device: str = "cuda", cuda_graph: bool = False, verify_hash: bool = True,
                  verbose: bool = False, **_ignored) -> "TrtRunner":
        from ..engine import EngineSession, check_engine

        sidecar, env = check_engine(path, device, verify_hash=verify_hash)
        session = EngineSession(path, sidecar, env["device_index"], cuda_graph=cuda_graph, verbose=verbose)
        r = cls(session, sidecar, path, env["device_index"])
        r.gpu = env["gpu"]
        r.tensorrt_version = env["tensorrt"]
        return r

    def device(self) -> str:
        return self._device

    def describe(self) -> dict:
        d = super().describe()
        d.update({"tensorrt": getattr(self, "tensorrt_version", None), "gpu": getattr(self, "gpu", None),
                  "cuda_graph": bool(self.session.cuda_graph), "batch_range": self.batch_range,
                  "onnx_sha256": self.sidecar.get("onnx", {}).get("sha256")})
        return d

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.check_batch(batch)
        out = self.session.run(batch)
        return out.astype(np.float32) if out.dtype == np.float16 else out

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
