"""uint8 pixels in, labels out (pspnet-export --input-kind uint8): the graph's own preprocessing
against the NumPy one, on ONNX Runtime and OpenVINO, through FP16, INT8 calibration, eval, predict,
Triton and the card. Tiny model, tiny size: a few seconds each."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import TINY_SIZE, run_cli

THREADS = 2


@pytest.fixture(scope="module")
def models(tmp_path_factory, synthetic_checkpoint):
    """The synthetic tiny checkpoint exported as float logits, uint8 (RGB) labels and uint8 (BGR)
    logits; the uint8 exports run the parity gate (ONNX Runtime on pixels vs PyTorch on the NumPy
    preprocessing of the same pixels)."""
    from pspnet_deploy.export import export_onnx

    d = tmp_path_factory.mktemp("u8")
    out = {}
    for key, kind, okind, order, verify in (("float", "float", "logits", "RGB", False),
                                            ("u8_labels", "uint8", "labels", "RGB", True),
                                            ("u8_bgr", "uint8", "logits", "BGR", True)):
        p = d / f"{key}.onnx"
        rep = export_onnx(str(synthetic_checkpoint), str(p), input_size=TINY_SIZE, output_kind=okind, input_kind=kind,
                          channel_order=order, verify=verify, progress=False, threads=THREADS)
        if verify:
            assert rep["parity"]["passed"] and rep["parity"]["metrics"]["argmax_agreement"] == 1.0
        out[key] = p
    return out


def _images(n=3, seed=1):
    from pspnet_deploy.data.samples import generated_images

    return generated_images(TINY_SIZE[0] + 30, TINY_SIZE[1] + 20, n, seed)  # not the model size: resize included


def test_graph_and_card(models):
    import onnx

    from pspnet_deploy.card import read_card

    card = read_card(models["u8_bgr"])
    assert card.input_kind == "uint8" and card.input_channel_order == "BGR"
    assert card.inputs[0]["dtype"] == "uint8" and card.inputs[0]["shape"] == [1, *TINY_SIZE, 3]
    assert card.input_size == TINY_SIZE and card.static_size
    assert read_card(models["float"]).input_kind == "float"
    ops = [n.op_type for n in onnx.load(str(models["u8_bgr"])).graph.node[:5]]
    assert ops == ["Cast", "Slice", "Sub", "Div", "Transpose"]  # BGR pixels flipped to the model's RGB
    ops = [n.op_type for n in onnx.load(str(models["u8_labels"])).graph.node[:4]]
    assert ops == ["Cast", "Sub", "Div", "Transpose"]
    assert onnx.load(str(models["u8_labels"])).graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.INT32


def test_ort_labels_identical_to_float_model(models):
    from pspnet_deploy.runners import load_runner

    with load_runner(models["float"], threads=THREADS) as f, load_runner(models["u8_labels"], threads=THREADS) as u, \
            load_runner(models["u8_bgr"], threads=THREADS) as b:
        assert u.input_kind == "uint8" and b.channel_order == "BGR"
        for im in _images():
            ref = f.infer(f.prepare(im)[None])
            x = u.prepare(im)
            assert x.dtype == np.uint8 and x.shape == (*TINY_SIZE, 3)
            assert np.array_equal(u.infer(x[None]), ref.argmax(1))
            xb = b.prepare(im)
            assert np.array_equal(xb, x[..., ::-1])
            np.testing.assert_allclose(b.infer(xb[None]), ref, rtol=0, atol=1e-4)
            # the runner base converts a preprocessed float batch for a uint8 model (sliding windows)
            assert np.array_equal(u.infer(f.prepare(im)[None]), ref.argmax(1))


def test_openvino_labels_identical_to_float_model(models, tmp_path):
    from pspnet_deploy.runners import load_runner

    irs = {}
    for key in ("float", "u8_labels"):
        r = run_cli("pspnet_deploy.cli.build_engine", str(models[key]), "--backend", "openvino", "--engine",
                    str(tmp_path / f"{key}.fp32.xml"))
        assert r.returncode == 0, r.stderr
        irs[key] = tmp_path / f"{key}.fp32.xml"
    sc = json.loads((tmp_path / "u8_labels.fp32.xml.json").read_text())
    assert sc["io"]["inputs"][0]["dtype"] == "uint8"
    with load_runner(irs["float"], threads=THREADS) as f, load_runner(irs["u8_labels"], threads=THREADS) as u:
        assert u.input_kind == "uint8" and u.input_size == TINY_SIZE
        for im in _images():
            assert np.array_equal(u.infer(u.prepare(im)[None]), f.infer(f.prepare(im)[None]).argmax(1))


def test_int8_calibration_keeps_the_pixel_path_fp32(models, tmp_path):
    import onnx

    from pspnet_deploy.card import read_card
    from pspnet_deploy.precision.calibrate import calibrate_onnx
    from pspnet_deploy.runners import load_runner
    from pspnet_deploy.utils import sha256_file

    out = tmp_path / "u8.int8.onnx"
    rep = calibrate_onnx(models["u8_labels"], out, "synthetic", num_images=8, min_images=1, progress=False,
                         threads=THREADS)
    m = onnx.load(str(out))
    ops = [n.op_type for n in m.graph.node]
    assert ops[:4] == ["Cast", "Sub", "Div", "Transpose"] and ops[4] == "QuantizeLinear"
    assert m.graph.node[4].input[0] == m.graph.node[3].output[0]  # first Q/DQ on the normalised tensor
    card = read_card(out)
    assert card.precision == "int8" and card.input_kind == "uint8" and card.inputs[0]["dtype"] == "uint8"
    table = json.loads(out.with_suffix(".calib.json").read_text())
    assert table["source_onnx_sha256"] == sha256_file(models["u8_labels"]) == rep["source_onnx_sha256"]
    assert card.meta["source_onnx_sha256"] == rep["source_onnx_sha256"]
    # the same calibration of the float export gives the same INT8 network: same labels
    ref = tmp_path / "float.int8.onnx"
    calibrate_onnx(models["float"], ref, "synthetic", num_images=8, min_images=1, progress=False, threads=THREADS)
    with load_runner(out, threads=THREADS) as q, load_runner(ref, threads=THREADS) as qf:
        for im in _images():
            assert np.array_equal(q.infer(q.prepare(im)[None]), qf.infer(qf.prepare(im)[None]).argmax(1))


def test_fp16_of_a_uint8_model(models, tmp_path):
    import onnx

    from pspnet_deploy.precision.fp16 import convert_fp16
    from pspnet_deploy.runners import load_runner

    out = tmp_path / "u8.fp16.onnx"
    rep = convert_fp16(models["u8_bgr"], out, progress=False, threads=THREADS)
    assert rep["parity"]["passed"]
    m = onnx.load(str(out))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [n.op_type for n in m.graph.node[:5]] == ["Cast", "Slice", "Sub", "Div", "Transpose"]
    with load_runner(out, threads=THREADS) as h:
        assert h.precision == "fp16" and h.input_kind == "uint8" and h.channel_order == "BGR"


def test_eval_and_predict_on_a_uint8_model(models, tmp_path):
    import cv2

    from pspnet_deploy.data import open_dataset
    from pspnet_deploy.evaluate import evaluate
    from pspnet_deploy.runners import load_runner

    ds = open_dataset("synthetic", "val")  # logits vs logits: the same bilinear resize after either
    with load_runner(models["float"], threads=THREADS) as f, load_runner(models["u8_bgr"], threads=THREADS) as u:
        a = evaluate(f, ds, limit=4, progress=False)
        b = evaluate(u, ds, limit=4, progress=False)
    assert a["confusion_matrix"] == b["confusion_matrix"]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(_images(3)):
        cv2.imwrite(str(folder / f"{i}.png"), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    outs = {}
    for key in ("float", "u8_bgr", "u8_labels"):
        r = run_cli("pspnet_deploy.cli.predict", str(models[key]), str(folder), "--output", str(tmp_path / key),
                    "--threads", str(THREADS))
        assert r.returncode == 0, r.stderr
        outs[key] = sorted((tmp_path / key / "labels").rglob("*.png"))
        assert len(outs[key]) == 3
    for p, q in zip(outs["float"], outs["u8_bgr"]):
        assert np.array_equal(cv2.imread(str(p), cv2.IMREAD_UNCHANGED), cv2.imread(str(q), cv2.IMREAD_UNCHANGED))


def test_triton_config_uint8(models, tmp_path):
    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from pspnet_deploy.triton import write_triton_repo

    write_triton_repo(models["u8_labels"], tmp_path / "repo", name="u8")
    text = (tmp_path / "repo" / "u8" / "config.pbtxt").read_text()
    assert "data_type: TYPE_UINT8" in text and f"dims: [ 1, {TINY_SIZE[0]}, {TINY_SIZE[1]}, 3 ]" in text
    client = json.loads((tmp_path / "repo" / "u8" / "pspnet.json").read_text())
    assert client["input_kind"] == "uint8" and client["input_channel_order"] == "RGB"


def test_bad_requests(models, tmp_synthetic=None):
    r = run_cli("pspnet_deploy.cli.export", "x.pt", "--channel-order", "BGR")
    assert r.returncode == 2 and r.stderr.strip().endswith("float input is preprocessed by the caller)")
    assert "Traceback" not in r.stderr


def test_card_refuses_mixed_up_metadata(models, tmp_path):
    import onnx

    from pspnet_deploy.card import read_card, write_onnx_metadata
    from pspnet_deploy.errors import UserError

    m = onnx.load(str(models["u8_labels"]))
    write_onnx_metadata(m, {"input_kind": "float"})
    onnx.save(m, str(tmp_path / "mixed.onnx"))
    with pytest.raises(UserError, match="input is uint8 but the metadata says input_kind float"):
        read_card(tmp_path / "mixed.onnx")
    with pytest.raises(UserError, match="input_kind"):
        write_onnx_metadata(m, {"input_kind": "uint16"})


def test_tensorrt_api_has_uint8_io():
    """What the TensorRT runner needs for a uint8 engine: DataType.UINT8 in every dumped API (the
    runner maps engine tensor dtypes with trt.nptype). Whether a given TensorRT parses a uint8 graph
    input cannot be checked without TensorRT."""
    from pathlib import Path

    api = Path(__file__).resolve().parents[2] / "shared" / "tensorrt-api"
    if not api.is_dir():
        pytest.skip(f"{api} not present")
    for f in sorted(api.glob("tensorrt-*.txt")):
        assert "DataType.UINT8\tenum_value" in f.read_text(), f.name
