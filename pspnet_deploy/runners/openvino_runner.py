"""OpenVINO runner for ``.xml`` IRs built by ``pspnet-build-engine --backend openvino`` (CPU).

The sidecar (``<name>.xml.json``) is checked before OpenVINO reads anything: a missing or
changed ``.xml`` / ``.bin``, or a sidecar from another OpenVINO version or CPU, is refused with
one line that includes the rebuild command. The sidecar's precision decides the compile hint
(``INFERENCE_PRECISION_HINT``: f32 for FP32 and INT8, bf16 for BF16), so a ``.bf16.xml`` runs as
BF16 wherever the CPU has it. The precision the compiled model really uses is read back and
reported by :meth:`OpenVINORunner.describe` (``runs_as``, ``precision_note``).
Nothing here picks a precision automatically: an FP32 or INT8 IR is compiled with the f32 hint
(OpenVINO's own default on a CPU with BF16 would be bf16, which issue 25 measured slower than FP32
on one such CPU); BF16 runs only when the IR was built as BF16. Which precision is fastest on the
machine at hand is for ``pspnet-bench`` to measure (its recommendation).

Options:

- ``threads``: ``INFERENCE_NUM_THREADS`` (all of the process's CPUs by default);
- ``performance_mode``: ``latency`` (one stream, one request: the lowest time per call) or
  ``throughput`` (several streams, each with its own requests, run asynchronously);
- ``streams``: ``NUM_STREAMS`` (a number or ``AUTO``), ``requests``: how many asynchronous
  requests feed them (default: the compiled model's ``OPTIMAL_NUMBER_OF_INFER_REQUESTS``).

An IR with a fixed batch of 1 takes any batch: the images go to the requests one each (with
several streams they run in parallel via ``AsyncInferQueue``); an IR with a dynamic batch takes
the batch in one request.
"""
from __future__ import annotations

import numpy as np

from ..card import ModelCard, read_card
from ..engine.openvino import (DEVICE, _ov, check_ir, compile_config, describe_used, ov_core, precision_note,
                               resolved_precision)
from ..engine.sidecar import rebuild_command
from ..errors import UserError
from .base import Runner, RunnerOptions


