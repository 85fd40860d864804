"""pspnet-export --onnx: clean static graphs, FP16 variant, parity gate, metadata, CLI behaviour.

Each export of the tiny ResNet-18 PSPNet costs ~10 s on one core (the dynamo exporter), so the
exports are module fixtures shared by the tests that inspect them.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from conftest import THREADS, run_cli, tiny_meta

from pspnet_deploy.compare import (DEFAULT_TOLERANCES, Comparison, check, compare_outputs, parity_report_path,
                                   parse_tolerances, tolerances_for)
from pspnet_deploy.errors import UserError
from pspnet_deploy.export import default_output_path, export_onnx
from pspnet_deploy.onnx_graph import BANNED_OPS, static_pool_node_names, write_onnx_metadata
from pspnet_deploy.precision.fp16 import convert_fp16, fp16_overflow_tensors
from pspnet_deploy.parser_check import check_onnx_for_tensorrt
from pspnet_deploy.card import read_card
from pspnet_deploy.runners.ort_runner import OrtRunner
from pspnet_deploy.utils import sha256_file



def _export(ckpt, out, **kw):
    return export_onnx(ckpt, out, progress=False, threads=THREADS, **kw)


@pytest.fixture(scope="module")
def fp32(tmp_path_factory, tiny_checkpoint):
    """64x96: feature map 8x12, bins 1 and 2 divide it (AvgPool), 3 and 6 do not (MatMul pair)."""
    out = tmp_path_factory.mktemp("fp32") / "model.fp32.onnx"
    return out, _export(tiny_checkpoint, out, input_size=(64, 96))


@pytest.fixture(scope="module")
def fp16(tmp_path_factory, tiny_checkpoint):
    """65x97: not a multiple of 8 (feature 9x13); only bin 1 divides it."""
    out = tmp_path_factory.mktemp("fp16") / "model.fp16.onnx"
    return out, _export(tiny_checkpoint, out, input_size=(65, 97), fp16=True)


@pytest.fixture(scope="module")
def dyn_labels(tmp_path_factory, tiny_checkpoint):
    out = tmp_path_factory.mktemp("dyn") / "model.onnx"
    return out, _export(tiny_checkpoint, out, input_size=(64, 96), dynamic_batch=(1, 2, 3), output_kind="labels",
                        num_verify=3)


def _torch_logits(ckpt, x: np.ndarray) -> np.ndarray:
    from pspnet_deploy.checkpoint import load_model

    model, _ = load_model(ckpt)
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _assert_clean_static_graph(m):
    ops = {n.op_type for n in m.graph.node}
    assert not ops & BANNED_OPS, ops & BANNED_OPS
    assert not ops & {"Reshape", "Expand", "Where", "Slice", "Dropout"}, ops
    inits = {t.name: t for t in m.graph.initializer}
    assert all(t.data_location != onnx.TensorProto.EXTERNAL and not t.external_data for t in inits.values())
    for n in m.graph.node:
        if n.op_type == "Resize":
            a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
            assert a["mode"] == b"linear" and a["coordinate_transformation_mode"] == b"align_corners", n.name
            assert n.input[3] in inits, f"{n.name}: sizes not constant"
    onnx.checker.check_model(m, full_check=True)
    assert check_onnx_for_tensorrt(m) == []


# ----------------------------------------------------------------------------------------------
# FP32
# ----------------------------------------------------------------------------------------------

def test_fp32_export_is_clean_static_and_self_contained(fp32, tiny_checkpoint):
    path, rep = fp32
    m = onnx.load(str(path))
    _assert_clean_static_graph(m)
    assert m.opset_import[0].version == rep["opset"] == 20
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.fp32.onnx", "model.fp32.parity.json"]
    assert [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 64, 96]
    assert [d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim] == [1, 4, 64, 96]
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # static pooling: bins 1, 2 divide 8x12 -> one AveragePool each; 3, 6 do not -> two MatMuls each
    assert static_pool_node_names(m) == [
        "ppm.pools.0.static_pool/AveragePool", "ppm.pools.1.static_pool/AveragePool",
        "ppm.pools.2.static_pool/MatMul_h", "ppm.pools.2.static_pool/MatMul_w",
        "ppm.pools.3.static_pool/MatMul_h", "ppm.pools.3.static_pool/MatMul_w"]
    assert [p["mode"] for p in rep["static_pool"]["pools"]] == ["avgpool", "avgpool", "matmul", "matmul"]
    assert rep["static_pool"]["feature_size"] == [8, 12]
    assert not any(n.metadata_props for n in m.graph.node)  # exporter debug info (stack traces, paths) stripped


def test_fp32_metadata(fp32, tiny_checkpoint):
    path, rep = fp32
    meta = read_card(path).meta
    assert meta["classes"] == tiny_meta()["classes"] and meta["palette"] == tiny_meta()["palette"]
    assert meta["preprocess"]["input_size"] == [64, 96] and meta["preprocess"]["mean"] == tiny_meta()["preprocess"]["mean"]
    assert meta["input_size"] == [64, 96] and meta["ignore_index"] == 255
    assert meta["output_kind"] == "logits" and meta["precision"] == "fp32"
    assert meta["checkpoint_sha256"] == sha256_file(tiny_checkpoint)
    assert meta["toolkit_version"] and meta["versions"]["torch"].startswith(torch.__version__.split("+")[0])
    assert meta["model"]["backbone"] == "resnet18" and meta["model"]["bins"] == [1, 2, 3, 6]
    assert meta["export"]["batch"] == 1 and meta["export"]["dynamic_batch"] is None and meta["export"]["opset"] == 20
    assert meta["static_pool"]["nodes"] == static_pool_node_names(path)
    m = onnx.load(str(path))
    assert all(p.key.startswith("pspnet.") for p in m.metadata_props)
    for p in m.metadata_props:
        json.loads(p.value)  # every value is JSON


def test_fp32_parity_report_and_independent_agreement(fp32, tiny_checkpoint, rng):
    path, rep = fp32
    par = rep["parity"]
    assert par["passed"] and par["failures"] == [] and par["images"]["kind"] == "generated"
    assert par["tolerances"] == DEFAULT_TOLERANCES["fp32"]
    assert par["metrics"]["max_abs_rel"] <= 1e-4 and par["metrics"]["argmax_agreement"] >= 0.9999
    saved = json.loads(parity_report_path(path).read_text())
    assert saved["parity"]["passed"] is True and saved["sha256"] == sha256_file(path) == rep["sha256"]
    # an independent check on new inputs: ONNX Runtime (the project's runner) against PyTorch
    x = rng.normal(size=(1, 3, 64, 96)).astype(np.float32)
    r = OrtRunner.from_file(str(path), threads=THREADS)
    assert r.fixed_batch == 1 and r.input_size == (64, 96) and r.classes == tiny_meta()["classes"]
    got = r.infer(x)
    ref = _torch_logits(tiny_checkpoint, x)
    assert np.abs(got - ref).max() <= 1e-4 * (ref.max() - ref.min())
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.9999


def test_node_count_independent_of_input_size(fp32, tiny_checkpoint, tmp_path):
    """512x1024 (feature 64x128, the same pool modes as 8x12): the same graph, node for node."""
    _, small = fp32
    out = tmp_path / "big.onnx"
    big = _export(tiny_checkpoint, out, input_size=(512, 1024), verify=False)
    assert big["parity"] == {"skipped": True}
    assert big["nodes"] == small["nodes"] and big["op_counts"] == small["op_counts"]
    assert big["static_pool"]["nodes"] == small["static_pool"]["nodes"]
    m = onnx.load(str(out))
    _assert_clean_static_graph(m)
    assert [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 512, 1024]
    assert big["static_pool"]["feature_size"] == [64, 128]


# ----------------------------------------------------------------------------------------------
# FP16
# ----------------------------------------------------------------------------------------------

def test_fp16_export(fp16, tiny_checkpoint, rng):
    path, rep = fp16
    m = onnx.load(str(path))
    _assert_clean_static_graph(m)
    meta = read_card(path).meta
    assert meta["precision"] == "fp16" and meta["input_size"] == [65, 97]
    assert meta["fp16"]["blocked_nodes"] == [] and meta["fp16"]["calibration"]["kind"] == "generated"
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # IO kept FP32
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    conv_w = [t for t in m.graph.initializer if t.dims and len(t.dims) == 4]
    assert conv_w and all(t.data_type == onnx.TensorProto.FLOAT16 for t in conv_w)
    assert sum(n.op_type == "Cast" for n in m.graph.node) == 2  # one in, one out: the body is FP16
    # 9x13 features: only bin 1 divides -> 1 AveragePool + 3 MatMul pairs
    assert len(static_pool_node_names(m)) == 7
    par = rep["parity"]
    assert par["passed"] and par["metrics"]["nonfinite"] == 0 and par["metrics"]["argmax_agreement"] >= 0.999
    assert par["metrics"]["cosine"] >= 0.9999
    x = rng.normal(size=(1, 3, 65, 97)).astype(np.float32)
    got = OrtRunner.from_file(str(path), threads=THREADS).infer(x)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    ref = _torch_logits(tiny_checkpoint, x)
    assert compare_outputs(ref, got)["cosine"] > 0.9999


def test_convert_fp16_from_existing_fp32(fp32, tmp_path):
    src, _ = fp32
    out = tmp_path / "m.fp16.onnx"
    rep = convert_fp16(src, out, progress=False, threads=THREADS)
    assert rep["parity"]["passed"] and out.is_file() and parity_report_path(out).is_file()
    meta = read_card(out).meta
    assert meta["precision"] == "fp16" and meta["source_onnx"]["sha256"] == sha256_file(src)
    assert meta["classes"] == read_card(src).meta["classes"]
    assert static_pool_node_names(out) == static_pool_node_names(src)
    assert check_onnx_for_tensorrt(out) == []
    with pytest.raises(UserError, match="not an FP32 export"):
        convert_fp16(out, tmp_path / "again.onnx", progress=False)


def _overflow_model(path: Path, scale: float) -> Path:
    """input -> Conv (weights x scale) -> Relu -> Conv (weights / scale) -> logits (4 classes)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = (rng.normal(size=(8, 3, 3, 3)) * scale).astype(np.float32)
    w2 = (rng.normal(size=(4, 8, 1, 1)) / scale).astype(np.float32)
    nodes = [helper.make_node("Conv", ["input", "w1"], ["h"], name="big/Conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["h"], ["r"], name="big/Relu"),
             helper.make_node("Conv", ["r", "w2"], ["logits"], name="small/Conv", kernel_shape=[1, 1])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 24])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 16, 24])],
                          initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])
    m.ir_version = 10
    meta = tiny_meta((16, 24))
    meta.update(precision="fp32", output_kind="logits", input_size=[16, 24])
    write_onnx_metadata(m, meta)
    onnx.save(m, str(path))
    return path


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fp16_keeps_overflowing_nodes_fp32(tmp_path):
    """Activations near 1e5 (> FP16 max 65504) on the calibration images: the producer and its
    consumers stay FP32, the result stays finite and passes; converting everything would not."""
    from onnxconverter_common import float16

    src = _overflow_model(tmp_path / "m.fp32.onnx", scale=3e4)
    images = np.random.default_rng(1).normal(size=(3, 3, 16, 24)).astype(np.float32) * 2
    rep = convert_fp16(src, tmp_path / "m.fp16.onnx", calibration_images=images, progress=False, threads=THREADS)
    assert set(rep["fp16"]["blocked_nodes"]) == {"big/Conv", "big/Relu", "small/Conv"}
    assert rep["fp16"]["max_activation"] > 65504 and rep["parity"]["metrics"]["nonfinite"] == 0
    assert rep["parity"]["passed"]
    assert rep["parity"]["metrics"]["fp16_overflow_tensors"] == 0
    batches = [images[i:i + 1] for i in range(len(images))]
    assert fp16_overflow_tensors(onnx.load(str(tmp_path / "m.fp16.onnx")), batches) == {}
    # the naive conversion (nothing blocked) stores Inf in FP16 on the same images (ONNX Runtime's
    # own output hides it: it runs the chain in FP32 and drops the FP16 round trips)
    naive = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, op_block_list=[],
                                             max_finite_val=65504.0)
    assert set(fp16_overflow_tensors(naive, batches)) >= {"h", "r"}
    # moderate values: nothing blocked
    src2 = _overflow_model(tmp_path / "ok.fp32.onnx", scale=1.0)
    rep2 = convert_fp16(src2, tmp_path / "ok.fp16.onnx", calibration_images=images, progress=False, threads=THREADS)
    assert rep2["fp16"]["blocked_nodes"] == [] and rep2["parity"]["passed"]


