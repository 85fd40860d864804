"""INT8 calibration: Q/DQ structure, agreement with FP32, caches, methods, the accuracy budget, bad input.

Models: the tiny ResNet-18 PSPNet of conftest exported by pspnet-export (structure, static pooling,
metadata, parser check) and a tiny conv net trained for a few dozen steps on the synthetic dataset
(agreement, methods, sensitivity). Everything runs on ONNX Runtime CPU, one thread.
"""
from __future__ import annotations

import json
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import THREADS, TINY_SIZE, make_tiny_model, run_cli, synthetic_meta

from pspnet_deploy.evaluate import onnx_miou

H, W = TINY_SIZE
#: stated agreement thresholds for INT8 vs FP32 on the trained tiny net (synthetic val)
MIN_ARGMAX_AGREEMENT = 0.98
MIN_COSINE = 0.999


# ----------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pspnet_fp32(tmp_path_factory) -> Path:
    """The conftest tiny PSPNet (5 synthetic classes) through pspnet-export's export_onnx."""
    from pspnet_deploy.checkpoint import save_checkpoint
    from pspnet_deploy.export import export_onnx

    d = tmp_path_factory.mktemp("pspnet")
    ckpt = d / "tiny.pt"
    save_checkpoint(ckpt, make_tiny_model(num_classes=5), synthetic_meta())
    out = d / "model.fp32.onnx"
    export_onnx(ckpt, out, verify=False, progress=False, threads=THREADS)
    return out


class TinyNet(nn.Module):
    """Four 3x3 conv-BN-ReLU layers and a 1x1 classifier at full resolution."""

    def __init__(self, classes: int = 5, ch: int = 16):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch)
        self.c2, self.b2 = nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch)
        self.c3, self.b3 = nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch)
        self.c4, self.b4 = nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch)
        self.cls = nn.Conv2d(ch, classes, 1)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        x = torch.relu(self.b3(self.c3(x)))
        x = torch.relu(self.b4(self.c4(x)))
        return self.cls(x)


def _export_tiny(net: nn.Module, path: Path) -> Path:
    import onnx

    from pspnet_deploy.onnx_graph import write_onnx_metadata

    net = net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, H, W),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"])
    m = onnx.load(str(path))
    meta = synthetic_meta()
    meta.update(precision="fp32", output_kind="logits", input_size=[H, W])
    write_onnx_metadata(m, meta)
    onnx.save(m, str(path))
    return path