class OpenVINORunner(Runner):
    backend = "openvino"

    def __init__(self, path: str, card: ModelCard, env: dict, threads: int | None = None,
                 performance_mode: str = "latency", streams: int | str | None = None, requests: int | None = None):
        """``card``: the IR's card (:func:`pspnet_deploy.card.read_card`, its sidecar checked by
        :func:`~pspnet_deploy.engine.openvino.check_ir`); ``env``: this CPU (``cpu_environment``)."""
        sidecar = card.sidecar
        super().__init__(card, sha256=sidecar["engine"].get("sha256"))
        ov = _ov()
        self.sidecar = sidecar
        self.env = env
        self.performance_mode = performance_mode
        cfg = compile_config(self.precision, threads, performance_mode, streams)
        if requests is not None and int(requests) <= 0:
            raise UserError(f"--requests must be positive, got {requests}")
        core = ov_core()
        try:
            model = core.read_model(str(path))
        except Exception as e:  # noqa: BLE001 - a corrupt IR raises RuntimeError with a long message
            msg = " ".join(str(e).split())[:200]
            raise UserError(f"{path}: OpenVINO cannot read this IR ({msg}); rebuild it: "
                            f"{rebuild_command(sidecar, path)}") from e
        from ..card import crosscheck_runtime_io  # the IR's own IO vs its sidecar: the contract's check

        desc = lambda p: {"name": p.get_any_name(), "dtype": p.get_element_type().get_type_name(),  # noqa: E731
                          "shape": [d.get_length() if d.is_static else -1 for d in p.get_partial_shape()]}
        crosscheck_runtime_io(card, [desc(p) for p in model.inputs], [desc(p) for p in model.outputs], "the IR")
        try:
            self.compiled = core.compile_model(model, DEVICE, cfg)
        except Exception as e:  # noqa: BLE001
            raise UserError(f"{path}: OpenVINO's CPU plugin cannot compile this IR: "
                            f"{' '.join(str(e).split())[:200]}") from e
        self.config = cfg
        self.resolved = resolved_precision(self.compiled)
        self.runs_as = describe_used(self.precision, self.resolved)
        self.note = precision_note(self.precision, self.resolved, env["native"])
        inp = self.compiled.inputs[0]
        ps = inp.get_partial_shape()
        dynamic = card.size_range is not None  # a dynamic-shape IR: any H x W in its bounds, sized per call
        hw = (1, 2) if self.input_kind == "uint8" else (2, 3)
        if len(ps) != 4 or not all(d.is_static for d in list(ps)[1:2 if dynamic else 4]):
            raise UserError(f"{path}: expected an N x 3 x H x W (uint8: N x H x W x 3) input with a fixed size, got {ps}")
        if not dynamic:
            h, w = int(ps[hw[0]].get_length()), int(ps[hw[1]].get_length())
            self.preprocess = self.preprocess.with_size(h, w)
        self.model_batch = int(ps[0].get_length()) if ps[0].is_static else None
        # a batch-1 IR takes any batch (one image per request); another fixed batch is fixed
        self.fixed_batch = self.model_batch if self.model_batch not in (None, 1) else None
        self.output = self.compiled.outputs[0]
        self.threads = threads
        self.requests = int(requests) if requests else int(self.resolved.get("optimal_number_of_infer_requests") or 1)
        if performance_mode == "latency" and requests is None:
            self.requests = 1
        self._request = self.compiled.create_infer_request()
        self._queue = None
        if self.requests > 1 and self.model_batch == 1:
            self._queue = ov.AsyncInferQueue(self.compiled, self.requests)
            self._queue.set_callback(self._done)
        self._results: list = []

    @classmethod
    def from_file(cls, path: str, options: RunnerOptions | None = None, card: ModelCard | None = None,
                  **overrides) -> "OpenVINORunner":
        """``card``: the IR's card when the caller has read it (not read again)."""
        o = RunnerOptions.make(options, **overrides)
        if o.device and not str(o.device).lower().startswith("cpu"):
            raise UserError(f"{path}: OpenVINO IRs run on the CPU here, not {o.device!r}; drop --device or use "
                            f"--device cpu")
        card = card if card is not None else read_card(path, kind="openvino")
        _, env = check_ir(path, verify_hash=o.verify_hash, sidecar=card.sidecar)
        return cls(str(path), card, env, threads=o.threads, performance_mode=o.performance_mode, streams=o.streams,
                   requests=o.requests)

    def describe(self) -> dict:
        d = super().describe()
        d.update({"openvino": self.env["openvino"], "cpu": self.env["cpu"],
                  "isa": [k for k, v in self.env["isa"].items() if v], "compile_config": dict(self.config),
                  "performance_mode": self.performance_mode, "requests": self.requests,
                  "inference_precision": self.resolved.get("inference_precision"),
                  "conv_precisions": self.resolved.get("conv_precisions"), "streams": self.resolved.get("num_streams"),
                  "threads": self.resolved.get("inference_num_threads"), "precision_used": self.runs_as,
                  "precision_note": self.note, "onnx_sha256": self.sidecar.get("onnx", {}).get("sha256")})
        return d

    def _done(self, request, index) -> None:
        self._results[index] = np.array(request.get_output_tensor(0).data, copy=True)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        x = self.model_input(batch)
        n = x.shape[0]
        if self.model_batch is None or self.model_batch == n:
            out = self._request.infer({0: x})[self.output]
            return np.array(out, copy=True)
        # a batch-1 IR: one image per request
        if self._queue is None:
            return np.concatenate([np.array(self._request.infer({0: x[i:i + 1]})[self.output], copy=True)
                                   for i in range(n)])
        self._results = [None] * n
        for i in range(n):
            self._queue.start_async({0: x[i:i + 1]}, i)
        self._queue.wait_all()
        return np.concatenate(self._results)

    def request_workers(self, batch: np.ndarray, n: int):
        """``n`` infer requests of the IR compiled again with ``PERFORMANCE_HINT`` THROUGHPUT and
        ``NUM_STREAMS`` ``n`` (one stream per request in flight); each callable runs one request
        synchronously (the GIL is released while OpenVINO works), so ``n`` threads keep ``n`` in flight."""
        x = self.model_input(batch)
        if self.model_batch not in (None, x.shape[0]):
            raise UserError(f"{self.path}: the load sweep sends batches the IR takes ({self.model_batch}), got "
                            f"{x.shape[0]}")
        core = ov_core()
        cfg = compile_config(self.precision, self.threads, "throughput", int(n))
        compiled = core.compile_model(core.read_model(str(self.path)), DEVICE, cfg)
        streams = resolved_precision(compiled).get("num_streams")
        reqs = [compiled.create_infer_request() for _ in range(int(n))]
        self._sweep = (compiled, reqs)  # kept alive while the callables are used
        return ([lambda r=r: r.infer({0: x}) for r in reqs],
                f"{n} OpenVINO infer requests, THROUGHPUT hint, NUM_STREAMS {n} (resolved {streams})")

    def close(self) -> None:
        self._sweep = None
        self._queue = None
        self._request = None
        self.compiled = None



# ---------------------------------------------------------------------------------------------
# layerwise capture (pspnet-debug): the IR's op outputs under the ONNX tensor names it keeps
# ---------------------------------------------------------------------------------------------

#: ops that are not layers of their own: constants, IO, and what Q/DQ and casts become in an IR
IR_TRANSPARENT = {"Parameter", "Constant", "Result", "FakeQuantize", "Convert", "ShapeOf"}


