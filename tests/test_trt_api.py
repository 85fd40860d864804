"""The TensorRT code held to the real TensorRT Python API of 10.0.1, 10.16.1 and 11.4.0.

``../shared/tensorrt-api/tensorrt-<version>.txt`` (always there in CI: without it every test here
fails, none skips) lists every class, member, enum value (with its
integer), property (and whether it is settable) and pybind11 signature of the real bindings. From
each file this test generates a stand-in ``tensorrt`` module that accepts exactly that surface:

- a name the version lacks raises AttributeError (on the module, a class or an instance), so
  ``hasattr`` feature detection sees what the real version has;
- a call is bound against the listed signature(s) (argument count, keyword names, defaults; every
  overload tried): a mismatch raises TypeError; an argument annotated as a TensorRT enum must be a
  value of that enum;
- enum values are looked up by name and carry the listed integers (``NetworkDefinitionCreationFlag.
  STRONGLY_TYPED`` is 1 in 10.x and 0 in 11.x);
- assigning a property that is not listed as settable raises AttributeError; assigning anything but
  a value of its enum to an enum-typed property (named after its enum, or in ``PROPERTY_ENUMS``: the
  dump gives properties no types) raises TypeError, as pybind11 does for an int.

Behind that surface a small model of the library does what the code paths need: the "parser"
reads the real ONNX (IO names, shapes, dtypes; a node from a foreign domain is an unsupported-node
error), the builder serialises a description of the network and profile, the runtime loads it
back (refusing a plan from another version), and ``execute_async_v3`` runs the ONNX with ONNX
Runtime on the bytes at the tensor addresses the code set (a version-compatible plan loads on a
later release of its major version, with host code allowed), and a timing cache remembers which
networks it timed. CUDA (``cuda.bindings.runtime``) is modelled with host memory: allocations,
bounds-checked copies, streams, counted events and stream capture into a replayable graph frozen at
its capture's input shapes (live graphs counted, captures can be made to fail); the GPU query
(``cuda_device_info``) is replaced by a fixed H100.

The real build (``pspnet_deploy.cli.build_engine.build`` -> ``engine.build._trt_build``) and the
real runtime (``runners.trt_runner.EngineSession`` via ``load_runner``) run unchanged against it.

What this cannot catch: anything about the real library's behaviour (which kernels, numerics and
precision of FP16/INT8 engines, what the real ONNX parser supports and how it names errors, build
failures, timing-cache contents, memory use), whether a property's getter returns what we assume,
argument types other than TensorRT enums, and the real CUDA bindings (their calls are modelled
here from cuda-bindings 12.9's runtime.pyx, not checked against it): whether a real engine can be
captured into a CUDA graph, what a graph or an event costs, and real GPU timings.
"""
from __future__ import annotations

import ctypes
import enum
import inspect
import keyword
import json
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, THREADS, TINY_SIZE, tiny_meta, trt_env

API_DIR = ROOT.parent / "shared" / "tensorrt-api"
VERSIONS = ("10.0.1", "10.16.1", "11.4.0")



def require_api(version: str) -> Path:
    """The dump of ``version``; a failure (never a skip) when it is missing: CI always has
    ``../shared/tensorrt-api``, and without it nothing here holds the code to the real API."""
    path = API_DIR / f"tensorrt-{version}.txt"
    assert path.is_file(), (f"{path} is missing: the dumped TensorRT APIs ({API_DIR}, next to the repository, see "
                            f"its README.md) must be present; these tests fail rather than skip without them")
    return path


def test_the_dumped_apis_are_present():
    for version in VERSIONS:
        lines = require_api(version).read_text().splitlines()
        assert len(lines) > 1000 and any(line.startswith("IBuilderConfig.set_flag\tmethod\t") for line in lines)


# ================================================================================ the API surface

class _Member:
    def __init__(self, kind: str, text: str):
        self.kind, self.text = kind, text.strip()
        self.settable = self.text.endswith("settable")
        self.value = None
        if kind == "enum_value" and self.text.startswith("="):
            self.value = int(self.text[1:])
        self.signatures = _signatures(self.text) if kind in ("method", "function") else []


def _split_top(text: str, sep: str = ",") -> list[str]:
    out, depth, cur = [], 0, []
    for ch in text:
        if ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        if ch == sep and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [p.strip() for p in out if p.strip()]


def _signatures(text: str) -> list[tuple[inspect.Signature, dict]]:
    """pybind11 docstring signatures (overloads joined by ' || ') -> [(Signature, {param: annotation})]."""
    sigs = []
    for part in text.split(" || "):
        part = part.strip()
        if "(" not in part:
            continue
        if part[:1].isdigit() and ". " in part[:4]:
            part = part.split(". ", 1)[1]
        start = part.index("(")
        depth, end = 0, None
        for i in range(start, len(part)):
            depth += part[i] in "([{<"
            depth -= part[i] in ")]}>"
            if depth == 0:
                end = i
                break
        params, annotations, kind = [], {}, inspect.Parameter.POSITIONAL_OR_KEYWORD
        raw = _split_top(part[start + 1:end])
        if "/" in raw:  # everything before it is positional-only
            cut = raw.index("/")
            raw = [("POS", p) for p in raw[:cut]] + [("", p) for p in raw[cut + 1:]]
        else:
            raw = [("", p) for p in raw]
        for mode, p in raw:
            if p == "*":
                kind = inspect.Parameter.KEYWORD_ONLY
                continue
            if p.startswith("**"):
                params.append(inspect.Parameter(p[2:].split(":")[0].strip(), inspect.Parameter.VAR_KEYWORD))
                continue
            if p.startswith("*"):
                params.append(inspect.Parameter(p[1:].split(":")[0].strip(), inspect.Parameter.VAR_POSITIONAL))
                kind = inspect.Parameter.KEYWORD_ONLY
                continue
            head, has_default = p, False
            eq = _split_top(p, "=")
            if len(eq) > 1:
                head, has_default = eq[0], True
            name, _, ann = head.partition(":")
            name = name.strip()
            if keyword.iskeyword(name) or not name.isidentifier():  # e.g. 'in': Python callers pass it by position
                name += "_"
            annotations[name] = ann.strip()
            pkind = inspect.Parameter.POSITIONAL_ONLY if mode == "POS" else kind
            params.append(inspect.Parameter(name, pkind, default=None if has_default else inspect.Parameter.empty))
        if params and params[0].name == "self":
            params = params[1:]
        # pybind11 allows a default before a parameter without one (the dump has some): no validation
        sigs.append((inspect.Signature(params, __validate_parameters__=False), annotations))
    return sigs


def parse_api(version: str) -> tuple[dict, dict]:
    classes: dict[str, dict[str, _Member]] = {}
    module: dict[str, _Member] = {}
    for line in require_api(version).read_text().splitlines():
        name, kind, text = (line.split("\t") + ["", ""])[:3]
        if "." in name:
            cls, member = name.split(".", 1)
            classes.setdefault(cls, {})[member] = _Member(kind, text)
        else:
            module[name] = _Member(kind, text)
    return classes, module


