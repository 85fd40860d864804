"""One small interface over every backend (after polygraphy's runners).

``with load_runner(path, **options) as runner:`` (see :func:`pspnet_deploy.runners.load_runner`)
gives a runner built from a model file and its :class:`~pspnet_deploy.card.ModelCard`:

- ``infer(batch)``: float32 NCHW array already preprocessed at ``input_size``, or uint8 NHWC
  pixels at ``input_size`` in ``channel_order`` -> numpy logits (N, C, H, W) float32 or labels
  (N, H, W) integer, per ``output_kind``. Whichever the model takes (``input_kind``: ``float``, or
  ``uint8`` for ``pspnet-export --input-kind uint8``), :meth:`Runner.model_input` converts the
  other one - the one place that decides;
- ``prepare(image_rgb)``: the cheapest item for this model from an RGB image (uint8 pixels
  resized for a uint8 model, the NumPy preprocessing for a float one);
- ``prepare(image)`` for a dynamic-shape model works at the image's own size, within the bounds
  ``card.check_bounds`` enforces;
- ``infer_items(items)``: any number of preprocessed 3xHxW arrays, run in batches the model
  accepts (a fixed batch padded by repeating the last item, a batch range respected) - the one
  place padding happens;
- ``request_workers(batch, n)``: ``n`` zero-argument callables, each one request on ``batch``,
  safe to call from ``n`` threads at once (the load sweep of ``pspnet-bench --concurrency``);
- ``model_timer(batch)``: a zero-argument callable timing one model-scope call in milliseconds,
  and its name; a backend overrides it with its device clock;
- ``describe()``: backend, precision, input size, device, file and its hash;
- ``card``, ``preprocess`` (:class:`~pspnet_deploy.data.Preprocess`), ``classes``, ``palette``,
  ``ignore_index``, ``output_kind``, ``input_size``, ``fixed_batch`` (int or None), ``batch_range``.

Every backend takes the same :class:`RunnerOptions` and ignores what does not apply to it.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Callable

import numpy as np

from ..card import ModelCard
from ..errors import UserError

#: items per call for runners that accept any batch size (sliding windows, evaluation)
DEFAULT_ITEM_BATCH = 4


@dataclass
class RunnerOptions:
    """Options every backend accepts; each uses what applies to it and ignores the rest."""

    device: str = "cpu"  # cpu, cuda, cuda:N (TensorRT engines always run on a GPU: cpu means cuda:0)
    threads: int | None = None  # CPU threads (ORT intra-op, OpenVINO INFERENCE_NUM_THREADS; torch.set_num_threads)
    providers: list | None = None  # ONNX Runtime execution providers (default: from the device)
    precision: str | None = None  # PyTorch: fp32 or fp16 autocast; files with a fixed precision ignore it
    input_size: tuple | None = None  # PyTorch: run at this (H, W); fixed in ONNX and engines
    output_kind: str | None = None  # PyTorch: logits or labels; fixed in ONNX and engines
    graph_optimization: str = "all"  # ONNX Runtime: none, basic, extended, all
    cuda_graph: bool = False  # TensorRT: replay a captured CUDA graph per batch size
    verify_hash: bool = True  # TensorRT, OpenVINO: check the file's sha256 against its sidecar
    verbose: bool = False  # TensorRT: verbose log
    performance_mode: str = "latency"  # OpenVINO: latency (one stream, one request) or throughput
    streams: int | str | None = None  # OpenVINO: NUM_STREAMS (a number or AUTO; default: from the mode)
    requests: int | None = None  # OpenVINO: asynchronous requests (default: the compiled model's optimum)

    @classmethod
    def make(cls, options: "RunnerOptions | None" = None, **overrides) -> "RunnerOptions":
        """``options`` with ``overrides`` applied; TypeError for a name no backend knows."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown runner option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        base = {f.name: getattr(options, f.name) for f in fields(cls)} if options is not None else {}
        base.update({k: v for k, v in overrides.items()})
        return cls(**base)