# ----------------------------------------------------------------------------------------------
# dynamic batch, labels
# ----------------------------------------------------------------------------------------------

def test_dynamic_batch_labels(dyn_labels, tiny_checkpoint, rng):
    path, rep = dyn_labels
    m = onnx.load(str(path))
    _assert_clean_static_graph(m)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 64, 96]
    assert m.graph.output[0].name == "labels" and m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.INT32
    for n in m.graph.node:
        if n.op_type == "Resize":  # constant spatial sizes on axes 2, 3; the batch passes through
            axes = [a for a in n.attribute if a.name == "axes"][0].ints
            assert list(axes) == [2, 3]
    assert {"ArgMax", "Cast"} <= {n.op_type for n in m.graph.node}
    meta = read_card(path).meta
    assert meta["output_kind"] == "labels" and meta["export"]["dynamic_batch"] == [1, 2, 3]
    assert rep["parity"]["passed"] and rep["parity"]["batches"] == [1, 3]
    r = OrtRunner.from_file(str(path), threads=THREADS)
    assert r.fixed_batch is None and r.output_kind == "labels"
    for n in (1, 2, 3):
        x = rng.normal(size=(n, 3, 64, 96)).astype(np.float32)
        lab = r.infer(x)
        assert lab.shape == (n, 64, 96) and lab.dtype == np.int32
        assert (lab == _torch_logits(tiny_checkpoint, x).argmax(1)).mean() >= 0.9999