def _ir_model(path, verify_hash: bool = True):
    card = read_card(path, kind="openvino")
    check_ir(path, verify_hash=verify_hash, sidecar=card.sidecar)
    try:
        return card, ov_core().read_model(str(path))
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{path}: OpenVINO cannot read this IR ({' '.join(str(e).split())[:200]}); rebuild it: "
                        f"{rebuild_command(card.sidecar, path)}") from e


def ir_layers(path) -> list[tuple]:
    """The IR's layers in execution order: (friendly name, tensor name, op type, [input tensor
    names], per-image shape or None, weight constant name or None). The tensor name is one the ONNX
    export gave (``getitem_3``); ops without one (shape arithmetic, the Conv before its bias Add)
    are not layers."""
    _, model = _ir_model(path)
    named = {}

    def tensor_of(output):
        names = sorted(output.get_names())
        return names[0] if names else None

    def source_tensor(inp, depth=0):
        out = inp.get_source_output()
        op = out.get_node()
        t = tensor_of(out)
        if op.get_type_name() not in IR_TRANSPARENT and t in named:
            return t
        if depth < 8 and op.get_input_size() > 0:
            return source_tensor(op.input(0), depth + 1)
        return None

    def weight_of(op, depth=0):
        for inp in op.inputs():
            src = inp.get_source_output().get_node()
            fname = src.get_friendly_name()
            if src.get_type_name() in ("Constant", "Multiply", "Convert") and ".weight" in fname \
                    and ".weight_bias" not in fname:
                return fname
            if depth < 4 and src.get_type_name() in ("Convolution", "GroupConvolution", "FakeQuantize", "Convert",
                                                      "Multiply", "Subtract", "MatMul"):
                w = weight_of(src, depth + 1)
                if w:
                    return w
        return None

    rows = []
    for op in model.get_ordered_ops():
        if op.get_type_name() in IR_TRANSPARENT or op.get_output_size() == 0:
            continue
        t = tensor_of(op.output(0))
        if not t or t.endswith(("_QuantizeLinear_Output", "_DequantizeLinear_Output")):
            continue
        ins = [s for s in (source_tensor(i) for i in op.inputs()) if s]
        ps = op.output(0).get_partial_shape()
        shape = [1] + [int(d.get_length()) for d in list(ps)[1:]] if ps.rank.is_static and all(
            d.is_static for d in list(ps)[1:]) else None
        named[t] = op
        rows.append((op.get_friendly_name(), t, op.get_type_name(), list(dict.fromkeys(ins)), shape, weight_of(op)))
    return rows


def capture_model(path, tensors: list[str], threads: int | None = None):
    """A callable ``f(x) -> {tensor name: array}`` running the IR with ``tensors`` added as
    outputs (plus the model output under ``"__output__"``), compiled as the runner compiles it."""
    card, model = _ir_model(path)
    want = set(tensors)
    ports = []
    for op in model.get_ordered_ops():
        for out in op.outputs():
            hit = want & set(out.get_names())
            if hit and op.get_type_name() != "Result":
                ports.append((sorted(hit)[0], out))
    if ports:
        model.add_outputs([p for _, p in ports])
    compiled = ov_core().compile_model(model, DEVICE, compile_config(card.precision, threads, "latency", None))
    main = compiled.outputs[0]
    extra = [(name, compiled.outputs[1 + i]) for i, (name, _) in enumerate(ports)]
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> dict:
        res = request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        out = {name: np.array(res[port], copy=True) for name, port in extra}
        out["__output__"] = np.array(res[main], copy=True)
        return out

    return run


def profile_ir(path, batch: np.ndarray, runs: int = 3, threads: int | None = None) -> list[dict]:
    """OpenVINO's per-layer performance counters (``PERF_COUNT``) for the IR compiled as the
    runner compiles it: one warm-up call, then ``runs`` calls per image of ``batch``. Returns one
    row per executed runtime layer: ``node`` (runtime name: the original op's, or a fused group's),
    ``type``, ``exec_type`` (the kernel, whose suffix is the precision it ran in, e.g.
    ``brgconv_avx512_I8``), ``ms`` (mean real time per image)."""
    card, model = _ir_model(path)
    cfg = compile_config(card.precision, threads, "latency", None)
    cfg["PERF_COUNT"] = True
    compiled = ov_core().compile_model(model, DEVICE, cfg)
    request = compiled.create_infer_request()
    x = np.ascontiguousarray(batch, dtype=np.float32)
    request.infer({0: x[:1]})  # warm-up
    totals: dict[str, dict] = {}
    calls = 0
    for _ in range(max(1, int(runs))):
        for i in range(x.shape[0]):
            request.infer({0: x[i:i + 1]})
            calls += 1
            for info in request.get_profiling_info():
                if str(info.status).endswith("NOT_RUN"):
                    continue
                row = totals.setdefault(info.node_name, {"node": info.node_name, "type": info.node_type,
                                                         "exec_type": info.exec_type, "ms": 0.0})
                row["ms"] += info.real_time.total_seconds() * 1e3
    for row in totals.values():
        row["ms"] /= calls
    return list(totals.values())
