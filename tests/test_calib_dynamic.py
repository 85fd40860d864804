"""FP16 and INT8 Q/DQ variants of the dynamic-shape graph (issue 24), calibrated on images of mixed
sizes: each calibration image is used at its own size (fitted into the model's bounds when outside
them), the table and the INT8 file record which sizes, and the variants agree with the FP32 dynamic
model on ONNX Runtime and OpenVINO at sizes that are not multiples of 8 or of the bins.

The model is the conftest tiny PSPNet trained 12 Adam steps on synthetic scenes (seconds): an
untrained net's logits are so flat that INT8 flips 2-3 % of its pixels at any calibration, which
says nothing about calibration. What this cannot catch: TensorRT's own INT8/FP16 kernels (no GPU
here); the files pass the parser check against the TensorRT API surface."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import THREADS, make_tiny_model, run_cli, synthetic_meta

MIN, OPT, MAX = (48, 48), (64, 96), (256, 320)
#: calibration image sizes: not multiples of 8 or of the bins; 300x410 is outside MAX (fitted to 234x320)
CALIB_SIZES = {(75, 101): 4, (131, 173): 4, (203, 251): 4, (300, 410): 1}
FITTED = {"75x101": 4, "131x173": 4, "203x251": 4, "234x320": 1}
CHECK_SIZES = [(97, 131), (241, 319)]
#: INT8 vs FP32 as test_calibrate states it for its trained net (stricter than compare's provisional 0.98 cosine)
MIN_ARGMAX_AGREEMENT, MIN_COSINE = 0.98, 0.999


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The trained tiny checkpoint, its dynamic-shape FP32 export and a folder of mixed-size images."""
    import cv2

    from pspnet_deploy.checkpoint import save_checkpoint
    from pspnet_deploy.data import Preprocess, resize_labels
    from pspnet_deploy.data.samples import generated_images
    from pspnet_deploy.data.synthetic import SYNTHETIC_CLASSES, synthetic
    from pspnet_deploy.export import export_onnx

    d = tmp_path_factory.mktemp("caldyn")
    torch.manual_seed(0)
    net = make_tiny_model(num_classes=len(SYNTHETIC_CLASSES))
    ds = synthetic("train", num_images=24)
    pre = Preprocess(input_size=OPT)
    xs = torch.from_numpy(np.stack([pre(ds.load(i)[0]) for i in range(len(ds))]))
    ys = torch.from_numpy(np.stack([resize_labels(ds.load(i)[1], OPT) for i in range(len(ds))]).astype(np.int64))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    net.train()
    for _ in range(12):
        idx = torch.randint(0, len(ds), (4,), generator=g)
        loss = torch.nn.functional.cross_entropy(net(xs[idx])[0], ys[idx], ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_checkpoint(d / "tiny.pt", net.eval(), synthetic_meta())
    fp32 = d / "dyn.fp32.onnx"
    export_onnx(str(d / "tiny.pt"), str(fp32), input_size=OPT, dynamic_shape=True, min_size=MIN, max_size=MAX,
                verify=False, progress=False, threads=THREADS)
    images = d / "images"
    images.mkdir()
    k = 0
    for (h, w), n in CALIB_SIZES.items():
        for im in generated_images(h, w, n, seed=h):
            cv2.imwrite(str(images / f"img{k:02d}.png"), im[:, :, ::-1])
            k += 1
    return {"dir": d, "fp32": fp32, "images": images}


def _inputs(h: int, w: int) -> np.ndarray:
    from pspnet_deploy.data import Preprocess
    from pspnet_deploy.data.samples import generated_images

    return Preprocess(input_size=(h, w)).batch(generated_images(h, w, 1, seed=1)).astype(np.float32)


def _agreement(fp32, candidate, tol: dict, **floor) -> None:
    """``candidate`` (ONNX or OpenVINO IR, any runner) agrees with the FP32 dynamic ONNX at CHECK_SIZES."""
    from pspnet_deploy.compare import check, compare_outputs
    from pspnet_deploy.runners import load_runner

    with load_runner(fp32, threads=THREADS) as ref, load_runner(candidate, threads=THREADS) as r:
        for h, w in CHECK_SIZES:
            x = _inputs(h, w)
            m = compare_outputs(ref.infer(x), r.infer(x).astype(np.float32))
            assert m["nonfinite"] == 0 and check(m, tol) == [], (candidate, h, w, m)
            assert all(m[k] >= v for k, v in floor.items()), (candidate, h, w, m)


def test_fit_to_bounds_and_batches_by_size():
    from pspnet_deploy.precision.mixed_sizes import MixedSizeSet, fit_to_bounds, stacked_outputs

    rng = (MIN, OPT, MAX)
    assert fit_to_bounds(97, 131, rng) == (97, 131)  # inside: its own size
    assert fit_to_bounds(300, 410, rng) == (234, 320)  # scaled down, aspect kept
    assert fit_to_bounds(30, 40, rng) == (48, 64)  # scaled up, aspect kept
    assert fit_to_bounds(40, 1000, rng) == (48, 320)  # the ratio cannot fit: each side clipped
    shapes = [(5, 7), (6, 9), (5, 7)]
    flat = np.concatenate([np.full(3 * h * w, k, np.float32) for k, (h, w) in enumerate(shapes)])
    s = MixedSizeSet(flat, shapes, ["a", "b", "c"], "hash", {})
    got = [(x.shape, real, x[:, 0, 0, 0].tolist()) for x, real in s.batches(2)]
    assert got == [((2, 3, 5, 7), 2, [0.0, 2.0]), ((2, 3, 6, 9), 1, [1.0, 1.0])]  # one size per batch, filled
    assert [x.shape for x, _ in s.batches(None, limit=2)] == [(1, 3, 5, 7), (1, 3, 6, 9)]
    assert s.size_record()["sizes"] == {"5x7": 2, "6x9": 1}
    out = stacked_outputs([np.ones((1, 4, 5, 7)), np.zeros((2, 4, 6, 9))])
    assert out.shape == (1, 4, 35 + 108, 1) and out[0, :, :35].min() == 1 and out[0, :, 35:].max() == 0


def test_int8_calibrated_on_mixed_sizes(work, tmp_path):
    """Ranges from the images at their own sizes; the sizes in the table and the file; INT8 agrees with
    FP32 on ONNX Runtime and OpenVINO at 97x131 and 241x319; a reused table with bias correction
    measures on the same mixed-size images."""
    from pspnet_deploy.card import read_card, table_path_for
    from pspnet_deploy.compare import tolerances_for
    from pspnet_deploy.engine.openvino import OVBuildOptions, build_openvino
    from pspnet_deploy.parser_check import check_onnx_for_tensorrt
    from pspnet_deploy.precision.calibrate import calibrate_onnx

    out = tmp_path / "dyn.int8.onnx"
    rep = calibrate_onnx(work["fp32"], out, str(work["images"]), cache_dir=tmp_path / "cache", progress=False,
                         threads=THREADS)
    table = json.loads(table_path_for(out).read_text())
    assert table["images"]["mixed_sizes"] and table["images"]["sizes"] == FITTED
    assert table["images"]["resized_to_bounds"] == 1 and table["images"]["size_range"] == [list(MIN), list(OPT),
                                                                                            list(MAX)]
    cal = read_card(out).meta["calibration"]
    assert cal["sizes"] == FITTED and cal["images_hash"] == table["images"]["hash"] == rep["images"]["hash"]
    assert list((tmp_path / "cache").glob("calib-*.f32"))  # the own-size images, cached flat
    assert check_onnx_for_tensorrt(str(out), trt_major=10) == []
    int8 = tolerances_for("int8")  # the documented agreement (compare.DEFAULT_TOLERANCES), and test_calibrate's
    _agreement(work["fp32"], out, int8, argmax_agreement=MIN_ARGMAX_AGREEMENT, cosine=MIN_COSINE)
    build_openvino(out, tmp_path / "dyn.int8.xml", OVBuildOptions(), log=lambda m: None)
    _agreement(work["fp32"], tmp_path / "dyn.int8.xml", int8, argmax_agreement=MIN_ARGMAX_AGREEMENT,
               cosine=MIN_COSINE)

    again, js = tmp_path / "bc" / "dyn.int8.onnx", tmp_path / "bc.json"  # the command, on the same files
    r = run_cli("pspnet_deploy.cli.calibrate", work["fp32"], "--data", work["images"], "--calib-table",
                table_path_for(out), "--bias-correction", "--output", again, "--cache-dir", tmp_path / "cache",
                "--no-parser-check", "--no-progress", "--json", js)
    assert r.returncode == 0, r.stderr
    rep2 = json.loads(js.read_text())
    assert rep2["bias_correction"]["corrected"] > 10 and rep2["cache"]["table"]
    assert read_card(again).meta["calibration"]["sizes"] == FITTED  # the table's record carried over


def test_fp16_of_the_dynamic_graph(work, tmp_path):
    """convert_fp16 (pspnet-build-engine --fp16 from an FP32 ONNX) takes the dynamic graph: ranges and
    its parity check at the optimise-for size and both bounds; FP16 agrees with FP32 within the FP16
    tolerances on ONNX Runtime at 97x131 and 241x319. OpenVINO refuses FP16 ONNX by design (its CPU
    16-bit path is --bf16 on the FP32 IR), so there is no OpenVINO FP16 to compare."""
    from pspnet_deploy.card import read_card
    from pspnet_deploy.compare import tolerances_for
    from pspnet_deploy.engine.openvino import OVBuildOptions, build_openvino
    from pspnet_deploy.errors import UserError
    from pspnet_deploy.precision.fp16 import convert_fp16

    out = tmp_path / "dyn.fp16.onnx"
    rep = convert_fp16(work["fp32"], out, progress=False, threads=THREADS)
    assert rep["parity"]["passed"]
    assert {tuple(s) for s in rep["fp16"]["calibration"]["sizes"]} == {OPT, MIN, MAX}  # one entry per batch
    card = read_card(out)
    assert card.precision == "fp16" and card.size_range == (MIN, OPT, MAX)
    _agreement(work["fp32"], out, tolerances_for("fp16"))
    # OpenVINO's 16-bit path is BF16 on the FP32 IR (engine/openvino.py): an FP16 ONNX is refused there
    with pytest.raises(UserError, match="is the FP16 ONNX; OpenVINO on CPUs builds from the FP32 ONNX"):
        build_openvino(out, tmp_path / "dyn.fp16.xml", OVBuildOptions(), log=lambda m: None)