# ----------------------------------------------------------------------------------------------
# compare.py
# ----------------------------------------------------------------------------------------------

def test_compare_outputs_and_check(rng):
    ref = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    same = compare_outputs(ref, ref.copy())
    assert same["max_abs"] == 0 and same["cosine"] == pytest.approx(1) and same["argmax_agreement"] == 1
    assert check(same, tolerances_for("fp32")) == []
    noisy = ref + 0.01
    m = compare_outputs(ref, noisy)
    assert m["max_abs"] == pytest.approx(0.01, rel=1e-3) and m["max_abs_rel"] == pytest.approx(0.01 / m["logit_range"])
    fails = check(m, tolerances_for("fp32"))
    assert len(fails) == 1 and fails[0].startswith("max_abs_rel")
    bad = ref.copy()
    bad[0, 0, 0, 0] = np.inf
    mb = compare_outputs(ref, bad)
    assert mb["nonfinite"] == 1 and any(f.startswith("nonfinite") for f in check(mb, tolerances_for("fp16")))
    labels = ref.argmax(1)
    labels[0, 0, 0] = (labels[0, 0, 0] + 1) % 3
    ml = compare_outputs(ref, labels)
    assert ml["candidate_kind"] == "labels" and ml["max_abs"] is None and ml["argmax_disagree"] == 1
    assert ml["argmax_agreement"] == pytest.approx(1 - 1 / 40)
    assert check(ml, {"argmax_agreement": 0.9, "max_abs_rel": 1e-9}) == []  # logit checks skipped for labels
    with pytest.raises(ValueError):
        compare_outputs(ref, ref[:, :2])