class EnumValue:
    """A TensorRT enum value: by name, with the listed integer."""

    def __init__(self, enum_name: str, name: str, value: int):
        self.enum_name, self.name, self.value = enum_name, name, value

    def __int__(self):
        return self.value

    __index__ = __int__

    def __eq__(self, other):
        return isinstance(other, EnumValue) and (other.enum_name, other.value) == (self.enum_name, self.value)

    def __hash__(self):
        return hash((self.enum_name, self.value))

    def __repr__(self):
        return f"<{self.enum_name}.{self.name}: {self.value}>"

    def __str__(self):  # as pybind11 prints an enum value
        return f"{self.enum_name}.{self.name}"


def _check_call(version: str, owner: str, name: str, member: _Member, enums: set, args, kwargs) -> None:
    if not member.signatures:  # the dump gives no signature (pybind11 internals): anything goes
        return
    problems = []
    for sig, annotations in member.signatures:
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError as e:
            problems.append(str(e))
            continue
        bad = None
        for pname, value in bound.arguments.items():
            wanted = annotations.get(pname, "").rsplit(".", 1)[-1]
            if wanted in enums and not (isinstance(value, EnumValue) and value.enum_name == wanted):
                bad = f"{pname} must be a tensorrt.{wanted}, got {value!r}"
        if bad is None:
            return
        problems.append(bad)
    raise TypeError(f"TensorRT {version}: {owner}.{name}(): incompatible arguments ({'; '.join(problems)}); "
                    f"the real signature is {member.text}")


#: settable properties typed as an enum whose name does not say which (from TensorRT's API reference;
#: the dump lists properties without types)
PROPERTY_ENUMS = {"ITensor.dtype": "DataType", "ILayer.precision": "DataType", "ITensor.location": "TensorLocation",
                  "IBuilderConfig.default_device_type": "DeviceType"}


def property_enum(owner: str, name: str, enums: set) -> str | None:
    """The enum a settable property takes: from :data:`PROPERTY_ENUMS`, or a property named after
    its enum (``hardware_compatibility_level`` -> ``HardwareCompatibilityLevel``), else None."""
    wanted = PROPERTY_ENUMS.get(f"{owner}.{name}") or "".join(w.capitalize() for w in name.split("_"))
    return wanted if wanted in enums else None


class _Surface:
    """Base of every generated class: only the listed members exist; calls are checked."""

    _api: dict = {}
    _trt_name = "?"
    _version = "?"
    _enums: set = set()

    def __init__(self, *args, **kwargs):
        init = type(self)._api.get("__init__")
        if init is not None:
            _check_call(self._version, self._trt_name, "__init__", init, self._enums, args, kwargs)
        object.__setattr__(self, "_props", {})
        impl = getattr(type(self), "_do_init", None)
        if impl:
            impl(self, *args, **kwargs)

    @classmethod
    def _make(cls, **state):
        """An instance the library hands out (no public constructor involved)."""
        obj = cls.__new__(cls)
        object.__setattr__(obj, "_props", {})
        for k, v in state.items():
            object.__setattr__(obj, k, v)
        return obj

    def __getattribute__(self, name):
        if name.startswith("_"):
            return object.__getattribute__(self, name)
        cls = type(self)
        member = cls._api.get(name)
        if member is None:
            raise AttributeError(f"TensorRT {cls._version}: '{cls._trt_name}' object has no attribute {name!r}")
        if member.kind == "method":
            impl = getattr(cls, f"_do_{name}", None)

            def call(*args, **kwargs):
                _check_call(cls._version, cls._trt_name, name, member, cls._enums, args, kwargs)
                return impl(self, *args, **kwargs) if impl else None
            return call
        if member.kind == "property":
            getter = getattr(cls, f"_get_{name}", None)
            return getter(self) if getter else object.__getattribute__(self, "_props").get(name)
        return object.__getattribute__(self, name)  # enum values

    def __setattr__(self, name, value):
        cls = type(self)
        member = cls._api.get(name)
        if member is None or member.kind != "property":
            raise AttributeError(f"TensorRT {cls._version}: '{cls._trt_name}' object has no attribute {name!r}")
        if not member.settable:
            raise AttributeError(f"TensorRT {cls._version}: property {cls._trt_name}.{name} can't be set")
        wanted = property_enum(cls._trt_name, name, cls._enums)
        if wanted and not (isinstance(value, EnumValue) and value.enum_name == wanted):  # pybind11 enums take no int
            raise TypeError(f"TensorRT {cls._version}: {cls._trt_name}.{name} takes a tensorrt.{wanted}, got {value!r}")
        object.__getattribute__(self, "_props")[name] = value


# ================================================================================ a model of the library

_TRT_NP = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64, "INT8": np.int8,
           "UINT8": np.uint8, "BOOL": np.bool_}
_ONNX_TRT = {1: "FLOAT", 10: "HALF", 6: "INT32", 7: "INT64", 3: "INT8", 2: "UINT8", 9: "BOOL"}


class _Logger:
    def _do_init(self, min_severity=None):
        object.__setattr__(self, "_severity", min_severity)


class _Builder:
    def _do_init(self, logger):
        object.__setattr__(self, "_logger", logger)

    def _do_create_network(self, flags=0):
        trt = self._mod
        st = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        strongly = bool(st is not None and flags & (1 << int(st)))
        return trt.INetworkDefinition._make(_inputs=[], _outputs=[], _onnx=None, _strongly_typed=strongly)

    def _do_create_builder_config(self):
        return self._mod.IBuilderConfig._make(_flags=set(), _profiles=[], _pools={}, _cache=None)

    def _do_create_optimization_profile(self):
        return self._mod.IOptimizationProfile._make(_shapes={})

    def _do_build_serialized_network(self, network, config):
        trt = self._mod
        if network._onnx is None:
            return None
        profiles = config._profiles or [{}]
        for t in network._inputs:
            for profile in profiles:
                if -1 in t["shape"] and t["name"] not in profile:
                    return None  # a dynamic input needs a shape in every profile
                lo, opt, hi = profile.get(t["name"], (t["shape"],) * 3)
                if not all(len(s) == len(t["shape"]) for s in (lo, opt, hi)) or not all(
                        (d == -1 or a == b == c == d) and 1 <= a <= b <= c
                        for a, b, c, d in zip(lo, opt, hi, t["shape"])):
                    return None  # TensorRT refuses a profile that contradicts the network or min <= opt <= max
        as_lists = [{k: [list(map(int, s)) for s in v] for k, v in p.items()} for p in profiles]
        plan = {"version": trt.__version__, "onnx": network._onnx, "inputs": network._inputs, "outputs": network._outputs,
                "profile": as_lists[0], "profiles": as_lists,
                "flags": sorted(config._flags), "strongly_typed": network._strongly_typed,
                "pools": dict(config._pools), "props": {k: str(v) for k, v in config._props.items()}}
        if config._cache is not None:  # the cache: one line per network timed; a known one is a hit
            key = (Path(network._onnx).name + ":" + ",".join(plan["flags"])).encode()
            lines = config._cache._data.splitlines()
            plan["timing_cache_hit"] = key in lines
            object.__setattr__(config._cache, "_data", b"\n".join(lines if key in lines else lines + [key]))
        return trt.IHostMemory._make(_data=json.dumps(plan).encode())


