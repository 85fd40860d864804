"""pspnet-debug on real runs of the tiny model: a planted fault is named at its module / node, a
clean comparison reports none, every capture backend works, bad input is one line."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import THREADS, run_cli


@pytest.fixture(scope="session")
def int8_onnx(onnx_b1, tmp_path_factory):
    from pspnet_deploy.precision.calibrate import calibrate_onnx

    out = tmp_path_factory.mktemp("dbg_int8") / "tiny.int8.onnx"
    calibrate_onnx(onnx_b1, out, "synthetic", num_images=12, method="minmax", cache_dir=out.parent / "cache",
                   progress=False, threads=THREADS)
    return out


@pytest.fixture(scope="session")
def fp16_onnx(onnx_b1, tmp_path_factory):
    from pspnet_deploy.precision.fp16 import convert_fp16

    out = tmp_path_factory.mktemp("dbg_fp16") / "tiny.fp16.onnx"
    convert_fp16(onnx_b1, out, verify=False, progress=False, threads=THREADS)
    return out


def _edit(src, dst, fn):
    import onnx

    m = onnx.load(str(src))
    fn(m)
    onnx.save(m, str(dst))
    return dst


def _init(m, name):
    from onnx import numpy_helper

    for i, t in enumerate(m.graph.initializer):
        if t.name == name:
            return i, numpy_helper.to_array(t)
    raise KeyError(name)


def _set(m, i, name, arr):
    from onnx import numpy_helper

    m.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, name))


def _debug(ref, cand, out, **kw):
    from pspnet_deploy.debug.layerwise import debug_models

    return debug_models(ref, cand, out, images=kw.pop("images", 2), threads=THREADS, progress=False, **kw)


def test_clean_fp32_reports_no_divergence(tiny_checkpoint, onnx_b1, tmp_path):
    rep = _debug(onnx_b1, onnx_b1, tmp_path / "same")
    assert rep["first_divergence"] is None
    assert len(rep["layers"]) > 50 and all(r["rel_l2"] == 0 for r in rep["layers"])
    # the PyTorch reference lines up with the export: every leaf module's tensor, within FP32 tolerance
    rep = _debug(tiny_checkpoint, onnx_b1, tmp_path / "pt")
    assert rep["first_divergence"] is None
    mods = [r["module"] for r in rep["layers"]]
    assert "backbone.layer1.0.conv1" in mods and "ppm.pools.2" in mods and "head.4" in mods
    assert mods[0].startswith("backbone.stem") and rep["layers"][-1]["tensor"] == "output"
    assert rep["layers"][-1]["argmax_agreement"] == 1.0
    assert max(r["rel_l2"] for r in rep["layers"]) < 1e-4
    saved = json.loads((tmp_path / "pt" / "report.json").read_text())
    assert saved["first_divergence"] is None
    assert {"node", "module", "rel_l2", "max_abs", "cosine"} <= set(saved["layers"][0])
    assert (tmp_path / "pt" / "error_per_layer.png").stat().st_size > 1000
    assert "## First divergence" in (tmp_path / "pt" / "report.md").read_text()


def _corrupt_scale(m):
    # relu_9 feeds only backbone.layer3.0's second conv: shrink its quantizer scale 20x (heavy clipping)
    i, s = _init(m, "relu_9_scale")
    _set(m, i, "relu_9_scale", (s * 0.05).astype(s.dtype))


def test_corrupted_int8_scale_named_at_its_module(tiny_checkpoint, int8_onnx, tmp_path):
    bad = _edit(int8_onnx, tmp_path / "bad.int8.onnx", _corrupt_scale)
    rep = _debug(tiny_checkpoint, bad, tmp_path / "bad")
    fd = rep["first_divergence"]
    assert fd is not None and fd["amplified"], fd
    assert fd["module"] == "backbone.layer3.0.conv2" and fd["node"] == "backbone.layer3.0.bn2/Conv"
    act = [q for q in fd["quantizers"] if q["kind"] == "activation"]
    assert act and act[0]["tensor"] == "relu_9" and act[0]["clipped_share"] > 0.2
    assert act[0]["range"] < act[0]["reference_absmax"]
    assert any(q["kind"] == "weight" and q["per_channel"] for q in fd["quantizers"])
    # the same file uncorrupted has no originating layer there
    clean = _debug(tiny_checkpoint, int8_onnx, tmp_path / "clean")
    fd2 = clean["first_divergence"]
    assert fd2 is None or fd2["node"] != fd["node"] or not fd2["amplified"]
    assert "backbone.layer3.0.conv2" in (tmp_path / "bad" / "report.md").read_text()


def test_fp16_overflow_named_at_its_node(onnx_b1, fp16_onnx, tmp_path):
    # conv1 of backbone.layer1.0 scaled by K and conv2 by 1/K: the same function in exact arithmetic
    # (ReLU is positively homogeneous), but conv1's output leaves FP16's range
    k = 3e4

    def rescale(m):
        i, w = _init(m, "model.backbone.layer1.0.conv1.weight")
        _set(m, i, "model.backbone.layer1.0.conv1.weight", (w.astype(np.float32) * k).astype(w.dtype))
        j, b = _init(m, "model.backbone.layer1.0.conv1.weight_bias")
        _set(m, j, "model.backbone.layer1.0.conv1.weight_bias", (b.astype(np.float32) * k).astype(b.dtype))
        j, w2 = _init(m, "model.backbone.layer1.0.conv2.weight")
        _set(m, j, "model.backbone.layer1.0.conv2.weight", (w2.astype(np.float32) / k).astype(w2.dtype))

    ref = _edit(onnx_b1, tmp_path / "r.fp32.onnx", rescale)
    cand = _edit(fp16_onnx, tmp_path / "r.fp16.onnx", rescale)
    rep = _debug(ref, cand, tmp_path / "ovf")
    fd = rep["first_divergence"]
    assert fd is not None and fd["node"] == "backbone.layer1.0.bn1/Conv", fd
    assert fd["module"] == "backbone.layer1.0.conv1" and fd["nonfinite"] > 0 and math.isinf(fd["amplification"])
    first = rep["layers"][: fd["index"]]
    assert first and all(r["nonfinite"] == 0 for r in first)


def test_cli_runs_and_bad_input_is_one_line(onnx_b1, tmp_path):
    r = run_cli("pspnet_deploy.cli.debug", onnx_b1, onnx_b1, "--out", tmp_path / "o", "--data", "synthetic",
                "--limit", "1", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "no divergence" in r.stdout and (tmp_path / "o" / "report.json").is_file()
    assert "MiB per image" in r.stderr  # the memory it needs, stated before the work
    for args in ([tmp_path / "missing.onnx", onnx_b1, "--out", tmp_path / "x"],
                 [onnx_b1, onnx_b1, "--out", tmp_path / "y", "--limit", "3"],
                 [onnx_b1, onnx_b1, "--out", tmp_path / "z", "--rtol", "-1"],
                 [onnx_b1, onnx_b1, "--out", onnx_b1]):
        r = run_cli("pspnet_deploy.cli.debug", *args)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pspnet-debug: error: "), r.stderr
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_openvino_ir_candidate_names_the_corrupted_module(tiny_checkpoint, onnx_b1, int8_onnx, tmp_path):
    pytest.importorskip("openvino")
    from pspnet_deploy.engine.openvino import OVBuildOptions, build_openvino, plan_openvino_build

    quiet = lambda m: None  # noqa: E731
    bad = _edit(int8_onnx, tmp_path / "bad.int8.onnx", _corrupt_scale)
    build_openvino(plan_openvino_build(bad, OVBuildOptions()), opts=OVBuildOptions(), log=quiet)
    ir = tmp_path / "bad.int8.xml"
    assert ir.is_file()
    rep = _debug(tiny_checkpoint, ir, tmp_path / "ir")
    fd = rep["first_divergence"]
    assert rep["candidate"]["kind"] == "openvino" and fd is not None and fd["amplified"], fd
    assert fd["module"] == "backbone.layer3.0.conv2" and fd["node"] == "backbone.layer3.0.bn2/Conv"
    # a clean FP32 IR against the FP32 ONNX: every tensor the IR keeps lines up, none diverges
    fp32 = tmp_path / "tiny.fp32.onnx"
    fp32.write_bytes(onnx_b1.read_bytes())
    build_openvino(fp32, log=quiet)
    rep = _debug(fp32, tmp_path / "tiny.fp32.xml", tmp_path / "ir32", profile=True)
    assert rep["first_divergence"] is None and len(rep["layers"]) > 50
    # OpenVINO's performance counters: per group, with the precision each kernel ran in
    prof = rep["profile"]
    assert {"stem", "layer4", "ppm", "head"} <= {g["module"] for g in prof}
    assert all(g["ms"] >= 0 and "fp32" in g["precision"] for g in prof if g["module"] != "other")
    assert rep["profile_info"]["source"].startswith("OpenVINO")
    assert rep["layers"][-1]["module"] == "upsample" and rep["layers"][-1]["argmax_agreement"] == 1.0
    assert "backbone.layer2.0.downsample.0" in {r["module"] for r in rep["layers"]}


def test_pytorch_candidate(tiny_checkpoint, onnx_b1, tmp_path):
    rep = _debug(onnx_b1, tiny_checkpoint, tmp_path / "ptc")
    assert rep["candidate"]["kind"] == "torch" and rep["first_divergence"] is None
    assert len(rep["layers"]) > 40 and "ppm.pools.3" in {r["module"] for r in rep["layers"]}
    # PyTorch against PyTorch: every leaf-module call is a layer
    rep = _debug(tiny_checkpoint, tiny_checkpoint, tmp_path / "ptpt", images=1)
    assert rep["first_divergence"] is None and all(r["rel_l2"] == 0 for r in rep["layers"])
    assert "backbone.layer1.0.relu#1" in {r["node"] for r in rep["layers"]}


def test_profile_groups_exist_and_sum(tiny_checkpoint, onnx_b1, int8_onnx, tmp_path):
    import time

    from pspnet_deploy.debug.graph import GROUPS
    from pspnet_deploy.runners import load_runner

    rep = _debug(onnx_b1, int8_onnx, tmp_path / "prof", images=1, profile=True)
    prof, info = rep["profile"], rep["profile_info"]
    assert [g["module"] for g in prof if g["module"] != "other"] == list(GROUPS)
    assert all({"module", "ms", "precision"} <= set(g) for g in prof)
    assert all(g["ms"] >= 0 for g in prof) and prof[0]["gflops"] > 0
    # the groups partition the layers: their times add up to the profiled total
    assert sum(g["ms"] for g in prof) == pytest.approx(info["total_ms"], rel=1e-9)
    assert sum(g["layers"] for g in prof) == len(info["layers"])
    # the FLOPs beside them are the project's count of the whole network
    from pspnet_deploy.flops import onnx_flops

    assert sum(g["gflops"] or 0 for g in prof) * 1e9 == pytest.approx(onnx_flops(int8_onnx)["flops"], rel=1e-9)
    # backbone layer4 (dilated, widest) does the most arithmetic of the tiny model
    assert max(prof, key=lambda g: g["gflops"] or 0)["module"] == "layer4"
    # a Q/DQ file on ONNX Runtime CPU runs some kernels in INT8, and the report says which
    assert any("int8" in g["precision"] for g in prof)
    # plausible: the summed kernel times are below a few plain calls' wall time (one thread, load-tolerant)
    with load_runner(int8_onnx, threads=THREADS) as r:
        x = np.zeros((1, 3, *r.input_size), np.float32)
        r.infer(x)
        t = time.perf_counter()
        for _ in range(3):
            r.infer(x)
        wall_ms = (time.perf_counter() - t) * 1e3 / 3
    assert 0 < info["total_ms"] < 5 * wall_ms
    assert (tmp_path / "prof" / "time_per_group.png").stat().st_size > 1000
    assert "## Time per module group" in (tmp_path / "prof" / "report.md").read_text()
    # PyTorch candidate: hook timing, FP32
    rep = _debug(onnx_b1, tiny_checkpoint, tmp_path / "prof_pt", images=1, profile=True)
    assert {g["module"] for g in rep["profile"]} >= {"stem", "layer4", "ppm", "head"}
    assert all(g["precision"].startswith("fp32") for g in rep["profile"])


def test_fp16_profile_puts_every_conv_in_its_module_group(fp16_onnx):
    """ONNX Runtime's CPU runs an FP16 graph through inserted casts and names the fused Conv kernels
    after them (``InsertedPrecisionFreeCast_relu_3_nchwc``); each must still count in the group of
    the layer whose tensor it writes, not in "other" (on the reference model it was 99 % of the time)."""
    from pspnet_deploy.debug.capture import open_source
    from pspnet_deploy.debug.profile import profile_candidate

    cand = open_source(fp16_onnx, threads=THREADS)
    x = np.zeros((1, 3, *cand.card.preprocessing().input_size), np.float32)
    try:
        groups, info = profile_candidate(cand, x, threads=THREADS, progress=False)
    finally:
        cand.close()
    convs = [r for r in info["layers"] if r["type"] == "Conv"]
    assert convs and any(r["node"].startswith("InsertedPrecisionFreeCast_") for r in convs)
    assert [r["node"] for r in convs if r["group"] == "other"] == []
    assert {g["module"] for g in groups} >= {"stem", "layer1", "layer4", "head"}
