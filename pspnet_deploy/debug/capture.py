"""Capture intermediate tensors of one model file, a chunk of layers at a time.

Every source answers ``run(x, keys) -> {tensor name: float32 array}`` for one preprocessed batch
``x`` and a chunk of layer keys (tensor names of the plan), always adding the model output under
:data:`OUTPUT`. Only the chunk's tensors are held; the caller folds them into running metrics and
drops them before the next chunk.

- PyTorch (``.pt``): forward hooks on the leaf modules of the chunk (outputs cloned: the ReLUs
  work in place).
- ONNX Runtime (``.onnx``): a copy of the graph with the chunk's tensors added as graph outputs,
  one session per chunk. Exposing a tensor stops ONNX Runtime from fusing across it, so a
  candidate's numbers are those of the graph with every compared tensor materialised (the same
  caveat as Polygraphy's "mark all").
- OpenVINO (``.xml``): the IR's op outputs carrying the ONNX tensor names, added as model
  outputs (see :func:`pspnet_deploy.runners.openvino_runner.capture_model`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..card import model_kind, read_card
from ..errors import UserError
from .graph import Layer, _weight_module, attach_shapes, onnx_plan, pair_hooks, sequential_plan

OUTPUT = "__output__"


def _fixed_batch(x: np.ndarray, batch: int | None) -> tuple[np.ndarray, int]:
    n = x.shape[0]
    if batch and batch > n:
        x = np.concatenate([x, np.repeat(x[-1:], batch - n, 0)])
    return x, n


class Source:
    kind = "?"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.card = read_card(self.path)
        if self.card.output_kind != "logits":
            raise UserError(f"{self.path}: outputs {self.card.output_kind}; layerwise comparison needs a logits model "
                            f"(re-export without --output-kind labels)")
        self.precision = self.card.precision
        self._chunk = None  # what captures the current chunk's tensors (a session, a compiled model, ...)
        self._chunk_keys: tuple[str, ...] | None = None

    def _for_chunk(self, keys, build):
        """The capture for this chunk of keys: ``build(keys)`` when the chunk changes, the previous
        one released first, so one chunk's capture is held at a time."""
        keys = tuple(keys)
        if self._chunk_keys != keys:
            self._release_chunk()
            self._chunk = build(list(keys))
            self._chunk_keys = keys
        return self._chunk

    def _release_chunk(self) -> None:
        self._chunk, self._chunk_keys = None, None

    def plan(self) -> list[Layer] | None:
        """This file's own layer plan (graph backends), or None (PyTorch)."""
        return None

    def run(self, x: np.ndarray, keys: list[str]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        self._release_chunk()


class OnnxSource(Source):
    kind = "onnx"

    def __init__(self, path, threads: int | None = None, device: str = "cpu"):
        super().__init__(path)
        from ..card import load_onnx_proto

        self.model = load_onnx_proto(self.path)
        self.threads = threads
        self.providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else None
        self.input_name = self.model.graph.input[0].name
        self.output_name = self.model.graph.output[0].name
        dim0 = self.model.graph.input[0].type.tensor_type.shape.dim[0]
        self.batch = dim0.dim_value if dim0.HasField("dim_value") else None
        self._plan = onnx_plan(self.model)
        attach_shapes(self._plan, self.model)
        self._types = None

    def plan(self):
        return self._plan

    def _session(self, keys: list[str]):
        """A session of a copy of the graph with ``keys`` added as outputs."""
        import onnx

        from ..ort_session import make_session
        from .graph import elem_types

        if self._types is None:
            self._types = elem_types(self.model)
        m = onnx.ModelProto()
        m.CopyFrom(self.model)
        have = {o.name for o in m.graph.output}
        for k in keys:
            if k not in have:
                m.graph.output.append(onnx.helper.make_tensor_value_info(k, self._types.get(k, onnx.TensorProto.FLOAT),
                                                                         None))
        return make_session(m, threads=self.threads, providers=self.providers, quiet=True)

    def run(self, x, keys):
        sess = self._for_chunk(keys, self._session)
        xb, n = _fixed_batch(x, self.batch)
        names = [self.output_name] + [k for k in keys if k != self.output_name]
        outs = sess.run(names, {self.input_name: xb.astype(np.float32, copy=False)})
        res = {k: np.asarray(v[:n], dtype=np.float32) for k, v in zip(names, outs)}
        res[OUTPUT] = res[self.output_name]
        return res


class TorchSource(Source):
    kind = "torch"

    def __init__(self, path, device: str = "cpu", input_size=None):
        super().__init__(path)
        import torch

        from ..checkpoint import load_model
        from ..utils import torch_device

        self.model, self.meta = load_model(self.path)
        self.device = torch_device(device)
        self.model.to(self.device)
        self.torch = torch
        self.leaves = {name: m for name, m in self.model.named_modules() if name and not list(m.children())}
        self.pairing: dict[tuple[str, int], str] = {}

    def _hooked_forward(self, x: np.ndarray, names, fn):
        """One forward pass of ``x`` with ``fn(name, k, module, output)`` called after the k-th call
        of each leaf module in ``names``; returns the model's output."""
        counter: dict[str, int] = {}

        def hook(name):
            def on_output(mod, inp, out):
                k = counter.get(name, 0)
                counter[name] = k + 1
                fn(name, k, mod, out)
            return on_output

        handles = [self.leaves[n].register_forward_hook(hook(n)) for n in names]
        try:
            with self.torch.no_grad():
                return self.model(self.torch.from_numpy(np.ascontiguousarray(x)).to(self.device))
        finally:
            for h in handles:
                h.remove()

    def count_calls(self, x: np.ndarray) -> dict[str, int]:
        """How often each leaf module runs in one forward pass (and, in ``self.shapes`` and
        ``self.order``, its output shapes and the calls in the order they ran)."""
        calls: dict[str, int] = {}
        self.shapes: dict[tuple[str, int], list] = {}
        self.order: list[tuple[str, int, str]] = []

        def record(name, k, mod, out):
            calls[name] = k + 1
            self.order.append((name, k, type(mod).__name__))
            if hasattr(out, "shape"):
                self.shapes[(name, k)] = [1] + list(out.shape[1:])

        self._hooked_forward(x[:1], self.leaves, record)
        return calls

    def use_plan(self, layers: list[Layer], x: np.ndarray) -> None:
        self.pairing = pair_hooks(layers, self.count_calls(x))

    def own_plan(self, x: np.ndarray) -> list[Layer]:
        """PyTorch against PyTorch: every leaf-module call is a layer, keyed ``module#k``."""
        calls = self.count_calls(x)
        order = self.order
        names = [(f"{n}#{k}" if calls[n] > 1 else n, f"{n}#{k}", op) for n, k, op in order]
        self.pairing = {(n, k): f"{n}#{k}" for n, k, _ in order}
        layers = sequential_plan(names)
        for layer, (n, k, _) in zip(layers, order):
            layer.module = n
            layer.shape = self.shapes.get((n, k))
        return layers

    def run(self, x, keys):
        want = set(keys)
        got: dict[str, np.ndarray] = {}

        def keep(name, k, mod, out):
            key = self.pairing.get((name, k))
            if key in want and isinstance(out, self.torch.Tensor):
                got[key] = out.detach().float().cpu().numpy().copy()

        mods = {n for (n, _k), key in self.pairing.items() if key in want}
        out = self._hooked_forward(x, mods, keep)
        got[OUTPUT] = out.detach().float().cpu().numpy()
        return got

    def close(self):
        self.model = None


class OpenVINOSource(Source):
    kind = "openvino"

    def __init__(self, path, threads: int | None = None):
        super().__init__(path)
        from ..runners.openvino_runner import ir_layers

        self.threads = threads
        # (friendly name, tensor name, op type, [input tensor names], shape, weight name)
        rows = ir_layers(self.path)
        self.names = {r[1] for r in rows}
        self._plan = sequential_plan([(r[0], r[1], r[2]) for r in rows])
        by_tensor = {r[1]: r for r in rows}
        for layer in self._plan:
            row = by_tensor[layer.tensor]
            layer.inputs = [t for t in row[3] if t in self.names]
            layer.shape = row[4]
            layer.module = (_weight_module(row[5]) if row[5] else None) or layer.scope or \
                ("upsample" if row[2] == "Interpolate" else layer.node)

    def plan(self):
        return self._plan

    def run(self, x, keys):
        from ..runners.openvino_runner import capture_model

        compiled = self._for_chunk(keys, lambda k: capture_model(self.path, k, threads=self.threads))
        xb, n = _fixed_batch(x, self.card.fixed_batch)
        res = compiled(xb)
        return {k: np.asarray(v[:n], dtype=np.float32) for k, v in res.items()}


class TensorRTSource(Source):
    """A TensorRT engine, compared through a debug build of the ONNX it was built from (its
    sidecar names it): the layers' outputs marked as engine outputs, named from the ONNX. Needs
    TensorRT and a GPU: without them, one line saying so (TensorRTUnavailable)."""

    kind = "tensorrt"

    def __init__(self, path, device: str = "cpu"):
        super().__init__(path)
        from ..engine.build import environment
        from ..engine.device import require_engine_support
        from ..flops import engine_source_onnx

        env = environment(device if device.startswith("cuda") else 0)
        require_engine_support(env, action="compare a TensorRT engine layer by layer")
        src = engine_source_onnx(self.card, strict=True)  # refused when the ONNX changed after the build
        if src is None:
            raise UserError(f"{self.path}: its sidecar names no ONNX file that still exists; the debug build needs the "
                            f"ONNX the engine was built from (keep it beside the engine)")
        from ..card import load_onnx_proto

        self.onnx_path = src
        self.model = load_onnx_proto(src)
        self._plan = onnx_plan(self.model)
        attach_shapes(self._plan, self.model)
        self.device = device if device.startswith("cuda") else 0

    def plan(self):
        return self._plan

    def _release_chunk(self) -> None:
        if self._chunk is not None:
            self._chunk.session.close()
        super()._release_chunk()

    def run(self, x, keys):
        from ..runners.trt_runner import debug_capture

        capture = self._for_chunk(keys, lambda k: debug_capture(self.onnx_path, k, self.device))
        xb, n = _fixed_batch(x, self.card.fixed_batch)
        return {k: v[:n] for k, v in capture(xb).items()}


def open_source(path: str | Path, device: str = "cpu", threads: int | None = None) -> Source:
    """The capture source for a model file, by its kind."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: model file not found")
    kind = model_kind(p)
    if kind == "onnx":
        return OnnxSource(p, threads=threads, device=device)
    if kind == "torch":
        return TorchSource(p, device=device)
    if kind == "openvino":
        return OpenVINOSource(p, threads=threads)
    if kind == "tensorrt":
        return TensorRTSource(p, device=device)
    raise UserError(f"{p}: no layerwise capture for {kind} files")