class _Network:
    def _get_num_inputs(self):
        return len(self._inputs)

    def _get_num_outputs(self):
        return len(self._outputs)


class _ParserError:
    def _do_node(self):
        return self._info["node"]

    def _do_desc(self):
        return self._info["desc"]

    def _do_code(self):
        return getattr(self._mod.ErrorCode, "UNSUPPORTED_NODE")

    def _do_node_name(self):
        return self._info["name"]

    def _do_node_operator(self):
        return self._info["op"]


class _Parser:
    def _do_init(self, network, logger):
        object.__setattr__(self, "_network", network)
        object.__setattr__(self, "_errors", [])

    def _do_parse_from_file(self, model):
        import onnx

        m = onnx.load(str(model), load_external_data=False)
        for i, n in enumerate(m.graph.node):
            if n.domain not in ("", "ai.onnx"):
                self._errors.append({"node": i, "desc": f"No importer registered for op: {n.op_type}", "name": n.name,
                                    "op": n.op_type})
        if self._errors:
            return False
        inits = {i.name for i in m.graph.initializer}

        def tensor(v):
            t = v.type.tensor_type
            return {"name": v.name, "dtype": _ONNX_TRT[t.elem_type],
                    "shape": [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim],
                    "dims": [d.dim_param if d.HasField("dim_param") else None for d in t.shape.dim]}
        self._network._inputs[:] = [tensor(v) for v in m.graph.input if v.name not in inits]
        self._network._outputs[:] = [tensor(v) for v in m.graph.output]
        object.__setattr__(self._network, "_onnx", str(Path(model).resolve()))
        return True

    def _get_num_errors(self):
        return len(self._errors)

    def _do_get_error(self, index):
        return self._mod.ParserError._make(_info=self._errors[index])


class _Config:
    def _do_set_flag(self, flag):
        self._flags.add(flag.name)

    def _do_set_memory_pool_limit(self, pool, pool_size):
        self._pools[pool.name] = int(pool_size)

    def _do_add_optimization_profile(self, profile):
        self._profiles.append(profile._shapes)
        return len(self._profiles) - 1

    def _do_create_timing_cache(self, serialized_timing_cache):
        return self._mod.ITimingCache._make(_data=bytes(serialized_timing_cache))

    def _do_set_timing_cache(self, cache, ignore_mismatch):
        object.__setattr__(self, "_cache", cache)
        return True

    def _do_get_timing_cache(self):
        return self._cache


class _Profile:
    def _do_set_shape(self, input, min, opt, max):  # noqa: A002 - TensorRT's parameter names
        self._shapes[input] = (tuple(min), tuple(opt), tuple(max))


class _Bytes:
    def __bytes__(self):
        return self._data

    def _do_serialize(self):
        return self._mod.IHostMemory._make(_data=self._data)

    def _get_nbytes(self):
        return len(self._data)


class _Runtime:
    def _do_init(self, logger):
        pass

    def _do_deserialize_cuda_engine(self, serialized_engine):
        trt = self._mod
        plan = json.loads(bytes(serialized_engine))
        built, here = (tuple(int(p) for p in v.split(".")) for v in (plan["version"], trt.__version__))
        compatible = ("VERSION_COMPATIBLE" in plan["flags"] and self._props.get("engine_host_code_allowed") is True
                      and built[0] == here[0] and built <= here)  # later versions of its major, with host code on
        if plan["version"] != trt.__version__ and not compatible:
            return None  # engines only load on the TensorRT that built them
        return trt.ICudaEngine._make(_plan=plan, _tensors=plan["inputs"] + plan["outputs"])


class _Engine:
    def _get_num_io_tensors(self):
        return len(self._tensors)

    def _get_num_layers(self):
        return 1

    def _do_get_tensor_name(self, index):
        return self._tensors[index]["name"]

    def _tensor(self, name):
        return next(t for t in self._tensors if t["name"] == name)

    def _do_get_tensor_mode(self, name):
        mode = self._mod.TensorIOMode
        return mode.INPUT if any(t["name"] == name for t in self._plan["inputs"]) else mode.OUTPUT

    def _do_get_tensor_shape(self, name):
        return tuple(self._tensor(name)["shape"])

    def _do_get_tensor_dtype(self, name):
        return getattr(self._mod.DataType, self._tensor(name)["dtype"])

    def _get_num_optimization_profiles(self):
        return len(self._plan["profiles"])

    def _do_get_tensor_profile_shape(self, name, profile_index):
        if not 0 <= profile_index < len(self._plan["profiles"]):
            raise IndexError(f"profile index {profile_index} out of range")
        return [tuple(s) for s in self._plan["profiles"][profile_index][name]]

    def _do_create_execution_context(self, *args, **kwargs):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = THREADS
        sess = ort.InferenceSession(self._plan["onnx"], so, providers=["CPUExecutionProvider"])
        shapes = {t["name"]: list(t["shape"]) for t in self._plan["inputs"]}
        return self._mod.IExecutionContext._make(_engine=self, _session=sess, _shapes=shapes, _addresses={},
                                                 _profile=0, _switches=[])


