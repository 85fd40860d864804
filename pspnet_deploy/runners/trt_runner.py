"""TensorRT runner for .engine files built by pspnet-build-engine.

The engine's sidecar (``<engine>.json``) is checked before anything touches TensorRT: a missing
sidecar, a truncated or replaced file, another TensorRT version or another GPU is refused with
one line that includes the rebuild command. The sidecar also carries the model card (classes,
palette, preprocessing, output kind), so the ONNX is not needed at run time.

:class:`EngineSession` is the TensorRT runtime: the deserialised engine, its execution context,
pinned host buffers, device buffers and one CUDA stream, all through NVIDIA's CUDA runtime bindings
(``cuda-bindings``, ``cuda.bindings.runtime``); name-based IO (``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``) so it runs on TensorRT 10 and 11; optionally a CUDA
graph per input shape (stream capture of one ``execute_async_v3`` at that shape, kept keyed by the
shape and replayed with ``cudaGraphLaunch`` only for it).

Dynamic inputs (a dynamic batch, or H and W of a ``pspnet-export --dynamic-shape`` model): the
buffers hold the largest shape of every optimisation profile; for each input shape the session
picks the tightest profile that covers it (``set_optimization_profile_async`` on its stream when it
changes, then ``set_input_shape``) and refuses, in one line naming the profiles, a shape that no
profile covers.

Concurrency (``pspnet-bench --concurrency N``): :meth:`EngineSession.lane` makes another execution
context of the same deserialised engine with its own CUDA stream, buffers, CUDA graphs and events;
:meth:`TrtRunner.request_workers` drives N of them from N threads (each thread makes the engine's
device current for itself); one context is never used by two threads. TensorRT wants contexts
that run at once on an engine with dynamic inputs each on optimisation profiles of their own:
``pspnet-build-engine --contexts N`` builds the size classes N times (``tensorrt.profile_sets`` in
the sidecar) and context ``s`` only uses set ``s``; more contexts than sets are refused in one line.
With :mod:`pspnet_deploy.engine.build`, the only module that imports ``tensorrt``.
"""
from __future__ import annotations

import ctypes
import sys
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from ..card import read_card
from ..engine.build import (check_engine, cuda_check, cudart, engine_io, environment, np_dtype, profiles_text,
                            trt_logger, trt_module, use_device)
from ..engine.sidecar import rebuild_command
from ..errors import UserError
from .base import Runner, RunnerOptions


class _Pinned:
    """Page-locked host memory (``cudaMallocHost``) of ``nbytes``, viewed as numpy arrays of any shape
    that fits (:meth:`view`); ``array`` is the view at the shape it was made for."""

    def __init__(self, rt, shape: tuple, dtype: np.dtype, nbytes: int | None = None):
        self.rt = rt
        self.dtype = dtype = np.dtype(dtype)
        need = int(np.prod(shape)) * dtype.itemsize
        self.nbytes = max(int(nbytes if nbytes is not None else need), need, 1)
        self.ptr = int(cuda_check(rt.cudaMallocHost(self.nbytes), "cudaMallocHost"))
        self.array = self.view(shape)

    def view(self, shape: tuple) -> np.ndarray:
        n = int(np.prod(shape)) * self.dtype.itemsize
        if n > self.nbytes:  # pragma: no cover - the session sizes buffers for every profile's largest shape
            raise RuntimeError(f"host buffer of {self.nbytes} bytes cannot hold {shape}")
        raw = (ctypes.c_byte * self.nbytes).from_address(self.ptr)
        return np.frombuffer(raw, dtype=np.uint8)[:n].view(self.dtype).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            self.array = None
            self.rt.cudaFreeHost(self.ptr)
            self.ptr = 0


def _covers(profile: dict, shape: tuple[int, ...]) -> bool:
    return len(shape) == len(profile["min"]) and all(a <= s <= b for a, s, b in zip(profile["min"], shape,
                                                                                     profile["max"]))


def pick_profile(profiles: list[dict], shape: tuple[int, ...]) -> int | None:
    """The index of the tightest profile (smallest largest shape; the first of equals) covering
    ``shape``, None when none does."""
    fits = [i for i, p in enumerate(profiles) if _covers(p, shape)]
    return min(fits, key=lambda i: (int(np.prod(profiles[i]["max"])), i)) if fits else None