class Runner(ABC):
    backend: str = "?"
    precision: str = "fp32"
    output_kind: str = "logits"
    fixed_batch: int | None = None
    #: batch sizes a model with a dynamic profile accepts (min, max); None when unconstrained
    batch_range: tuple[int, int] | None = None

    def __init__(self, card: ModelCard, sha256: str | None = None):
        card.require("preprocess", "classes", "palette")
        self.card = card
        self.preprocess = card.preprocessing()
        self.classes = list(card.classes)
        self.palette = [list(c) for c in card.palette]
        self.ignore_index = int(card.ignore_index)
        self.output_kind = card.output_kind
        self.input_kind = card.input_kind
        self.channel_order = card.input_channel_order if card.input_kind == "uint8" else "RGB"
        self.precision = card.precision
        self.fixed_batch = card.fixed_batch
        self.path = card.path
        self.sha256 = sha256

    # ---- lifetime
    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release what the backend holds (sessions, device memory); safe to call twice."""

    # ---- facts
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.preprocess.input_size)

    def device(self) -> str:
        return "cpu"

    def describe(self) -> dict:
        return {"backend": self.backend, "precision": self.precision, "input_size": list(self.input_size),
                "output_kind": self.output_kind, "input_kind": self.input_kind, "device": self.device(), "path": self.path, "sha256": self.sha256,
                "fixed_batch": self.fixed_batch, "num_classes": self.num_classes}

    # ---- inputs: the one place that decides between uint8 pixels and preprocessed floats
    def prepare(self, image_rgb: np.ndarray) -> np.ndarray:
        """One item for :meth:`infer_items` from an HxWx3 RGB uint8 image of any size: HxWx3 uint8
        at ``input_size`` in ``channel_order`` for a uint8 model, else the 3xHxW float32 preprocessing."""
        if self.dynamic_size:  # a dynamic-shape model: the image's own size, within its bounds
            self.card.check_bounds(*image_rgb.shape[:2])
            if self.input_kind == "uint8":
                raise UserError(f"{self.path}: a dynamic-shape model with uint8 input is not supported; export one "
                                f"of the two")
            return self.preprocess.normalize(image_rgb)
        if self.input_kind == "uint8":
            return self.preprocess.resized_uint8(image_rgb, self.channel_order)
        return self.preprocess(image_rgb)

    def model_input(self, batch: np.ndarray) -> np.ndarray:
        """``batch`` (float NCHW preprocessed, or uint8 NHWC pixels in ``channel_order``) checked and
        converted to what the model takes: contiguous float32 NCHW or uint8 NHWC."""
        self.check_batch(batch)
        is_pixels = batch.dtype == np.uint8
        if self.input_kind == "uint8":
            return np.ascontiguousarray(batch) if is_pixels else self.preprocess.to_uint8(batch, self.channel_order)
        if is_pixels:
            return self.preprocess.from_uint8(batch, self.channel_order)
        return np.ascontiguousarray(batch, dtype=np.float32)

    # ---- inference
    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch (float32 NCHW at ``input_size``); returns logits or labels as numpy."""

    def infer_labels(self, batch: np.ndarray) -> np.ndarray:
        out = self.infer(batch)
        return out.argmax(1) if out.ndim == 4 else out

    def batch_limit(self, want: int | None = None) -> int:
        """Items per call: the fixed batch, else ``want`` (default :data:`DEFAULT_ITEM_BATCH`)
        clamped into the batch range."""
        if self.fixed_batch:
            return int(self.fixed_batch)
        limit = int(want or DEFAULT_ITEM_BATCH)
        if self.batch_range is not None:
            limit = max(min(limit, self.batch_range[1]), self.batch_range[0])
        return max(limit, 1)

    @property
    def dynamic_size(self) -> bool:
        """True for a dynamic-shape model (any H x W within ``card.size_range``)."""
        return self.card.size_range is not None

    def infer_items(self, items: list[np.ndarray], batch: int | None = None) -> list[np.ndarray]:
        """Run preprocessed 3xHxW arrays or HxWx3 uint8 pixels (at ``input_size``; see
        :meth:`prepare`) in batches this model accepts.

        A fixed-batch model gets full batches (the last one padded by repeating its last item); a
        model with a batch range gets at least its minimum. Returns one output (CxHxW logits or
        HxW labels) per item.
        """
        limit = self.batch_limit(batch)
        minimum = self.batch_range[0] if self.batch_range is not None else 1
        outs: list[np.ndarray] = []
        chunks = [items[s:s + limit] for s in range(0, len(items), limit)]
        if self.dynamic_size:  # items of a dynamic-shape model may differ in size: batch equal sizes only
            chunks = [c[i:j] for c in chunks for i, j in _runs([x.shape for x in c])]
        for chunk in chunks:
            real = len(chunk)
            need = limit if self.fixed_batch else max(real, minimum)
            arr = np.stack(chunk)
            if arr.dtype != np.uint8:
                arr = arr.astype(np.float32, copy=False)
            if need > real:
                arr = np.concatenate([arr, np.repeat(arr[-1:], need - real, 0)])
            outs.extend(np.asarray(self.infer(arr))[:real])
        return outs

    def request_workers(self, batch: np.ndarray, n: int) -> tuple[list[Callable[[], object]], str]:
        """(``n`` callables, how): one request each on ``batch``, callable from ``n`` threads at once.
        Here: ``n`` threads sharing this runner (ONNX Runtime sessions and PyTorch modules in eval
        mode run concurrent calls); a backend with its own request objects overrides this."""
        x = self.model_input(batch)
        return [lambda: self.infer(x) for _ in range(int(n))], f"{n} threads sharing one {self.backend} model"

    def model_timer(self, batch: np.ndarray) -> tuple[Callable[[], float], str]:
        """(call, timer name): ``call()`` runs one model-scope call on ``batch`` and returns its
        milliseconds. Wall clock around host arrays in and out here; a backend with a device clock
        overrides this (input staged on the device, device events around the work)."""
        self.check_batch(batch)

        def call() -> float:
            t = time.perf_counter()
            self.infer(batch)
            return (time.perf_counter() - t) * 1e3
        return call, "wall clock (time.perf_counter), host arrays in and out"

    def check_batch(self, batch: np.ndarray) -> None:
        h, w = self.input_size
        if self.card.size_range is not None and batch.ndim == 4 and batch.shape[1] == 3:
            self.card.check_bounds(*batch.shape[2:])  # a dynamic-shape model takes any size in its bounds
            h, w = batch.shape[2:]
        if batch.dtype == np.uint8:
            if batch.ndim != 4 or batch.shape[3] != 3 or tuple(batch.shape[1:3]) != (h, w):
                raise UserError(f"{self.path}: uint8 pixels must be Nx{h}x{w}x3, got {'x'.join(map(str, batch.shape))}; "
                                f"resize images to the model's input size")
        elif batch.ndim != 4 or batch.shape[1] != 3 or tuple(batch.shape[2:]) != (h, w):
            raise UserError(f"{self.path}: model takes Nx3x{h}x{w} input, got {'x'.join(map(str, batch.shape))}; "
                            f"preprocess images with the model's preprocessing")
        if self.fixed_batch is not None and batch.shape[0] != self.fixed_batch:
            raise UserError(f"{self.path}: model has a fixed batch of {self.fixed_batch}, got a batch of "
                            f"{batch.shape[0]}; re-export with --batch {batch.shape[0]} or --dynamic-batch")
        if self.batch_range is not None and not (self.batch_range[0] <= batch.shape[0] <= self.batch_range[1]):
            raise UserError(f"{self.path}: model accepts batches of {self.batch_range[0]}..{self.batch_range[1]}, got "
                            f"{batch.shape[0]}; rebuild with a wider --batch range")


def _runs(keys: list) -> list[tuple[int, int]]:
    """(start, end) of each run of equal consecutive ``keys``."""
    out, start = [], 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[start]:
            out.append((start, i))
            start = i
    return out