class _Context:
    def _do_set_optimization_profile_async(self, profile_index, stream_handle):
        if not 0 <= profile_index < len(self._engine._plan["profiles"]):
            return False
        if profile_index != self._profile:  # TensorRT forgets the dynamic input shapes set under another profile
            for t in self._engine._plan["inputs"]:
                self._shapes[t["name"]] = list(t["shape"])
        object.__setattr__(self, "_profile", profile_index)
        self._switches.append((profile_index, int(stream_handle)))
        return True

    def _get_active_optimization_profile(self):
        return self._profile

    def _do_set_input_shape(self, name, shape):
        lo, _, hi = self._engine._plan["profiles"][self._profile].get(name, (None, None, None))
        if lo is None or len(shape) != len(lo) or not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return False  # only shapes within the active profile
        self._shapes[name] = list(shape)
        return True

    def _do_get_tensor_shape(self, name):
        if name in self._shapes:
            return tuple(self._shapes[name])
        t = self._engine._tensor(name)  # an output: its dynamic dims are the input dims of the same name
        known = {}
        for i in self._engine._plan["inputs"]:
            for dim, value in zip(i.get("dims") or [], self._shapes[i["name"]]):
                if dim:
                    known[dim] = value
        out = [d if d != -1 else known.get(dim, -1) for d, dim in zip(t["shape"], t.get("dims") or [None] * 9)]
        if out and out[0] == -1:
            out[0] = next(iter(self._shapes.values()))[0]
        return tuple(out)

    def _do_set_tensor_address(self, name, memory):
        self._addresses[name] = int(memory)
        return True

    def _do_execute_async_v3(self, stream_handle):
        cuda = sys.modules["cuda.bindings.runtime"]
        if cuda.capturing(stream_handle):
            if cuda.fail == "execute":
                return False
            shapes = {k: list(v) for k, v in self._shapes.items()}  # a graph is frozen at the capture's shapes
            cuda.record(stream_handle, lambda: self._run(shapes), shapes)
            return True
        return self._run(self._shapes)

    def _run(self, shapes) -> bool:
        if any(-1 in s for s in shapes.values()) or set(self._addresses) != {t["name"] for t in self._engine._tensors}:
            return False  # shapes or addresses missing: TensorRT refuses to enqueue
        cuda = sys.modules["cuda.bindings.runtime"]
        feeds = {}
        for t in self._engine._plan["inputs"]:
            feeds[t["name"]] = cuda.view(self._addresses[t["name"]], shapes[t["name"]], _TRT_NP[t["dtype"]]).copy()
        outs = self._session.run(None, feeds)
        for t, value in zip(self._engine._plan["outputs"], outs):
            dst = cuda.view(self._addresses[t["name"]], value.shape, _TRT_NP[t["dtype"]])
            dst[...] = value
        return True


BEHAVIOUR = {"Logger": _Logger, "Builder": _Builder, "INetworkDefinition": _Network, "OnnxParser": _Parser,
             "ParserError": _ParserError, "IBuilderConfig": _Config, "IOptimizationProfile": _Profile,
             "IHostMemory": _Bytes, "ITimingCache": _Bytes, "Runtime": _Runtime, "ICudaEngine": _Engine,
             "IExecutionContext": _Context}


def standin_tensorrt(version: str) -> types.ModuleType:
    """The ``tensorrt`` module of ``version``, as the dump lists it, with the model above behind it."""
    classes, module = parse_api(version)
    enums = {c for c, members in classes.items() if any(m.kind == "enum_value" for m in members.values())}
    enums.add("Severity")
    mod = types.ModuleType("tensorrt")
    mod.__version__ = version
    for cname, members in classes.items():
        ns = {"_api": members, "_trt_name": cname, "_version": version, "_enums": enums, "_mod": mod}
        for i, (m, spec) in enumerate(sorted(members.items())):
            if spec.kind == "enum_value":
                ns[m] = EnumValue(cname, m, spec.value)
            elif spec.kind == "Severity":
                ns[m] = EnumValue("Severity", m, {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3,
                                                  "VERBOSE": 4}[m])
        setattr(mod, cname, type(cname, (_Surface, BEHAVIOUR.get(cname, object)), ns))
    for name, spec in module.items():
        if spec.kind == "DataType":  # trt.float32 etc.: "<DataType.FLOAT: 0>"
            member = spec.text.split(".", 1)[1].split(":")[0]
            setattr(mod, name, getattr(mod.DataType, member))
    def nptype(dt):
        if dt.name not in _TRT_NP:
            raise TypeError(f"could not resolve {dt} to a numpy type")
        return _TRT_NP[dt.name]

    functions = {"nptype": nptype, "get_nv_onnx_parser_version": lambda: int(version.replace(".", "")[:4])}
    for name, fn in functions.items():
        if name in module:
            setattr(mod, name, fn)

    def missing(name):
        raise AttributeError(f"module 'tensorrt' {version} has no attribute {name!r}")
    mod.__getattr__ = missing
    return mod


# ================================================================================ CUDA, in host memory

class cudaError_t(enum.IntEnum):  # noqa: N801 - the bindings' names
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorInvalidResourceHandle = 400
    cudaErrorStreamCaptureUnsupported = 900


def standin_cudart() -> types.ModuleType:
    """``cuda.bindings.runtime`` for the calls the TensorRT runner makes, backed by host memory:
    every call returns ``(cudaError_t, *values)`` as the real bindings do; copies are bounds-checked
    against the allocations; work enqueued on a capturing stream is recorded into a graph, frozen at
    the input shapes of its capture. Live graphs, graph execs and events are counted (``rt.graphs``,
    ``rt.execs``, ``rt.events``) so leaks show; ``rt.fail`` makes a capture fail ("execute": the
    enqueue during capture returns False; "instantiate": cudaGraphInstantiate fails)."""
    rt = types.ModuleType("cuda.bindings.runtime")
    mem: dict[int, np.ndarray] = {}  # base address -> buffer
    captures: dict[int, list] = {}
    ok = cudaError_t.cudaSuccess
    rt.cudaError_t = cudaError_t
    rt.cudaMemcpyKind = enum.IntEnum("cudaMemcpyKind", {"cudaMemcpyHostToHost": 0, "cudaMemcpyHostToDevice": 1,
                                                        "cudaMemcpyDeviceToHost": 2, "cudaMemcpyDeviceToDevice": 3})
    rt.cudaStreamCaptureMode = enum.IntEnum("cudaStreamCaptureMode", {"cudaStreamCaptureModeGlobal": 0,
                                                                      "cudaStreamCaptureModeThreadLocal": 1,
                                                                      "cudaStreamCaptureModeRelaxed": 2})
    rt.devices = []
    rt.live = mem
    rt.graphs, rt.execs, rt.events = set(), set(), set()
    rt.fail = None
    rt.captured = []  # the input shapes of every capture, in order
    counter = iter(range(1, 1 << 30))

    class Handle(int):
        pass

    def alloc(size):
        buf = np.zeros(max(int(size), 1), np.uint8)
        mem[buf.ctypes.data] = buf
        return ok, buf.ctypes.data

    def inside(ptr, n):
        for base, buf in mem.items():
            if base <= ptr and ptr + n <= base + buf.nbytes:
                return True
        return False

    def copy(dst, src, count, kind, stream):
        assert isinstance(kind, rt.cudaMemcpyKind), kind
        if not (inside(int(dst), count) and inside(int(src), count)):
            return (cudaError_t.cudaErrorInvalidValue,)
        ctypes.memmove(int(dst), int(src), count)
        return (ok,)

    def free(ptr):
        return (ok,) if mem.pop(int(ptr), None) is not None else (cudaError_t.cudaErrorInvalidValue,)

    def begin(stream, mode):
        assert isinstance(mode, rt.cudaStreamCaptureMode), mode
        captures[int(stream)] = []
        return (ok,)

    class Graph:
        def __init__(self, work):
            self.work = work

    def end(stream):
        graph = Graph(captures.pop(int(stream)))
        rt.graphs.add(graph)
        return ok, graph

    def instantiate(graph, flags):
        if graph not in rt.graphs:
            return cudaError_t.cudaErrorInvalidResourceHandle, None
        if rt.fail == "instantiate":
            return cudaError_t.cudaErrorStreamCaptureUnsupported, None
        graph_exec = Graph(list(graph.work))
        rt.execs.add(graph_exec)
        return ok, graph_exec

    def destroy(live):
        def call(handle):
            if handle not in live:
                return (cudaError_t.cudaErrorInvalidResourceHandle,)
            live.discard(handle)
            return (ok,)
        return call

    def launch(graph_exec, stream):
        if graph_exec not in rt.execs:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        return (ok,) if all(work() for work in graph_exec.work) else (cudaError_t.cudaErrorInvalidValue,)

    class Event(list):
        __hash__ = object.__hash__

    def event_create():
        event = Event([0.0])
        rt.events.add(event)
        return ok, event

    def event_record(event, stream):
        if event not in rt.events:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        event[0] = time.perf_counter()
        return (ok,)

    rt.cudaSetDevice = lambda device: (rt.devices.append(device), (ok,))[1]
    rt.cudaStreamCreate = lambda: (ok, Handle(next(counter)))
    rt.cudaStreamDestroy = rt.cudaStreamSynchronize = lambda stream: (ok,)
    rt.cudaMalloc = rt.cudaMallocHost = alloc
    rt.cudaFree = rt.cudaFreeHost = free
    rt.cudaMemcpyAsync = copy
    rt.cudaStreamBeginCapture, rt.cudaStreamEndCapture = begin, end
    rt.cudaGraphInstantiate = instantiate
    rt.cudaGraphLaunch = launch
    rt.cudaGraphDestroy, rt.cudaGraphExecDestroy = destroy(rt.graphs), destroy(rt.execs)
    rt.cudaEventCreate, rt.cudaEventRecord = event_create, event_record
    rt.cudaEventSynchronize = lambda event: (ok,)
    rt.cudaEventDestroy = destroy(rt.events)
    rt.cudaEventElapsedTime = lambda start, end: (ok, (end[0] - start[0]) * 1e3)
    rt.cudaGetErrorString = lambda err: (ok, cudaError_t(err).name.encode())
    # what the stand-in TensorRT reads and writes through
    rt.capturing = lambda stream: int(stream) in captures

    def record(stream, work, shapes):
        captures[int(stream)].append(work)
        rt.captured.append(shapes)
    rt.record = record

    def view(ptr, shape, dtype):
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        assert inside(ptr, n), "TensorRT would read or write outside a buffer"
        return np.frombuffer((ctypes.c_byte * n).from_address(ptr), dtype=dtype).reshape(shape)
    rt.view = view
    return rt


