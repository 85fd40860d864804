"""pspnet-debug's TensorRT path held to the real TensorRT Python API of 10.0.1, 10.16.1 and 11.4.0.

The stand-in ``tensorrt`` of tests/test_trt_api.py (generated from ../shared/tensorrt-api/*.txt:
only the listed names exist, every call is bound against the listed signatures) is extended here
with what a debug build and the layer profiler touch: the network's layers and their output
tensors (one layer per ONNX node, named as the parser names them, outputs named as the ONNX
tensors), ``mark_output`` (the marked tensor becomes an engine output, computed by running the
ONNX with that tensor as an extra output on ONNX Runtime), ``IExecutionContext.profiler`` (after each
execution the stand-in calls the Python ``IProfiler`` subclass's ``report_layer_time`` once per
layer, after checking the arguments against the listed signature) and the engine inspector's JSON.

The real code paths run unchanged against it: ``engine.build.build_debug_network`` and
``runners.trt_runner.debug_capture`` / ``profile_engine`` through ``pspnet-debug``'s library call.

What this cannot catch: how the real TensorRT fuses layers and names fused layers (so which
tensors a real debug build can expose), its numerics in FP16/INT8, the real inspector JSON's
exact fields and wording, whether the real pybind11 trampoline calls a Python ``IProfiler``
override the way assumed here (it is the documented way), and anything about GPU memory.
"""
from __future__ import annotations

import json
import sys

import pytest

import test_trt_api as T
from conftest import THREADS, run_cli
from test_trt_api import trt  # noqa: F401 - the stand-in fixture (pytest finds fixtures imported into a test module)

pytestmark = pytest.mark.skipif(not T.API_DIR.is_dir(), reason=f"{T.API_DIR} (the dumped TensorRT APIs) not present")


# ------------------------------------------------------------------------------- the stand-in, extended

class _Tensor:
    def _get_name(self):
        return self._name


class _Layer:
    def _get_name(self):
        return self._name

    def _get_num_outputs(self):
        return len(self._outs)

    def _do_get_output(self, index):
        return self._outs[index]


class _Network(T._Network):
    def _get_num_layers(self):
        return len(self._layers)

    def _do_get_layer(self, index):
        return self._layers[index]

    def _do_get_output(self, index):
        return self._mod.ITensor._make(_name=self._outputs[index]["name"])

    def _do_mark_output(self, tensor):
        self._outputs.append({"name": tensor.name, "dtype": self._types[tensor.name], "shape": self._shapes[tensor.name]})


class _Parser(T._Parser):
    def _do_parse_from_file(self, model):
        import onnx

        ok = super()._do_parse_from_file(model)
        if ok:
            m = onnx.shape_inference.infer_shapes(onnx.load(str(model)))
            trt = self._mod
            layers = [trt.ILayer._make(_name=n.name, _outs=[trt.ITensor._make(_name=o) for o in n.output])
                      for n in m.graph.node if n.op_type != "Constant"]
            types_, shapes = {}, {}
            for vi in list(m.graph.value_info) + list(m.graph.output):
                t = vi.type.tensor_type
                if t.elem_type in T._ONNX_TRT:
                    types_[vi.name] = T._ONNX_TRT[t.elem_type]
                    shapes[vi.name] = [d.dim_value for d in t.shape.dim]
            object.__setattr__(self._network, "_layers", layers)
            object.__setattr__(self._network, "_types", types_)
            object.__setattr__(self._network, "_shapes", shapes)
        return ok


class _Engine(T._Engine):
    def _do_create_execution_context(self, *args, **kwargs):
        import onnx
        import onnxruntime as ort

        m = onnx.load(self._plan["onnx"])
        have = {o.name for o in m.graph.output}
        for t in self._plan["outputs"]:
            if t["name"] not in have:
                elem = next(k for k, v in T._ONNX_TRT.items() if v == t["dtype"])
                m.graph.output.append(onnx.helper.make_tensor_value_info(t["name"], elem, None))
        so = ort.SessionOptions()
        so.intra_op_num_threads = THREADS
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        shapes = {t["name"]: list(t["shape"]) for t in self._plan["inputs"]}
        layers = [n.name for n in m.graph.node if n.op_type != "Constant"]
        return self._mod.IExecutionContext._make(_engine=self, _session=sess, _shapes=shapes, _addresses={},
                                                 _layers=layers)

    def _do_create_engine_inspector(self):
        return self._mod.EngineInspector._make(_engine=self)


class _Inspector:
    def _do_get_engine_information(self, format):  # noqa: A002 - TensorRT's parameter name
        import onnx

        m = onnx.load(self._engine._plan["onnx"], load_external_data=False)
        return json.dumps({"Layers": [{"Name": n.name, "Outputs": [{"Format/Datatype": "Row major linear FP32"}]}
                                      for n in m.graph.node if n.op_type != "Constant"]})


