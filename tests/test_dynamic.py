"""Dynamic-shape export (pspnet-export --dynamic-shape): symbolic H and W, pyramid pooling exact at
every size (PyTorch's nn.AdaptiveAvgPool2d windows), bounds in the metadata, refusal outside them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import THREADS, make_tiny_model, run_cli

MIN, OPT, MAX = (48, 48), (64, 96), (256, 320)
#: not multiples of 8 or of the bins (1, 2, 3, 6): feature maps 13x17, 31x40, 19x26
SIZES = [(97, 131), (241, 319), (150, 203)]


@pytest.fixture(scope="module")
def dyn_fp32(tmp_path_factory, tiny_checkpoint):
    from pspnet_deploy.export import export_onnx

    out = tmp_path_factory.mktemp("dyn") / "dyn.fp32.onnx"
    report = export_onnx(str(tiny_checkpoint), str(out), input_size=OPT, dynamic_shape=True, min_size=MIN,
                         max_size=MAX, num_verify=1, progress=False, threads=THREADS)
    return out, report


@pytest.fixture(scope="module")
def dyn_fp16(tmp_path_factory, tiny_checkpoint):
    from pspnet_deploy.export import export_onnx

    out = tmp_path_factory.mktemp("dyn16") / "dyn.fp16.onnx"
    export_onnx(str(tiny_checkpoint), str(out), input_size=OPT, dynamic_shape=True, min_size=MIN, max_size=MAX,
                fp16=True, num_verify=1, verify=False, progress=False, threads=THREADS)
    return out


def _reference(x: np.ndarray) -> np.ndarray:
    """The tiny checkpoint's model in PyTorch, real nn.AdaptiveAvgPool2d (conftest builds it the same way)."""
    m = make_tiny_model().eval()
    assert isinstance(m.ppm.pools[0], torch.nn.AdaptiveAvgPool2d)
    with torch.inference_mode():
        return m(torch.from_numpy(x)).numpy()


def _check_against_torch(path, precision):
    from pspnet_deploy.compare import check, compare_outputs, tolerances_for
    from pspnet_deploy.ort_session import make_session

    from pspnet_deploy.data import Preprocess
    from pspnet_deploy.data.samples import generated_images

    sess = make_session(path, THREADS)
    for h, w in SIZES:  # the export gate's generated images (smooth regions and edges), preprocessed
        x = Preprocess(input_size=(h, w)).batch(generated_images(h, w, 1, seed=1)).astype(np.float32)
        out = sess.run(None, {"input": x})[0]
        assert out.shape == (1, 4, h, w)  # back to the input's own size
        rep = compare_outputs(_reference(x), out.astype(np.float32))
        assert check(rep, tolerances_for(precision)) == [], (h, w, rep)


def test_fp32_matches_adaptive_pooling_at_unseen_sizes(dyn_fp32):
    _check_against_torch(dyn_fp32[0], "fp32")


def test_fp16_matches_adaptive_pooling_at_unseen_sizes(dyn_fp16):
    _check_against_torch(dyn_fp16, "fp16")


def test_graph_metadata_and_gate(dyn_fp32):
    import onnx

    from pspnet_deploy.card import read_card
    from pspnet_deploy.parser_check import check_onnx_for_tensorrt

    path, report = dyn_fp32
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert check_onnx_for_tensorrt(model, trt_major=10) == []
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims[2:]] == ["height", "width"]
    ops = [n.op_type for n in model.graph.node]
    # compact: separable pooling of the whole pyramid in two MatMuls, no per-window gathers
    assert ops.count("MatMul") == 2 and "Gather" not in ops and "AveragePool" not in ops
    assert len(ops) <= 120, len(ops)
    card = read_card(path)
    assert card.size_range == (MIN, OPT, MAX) and card.input_size == OPT and not card.static_size
    # the gate ran at the optimise-for size, the bounds and the sizes not multiple of 8 or the bins
    assert set(report["parity"]["sizes"]) == {"64x96", "48x48", "256x320", "97x131", "241x319", "256x320"}
    assert report["parity"]["passed"]


def test_runner_refuses_outside_bounds(dyn_fp32):
    from pspnet_deploy.errors import UserError
    from pspnet_deploy.runners import load_runner

    with load_runner(dyn_fp32[0], threads=THREADS) as r:
        assert r.infer(np.zeros((1, 3, 97, 131), np.float32)).shape == (1, 4, 97, 131)
        with pytest.raises(UserError, match="outside the model's size range 48x48 .. 256x320"):
            r.infer(np.zeros((1, 3, 40, 131), np.float32))


def test_cli_refuses_bad_bounds(tiny_checkpoint, tmp_path):
    out = tmp_path / "x.onnx"
    for extra, msg in [(["--min-size", "30", "30"], "too small for this model"),
                       (["--max-size", "60", "60"], "--min-size <= --input-size <= --max-size")]:
        r = run_cli("pspnet_deploy.cli.export", tiny_checkpoint, "--onnx", out, "--dynamic-shape", "--input-size",
                    "64", "96", *extra)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pspnet-export: error:") and msg in lines[0], r.stderr
        assert not out.exists()
    r = run_cli("pspnet_deploy.cli.export", tiny_checkpoint, "--onnx", out, "--min-size", "48", "48")
    assert r.returncode == 2 and "need --dynamic-shape" in r.stderr