@pytest.fixture(params=VERSIONS)
def trt(request, monkeypatch):
    """The stand-in ``tensorrt`` of one version and stand-in CUDA bindings, injected for the test."""
    import pspnet_deploy.engine.build as build

    mod = standin_tensorrt(request.param)
    cudart = standin_cudart()
    cuda_pkg, bindings_pkg = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    cuda_pkg.bindings, bindings_pkg.runtime = bindings_pkg, cudart
    for name, m in (("tensorrt", mod), ("cuda", cuda_pkg), ("cuda.bindings", bindings_pkg),
                    ("cuda.bindings.runtime", cudart)):
        monkeypatch.setitem(sys.modules, name, m)
    gpu = dict(trt_env()["gpu"])
    monkeypatch.setattr(build, "cuda_device_info", lambda index=0: ({**gpu, "index": index}, None))
    return mod


# ================================================================================ the stand-ins themselves

def test_standin_holds_to_the_dumped_surface():
    v10, v11 = standin_tensorrt("10.16.1"), standin_tensorrt("11.4.0")
    assert int(v10.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 1
    assert int(v11.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 0  # renumbered: look up by name
    assert hasattr(v10.BuilderFlag, "FP16") and not hasattr(v11.BuilderFlag, "FP16")
    assert hasattr(v10, "IInt8EntropyCalibrator2") and not hasattr(v11, "IInt8EntropyCalibrator2")
    logger = v11.Logger(v11.Logger.WARNING)
    builder = v11.Builder(logger)
    with pytest.raises(TypeError, match="create_network"):
        builder.create_network(0, 1)  # one argument too many
    with pytest.raises(TypeError, match="create_network"):
        builder.create_network(flag=0)  # the keyword is 'flags'
    with pytest.raises(AttributeError, match="no attribute 'build_engine'"):
        builder.build_engine  # noqa: B018 - removed in TensorRT 10
    config = builder.create_builder_config()
    with pytest.raises(TypeError, match="must be a tensorrt.BuilderFlag"):
        config.set_flag(v11.MemoryPoolType.WORKSPACE)
    config.builder_optimization_level = 3  # settable
    with pytest.raises(AttributeError, match="can't be set"):
        config.num_optimization_profiles = 2
    config.hardware_compatibility_level = v11.HardwareCompatibilityLevel.AMPERE_PLUS
    with pytest.raises(TypeError, match="takes a tensorrt.HardwareCompatibilityLevel, got 1"):
        config.hardware_compatibility_level = 1  # an int where the API takes an enum
    with pytest.raises(TypeError, match="takes a tensorrt.DeviceType"):
        config.default_device_type = v11.DataType.HALF  # another enum's value
    with pytest.raises(TypeError, match="pool must be a tensorrt.MemoryPoolType"):
        config.set_memory_pool_limit(0, 1 << 30)
    layer_cls = standin_tensorrt("10.16.1").ILayer
    with pytest.raises(TypeError, match="ILayer.precision takes a tensorrt.DataType, got 1"):
        layer_cls._make().precision = 1  # int(trt.DataType.HALF)
    with pytest.raises(AttributeError):
        v11.no_such_function  # noqa: B018


# ================================================================================ the real code paths

def _build(onnx_path: Path, engine: Path, *args):
    """The command layer's build with the argv a user would type (the recorded command included)."""
    from pspnet_deploy.cli.build_engine import build, build_parser, command_line, options_from_args
    from pspnet_deploy.engine import plan_build

    parser = build_parser()
    a = parser.parse_args([str(onnx_path), "--engine", str(engine), *map(str, args)])
    opts = options_from_args(a)
    plan = plan_build(a.onnx, opts, a.engine)
    return build(plan, opts=opts, command=command_line(a, plan.engine_path, parser, plan), log=lambda m: None)


def test_build_and_run_a_fixed_batch_engine(trt, onnx_b1, tmp_path, rng):
    from pspnet_deploy.runners import load_runner

    src = tmp_path / "tiny.fp32.onnx"
    src.write_bytes(onnx_b1.read_bytes())
    cache = tmp_path / "timing.cache"
    sc = _build(src, tmp_path / "tiny.fp32.engine", "--workspace", "1", "--opt-level", "2", "--timing-cache", cache,
                "--version-compatible", "--hardware-compatible", "--device", "cuda:1")
    assert sys.modules["cuda.bindings.runtime"].devices[0] == 1  # the build ran on the device asked for
    assert sc["tensorrt"]["version"] == trt.__version__ and sc["tensorrt"]["strongly_typed"] is True
    assert sc["io"]["inputs"][0]["shape"] == [1, 3, *TINY_SIZE] and sc["io"]["outputs"][0]["dtype"] == "float32"
    assert cache.read_bytes() == b"tiny.fp32.onnx:VERSION_COMPATIBLE"
    plan = json.loads(Path(sc["engine"]["path"]).read_bytes())
    assert plan["strongly_typed"] and set(plan["flags"]) == {"VERSION_COMPATIBLE"}
    assert plan["pools"] == {"WORKSPACE": 1 << 30} and sc["build"]["options"]["workspace_bytes"] == 1 << 30
    assert plan["props"] == {"builder_optimization_level": "2",
                             "hardware_compatibility_level": "HardwareCompatibilityLevel.AMPERE_PLUS",
                             "profiling_verbosity": "ProfilingVerbosity.DETAILED"}  # per-layer precision for pspnet-debug
    x = np.stack([rng.standard_normal((3, *TINY_SIZE)).astype(np.float32)])
    with load_runner(onnx_b1, threads=THREADS) as ref, load_runner(sc["engine"]["path"], device="cuda:1") as eng:
        want = ref.infer(x)
        assert eng.backend == "tensorrt" and eng.fixed_batch == 1 and eng.classes == ref.classes
        np.testing.assert_array_equal(eng.infer(x), want)  # the bytes went in and out of the right buffers
        call, name = eng.model_timer(x)
        assert call() >= 0 and name.startswith("CUDA events")
    with load_runner(sc["engine"]["path"], device="cuda:1", cuda_graph=True) as graph:
        np.testing.assert_array_equal(graph.infer(x), want)  # captured ...
        np.testing.assert_array_equal(graph.infer(x), want)  # ... and replayed
        assert graph.session.cuda_graph and list(graph.session._graphs) == [(1, 3, *TINY_SIZE)]
    cuda = sys.modules["cuda.bindings.runtime"]
    assert not cuda.live and not cuda.graphs and not cuda.execs and not cuda.events  # all freed on close


def test_build_and_run_a_dynamic_batch_engine(trt, onnx_dyn, tmp_path, rng):
    from pspnet_deploy.errors import UserError
    from pspnet_deploy.runners import load_runner

    src = tmp_path / "dyn.fp32.onnx"
    src.write_bytes(onnx_dyn.read_bytes())
    sc = _build(src, tmp_path / "dyn.fp32.engine", "--batch", "1", "2", "3")
    assert sc["io"]["profile"]["min"][0] == 1 and sc["io"]["profile"]["max"][0] == 3
    x = rng.standard_normal((4, 3, *TINY_SIZE)).astype(np.float32)
    with load_runner(src, threads=THREADS) as ref, load_runner(sc["engine"]["path"]) as eng:
        assert eng.batch_range == (1, 3)
        for n in (3, 1, 2):  # set_input_shape on every change of batch size
            np.testing.assert_array_equal(eng.infer(x[:n]), ref.infer(x[:n]))
        with pytest.raises(UserError, match="batches of 1..3"):
            eng.infer(x)
    narrow = _build(src, tmp_path / "narrow.fp32.engine", "--batch", "2", "2", "3")
    with load_runner(narrow["engine"]["path"]) as eng:
        eng.batch_range = None  # past the runner's own check: the session's profile check refuses it ...
        with pytest.raises(UserError, match=r"input 1x3x64x96 is outside every optimisation profile of the engine "
                                            r"\(2x3x64x96 / 2x3x64x96 / 3x3x64x96\); .* --batch 2 2 3") as e:
            eng.infer(x[:1])
        assert "\n" not in str(e.value)
        eng.session.profiles[0] = {**eng.session.profiles[0], "min": [1, 3, *TINY_SIZE]}  # ... and past that,
        with pytest.raises(UserError, match=r"TensorRT refused input shape \[1, 3, 64, 96\]"):  # TensorRT's own
            eng.infer(x[:1])


def test_cuda_graphs_are_captured_and_replayed_per_input_shape(trt, onnx_dyn, tmp_path, rng):
    """With --cuda-graph on a dynamic-batch engine every input shape gets its own graph, and a graph
    is only replayed at the shape it was captured at, also when a timer made for one batch size runs
    after another was staged. The stand-in freezes a graph at its capture's shapes (as CUDA does),
    so replaying a batch-3 graph for a batch of 1 would give a wrong answer here. It cannot catch
    whether the real TensorRT can be captured at all, or the real graphs' speed."""
    from pspnet_deploy.runners import load_runner

    src = tmp_path / "dyn.fp32.onnx"
    src.write_bytes(onnx_dyn.read_bytes())
    sc = _build(src, tmp_path / "dyn.fp32.engine", "--batch", "1", "2", "3")
    cuda = sys.modules["cuda.bindings.runtime"]
    x = rng.standard_normal((3, 3, *TINY_SIZE)).astype(np.float32)
    with load_runner(src, threads=THREADS) as ref, load_runner(sc["engine"]["path"], cuda_graph=True) as eng:
        for n in (3, 1, 3, 2, 1):
            np.testing.assert_array_equal(eng.infer(x[:n]), ref.infer(x[:n]))
        assert sorted(eng.session._graphs) == [(n, 3, *TINY_SIZE) for n in (1, 2, 3)]  # one capture per shape
        assert [s["input"][0] for s in cuda.captured] == [3, 1, 2]  # kept, not recaptured on every change
        one, _ = eng.model_timer(x[:1])
        three, _ = eng.model_timer(x[:3])  # stages batch 3 ...
        one()  # ... then times batch 1: it must run at batch 1
        assert eng.session._current_shape() == (1, 3, *TINY_SIZE) and len(eng.session._graphs) == 3
        assert three() >= 0 and eng.session._current_shape()[0] == 3
        assert len(cuda.execs) == len(cuda.graphs) == 3
    assert not cuda.graphs and not cuda.execs and not cuda.live


@pytest.mark.parametrize("fail", ["execute", "instantiate"])
def test_a_failed_capture_leaks_no_graph_and_runs_plainly(trt, onnx_b1, tmp_path, rng, fail, capsys):
    """A capture that fails (TensorRT's enqueue refused during capture, or cudaGraphInstantiate
    failing) ends the capture, destroys the graph it made, warns once and runs without graphs. The
    stand-in counts live graphs; it cannot make the real failures happen (which engines refuse
    capture is the real library's business)."""
    from pspnet_deploy.runners import load_runner

    src = tmp_path / "tiny.fp32.onnx"
    src.write_bytes(onnx_b1.read_bytes())
    sc = _build(src, tmp_path / "tiny.fp32.engine")
    cuda = sys.modules["cuda.bindings.runtime"]
    cuda.fail = fail
    x = rng.standard_normal((1, 3, *TINY_SIZE)).astype(np.float32)
    with load_runner(src, threads=THREADS) as ref, load_runner(sc["engine"]["path"], cuda_graph=True) as eng:
        np.testing.assert_array_equal(eng.infer(x), ref.infer(x))
        assert not cuda.graphs and not cuda.execs and not cuda.capturing(eng.session.stream)
        assert not eng.session.cuda_graph and not eng.session._graphs
        np.testing.assert_array_equal(eng.infer(x), ref.infer(x))  # plain runs from now on
    assert capsys.readouterr().err.count("CUDA graph capture failed") == 1


def test_timed_calls_reuse_one_event_pair(trt, onnx_b1, tmp_path, rng):
    """Every model timer of a session shares one CUDA event pair, destroyed at close: timing a
    thousand calls (or making a timer per measurement) allocates no more events. Stand-in events;
    the real events' resolution and clocks are not checked here."""
    from pspnet_deploy.runners import load_runner

    src = tmp_path / "tiny.fp32.onnx"
    src.write_bytes(onnx_b1.read_bytes())
    sc = _build(src, tmp_path / "tiny.fp32.engine")
    cuda = sys.modules["cuda.bindings.runtime"]
    x = rng.standard_normal((1, 3, *TINY_SIZE)).astype(np.float32)
    with load_runner(sc["engine"]["path"]) as eng:
        for _ in range(5):
            call, _ = eng.model_timer(x)
            assert call() >= 0 and call() >= 0
        assert len(cuda.events) == 2
    assert not cuda.events


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_fp16_and_int8_builds_convert_then_build_strongly_typed(trt, onnx_b1, tmp_path, rng, precision):
    """--fp16 / --int8 on the FP32 ONNX: the command layer writes the FP16 / Q/DQ INT8 ONNX (the real
    conversion and calibration, on CPU), then the build parses that file as a strongly typed
    network with no precision flag (TensorRT 11 has none), the sidecar names both ONNX files and
    their hashes, and the engine computes what that ONNX computes. What this cannot catch: the
    kernels, speed and accuracy of real FP16 / INT8 engines, and what the real parser makes of Q/DQ."""
    import onnx

    from pspnet_deploy.engine import onnx_precision
    from pspnet_deploy.runners import load_runner
    from pspnet_deploy.utils import sha256_file

    src = tmp_path / "tiny.fp32.onnx"
    src.write_bytes(onnx_b1.read_bytes())
    args = ["--fp16"] if precision == "fp16" else ["--int8", "--calib-data", "synthetic", "--calib-images", "10"]
    sc = _build(src, tmp_path / f"tiny.{precision}.engine", *args)
    variant = tmp_path / f"tiny.{precision}.onnx"
    assert onnx_precision(variant) == precision
    graph = onnx.load(str(variant)).graph
    if precision == "int8":
        assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.node}
    else:
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)
    plan = json.loads(Path(sc["engine"]["path"]).read_bytes())
    assert plan["onnx"] == str(variant.resolve()) and plan["strongly_typed"] and plan["flags"] == []
    assert (sc["precision"], sc["onnx"]["converted"], sc["tensorrt"]["strongly_typed"]) == (precision, precision, True)
    assert sc["onnx"]["sha256"] == sha256_file(variant) and sc["onnx"]["source_sha256"] == sha256_file(src)
    assert f"--{precision}" in sc["build"]["command"].split()
    x = rng.standard_normal((1, 3, *TINY_SIZE)).astype(np.float32)
    with load_runner(variant, threads=THREADS) as ref, load_runner(sc["engine"]["path"]) as eng:
        assert eng.precision == precision
        np.testing.assert_array_equal(eng.infer(x), ref.infer(x))