def test_streaming_comparison_equals_one_shot(rng):
    ref = rng.normal(size=(5, 3, 6, 7)).astype(np.float32)
    cand = ref + rng.normal(scale=0.05, size=ref.shape).astype(np.float32)
    one = compare_outputs(ref, cand)
    comp = Comparison()
    for i in range(0, 5, 2):
        comp.update(ref[i:i + 2], cand[i:i + 2])
    many = comp.result()
    assert many.keys() == one.keys() and many["shape"] == [5, 3, 6, 7]
    for k, v in one.items():
        assert many[k] == (pytest.approx(v, rel=1e-9) if isinstance(v, float) else v), k
    assert 0 < one["argmax_disagree"] < one["num_pixels"]


def test_tolerance_parsing():
    assert parse_tolerances(["max_abs_rel=1e-5", "cosine=none"]) == {"max_abs_rel": 1e-5, "cosine": None}
    t = tolerances_for("fp16", {"cosine": None, "argmax_agreement": 0.99})
    assert "cosine" not in t and t["argmax_agreement"] == 0.99
    for bad in (["foo=1"], ["max_abs_rel"], ["cosine=abc"]):
        with pytest.raises(UserError):
            parse_tolerances(bad)


def test_default_output_path(tmp_path):
    assert default_output_path("runs/x/best.pt", None) == Path("export/best/model.fp32.onnx")
    assert default_output_path("best.pt", "camvid", "fp16") == Path("export/camvid/model.fp16.onnx")
    assert default_output_path("best.pt", "a/b.onnx") == Path("a/b.onnx")
    assert default_output_path("best.pt", str(tmp_path)) == tmp_path / "model.fp32.onnx"
    with pytest.raises(UserError):
        default_output_path("best.pt", "a/b.txt")