def test_whole_image_at_own_size_and_mixed_batches(dyn_fp32):
    """eval/predict --mode whole: a dynamic model runs each image at its own size (no resize), and
    items of different sizes are batched by size."""
    from pspnet_deploy.data.samples import generated_images
    from pspnet_deploy.runners import load_runner
    from pspnet_deploy.sliding import whole_logits

    imgs = [generated_images(h, w, 1, seed=2)[0] for h, w in [(97, 131), (97, 131), (150, 203)]]
    with load_runner(dyn_fp32[0], threads=THREADS) as r:
        assert r.dynamic_size and r.input_size == OPT
        items = [r.prepare(im) for im in imgs]
        assert [x.shape[1:] for x in items] == [(97, 131), (97, 131), (150, 203)]
        outs = r.infer_items(items, batch=4)
        scores = whole_logits(r, imgs[2])
        ref = _reference(r.preprocess.normalize(imgs[2])[None])[0]
    assert [o.shape[1:] for o in outs] == [(97, 131), (97, 131), (150, 203)]
    assert np.abs(scores - ref).max() < 1e-4
    assert np.abs(outs[2] - ref).max() < 1e-4


def test_predict_cli_own_size_and_refusal(dyn_fp32, tmp_path):
    import cv2

    from pspnet_deploy.data.samples import generated_images

    ok, big = tmp_path / "in" / "ok.png", tmp_path / "big" / "big.png"
    for p, (h, w) in [(ok, (97, 131)), (big, (300, 200))]:
        p.parent.mkdir()
        cv2.imwrite(str(p), generated_images(h, w, 1, seed=3)[0][:, :, ::-1])
    r = run_cli("pspnet_deploy.cli.predict", dyn_fp32[0], ok, "-o", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    r = run_cli("pspnet_deploy.cli.predict", dyn_fp32[0], big, "-o", tmp_path / "out2")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "pspnet-predict: error:" in lines[0] and "outside the model's size range" in lines[0]


def test_triton_dims_are_symbolic(dyn_fp32, tmp_path):
    from test_triton import parse_config

    from pspnet_deploy.triton import write_triton_repo

    write_triton_repo(dyn_fp32[0], tmp_path / "repo", name="dyn")
    cfg = parse_config(tmp_path / "repo" / "dyn" / "config.pbtxt")
    assert [list(i.dims) for i in cfg.input] == [[1, 3, -1, -1]]
    assert [list(o.dims) for o in cfg.output] == [[1, 4, -1, -1]]


def test_openvino_bounded_and_static_ir(dyn_fp32, tmp_path):
    from pspnet_deploy.compare import check, compare_outputs, tolerances_for
    from pspnet_deploy.data import Preprocess
    from pspnet_deploy.data.samples import generated_images
    from pspnet_deploy.engine.openvino import OVBuildOptions, build_openvino
    from pspnet_deploy.errors import UserError
    from pspnet_deploy.runners import load_runner

    quiet = lambda m: None  # noqa: E731
    sc = build_openvino(dyn_fp32[0], tmp_path / "dyn.fp32.xml", OVBuildOptions(), log=quiet)
    assert sc["io"]["inputs"][0]["shape"] == [1, 3, -1, -1]
    with load_runner(tmp_path / "dyn.fp32.xml", threads=THREADS) as r:
        assert r.card.size_range == (MIN, OPT, MAX) and r.input_size == OPT
        for h, w in SIZES[:2]:
            x = Preprocess(input_size=(h, w)).batch(generated_images(h, w, 1, seed=1)).astype(np.float32)
            assert check(compare_outputs(_reference(x), r.infer(x)), tolerances_for("fp32")) == []
        with pytest.raises(UserError, match="outside the model's size range"):
            r.infer(np.zeros((1, 3, 300, 100), np.float32))
    build_openvino(dyn_fp32[0], tmp_path / "s.fp32.xml", OVBuildOptions(static_size=[97, 131]), log=quiet)
    with load_runner(tmp_path / "s.fp32.xml", threads=THREADS) as r:  # reshaped on request: a static IR
        assert r.card.static_size and r.card.size_range is None and r.input_size == (97, 131)
    with pytest.raises(UserError, match="outside the model's size range"):
        build_openvino(dyn_fp32[0], tmp_path / "t.fp32.xml", OVBuildOptions(static_size=[20, 20]), log=quiet)


def test_int8_dynamic_graph_runs_at_unseen_sizes(dyn_fp32, tmp_path):
    """pspnet-calibrate takes the dynamic graph (calibrated on the synthetic images at their own
    96x128; mixed sizes and the documented agreement: tests/test_calib_dynamic.py). On this UNTRAINED tiny net INT8 agrees with FP32 at
    0.97-0.98 of pixels, below the 0.98 / cosine 0.999 that test_calibrate states for its trained
    net; the bounds here are what this untrained net gives, not the documented agreement."""
    from pspnet_deploy.compare import compare_outputs
    from pspnet_deploy.data import Preprocess
    from pspnet_deploy.data.samples import generated_images
    from pspnet_deploy.ort_session import make_session
    from pspnet_deploy.parser_check import check_onnx_for_tensorrt
    from pspnet_deploy.precision.calibrate import calibrate_onnx

    out = tmp_path / "dyn.int8.onnx"
    calibrate_onnx(dyn_fp32[0], out, "synthetic", num_images=12, cache_dir=tmp_path / "c", progress=False,
                   threads=THREADS)
    assert check_onnx_for_tensorrt(str(out), trt_major=10) == []
    ref, q = make_session(dyn_fp32[0], THREADS), make_session(out, THREADS)
    for h, w in SIZES:
        x = Preprocess(input_size=(h, w)).batch(generated_images(h, w, 1, seed=1)).astype(np.float32)
        m = compare_outputs(ref.run(None, {"input": x})[0], q.run(None, {"input": x})[0])
        assert m["nonfinite"] == 0 and m["argmax_agreement"] >= 0.95 and m["cosine"] >= 0.995, (h, w, m)