def test_timing_cache_is_created_reused_and_recorded(trt, onnx_b1, tmp_path, monkeypatch):
    """--timing-cache FILE (a relative path here): created when missing, loaded when present (the
    stand-in builder reports a hit for a network the cache has timed), written back atomically
    after the build; the sidecar records its absolute path and the written file's sha256. It is
    read and rewritten, so it may be neither the ONNX nor the engine or sidecar: refused in one
    line before anything is written. A version without the timing-cache API is refused too. What
    this cannot catch: what real TensorRT stores in a cache, whether it speeds a rebuild up, and
    whether it rejects a cache from another GPU."""
    from pspnet_deploy.errors import UserError
    from pspnet_deploy.utils import sha256_file

    monkeypatch.chdir(tmp_path)
    src = tmp_path / "tiny.fp32.onnx"
    src.write_bytes(onnx_b1.read_bytes())
    cache = tmp_path / "caches" / "tiny.cache"
    first = _build(src, tmp_path / "a.fp32.engine", "--timing-cache", "caches/tiny.cache")
    record = first["tensorrt"]["timing_cache"]
    assert record == {"path": str(cache), "loaded_bytes": 0, "size": cache.stat().st_size,
                      "sha256": sha256_file(cache)}
    assert json.loads((tmp_path / "a.fp32.engine").read_bytes())["timing_cache_hit"] is False
    assert f"--timing-cache {cache}" in first["build"]["command"]
    second = _build(src, tmp_path / "b.fp32.engine", "--timing-cache", cache)
    assert json.loads((tmp_path / "b.fp32.engine").read_bytes())["timing_cache_hit"] is True
    assert second["tensorrt"]["timing_cache"]["loaded_bytes"] == record["size"]
    assert second["tensorrt"]["timing_cache"]["sha256"] == sha256_file(cache)
    before = {p: p.read_bytes() for p in (src, cache)}
    for target, what in ((src, "ONNX"), (tmp_path / "a.fp32.engine", "engine"),
                         (tmp_path / "a.fp32.engine.json", "engine sidecar")):
        with pytest.raises(UserError) as e:
            _build(src, tmp_path / "a.fp32.engine", "--timing-cache", target)
        assert "\n" not in str(e.value) and f"--timing-cache is the {what} " in str(e.value)
    assert {p: p.read_bytes() for p in before} == before
    monkeypatch.setattr(trt.IBuilderConfig, "_api", {k: v for k, v in trt.IBuilderConfig._api.items()
                                                     if k != "create_timing_cache"})
    with pytest.raises(UserError, match=rf"TensorRT {trt.__version__} has no timing cache API"):
        _build(src, tmp_path / "c.fp32.engine", "--timing-cache", cache)
    assert not (tmp_path / "c.fp32.engine").exists()