class _Context(T._Context):
    def _run(self, shapes=None) -> bool:
        shapes = self._shapes if shapes is None else shapes
        if set(self._addresses) != {t["name"] for t in self._engine._tensors}:
            return False
        cuda = sys.modules["cuda.bindings.runtime"]
        feeds = {t["name"]: cuda.view(self._addresses[t["name"]], shapes[t["name"]], T._TRT_NP[t["dtype"]]).copy()
                 for t in self._engine._plan["inputs"]}
        names = [t["name"] for t in self._engine._plan["outputs"]]
        for t, value in zip(self._engine._plan["outputs"], self._session.run(names, feeds)):
            cuda.view(self._addresses[t["name"]], value.shape, T._TRT_NP[t["dtype"]])[...] = value
        profiler = object.__getattribute__(self, "_props").get("profiler")
        if profiler is not None:  # TensorRT reports every layer's time to the Python override
            mod = self._engine._mod
            api = mod.IProfiler._api["report_layer_time"]
            for name in self._layers:
                T._check_call(mod.__version__, "IProfiler", "report_layer_time", api, mod.IProfiler._enums,
                              (name, 0.01), {})
                type(profiler).report_layer_time(profiler, name, 0.01)
        return True


@pytest.fixture(autouse=True)
def _debug_standin(monkeypatch):
    """The stand-in's classes extended with what a debug build touches. Autouse fixtures run before
    the others of their scope, so test_trt_api's ``trt`` fixture (imported above, one per API
    version) builds its stand-in ``tensorrt`` from these."""
    monkeypatch.setattr(T, "BEHAVIOUR", dict(T.BEHAVIOUR, INetworkDefinition=_Network, OnnxParser=_Parser,
                                             ICudaEngine=_Engine, IExecutionContext=_Context, ITensor=_Tensor,
                                             ILayer=_Layer, EngineInspector=_Inspector))


@pytest.fixture(scope="module")
def bad_int8(tmp_path_factory, onnx_b1):
    """The tiny model's INT8 Q/DQ ONNX with relu_9's quantizer scale shrunk 20x (test_debug's fault)."""
    import onnx
    from onnx import numpy_helper

    from pspnet_deploy.precision.calibrate import calibrate_onnx

    d = tmp_path_factory.mktemp("trt_dbg")
    good = d / "tiny.int8.onnx"
    calibrate_onnx(onnx_b1, good, "synthetic", num_images=12, method="minmax", cache_dir=d / "cache", progress=False,
                   threads=THREADS)
    m = onnx.load(str(good))
    for t in m.graph.initializer:
        if t.name == "relu_9_scale":
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 0.05, t.name))
    bad = d / "bad.int8.onnx"
    onnx.save(m, str(bad))
    return bad


# ------------------------------------------------------------------------------- the real code paths

def test_debug_build_names_the_fault_and_profiles_each_layer(trt, tiny_checkpoint, bad_int8, tmp_path):
    from pspnet_deploy.debug.layerwise import debug_models

    src = tmp_path / "bad.int8.onnx"
    src.write_bytes(bad_int8.read_bytes())
    sc = T._build(src, tmp_path / "bad.int8.engine")
    engine = sc["engine"]["path"]
    rep = debug_models(tiny_checkpoint, engine, tmp_path / "out", images=1, threads=THREADS, progress=False,
                       profile=True)
    assert rep["candidate"]["kind"] == "tensorrt"
    fd = rep["first_divergence"]
    assert fd is not None and fd["amplified"] and fd["module"] == "backbone.layer3.0.conv2", fd
    assert any(q["kind"] == "activation" and q["tensor"] == "relu_9" for q in fd["quantizers"])
    assert len(rep["layers"]) > 40
    prof = rep["profile"]
    assert rep["profile_info"]["source"].startswith("TensorRT")
    assert {"stem", "layer1", "layer4", "ppm", "head"} <= {g["module"] for g in prof}
    assert all(g["precision"].startswith("fp32") for g in prof if g["module"] != "other")
    # one report per layer per image and run: 0.01 ms each
    n = len(rep["profile_info"]["layers"])
    assert rep["profile_info"]["total_ms"] == pytest.approx(0.01 * n, rel=1e-6)
    assert not sys.modules["cuda.bindings.runtime"].live  # the debug engine's buffers freed


def test_engine_without_tensorrt_is_one_line(fake_engine, onnx_b1, tmp_path):
    src = tmp_path / "tiny.fp32.onnx"
    src.write_bytes(onnx_b1.read_bytes())
    eng = fake_engine(tmp_path, src)
    r = run_cli("pspnet_deploy.cli.debug", src, eng, "--out", tmp_path / "o", "--images", "1")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pspnet-debug: error: ") and "TensorRT" in lines[0], r.stderr
    assert not (tmp_path / "o").exists()
