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

    def plan(self) -> list[Layer] | None:
        """This file's own layer plan (graph backends), or None (PyTorch)."""
        return None

    def run(self, x: np.ndarray, keys: list[str]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        pass


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
        self._sessions: dict[tuple, object] = {}

    def plan(self):
        return self._plan

    def _session(self, keys: tuple[str, ...]):
        if keys in self._sessions:
            return self._sessions[keys]
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
        self._sessions.clear()  # one chunk's session at a time
        self._sessions[keys] = make_session(m, threads=self.threads, providers=self.providers, quiet=True)
        return self._sessions[keys]

    def run(self, x, keys):
        sess = self._session(tuple(keys))
        xb, n = _fixed_batch(x, self.batch)
        names = [self.output_name] + [k for k in keys if k != self.output_name]
        outs = sess.run(names, {self.input_name: xb.astype(np.float32, copy=False)})
        res = {k: np.asarray(v[:n], dtype=np.float32) for k, v in zip(names, outs)}
        res[OUTPUT] = res[self.output_name]
        return res

    def close(self):
        self._sessions.clear()


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

    def count_calls(self, x: np.ndarray) -> dict[str, int]:
        """How often each leaf module runs in one forward pass (and its output shapes)."""
        calls: dict[str, int] = {}
        self.shapes: dict[tuple[str, int], list] = {}

        def hook(name):
            def fn(mod, inp, out):
                k = calls.get(name, 0)
                calls[name] = k + 1
                if hasattr(out, "shape"):
                    self.shapes[(name, k)] = [1] + list(out.shape[1:])
            return fn

        handles = [m.register_forward_hook(hook(n)) for n, m in self.leaves.items()]
        try:
            with self.torch.no_grad():
                self.model(self.torch.from_numpy(x[:1]).to(self.device))
        finally:
            for h in handles:
                h.remove()
        return calls

    def use_plan(self, layers: list[Layer], x: np.ndarray) -> None:
        self.pairing = pair_hooks(layers, self.count_calls(x))

    def own_plan(self, x: np.ndarray) -> list[Layer]:
        """PyTorch against PyTorch: every leaf-module call is a layer, keyed ``module#k``."""
        calls = self.count_calls(x)
        order = []
        seen: dict[str, int] = {}

        def hook(name):
            def fn(mod, inp, out):
                k = seen.get(name, 0)
                seen[name] = k + 1
                order.append((name, k, type(mod).__name__))
            return fn

        handles = [m.register_forward_hook(hook(n)) for n, m in self.leaves.items()]
        try:
            with self.torch.no_grad():
                self.model(self.torch.from_numpy(x[:1]).to(self.device))
        finally:
            for h in handles:
                h.remove()
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
        counter: dict[str, int] = {}
        torch = self.torch

        def hook(name):
            def fn(mod, inp, out):
                k = counter.get(name, 0)
                counter[name] = k + 1
                key = self.pairing.get((name, k))
                if key in want and isinstance(out, torch.Tensor):
                    got[key] = out.detach().float().cpu().numpy().copy()
            return fn

        mods = {n for (n, _k), key in self.pairing.items() if key in want}
        handles = [self.leaves[n].register_forward_hook(hook(n)) for n in mods]
        try:
            with torch.no_grad():
                out = self.model(torch.from_numpy(np.ascontiguousarray(x)).to(self.device))
        finally:
            for h in handles:
                h.remove()
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
        self._compiled = None
        self._keys = None

    def plan(self):
        return self._plan

    def run(self, x, keys):
        from ..runners.openvino_runner import capture_model

        if self._keys != tuple(keys):
            self._compiled = None
            self._compiled = capture_model(self.path, list(keys), threads=self.threads)
            self._keys = tuple(keys)
        batch = self.card.fixed_batch
        xb, n = _fixed_batch(x, batch)
        res = self._compiled(xb)
        return {k: np.asarray(v[:n], dtype=np.float32) for k, v in res.items()}

    def close(self):
        self._compiled = None


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
        self._run = None
        self._keys = None

    def plan(self):
        return self._plan

    def run(self, x, keys):
        from ..runners.trt_runner import debug_capture

        if self._keys != tuple(keys):
            if self._run is not None:
                self._run.session.close()
            self._run = debug_capture(self.onnx_path, list(keys), self.device)
            self._keys = tuple(keys)
        xb, n = _fixed_batch(x, self.card.fixed_batch)
        return {k: v[:n] for k, v in self._run(xb).items()}

    def close(self):
        if self._run is not None:
            self._run.session.close()
            self._run = None


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