def test_a_version_compatible_engine_runs_only_within_its_major_version(trt, onnx_b1, tmp_path, rng):
    """--version-compatible: a later TensorRT of the same major version runs the engine (the stand-in
    runtime loads it only with engine_host_code_allowed set, as the real one needs); a newer major
    version is refused before TensorRT is touched, in one line with the rebuild command. The real
    lean-runtime loading is not checked here."""
    from pspnet_deploy.errors import UserError
    from pspnet_deploy.runners import load_runner

    src = tmp_path / "tiny.fp32.onnx"
    src.write_bytes(onnx_b1.read_bytes())
    sc = _build(src, tmp_path / "vc.fp32.engine", "--version-compatible")
    x = rng.standard_normal((1, 3, *TINY_SIZE)).astype(np.float32)
    if trt.__version__ == "10.0.1":
        sys.modules["tensorrt"] = standin_tensorrt("10.16.1")
        with load_runner(src, threads=THREADS) as ref, load_runner(sc["engine"]["path"]) as eng:
            assert eng.tensorrt_version == "10.16.1"
            np.testing.assert_array_equal(eng.infer(x), ref.infer(x))
    if trt.__version__.startswith("10."):
        sys.modules["tensorrt"] = standin_tensorrt("11.4.0")
        with pytest.raises(UserError) as e:
            load_runner(sc["engine"]["path"])
        assert "\n" not in str(e.value)
        assert (f"built with TensorRT {trt.__version__} (version compatible: later 10.x versions run it) but this is "
                f"TensorRT 11.4.0, a newer major version; rebuild here: pspnet-build-engine ") in str(e.value)
        assert "--version-compatible" in str(e.value)
    else:
        sys.modules["tensorrt"] = standin_tensorrt("10.16.1")  # an older runtime never runs it
        with pytest.raises(UserError, match="older TensorRT 10.16.1, which cannot run it"):
            load_runner(sc["engine"]["path"])