class EngineSession:
    """A deserialised engine with its execution context, pinned host buffers, device buffers and a
    CUDA stream; optional CUDA graph per input shape; one reusable CUDA event pair for timing. Made
    by :meth:`open` (or the runner) after
    :func:`pspnet_deploy.engine.build.check_engine` accepted the file; :meth:`lane` makes another
    context of the same engine on its own stream (``parent``: the session whose engine it shares)."""

    def __init__(self, engine_path: str | Path, sidecar: dict, device_index: int = 0, cuda_graph: bool = False,
                 verbose: bool = False, parent: "EngineSession | None" = None, profile_set: int = 0):
        trt = trt_module()
        self._rt = rt = cudart()
        self.path = str(engine_path)
        self.sidecar = sidecar
        self.device_index = int(device_index)
        self._dev: dict[str, int] = {}
        self._host: dict[str, _Pinned] = {}
        self._graphs: dict[tuple[int, ...], tuple] = {}  # input shape -> (graph, graph exec) captured at it
        self._events: tuple = ()  # (start, end): created on the first timed call, reused, destroyed at close
        self._verbose = verbose
        self.profile_set = int(profile_set)
        self.stream = None
        self.context = self.engine = self._runtime = None
        try:
            use_device(device_index)  # TensorRT runs on the current device
            self.stream = cuda_check(rt.cudaStreamCreate(), "cudaStreamCreate")
            if parent is None:
                self._deserialize(trt, engine_path, sidecar, verbose)
            else:  # another context of the parent's engine (which must outlive it)
                self._logger, self._runtime, self.engine = parent._logger, parent._runtime, parent.engine
            self.context = self.engine.create_execution_context()
            if self.context is None:
                raise UserError(f"{engine_path}: TensorRT could not create an execution context (out of GPU memory?)")
            self._read_io(trt, engine_path)
            self._alloc_buffers(trt)
            for name, ptr in self._dev.items():
                if not self.context.set_tensor_address(name, ptr):
                    raise UserError(f"{engine_path}: TensorRT refused the device address of tensor {name!r}")
            self.cuda_graph = bool(cuda_graph)
        except BaseException:
            self.close()
            raise

    def _deserialize(self, trt, engine_path, sidecar: dict, verbose: bool) -> None:
        self._logger = trt_logger(trt, verbose)
        self._runtime = trt.Runtime(self._logger)
        if sidecar["tensorrt"].get("version_compatible") and hasattr(self._runtime, "engine_host_code_allowed"):
            self._runtime.engine_host_code_allowed = True
        self.engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise UserError(f"{engine_path}: TensorRT could not deserialise this engine (see its message above); "
                            f"rebuild it: {rebuild_command(sidecar, engine_path)}")

    def _read_io(self, trt, engine_path) -> None:
        io = engine_io(trt, self.engine)
        if len(io["inputs"]) != 1 or not io["outputs"]:
            raise UserError(f"{engine_path}: expected one input and at least one output, found "
                            f"{len(io['inputs'])} inputs and {len(io['outputs'])} outputs")
        self.io = io
        inp = io["inputs"][0]
        self.input_name = inp["name"]
        self.input_shape = list(inp["shape"])
        self.input_dtype = np_dtype(trt, self.engine.get_tensor_dtype(self.input_name))
        self.output_names = [o["name"] for o in io["outputs"]]
        every = list(io["profiles"])  # [] for a static input
        sets = int((self.sidecar.get("tensorrt") or {}).get("profile_sets") or 1)
        self.profile_sets = sets if every and len(every) % sets == 0 else 1
        if self.profile_set >= self.profile_sets:  # pragma: no cover - the runner checks before making lanes
            raise UserError(f"{engine_path}: profile set {self.profile_set} of {self.profile_sets}")
        k = len(every) // self.profile_sets
        self._first = self.profile_set * k  # engine index of this context's first profile
        self.profiles = every[self._first:self._first + k]  # this context's size classes
        if self.input_shape[0] == -1:
            self.fixed_batch = None
            self.batch_range = (min(int(p["min"][0]) for p in self.profiles),
                                max(int(p["max"][0]) for p in self.profiles))
            self.max_batch = self.batch_range[1]
        else:
            self.fixed_batch = int(self.input_shape[0])
            self.batch_range = None
            self.max_batch = self.fixed_batch
        self.dynamic = -1 in self.input_shape
        self._profile = 0  # a new context runs profile 0 (an index among the engine's profiles)
        self._shape: tuple[int, ...] | None = None
        self._out_shapes: dict[str, tuple[int, ...]] = {}

    def _alloc_buffers(self, trt) -> None:
        """One buffer per tensor, as large as its largest shape over every profile (the output
        shapes TensorRT derives at each profile's largest input)."""
        largest = [tuple(int(d) for d in p["max"]) for p in self.profiles] or [tuple(self.input_shape)]
        need: dict[str, int] = {}
        for index, shape in enumerate(largest):
            self._set_shape(shape, self._first + index if self.profiles else None)
            for name, s in [(self.input_name, shape), *self._out_shapes.items()]:
                dt = np.dtype(self.input_dtype if name == self.input_name else
                              np_dtype(trt, self.engine.get_tensor_dtype(name)))
                need[name] = max(need.get(name, 0), int(np.prod(s)) * dt.itemsize)
        for name in [self.input_name, *self.output_names]:
            dt = self.input_dtype if name == self.input_name else np_dtype(trt, self.engine.get_tensor_dtype(name))
            shape = largest[0] if name == self.input_name else self._out_shapes[name]
            host = _Pinned(self._rt, shape, dt, nbytes=need[name])
            self._host[name] = host
            self._dev[name] = int(cuda_check(self._rt.cudaMalloc(host.nbytes), "cudaMalloc"))

    @classmethod
    def open(cls, engine_path: str | Path, device: str | int | None = 0, cuda_graph: bool = False,
             verify_hash: bool = True, verbose: bool = False) -> "EngineSession":
        sidecar, env = check_engine(engine_path, env=environment(device), verify_hash=verify_hash)
        return cls(engine_path, sidecar, env["device_index"], cuda_graph=cuda_graph, verbose=verbose)

    def lane(self, profile_set: int, cuda_graph: bool | None = None) -> "EngineSession":
        """Another execution context of this engine with its own CUDA stream, buffers, graphs and
        events (for one more request in flight) on optimisation profile set ``profile_set``; close
        it before this session."""
        return EngineSession(self.path, self.sidecar, self.device_index,
                             cuda_graph=self.cuda_graph if cuda_graph is None else cuda_graph, verbose=self._verbose,
                             parent=self, profile_set=profile_set)

    # ---- shapes and profiles
    def _profiles_text(self) -> str:
        return profiles_text([(p["min"], p["opt"], p["max"]) for p in self.profiles])

    def _refuse(self, shape: tuple[int, ...]) -> UserError:
        if not self.profiles:
            want = "x".join(map(str, self.input_shape))
            return UserError(f"{self.path}: the engine takes input {want}, got {'x'.join(map(str, shape))}")
        return UserError(f"{self.path}: input {'x'.join(map(str, shape))} is outside every optimisation profile of "
                         f"the engine ({self._profiles_text()}); resize the input or rebuild with a profile that "
                         f"covers it (--profiles / --batch): {rebuild_command(self.sidecar, self.path)}")

    def _set_shape(self, shape, profile: int | None = None) -> None:
        """Make the context run at input ``shape``: pick the profile that covers it (``profile``
        forces one), switch to it on this stream when it changes, set the input shape, and note the
        output shapes TensorRT derives. UserError (one line) for a shape no profile covers."""
        shape = tuple(int(d) for d in shape)
        if shape == self._shape and profile is None:
            return
        if not self.dynamic:
            if list(shape) != self.input_shape:
                raise self._refuse(shape)
        else:
            index = pick_profile(self.profiles, shape) if profile is None else profile - self._first
            if index is None:
                raise self._refuse(shape)
            index += self._first  # the engine's index of this context's profile
            if index != self._profile:
                self._shape = None  # TensorRT forgets the input shape set under the previous profile
                if not self.context.set_optimization_profile_async(index, int(self.stream)):
                    raise UserError(f"{self.path}: TensorRT refused optimisation profile {index} for this execution "
                                    f"context (see its message above)")
                self._profile = index
            if not self.context.set_input_shape(self.input_name, list(shape)):
                raise UserError(f"{self.path}: TensorRT refused input shape {list(shape)} for {self.input_name!r} "
                                f"(profile {index}: {self._profiles_text()}); rebuild with a profile that covers it: "
                                f"{rebuild_command(self.sidecar, self.path)}")
        self._shape = shape
        self._out_shapes = {name: tuple(int(d) for d in self.context.get_tensor_shape(name))
                            for name in self.output_names}

    def _full_shape(self, n_or_shape) -> tuple[int, ...]:
        """An input shape from a batch size (the other dimensions as staged last) or a full shape."""
        if isinstance(n_or_shape, (tuple, list)):
            return tuple(int(d) for d in n_or_shape)
        base = self._shape or tuple(self.input_shape)
        return (int(n_or_shape), *base[1:])

    # ---- execution
    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(int(self.stream)):
            raise UserError(f"{self.path}: TensorRT execution failed (see its message above)")

    def _current_shape(self) -> tuple[int, ...]:
        """The input shape the execution context runs at now (what a captured graph is frozen to)."""
        return tuple(int(d) for d in self.context.get_tensor_shape(self.input_name))

    def _launch_graph(self) -> None:
        """Replay the CUDA graph captured at the context's current input shape, capturing it on first
        use of that shape; a graph is only ever replayed for the shape it was captured at. A capture
        that fails falls back to plain runs."""
        shape = self._current_shape()
        if shape not in self._graphs:
            if not self._capture(shape):
                self._enqueue()
                return
        cuda_check(self._rt.cudaGraphLaunch(self._graphs[shape][1], self.stream), "cudaGraphLaunch")

    def _capture(self, shape: tuple[int, ...]) -> bool:
        """Capture one ``execute_async_v3`` at ``shape`` (after one plain run, which TensorRT needs after
        a shape change) into ``self._graphs[shape]``. On failure: warn, turn CUDA graphs off, False.
        On every path the stream leaves capture mode and a graph that is not kept is destroyed."""
        rt = self._rt
        self._enqueue()
        cuda_check(rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        graph = graph_exec = None
        try:
            mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
            cuda_check(rt.cudaStreamBeginCapture(self.stream, mode), "cudaStreamBeginCapture")
            try:
                ok = self.context.execute_async_v3(int(self.stream))
            finally:  # end the capture whatever happened, or the stream stays unusable
                ended = rt.cudaStreamEndCapture(self.stream)
                graph = ended[1] if len(ended) > 1 else None
            cuda_check(ended[:1], "cudaStreamEndCapture")
            if not ok:
                raise RuntimeError("execute_async_v3 returned False during capture")
            graph_exec = cuda_check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        except RuntimeError as e:  # some engines cannot be captured: run them plainly
            print(f"warning: {self.path}: CUDA graph capture failed ({e}); running without", file=sys.stderr)
            self.cuda_graph = False
            return False
        finally:
            if graph_exec is None and graph is not None:
                rt.cudaGraphDestroy(graph)
        self._graphs[shape] = (graph, graph_exec)
        return True

    def _drop_graphs(self) -> None:
        for graph, graph_exec in self._graphs.values():
            self._rt.cudaGraphExecDestroy(graph_exec)
            self._rt.cudaGraphDestroy(graph)
        self._graphs = {}

    def _copy(self, dst: int, src: int, nbytes: int, kind) -> None:
        cuda_check(self._rt.cudaMemcpyAsync(dst, src, nbytes, kind, self.stream), "cudaMemcpyAsync")

    def host_view(self, name: str) -> np.ndarray:
        """Tensor ``name``'s pinned host buffer at the shape the context runs at now."""
        shape = self._shape if name == self.input_name else self._out_shapes[name]
        return self._host[name].view(shape)

    def stage(self, batch: np.ndarray) -> tuple[int, ...]:
        """Copy ``batch`` into the pinned input buffer and set the input shape (choosing the
        profile); returns the shape (what :meth:`execute` and :meth:`device_timer` take)."""
        n = int(batch.shape[0])
        if n > self.max_batch or n < 1:
            raise UserError(f"{self.path}: batch of {n} outside what the engine accepts (1..{self.max_batch})")
        self._set_shape(batch.shape)
        np.copyto(self.host_view(self.input_name), batch, casting="same_kind" if batch.dtype.kind == "f" else "unsafe")
        return self._shape

    def execute(self, shape) -> None:
        """Host input -> device, run (graph or plain) at input ``shape`` (or a batch size), first
        output -> host; not synchronised."""
        self._set_shape(self._full_shape(shape))  # a timer made for another shape may run after a stage() of this one
        kinds = self._rt.cudaMemcpyKind
        self._copy(self._dev[self.input_name], self._host[self.input_name].ptr,
                   self.host_view(self.input_name).nbytes, kinds.cudaMemcpyHostToDevice)
        if self.cuda_graph:
            self._launch_graph()
        else:
            self._enqueue()
        out = self.output_names[0]
        self._copy(self._host[out].ptr, self._dev[out], self.host_view(out).nbytes, kinds.cudaMemcpyDeviceToHost)

    def synchronize(self) -> None:
        cuda_check(self._rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def run(self, batch: np.ndarray) -> np.ndarray:
        """One batch (N x 3 x H x W float, or N x H x W x 3 uint8 for a uint8 engine) -> the first
        output as numpy (a copy)."""
        shape = self.stage(batch)
        self.execute(shape)
        self.synchronize()
        return np.array(self.host_view(self.output_names[0]), copy=True)

    def device_timer(self, shape) -> Callable[[], float]:
        """``call()``: one execution of the staged input of ``shape`` (or batch size) timed with CUDA
        events on the stream (copies in and out included, host staging excluded); milliseconds.
        Every timer shares the session's one event pair (created here once, destroyed by :meth:`close`)."""
        rt = self._rt
        shape = self._full_shape(shape)
        while len(self._events) < 2:
            self._events += (cuda_check(rt.cudaEventCreate(), "cudaEventCreate"),)
        start, end = self._events

        def call() -> float:
            cuda_check(rt.cudaEventRecord(start, self.stream), "cudaEventRecord")
            self.execute(shape)
            cuda_check(rt.cudaEventRecord(end, self.stream), "cudaEventRecord")
            cuda_check(rt.cudaEventSynchronize(end), "cudaEventSynchronize")
            return float(cuda_check(rt.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))
        return call

    def close(self) -> None:
        rt = getattr(self, "_rt", None)
        if rt is None:
            return
        if self.stream is not None:
            rt.cudaStreamSynchronize(self.stream)
        self._drop_graphs()
        for ev in self._events:
            rt.cudaEventDestroy(ev)
        self._events = ()
        for ptr in self._dev.values():
            rt.cudaFree(ptr)
        self._dev = {}
        for host in self._host.values():
            host.free()
        self._host = {}
        self.context = self.engine = self._runtime = None
        if self.stream is not None:
            rt.cudaStreamDestroy(self.stream)
            self.stream = None
        self._rt = None

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


def _with_contexts(command: str, n: int) -> str:
    """``command`` (a recorded build command) asking for ``--contexts n``."""
    import shlex

    try:
        argv = shlex.split(command)
    except ValueError:  # pragma: no cover - a sidecar written by hand
        return f"{command} --contexts {n}"
    if "--contexts" in argv[:-1]:
        argv[argv.index("--contexts") + 1] = str(n)
    else:
        argv += ["--contexts", str(n)]
    return shlex.join(argv)


class TrtRunner(Runner):
    backend = "tensorrt"

    def __init__(self, session: EngineSession, card, device_index: int = 0):
        super().__init__(card, sha256=card.sidecar["engine"].get("sha256"))
        self.session = session
        self.sidecar = card.sidecar
        self.fixed_batch = session.fixed_batch
        self.batch_range = session.batch_range
        self._lanes: list[EngineSession] = []  # more contexts for requests in flight (request_workers)
        hw = (1, 2) if self.input_kind == "uint8" else (2, 3)  # a uint8 engine takes N x H x W x 3 pixels
        h, w = session.input_shape[hw[0]], session.input_shape[hw[1]]
        if h > 0 and w > 0:  # a dynamic-shape engine keeps the card's size (the export's optimise-for size)
            self.preprocess = self.preprocess.with_size(h, w)
        self._device = f"cuda:{device_index}"

    @classmethod
    def from_file(cls, path: str, options: RunnerOptions | None = None, **overrides) -> "TrtRunner":
        o = RunnerOptions.make(options, **overrides)
        sidecar, env = check_engine(path, env=environment(o.device), verify_hash=o.verify_hash)
        card = read_card(path)
        session = EngineSession(path, sidecar, env["device_index"], cuda_graph=o.cuda_graph, verbose=o.verbose)
        r = cls(session, card, env["device_index"])
        r.gpu = env["gpu"]
        r.tensorrt_version = env["tensorrt"]
        return r

    def device(self) -> str:
        return self._device

    def describe(self) -> dict:
        d = super().describe()
        d.update({"tensorrt": getattr(self, "tensorrt_version", None), "gpu": getattr(self, "gpu", None),
                  "cuda_graph": bool(self.session.cuda_graph) if self.session else None,
                  "batch_range": self.batch_range, "onnx_sha256": self.sidecar.get("onnx", {}).get("sha256"),
                  "profiles": self.sidecar.get("io", {}).get("profiles") or None})
        return d

    def infer(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run(self.model_input(batch))
        return out.astype(np.float32) if out.dtype == np.float16 else out

    def request_workers(self, batch: np.ndarray, n: int):
        """``n`` requests in flight: ``n`` execution contexts of the one engine, each on its own CUDA
        stream with its own buffers (and CUDA graphs with ``cuda_graph``), one per thread; the
        runner's own context is the first, the others are made on first need and kept until
        :meth:`close`."""
        n = int(n)
        x = self.model_input(batch)
        sets = self.session.profile_sets
        if self.session.dynamic and n > sets:
            raise UserError(f"{self.path}: {n} requests in flight need {n} execution contexts, each on optimisation "
                            f"profiles of its own, but the engine has profiles for {sets}; rebuild it with "
                            f"--contexts {n}: {_with_contexts(rebuild_command(self.sidecar, self.path), n)}")
        while len(self._lanes) < n - 1:
            self._lanes.append(self.session.lane(profile_set=len(self._lanes) + 1 if self.session.dynamic else 0))
        lanes = [self.session, *self._lanes[:n - 1]]
        device = self.session.device_index

        def worker(lane: EngineSession) -> Callable[[], np.ndarray]:
            local = threading.local()

            def call() -> np.ndarray:
                if not getattr(local, "ready", False):  # CUDA's current device is per thread
                    use_device(device)
                    local.ready = True
                return lane.run(x)
            return call
        return ([worker(lane) for lane in lanes],
                f"{n} TensorRT execution context{'s' if n > 1 else ''}, each on its own CUDA stream, one per thread")

    def model_timer(self, batch: np.ndarray) -> tuple[Callable[[], float], str]:
        """CUDA events on the engine's stream around copy in, execution (or graph replay) and copy out."""
        shape = self.session.stage(self.model_input(batch))
        return self.session.device_timer(shape), "CUDA events (pinned host copies in and out included)"

    def close(self) -> None:
        for lane in self._lanes:  # before the session whose engine they share
            lane.close()
        self._lanes = []
        if self.session is not None:
            self.session.close()
            self.session = None


# ---------------------------------------------------------------------------------------------
# pspnet-debug: layer outputs of a debug build, and TensorRT's per-layer profiler
# ---------------------------------------------------------------------------------------------

def _run_all(session: EngineSession, batch: np.ndarray) -> dict:
    """One batch through ``session``; every output (the model's and the marked layers') as numpy."""
    session.stage(batch)
    kinds = session._rt.cudaMemcpyKind
    session._copy(session._dev[session.input_name], session._host[session.input_name].ptr,
                  session.host_view(session.input_name).nbytes, kinds.cudaMemcpyHostToDevice)
    session._enqueue()
    for name in session.output_names:
        session._copy(session._host[name].ptr, session._dev[name], session.host_view(name).nbytes,
                      kinds.cudaMemcpyDeviceToHost)
    session.synchronize()
    return {name: np.array(session.host_view(name), copy=True) for name in session.output_names}


def debug_capture(onnx_path: str | Path, tensors: list[str], device: str | int | None = 0):
    """A callable ``f(x) -> {tensor name: array}`` running a debug build of ``onnx_path`` (the
    engine's source ONNX) with ``tensors`` marked as outputs (:func:`~pspnet_deploy.engine.build.
    build_debug_network`); the model output is under ``"__output__"``. Needs TensorRT and a GPU."""
    import tempfile

    from ..engine.build import build_debug_network

    data, marked, env = build_debug_network(onnx_path, tensors, device)
    tmp = tempfile.NamedTemporaryFile(prefix="pspnet-debug-", suffix=".engine", delete=False)
    try:
        tmp.write(data)
        tmp.close()
        session = EngineSession(tmp.name, {"tensorrt": {}, "build": {}}, env["device_index"])
    finally:
        Path(tmp.name).unlink(missing_ok=True)
    main = next(n for n in session.output_names if n not in set(marked))

    def run(x: np.ndarray) -> dict:
        outs = _run_all(session, x)
        res = {k: v.astype(np.float32, copy=False) for k, v in outs.items() if k in set(marked)}
        res["__output__"] = outs[main].astype(np.float32, copy=False)
        return res

    run.session = session
    return run


def layer_profiler(trt):
    """(profiler, times): an ``IProfiler`` subclass instance whose ``report_layer_time`` adds each
    layer's milliseconds to ``times`` (layer name -> [total ms, calls])."""
    times: dict[str, list] = {}

    class LayerTimes(trt.IProfiler):
        def report_layer_time(self, layer_name, ms):
            row = times.setdefault(str(layer_name), [0.0, 0])
            row[0] += float(ms)
            row[1] += 1

    return LayerTimes(), times


def _layer_precisions(trt, engine) -> dict[str, str]:
    """Layer name -> precision from the engine inspector's JSON (needs ProfilingVerbosity.DETAILED
    at build; empty otherwise): the data type of the layer's first output."""
    import json

    try:
        text = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
        info = json.loads(text)
    except Exception:  # noqa: BLE001 - precision is context; the times stand without it
        return {}
    out = {}
    for layer in info.get("Layers", []) if isinstance(info, dict) else []:
        if not isinstance(layer, dict):
            continue
        fmt = " ".join(str(o.get("Format/Datatype", "")) for o in layer.get("Outputs", [])[:1]).lower()
        prec = next((p for key, p in (("int8", "int8"), ("half", "fp16"), ("fp16", "fp16"), ("bf16", "bf16"),
                                      ("float", "fp32"), ("fp32", "fp32")) if key in fmt), None)
        if prec:
            out[str(layer.get("Name"))] = prec
    return out


def profile_engine(path: str | Path, batch: np.ndarray, runs: int = 3, device: str | int | None = 0) -> list[dict]:
    """TensorRT's layer profiler (``IExecutionContext.profiler``) on the engine: one warm-up call,
    then ``runs`` calls per image; rows ``{node, type, precision, ms}`` (mean ms per image)."""
    session = EngineSession.open(path, device)
    try:
        trt = trt_module()
        profiler, times = layer_profiler(trt)
        session.context.profiler = profiler
        x = np.ascontiguousarray(batch, dtype=np.float32)
        session.run(x[:1])
        times.clear()
        calls = 0
        for _ in range(max(1, int(runs))):
            for i in range(x.shape[0]):
                session.run(x[i:i + 1])
                calls += 1
        precisions = _layer_precisions(trt, session.engine)
        return [{"node": name, "type": "trt", "precision": precisions.get(name, "?"), "ms": total / max(1, calls)}
                for name, (total, _n) in times.items()]
    finally:
        session.close()