@pytest.fixture(scope="module")
def trained_net() -> TinyNet:
    """TinyNet trained 60 Adam steps on synthetic street/harbour scenes (seconds on one core)."""
    from pspnet_deploy.data import Preprocess, resize_labels
    from pspnet_deploy.data.synthetic import synthetic

    torch.manual_seed(0)
    ds = synthetic("train", num_images=48)
    pre = Preprocess(input_size=(H, W))
    xs = torch.from_numpy(np.stack([pre(ds.load(i)[0]) for i in range(len(ds))]))
    ys = torch.from_numpy(np.stack([resize_labels(ds.load(i)[1], (H, W)) for i in range(len(ds))]).astype(np.int64))
    net = TinyNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    net.train()
    for _ in range(60):
        idx = torch.randint(0, len(ds), (8,), generator=g)
        loss = nn.functional.cross_entropy(net(xs[idx]), ys[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def trained_fp32(trained_net, tmp_path_factory) -> Path:
    return _export_tiny(trained_net, tmp_path_factory.mktemp("trained") / "tiny.fp32.onnx")


PLANT = 1000.0


@pytest.fixture(scope="module")
def planted_fp32(trained_net, tmp_path_factory) -> Path:
    """The trained net with one output channel of c2 scaled by 1000 and c3's matching input weights
    divided by 1000: the same function in FP32, but c3's input tensor has a 1000x outlier channel
    that per-tensor INT8 wipes the other channels out with. Keeping c3 FP32 fixes it."""
    import copy

    net = copy.deepcopy(trained_net)
    with torch.no_grad():
        net.b2.weight[0] *= PLANT
        net.b2.bias[0] *= PLANT
        net.c3.weight[:, 0] /= PLANT
    return _export_tiny(net, tmp_path_factory.mktemp("planted") / "planted.fp32.onnx")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """A plain folder of 14 synthetic PNGs and one file that is not an image."""
    import cv2

    from pspnet_deploy.data.synthetic import synthetic

    d = tmp_path_factory.mktemp("images")
    ds = synthetic("test", num_images=14)
    for i in range(len(ds)):
        cv2.imwrite(str(d / f"img{i:03d}.png"), cv2.cvtColor(ds.load(i)[0], cv2.COLOR_RGB2BGR))
    (d / "img999.png").write_bytes(b"not a png")
    return d


def _ort(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _val_batch(n: int = 8) -> np.ndarray:
    from pspnet_deploy.data import Preprocess
    from pspnet_deploy.data.synthetic import synthetic

    ds = synthetic("val")
    pre = Preprocess(input_size=(H, W))
    return np.stack([pre(ds.load(i)[0]) for i in range(n)]).astype(np.float32)


def _run(path, x: np.ndarray) -> np.ndarray:
    s = _ort(path)
    return np.concatenate([s.run(None, {s.get_inputs()[0].name: x[i:i + 1]})[0] for i in range(len(x))])


# ----------------------------------------------------------------------------------------------
# structure, metadata, cache (tiny PSPNet from pspnet-export)
# ----------------------------------------------------------------------------------------------


def test_qdq_structure_metadata_and_cache(pspnet_fp32, image_folder, tmp_path):
    import onnx
    from onnx import numpy_helper

    from pspnet_deploy.precision.calibrate import calibrate_onnx
    from pspnet_deploy.precision.table import read_calibration_table
    from pspnet_deploy.onnx_graph import static_pool_node_names
    from pspnet_deploy.parser_check import check_onnx_for_tensorrt
    from pspnet_deploy.runners import load_runner
    from pspnet_deploy.utils import sha256_file

    out = tmp_path / "model.int8.onnx"
    cache = tmp_path / "cache"
    rep = calibrate_onnx(pspnet_fp32, out, image_folder, num_images=50, method="minmax", cache_dir=cache,
                         progress=False, threads=THREADS)
    assert rep["images"]["count"] == 14 and rep["images"]["skipped"] == 1  # the broken file skipped, counted
    assert rep["cache"]["hit"] is False
    m = onnx.load(str(out))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    prod = {o: n for n in m.graph.node for o in n.output}
    qdq = [n for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq, "no Q/DQ nodes"
    for n in qdq:  # symmetric INT8: every zero point is an int8 zero
        zp = inits[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), n.name
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    assert len(convs) == 26  # ResNet-18: 20 (BN folded), pyramid stages: 4, head: 2
    for c in convs:
        x_dq, w_dq = prod.get(c.input[0]), prod.get(c.input[1])
        assert x_dq is not None and x_dq.op_type == "DequantizeLinear", f"{c.name}: activation not quantized"
        assert inits[x_dq.input[1]].size == 1, f"{c.name}: activation scale not per-tensor"
        assert w_dq is not None and w_dq.op_type == "DequantizeLinear" and w_dq.input[0] in inits
        w = inits[w_dq.input[0]]
        scale = inits[w_dq.input[1]]
        axis = {a.name: a.i for a in w_dq.attribute}.get("axis", 1)
        assert w.dtype == np.int8 and scale.shape == (w.shape[0],) and axis == 0, f"{c.name}: weights not per channel"
        assert np.abs(w).max() <= 127
        if len(c.input) > 2:  # bias: FP32 initializer, not quantized
            assert c.input[2] in inits and inits[c.input[2]].dtype == np.float32, f"{c.name}: bias quantized"
    # the exact static pooling stays FP32 on FP32 input
    pool = static_pool_node_names(m)
    assert len(pool) == 6 and rep["static_pool_nodes"] == sorted(pool)
    for n in m.graph.node:
        if n.name in pool:
            for i in n.input:
                p = prod.get(i)
                assert p is None or p.op_type not in ("DequantizeLinear", "QuantizeLinear"), f"{n.name} quantized"
                if i in inits:
                    assert inits[i].dtype == np.float32
    # TensorRT placement: no Q/DQ between a Conv and the residual Add it feeds
    for n in m.graph.node:
        if n.op_type == "Add":
            srcs = [prod[i].op_type for i in n.input]
            assert sorted(srcs) == ["Conv", "DequantizeLinear"], (n.name, srcs)
    assert check_onnx_for_tensorrt(out) == []
    # metadata: runnable by the ORT runner, says what it is and where it came from
    r = load_runner(out, threads=THREADS)
    assert r.precision == "int8"
    assert r.meta["calibration_method"] == "minmax" and r.meta["source_onnx_sha256"] == sha256_file(pspnet_fp32)
    assert r.meta["calibration_images_hash"] == rep["images"]["hash"]
    assert r.meta["calibration"]["static_pool_nodes_fp32"] == sorted(pool)
    y = r.infer(_val_batch(1))
    assert y.shape == (1, 5, H, W) and np.isfinite(y).all()
    # calibration table beside the model: tensor -> scale, method, images' hash
    t = read_calibration_table(out.with_suffix(".calib.json"))
    assert t["method"] == "minmax" and t["images"]["hash"] == rep["images"]["hash"]
    in_scale = inits[next(n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input").input[1]]
    assert t["tensors"]["input"]["scale"] == pytest.approx(float(in_scale), rel=1e-6)
    # second run: the preprocessed tensor and the statistics come from the cache
    npy = Path(rep["cache"]["path"])
    mtime = npy.stat().st_mtime_ns
    out2 = tmp_path / "again.int8.onnx"
    rep2 = calibrate_onnx(pspnet_fp32, out2, image_folder, num_images=50, method="minmax", cache_dir=cache,
                          progress=False, threads=THREADS)
    assert rep2["cache"]["hit"] is True and rep2["cache"]["stats_hit"] is True
    assert Path(rep2["cache"]["path"]) == npy and npy.stat().st_mtime_ns == mtime
    assert sha256_file(out2) == sha256_file(out)
    # the table is reusable without images
    out3 = tmp_path / "from-table.int8.onnx"
    rep3 = calibrate_onnx(pspnet_fp32, out3, None, table=out.with_suffix(".calib.json"), progress=False,
                          threads=THREADS)
    assert rep3["method"] == "minmax" and sha256_file(out3) == sha256_file(out)
    assert read_calibration_table(out3.with_suffix(".calib.json"))["tensors"] == t["tensors"]
    # ONNX Runtime's placement (Q/DQ on inputs and outputs, Concat quantized) from the same table: the
    # pooling still reads FP32
    out4 = tmp_path / "ort.int8.onnx"
    rep4 = calibrate_onnx(pspnet_fp32, out4, None, table=out.with_suffix(".calib.json"), placement="ort",
                          progress=False, threads=THREADS)
    assert rep4["parser_check"]["ok"] and rep4["placement"] == "ort"
    m4 = onnx.load(str(out4))
    prod4 = {o: n for n in m4.graph.node for o in n.output}
    assert any(n.op_type == "QuantizeLinear" and prod4.get(n.input[0]) is not None
               and prod4[n.input[0]].op_type == "Relu" for n in m4.graph.node)  # outputs quantized too
    for n in m4.graph.node:
        if n.name in pool:
            assert all(prod4.get(i) is None or prod4[i].op_type != "DequantizeLinear" for i in n.input), n.name


# ----------------------------------------------------------------------------------------------
# accuracy on a trained model, methods, the budget
# ----------------------------------------------------------------------------------------------


def test_int8_agrees_with_fp32_on_trained_model(trained_fp32, tmp_path):
    from pspnet_deploy.precision.calibrate import calibrate_onnx
    from pspnet_deploy.compare import compare_outputs

    out = tmp_path / "tiny.int8.onnx"
    rep = calibrate_onnx(trained_fp32, out, "synthetic", num_images=24, method="entropy", cache_dir=tmp_path / "c",
                         progress=False, threads=THREADS)
    assert rep["qdq"]["int8_weighted_ops"] == 5 and rep["qdq"]["all_zero_points_zero"]
    x = _val_batch(8)
    ref, q = _run(trained_fp32, x), _run(out, x)
    m = compare_outputs(ref, q)
    assert m["nonfinite"] == 0
    assert m["argmax_agreement"] >= MIN_ARGMAX_AGREEMENT, m
    assert m["cosine"] >= MIN_COSINE, m
    # the model did learn something: FP32 pixel accuracy on val is far above chance (5 classes)
    from pspnet_deploy.data import resize_labels
    from pspnet_deploy.data.synthetic import synthetic

    val = synthetic("val")
    labels = np.stack([resize_labels(val.load(i)[1], (H, W)) for i in range(8)])
    assert (ref.argmax(1) == labels).mean() > 0.5


def test_method_auto_evaluates_each_and_keeps_best(trained_fp32, tmp_path):
    from pspnet_deploy.card import read_card
    from pspnet_deploy.precision.calibrate import calibrate_onnx

    out = tmp_path / "auto.int8.onnx"
    rep = calibrate_onnx(trained_fp32, out, "synthetic", num_images=16, method="auto", eval_limit=8,
                         cache_dir=tmp_path / "c", progress=False, threads=THREADS, evaluator=onnx_miou)
    assert set(rep["methods"]) == {"minmax", "entropy", "percentile", "mse"}
    best = max(v["miou"] for v in rep["methods"].values())
    assert rep["methods"][rep["method"]]["miou"] == best and rep["int8_miou"] == best
    assert read_card(out).meta["calibration_method"] == rep["method"]


def _planted_node(model_path) -> str:
    """The Conv whose weights have input channel 0 shrunk by the plant (found by its weights)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(model_path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "Conv":
            w = inits[n.input[1]]
            if w.shape[1] > 1 and np.abs(w[:, 0]).max() * 100 < np.abs(w[:, 1:]).max():
                return n.name
    raise AssertionError("planted conv not found")


def test_budget_keeps_planted_sensitive_node_fp32(planted_fp32, tmp_path):
    import onnx

    from pspnet_deploy.card import read_card
    from pspnet_deploy.precision.calibrate import calibrate_onnx

    planted = _planted_node(planted_fp32)
    out = tmp_path / "planted.int8.onnx"
    budget = 2.0
    rep = calibrate_onnx(planted_fp32, out, "synthetic", num_images=16, method="minmax", max_miou_drop=budget,
                         eval_limit=12, cache_dir=tmp_path / "c", progress=False, threads=THREADS,
                         sensitivity_images=4, evaluator=onnx_miou)
    s = rep["sensitivity"]
    assert rep["methods"]["minmax"]["drop_points"] > budget  # the plant does wreck all-INT8
    assert s["ranking"][0]["node"] == planted
    assert s["ranking"][0]["noise"] > 10 * s["ranking"][1]["noise"]
    assert rep["fp32_nodes"] == [planted] and s["met"]
    assert rep["drop_points"] <= budget
    for f in s["files"].values():
        assert Path(f).is_file() and Path(f).stat().st_size > 0
    assert planted in Path(s["files"]["md"]).read_text()
    assert json.loads(Path(s["files"]["json"]).read_text())["kept_fp32"] == [planted]
    assert Path(s["files"]["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the kept node really is FP32 in the file: its weights are float, its input not dequantized
    m = onnx.load(str(out))
    prod = {o: n for n in m.graph.node for o in n.output}
    node = next(n for n in m.graph.node if n.name == planted)
    assert prod.get(node.input[0]) is None or prod[node.input[0]].op_type != "DequantizeLinear"
    assert read_card(out).meta["calibration"]["fp32_nodes"] == [planted]


def test_budget_that_cannot_be_met_writes_no_model(planted_fp32, tmp_path):
    from pspnet_deploy.errors import UserError
    from pspnet_deploy.precision.calibrate import calibrate_onnx

    out = tmp_path / "planted.int8.onnx"
    with pytest.raises(UserError, match=r"budget 0\.5 points not met: best plan keeps 0 node"):
        calibrate_onnx(planted_fp32, out, "synthetic", num_images=16, method="minmax", max_miou_drop=0.5,
                       eval_limit=12, cache_dir=tmp_path / "c", progress=False, threads=THREADS,
                       sensitivity_images=2, max_fp32_nodes=0, evaluator=onnx_miou)
    assert not out.exists() and not out.with_suffix(".calib.json").exists()
    assert (tmp_path / "planted.int8.sensitivity.md").is_file()  # the plan is reported
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".calib-")]  # no work files left


# ----------------------------------------------------------------------------------------------
# statistics (numpy only)
# ----------------------------------------------------------------------------------------------


def test_amax_methods_on_known_distributions():
    from pspnet_deploy.precision.ranges import AbsHistogram, amax_from_stats, entropy_amax

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, 100_000), [50.0]]).astype(np.float32)
    h = AbsHistogram()
    for part in np.array_split(x[::-1], 7):  # the range grows across updates: bins merge, counts kept
        h.update(part)
    hist, width, amax = h.to_arrays()
    assert hist.sum() == x.size and amax == 50.0 and width * hist.size >= 50.0
    a = amax_from_stats({"t": (hist, width, amax)}, "minmax")["t"]
    p = amax_from_stats({"t": (hist, width, amax)}, "percentile", 99.9)["t"]
    e = entropy_amax(hist, width, amax)
    assert a == 50.0
    assert 3.0 < p < 4.0  # 99.9th percentile of |N(0,1)| is 3.29 (bin width ~0.1 here)
    assert 2.0 < e < 10.0  # entropy clips the lone outlier


# ----------------------------------------------------------------------------------------------
# bad input: the real CLI, one line on stderr, non-zero exit, no output file
# ----------------------------------------------------------------------------------------------


def _cli(args, cwd) -> subprocess.CompletedProcess:
    return run_cli("pspnet_deploy.cli.calibrate", *args, "--no-progress", cwd=cwd)


def _fp16_copy(src: Path, dst: Path) -> Path:
    import onnx
    from onnxconverter_common import float16

    m = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(m, str(dst))
    return dst


def _no_meta_copy(src: Path, dst: Path) -> Path:
    import onnx

    m = onnx.load(str(src))
    del m.metadata_props[:]
    onnx.save(m, str(dst))
    return dst


@pytest.mark.parametrize("case,pattern", [
    ("empty", r"found 0 calibration images; calibration needs at least 10"),
    ("too_few", r"found 3 calibration images"),
    ("undecodable", r"3 of 13 calibration images could not be decoded"),
    ("fp16", r"model is FP16; calibration needs the FP32 ONNX"),
    ("quantized", r"already quantized"),
    ("no_metadata", r"no pspnet\.preprocess metadata .* pass the model\.fp32\.onnx written by pspnet-export"),
    ("eval_split", r"calibrating on the 'val' split, which is the evaluation split"),
    ("bad_budget", r"--max-miou-drop is in mIoU points"),
])
def test_cli_bad_input(case, pattern, trained_fp32, image_folder, tmp_path):
    import re
    import shutil

    model, data, extra = trained_fp32, tmp_path / "imgs", []
    data.mkdir()
    if case == "too_few":
        for p in sorted(image_folder.glob("img0*.png"))[:3]:
            shutil.copy(p, data)
    elif case == "undecodable":
        for p in sorted(image_folder.glob("img0*.png"))[:10]:
            shutil.copy(p, data)
        for k in range(3):
            (data / f"broken{k}.png").write_bytes(b"\x89PNG but not really")
    elif case in ("fp16", "quantized", "no_metadata", "bad_budget"):
        data = image_folder
        if case == "fp16":
            model = _fp16_copy(trained_fp32, tmp_path / "m.fp16.onnx")
        elif case == "no_metadata":
            model = _no_meta_copy(trained_fp32, tmp_path / "plain.onnx")
        elif case == "quantized":
            from pspnet_deploy.precision.calibrate import calibrate_onnx

            model = tmp_path / "q.int8.onnx"
            calibrate_onnx(trained_fp32, model, image_folder, num_images=12, method="minmax",
                           cache_dir=tmp_path / "c", progress=False, threads=THREADS)
        else:
            extra = ["--max-miou-drop", "-1"]
    elif case == "eval_split":
        data, extra = "synthetic", ["--split", "val"]
    out = tmp_path / "out" / "model.int8.onnx"
    r = _cli([model, "--data", data, "--output", out, "--cache-dir", tmp_path / "cache", *extra], tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pspnet-calibrate: error: "), r.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert not out.exists() and not out.with_suffix(".calib.json").exists()


def test_cli_force_calibrates_on_eval_split_with_warning(trained_fp32, tmp_path):
    out = tmp_path / "forced.int8.onnx"
    r = _cli([trained_fp32, "--data", "synthetic", "--split", "val", "--num-images", "12", "--method", "minmax",
              "--force", "--output", out, "--cache-dir", tmp_path / "cache", "--json", tmp_path / "rep.json"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "warning: calibrating on the evaluation split 'val'" in r.stderr
    assert out.is_file() and out.with_suffix(".calib.json").is_file()
    assert json.loads((tmp_path / "rep.json").read_text())["images"]["split"] == "val"
    assert "wrote" in r.stdout and "TensorRT parser check: ok" in r.stdout
    # pspnet-eval runs the INT8 file on ONNX Runtime CPU through the runners
    from pspnet_deploy.cli.eval import main as eval_main

    assert eval_main([str(out), "--data", "synthetic", "--limit", "4", "--threads", str(THREADS), "--no-progress",
                      "--json", str(tmp_path / "eval.json")]) == 0
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert ev["model"]["precision"] == "int8" and 0 <= ev["miou"] <= 1


def test_modelopt_limits_refused_before_any_statistics(trained_fp32, image_folder, tmp_path):
    """What backend modelopt cannot do is refused before images are read or statistics collected."""
    from pspnet_deploy.errors import UserError
    from pspnet_deploy.precision.calibrate import calibrate_onnx

    out, cache = tmp_path / "m.int8.onnx", tmp_path / "cache"
    cases = [({"method": "percentile"}, r"supports methods minmax and entropy, not percentile"),
             ({"method": "auto"}, r"not percentile, mse; --method auto would try them all"),
             ({"method": "entropy", "table": tmp_path / "t.calib.json"}, r"cannot reuse a --calib-table")]
    try:
        import modelopt.onnx.quantization  # noqa: F401 - only whether it is installed
    except ImportError:
        cases.append(({"method": "entropy"}, r"needs NVIDIA ModelOpt"))
    for kw, pattern in cases:
        with pytest.raises(UserError, match=pattern):
            calibrate_onnx(trained_fp32, out, image_folder, num_images=12, backend="modelopt", cache_dir=cache,
                           progress=False, threads=THREADS, evaluator=onnx_miou, **kw)
        assert not cache.exists() and not out.exists()
    with pytest.raises(ValueError, match="pass evaluator="):  # accuracy needs the caller's evaluator
        calibrate_onnx(trained_fp32, out, image_folder, method="auto", cache_dir=cache, progress=False)
    assert not cache.exists()


# ----------------------------------------------------------------------------------------------
# bias correction
# ----------------------------------------------------------------------------------------------


def test_bias_correction_takes_out_each_convs_mean_shift(trained_fp32, tmp_path):
    """--bias-correction changes only the FP32 biases; each quantized conv's own mean output shift
    and the logits' mean error against FP32 on the calibration images mostly go. (Whether that carries
    to unseen images is a property of the data, measured on CamVid: calibration/heldout-r18.)"""
    import copy

    import onnx
    from onnx import numpy_helper

    from pspnet_deploy.card import read_card
    from pspnet_deploy.precision.batches import iter_batches
    from pspnet_deploy.precision.bias_correction import correct_biases
    from pspnet_deploy.precision.calib_data import load_calibration_set
    from pspnet_deploy.precision.calibrate import calibrate_onnx, inspect_fp32_onnx
    from pspnet_deploy.precision.qdq import prepare_fp32

    plain, corrected = tmp_path / "plain.int8.onnx", tmp_path / "bc.int8.onnx"
    common = dict(num_images=24, method="entropy", cache_dir=tmp_path / "c", progress=False, threads=THREADS)
    calibrate_onnx(trained_fp32, plain, "synthetic", **common)
    rep = calibrate_onnx(trained_fp32, corrected, "synthetic", bias_correction=True, **common)
    assert rep["bias_correction"]["corrected"] == 5 and rep["qdq"]["all_zero_points_zero"]
    assert read_card(corrected).meta["calibration"]["bias_correction"]["corrected"] == 5
    ma, mb = onnx.load(str(plain)), onnx.load(str(corrected))
    assert [(n.op_type, list(n.input)) for n in ma.graph.node] == [(n.op_type, list(n.input)) for n in mb.graph.node]
    ia = {i.name: numpy_helper.to_array(i) for i in ma.graph.initializer}
    ib = {i.name: numpy_helper.to_array(i) for i in mb.graph.initializer}
    biases = {n.input[2] for n in ma.graph.node if n.op_type == "Conv" and len(n.input) > 2}
    for name, a in ia.items():  # INT8 weights, scales and zero points untouched; biases moved
        assert np.array_equal(a, ib[name]) == (name not in biases), name
    src = inspect_fp32_onnx(trained_fp32)
    calib = load_calibration_set("synthetic", "train", 24, src.preprocess, src.sha256, tmp_path / "c", False)
    pre = onnx.load(str(prepare_fp32(trained_fp32, tmp_path / "pre.onnx")))
    shifts = [sum(correct_biases(copy.deepcopy(m), pre, iter_batches(calib.array, 1), threads=THREADS)["shifts"].values())
              for m in (ma, mb)]
    assert shifts[1] < 0.25 * shifts[0], shifts
    x = np.asarray(calib.array)
    ref = _run(trained_fp32, x)
    err = [np.abs((_run(p, x) - ref).mean(axis=(0, 2, 3))).mean() for p in (plain, corrected)]
    assert err[1] < 0.9 * err[0], err


def test_bias_correction_with_a_table_needs_images(trained_fp32, image_folder, tmp_path):
    from pspnet_deploy.precision.calibrate import calibrate_onnx

    first = tmp_path / "a.int8.onnx"
    calibrate_onnx(trained_fp32, first, image_folder, num_images=12, method="minmax", cache_dir=tmp_path / "c",
                   progress=False, threads=THREADS)
    out = tmp_path / "b.int8.onnx"
    r = _cli([trained_fp32, "--calib-table", first.with_suffix(".calib.json"), "--bias-correction", "--output", out],
             tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "pspnet-calibrate: error: --bias-correction measures each convolution's error on calibration images; "
        "pass --data DIR as well as --calib-table"]
    assert not out.exists()
    r = _cli([trained_fp32, "--calib-table", first.with_suffix(".calib.json"), "--bias-correction", "--data", image_folder,
              "--num-images", "12", "--cache-dir", tmp_path / "c", "--output", out], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "bias correction: 5 convolutions" in r.stdout and out.is_file()
    # that table records the correction: reusing it asks for images again, or an explicit --no-bias-correction
    again = tmp_path / "c.int8.onnx"
    r = _cli([trained_fp32, "--calib-table", out.with_suffix(".calib.json"), "--output", again], tmp_path)
    assert r.returncode == 2 and not again.exists()
    assert "made with --bias-correction" in r.stderr and "--no-bias-correction" in r.stderr
    r = _cli([trained_fp32, "--calib-table", out.with_suffix(".calib.json"), "--no-bias-correction", "--output", again],
             tmp_path)
    assert r.returncode == 0, r.stderr
    assert "bias correction" not in r.stdout and again.is_file()


def test_fallback_fp16_keeps_the_planted_node_as_an_fp16_island(planted_fp32, tmp_path):
    """--fallback fp16: the node kept out of INT8 gets FP16 weights and FP16 Casts around it (what a
    strongly typed TensorRT network runs in FP16), passes the parser check, and agrees with the
    FP32-fallback file; the rest of the graph is the same."""
    import onnx

    from pspnet_deploy.card import read_card
    from pspnet_deploy.compare import compare_outputs
    from pspnet_deploy.precision.calibrate import calibrate_onnx

    planted = _planted_node(planted_fp32)
    files = {}
    for fb in ("fp32", "fp16"):
        files[fb] = tmp_path / f"{fb}.int8.onnx"
        rep = calibrate_onnx(planted_fp32, files[fb], "synthetic", num_images=16, method="minmax", keep_fp32=[planted],
                             fallback=fb, cache_dir=tmp_path / "c", progress=False, threads=THREADS)
        assert rep["parser_check"]["ok"] and rep["qdq"]["all_zero_points_zero"]
        assert read_card(files[fb]).meta["calibration"]["fallback_precision"] == fb
        assert read_card(files[fb]).precision == "int8"
    assert rep["qdq"]["fp16_weighted_ops"] == [planted] and rep["qdq"]["int8_weighted_ops"] == 4
    m = onnx.load(str(files["fp16"]))
    prod = {o: n for n in m.graph.node for o in n.output}
    inits = {i.name: i for i in m.graph.initializer}
    node = next(n for n in m.graph.node if n.name == planted)
    assert inits[node.input[1]].data_type == onnx.TensorProto.FLOAT16
    assert prod[node.input[0]].op_type == "Cast"
    consumers = [n for n in m.graph.node if node.output[0] in n.input]
    assert [n.op_type for n in consumers] == ["Cast"]
    x = _val_batch(8)
    a, b = _run(files["fp32"], x), _run(files["fp16"], x)
    cmp = compare_outputs(a, b)
    assert cmp["argmax_agreement"] >= 0.999 and cmp["cosine"] > 0.99999, cmp
    assert not np.array_equal(a, b)  # the island did change precision

    # the table carries the plan: reusing it without options gives the same file; --fallback overrides
    from onnx import numpy_helper

    table = files["fp16"].with_suffix(".calib.json")
    tj = __import__("json").loads(table.read_text())
    assert tj["fp32_nodes"] == [planted] and tj["fallback"] == "fp16" and tj["bias_correction"] is False
    same = tmp_path / "same.int8.onnx"
    rep = calibrate_onnx(planted_fp32, same, None, table=table, progress=False, threads=THREADS)
    assert rep["from_table"] == {"fp32_nodes": [planted], "fallback": "fp16", "bias_correction": False}
    assert rep["qdq"]["fp16_weighted_ops"] == [planted]
    ms = onnx.load(str(same))
    assert [(n.op_type, list(n.input)) for n in ms.graph.node] == [(n.op_type, list(n.input)) for n in m.graph.node]
    for i, j in zip(ms.graph.initializer, m.graph.initializer):
        assert i.name == j.name and np.array_equal(numpy_helper.to_array(i), numpy_helper.to_array(j)), i.name
    rep = calibrate_onnx(planted_fp32, tmp_path / "over.int8.onnx", None, table=table, fallback="fp32",
                         progress=False, threads=THREADS)
    assert rep["fp32_nodes"] == [planted] and not rep["qdq"]["fp16_weighted_ops"]
    assert rep["qdq"]["int8_weighted_ops"] == 4


def test_fallback_is_refused_for_modelopt(trained_fp32, tmp_path):
    from pspnet_deploy.errors import UserError
    from pspnet_deploy.precision.calibrate import calibrate_onnx

    with pytest.raises(UserError, match="--fallback fp16 works on the files of --backend ort"):
        calibrate_onnx(trained_fp32, tmp_path / "x.int8.onnx", "synthetic", fallback="fp16", backend="modelopt",
                       progress=False)