def test_bench_passes_cuda_graph_to_the_engine_runner(trt, onnx_dyn, tmp_path):
    """pspnet-bench --cuda-graph reaches the TensorRT runner (run_bench -> RunnerOptions): each batch
    size measured is captured once and replayed; the report says so. Stand-in timings mean nothing."""
    from pspnet_deploy.bench import run_bench

    src = tmp_path / "dyn.fp32.onnx"
    src.write_bytes(onnx_dyn.read_bytes())
    sc = _build(src, tmp_path / "dyn.fp32.engine", "--batch", "1", "2", "2")
    cuda = sys.modules["cuda.bindings.runtime"]
    rep = run_bench([sc["engine"]["path"]], tmp_path / "bench", scope="model", batches=[1, 2], iterations=3,
                    warmup=1, peak=False, progress=False, device="cuda", cuda_graph=True, write=False)
    assert rep["settings"]["cuda_graph"] is True and rep["models"][0]["describe"]["cuda_graph"] is True
    assert sorted(s["input"][0] for s in cuda.captured) == [1, 2]  # one capture per batch size, then replays
    assert not cuda.graphs and not cuda.events


def test_legacy_fp16_flag_only_where_the_version_has_it(trt, onnx_b1, tmp_path):
    from pspnet_deploy.errors import UserError

    src = tmp_path / "tiny.fp32.onnx"
    src.write_bytes(onnx_b1.read_bytes())
    if trt.__version__.startswith("10."):
        sc = _build(src, tmp_path / "legacy.fp16.engine", "--fp16", "--legacy-fp16-flag")
        plan = json.loads(Path(sc["engine"]["path"]).read_bytes())
        assert plan["flags"] == ["FP16"] and not plan["strongly_typed"]
    else:
        with pytest.raises(UserError, match="has no BuilderFlag.FP16 \\(removed in TensorRT 11\\)"):
            _build(src, tmp_path / "legacy.fp16.engine", "--fp16", "--legacy-fp16-flag")
        assert not (tmp_path / "legacy.fp16.engine").exists()


def test_parser_rejection_is_one_line(trt, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from pspnet_deploy.card import write_onnx_metadata
    from pspnet_deploy.errors import UserError

    node = helper.make_node("NoSuchOp", ["input"], ["logits"], domain="example.custom", name="mystery")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 8, 8])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.custom", 1)])
    write_onnx_metadata(m, tiny_meta((8, 8)))
    bad = tmp_path / "bad.onnx"
    onnx.save(m, str(bad))
    with pytest.raises(UserError) as e:
        _build(bad, tmp_path / "bad.engine")
    msg = str(e.value)
    assert "\n" not in msg and "parser rejected the model (1 error)" in msg
    assert "node 0 (NoSuchOp 'mystery'): UNSUPPORTED_NODE: No importer registered for op: NoSuchOp" in msg
    assert not (tmp_path / "bad.engine").exists()


def test_an_engine_from_another_version_is_refused_before_tensorrt(trt, onnx_b1, tmp_path):
    from pspnet_deploy.errors import UserError
    from pspnet_deploy.runners import load_runner

    src = tmp_path / "tiny.fp32.onnx"
    src.write_bytes(onnx_b1.read_bytes())
    sc = _build(src, tmp_path / "tiny.fp32.engine", "--opt-level", "1")
    other = "10.0.1" if trt.__version__ != "10.0.1" else "11.4.0"
    sys.modules["tensorrt"] = standin_tensorrt(other)
    with pytest.raises(UserError, match=rf"built with TensorRT {trt.__version__} but this is TensorRT {other}.*"
                                        rf"rebuild here: pspnet-build-engine .*tiny.fp32.onnx --engine .* --opt-level 1"):
        load_runner(sc["engine"]["path"])


def import_circles(prefixes: tuple[str, ...]) -> list[list[str]]:
    """Import circles (module level and inside functions, as tests/test_layering.py reads imports)
    among the pspnet_deploy modules whose dotted name starts with one of ``prefixes``."""
    from test_layering import _modules, imports

    mods = {m: p for m, p in _modules() if m.startswith(prefixes)}
    graph = {}
    for m, path in mods.items():
        deps = set()
        for name, _ in imports(path):
            name = name[len("pspnet_deploy."):] if name.startswith("pspnet_deploy.") else name
            while name not in mods and "." in name:  # from .x import y: y may be a name in module x
                name = name.rsplit(".", 1)[0]
            if name in mods and name != m:
                deps.add(name)
        graph[m] = deps

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for d in graph[todo.pop()]:
                if d not in seen:
                    seen.add(d)
                    todo.append(d)
        return seen
    closure = {m: reach(m) for m in graph}
    circles = {tuple(sorted(m2 for m2 in closure[m] if m in closure[m2])) for m in graph if m in closure[m]}
    return sorted(list(c) for c in circles)


def test_the_engine_package_has_no_import_circle():
    """engine.build and engine.sidecar imported each other (issue 21): the build imports the
    sidecar, never the other way round, and no circle runs through the engine package or the
    runners. Checked on the import graph, so a function-level import counts too."""
    assert import_circles(("engine", "runners")) == []
    from test_layering import imports

    names = {m.removeprefix("pspnet_deploy.") for m, _ in imports(ROOT / "pspnet_deploy" / "engine" / "sidecar.py")}
    assert "engine.sidecar" not in names and "engine.plan" in names and "engine.build" not in names