# ----------------------------------------------------------------------------------------------
# CLI (real subprocesses)
# ----------------------------------------------------------------------------------------------

def _cli(*args, module="pspnet_deploy.cli.export"):
    return run_cli(module, *args, timeout=600)


def _one_line_error(p, needle):
    assert p.returncode != 0, p.stdout + p.stderr
    lines = [x for x in p.stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert needle in lines[0], lines[0]


def test_cli_export_real_images_then_eval(synthetic_checkpoint, tmp_path):
    """70x100 (feature 9x13), parity on dataset images via open_dataset, then pspnet-eval runs it."""
    out = tmp_path / "out" / "m.onnx"
    p = _cli(synthetic_checkpoint, "--onnx", out, "--input-size", 70, 100, "--verify-data", "synthetic",
             "--num-verify", 2, "--threads", THREADS, "--json", tmp_path / "rep.json")
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["path"] == str(out) and summary["parity_passed"] is True
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert rep["parity"]["images"]["kind"] == "dataset" and rep["parity"]["images"]["path"] == "synthetic"
    assert rep["static_pool"]["feature_size"] == [9, 13] and out.is_file() and parity_report_path(out).is_file()
    e = _cli(out, "--data", "synthetic", "--limit", 2, "--threads", THREADS, "--no-progress",
             "--json", tmp_path / "eval.json", module="pspnet_deploy.cli.eval")
    assert e.returncode == 0, e.stderr
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert ev["num_images"] == 2 and ev["model"]["backend"] == "onnxruntime" and 0 <= ev["miou"] <= 1


def test_cli_parity_failure_leaves_nothing(tiny_checkpoint, tmp_path):
    out = tmp_path / "m.onnx"
    p = _cli(tiny_checkpoint, "--onnx", out, "--input-size", 64, 96, "--num-verify", 1, "--threads", THREADS,
             "--tolerance", "argmax_agreement=1.01", "--quiet")
    _one_line_error(p, "parity check failed")
    assert "argmax_agreement" in p.stderr and not out.exists()
    # no model, no temporary file; the failing figures beside where the model would have gone
    assert [f.name for f in tmp_path.iterdir()] == ["m.parity-failed.json"]
    failed = json.loads((tmp_path / "m.parity-failed.json").read_text())
    assert failed["parity"]["passed"] is False and failed["written"] is False and "m.parity-failed.json" in p.stderr


@pytest.mark.parametrize("case", ["missing", "corrupt", "too_small", "unwritable", "bad_batch", "bad_tolerance"])
def test_cli_bad_input_one_line(case, tiny_checkpoint, tmp_path):
    out = tmp_path / "m.onnx"
    ckpt, extra, needle = tiny_checkpoint, [], ""
    if case == "missing":
        ckpt, needle = tmp_path / "nope.pt", "checkpoint not found"
    elif case == "corrupt":
        ckpt = tmp_path / "bad.pt"
        ckpt.write_bytes(b"\x00garbage" * 100)
        needle = "cannot read checkpoint"
    elif case == "too_small":
        extra, needle = ["--input-size", 32, 32], "too small for this model"
    elif case == "unwritable":
        blocker = tmp_path / "file"
        blocker.write_text("x")
        out, needle = blocker / "m.onnx", "not a folder"
    elif case == "bad_batch":
        extra, needle = ["--dynamic-batch", 4, 2, 1], "MIN <= OPT <= MAX"
    elif case == "bad_tolerance":
        extra, needle = ["--tolerance", "speed=3"], "bad tolerance"
    p = _cli(ckpt, "--onnx", out, "--quiet", *extra)
    _one_line_error(p, needle)
    assert not out.exists()
