"""pspnet-qat on the conftest tiny PSPNet and synthetic scenes: the exported Q/DQ file has zero points
0, per-channel weight scales and the calibrated file's placement, matches the PyTorch fake-quant
forward on ONNX Runtime, passes the TensorRT parser check, carries the metadata, and --resume is
exact. What this cannot catch: TensorRT's own INT8 kernels (no GPU here); the parser check is
against the TensorRT API surface in ../shared/tensorrt-api."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import all_ignore_dataset, make_tiny_model, synthetic_meta

from pspnet_deploy.parser_check import check_onnx_for_tensorrt

STEPS = 2  # per epoch


def _cfg(**kw):
    from pspnet_deploy.qat import QATConfig

    base = dict(data="synthetic", epochs=2, batch_size=2, max_steps_per_epoch=STEPS, lr=5e-3, progress=False,
                scale=[1.0, 1.0], rotate=0.0)
    base.update(kw)
    return QATConfig(**base)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from pspnet_deploy.checkpoint import save_checkpoint

    d = tmp_path_factory.mktemp("qat")
    save_checkpoint(d / "tiny.pt", make_tiny_model(num_classes=5), synthetic_meta())
    return d


@pytest.fixture(scope="module")
def full_run(work):
    from pspnet_deploy.qat import run_qat

    rep = run_qat(work / "tiny.pt", work / "full" / "m.int8.onnx", _cfg(), num_images=8, min_images=4,
                  cache_dir=work / "cache")
    return rep, work / "full" / "m.int8.onnx"


@pytest.fixture(scope="module")
def calibrated(work):
    """The file pspnet-calibrate makes from the same checkpoint and images: the placement reference."""
    from pspnet_deploy.export import export_onnx
    from pspnet_deploy.precision.calibrate import calibrate_onnx

    fp32 = work / "ref" / "m.fp32.onnx"
    export_onnx(work / "tiny.pt", fp32, num_verify=1, progress=False)
    out = work / "ref" / "m.int8.onnx"
    calibrate_onnx(fp32, out, "synthetic", num_images=8, min_images=4, progress=False, cache_dir=work / "cache")
    return out


def _placement(path: Path) -> dict:
    """Which weighted ops have INT8 weights, which node inputs are quantized activations."""
    import onnx

    m = onnx.load(str(path))
    inits = {i.name for i in m.graph.initializer}
    prod = {o: n for n in m.graph.node for o in n.output}
    q_inputs = set()
    for n in m.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for k, t in enumerate(n.input):
            dq = prod.get(t)
            if dq is not None and dq.op_type == "DequantizeLinear":
                q = prod.get(dq.input[0])
                kind = "weight" if dq.input[0] in inits else ("act" if q is not None else "?")
                q_inputs.add((n.name, k, kind))
    return {"inputs": q_inputs, "nodes": [n.op_type for n in m.graph.node if n.op_type not in
                                          ("QuantizeLinear", "DequantizeLinear")]}


def test_qat_file_format_and_placement(full_run, calibrated):
    import onnx
    from onnx import numpy_helper

    from pspnet_deploy.precision.qdq import qdq_summary
    from pspnet_deploy.card import read_card

    rep, out = full_run
    m = onnx.load(str(out))
    s = qdq_summary(m)
    assert s["all_zero_points_zero"] and s["int8_weighted_ops"] > 10
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    prod = {o: n for n in m.graph.node for o in n.output}
    per_channel = 0
    for n in m.graph.node:
        if n.op_type == "Conv" and prod.get(n.input[1]) is not None:
            dq = prod[n.input[1]]
            w, scale = inits[dq.input[0]], inits[dq.input[1]]
            assert w.dtype == np.int8 and scale.shape == (w.shape[0],)  # one scale per output channel
            axis = [a.i for a in dq.attribute if a.name == "axis"]
            assert axis in ([], [0])
            per_channel += 1
    assert per_channel == s["int8_weighted_ops"]
    for n in m.graph.node:  # activations per tensor, INT8, zero point 0
        if n.op_type == "QuantizeLinear":
            assert inits[n.input[1]].size == 1 and inits[n.input[2]].dtype == np.int8 and inits[n.input[2]] == 0
    assert _placement(out) == _placement(calibrated)
    meta, ref_meta = read_card(out).meta, read_card(calibrated).meta
    assert meta["precision"] == "int8" and meta["calibration_method"] == "qat"
    assert meta["classes"] == ref_meta["classes"] and meta["preprocess"] == ref_meta["preprocess"]
    assert meta["quantization"] == ref_meta["quantization"]
    assert meta["qat"]["steps"] == 2 * STEPS and meta["qat"]["bf16"] == rep["bf16"]["used"]
    decision = meta["qat"]["bf16_decision"]  # --bf16 auto: measured on this CPU and recorded, not read off flags
    assert decision["decided_by"] == "measurement" and decision["measured"]["bf16_ms"] > 0
    assert decision["use_bf16"] == rep["bf16"]["used"] and rep["bf16"]["decision"] == decision
    table = json.loads(Path(rep["table"]).read_text())
    ref_table = json.loads(calibrated.with_suffix(".calib.json").read_text())
    learned = rep["ranges"]
    assert set(learned) <= set(table["tensors"])
    moved = [t for t, a in learned.items() if abs(a - ref_table["tensors"][t]["amax"]) > 1e-6 * max(a, 1)]
    assert moved, "QAT left every activation range at its calibrated value"
    assert all(abs(table["tensors"][t]["amax"] - a) <= 1e-6 * a for t, a in learned.items())


def test_qat_onnx_matches_pytorch_fake_quant(work, full_run):
    import onnxruntime as ort

    from pspnet_deploy.checkpoint import load_model
    from pspnet_deploy.qat import QATModel, QATPlan

    _, out = full_run
    state = torch.load(out.with_suffix(".qat-state.pt"), weights_only=True)
    net, _ = load_model(work / "tiny.pt")
    model = QATModel(net, QATPlan.from_dict(state["plan"]))
    model.load_state_dict(state["model"])
    model.eval()
    plain, _ = load_model(work / "tiny.pt")
    plain.load_state_dict(model.plain_state_dict())
    plain.eval()
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 3, 64, 96)).astype(np.float32))
    with torch.no_grad():
        y, f = model(x).numpy(), plain(x).numpy()
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    z = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[i:i + 1].numpy()})[0] for i in range(2)])
    fq_err = np.abs(y - z).mean() / np.abs(z).mean()  # PyTorch fake-quant forward vs the INT8 file
    fp_err = np.abs(f - z).mean() / np.abs(z).mean()  # the same weights unquantized vs the INT8 file
    # the tiny random net is very quantization-sensitive (INT8 moves its logits by ~30 %); the fake-quant
    # forward must reproduce the file 10x better than FP32 does: only rounding flips from BatchNorm
    # folding (the file quantizes folded weights) may differ
    assert fp_err > 0.05 and fq_err < 0.1 * fp_err, (fq_err, fp_err)
    assert (y.argmax(1) == z.argmax(1)).mean() > 0.99


def test_qat_passes_tensorrt_parser_check(full_run):
    from pspnet_deploy.parser_check import check_onnx_for_tensorrt

    rep, out = full_run
    assert rep["parser_check"] == {"ok": True, "problems": 0}
    assert list(check_onnx_for_tensorrt(str(out))) == []


def test_qat_resume_is_exact(work, full_run):
    import onnx
    from onnx import numpy_helper

    from pspnet_deploy.qat import run_qat

    out = work / "resumed" / "m.int8.onnx"
    first = run_qat(work / "tiny.pt", out, _cfg(stop_after_epochs=1), num_images=8, min_images=4,
                    cache_dir=work / "cache")
    assert first["output"] is None and not out.exists() and first["stopped_after_epoch"] == 1
    state = out.with_suffix(".qat-state.pt")
    rep = run_qat(work / "tiny.pt", out, _cfg(), resume=state, fp32_checkpoint=work / "resumed" / "tuned.pt")
    full_state = torch.load(full_run[1].with_suffix(".qat-state.pt"), weights_only=True)
    res_state = torch.load(state, weights_only=True)
    assert res_state["step"] == full_state["step"] == 2 * STEPS
    for k, v in full_state["model"].items():
        assert torch.equal(v, res_state["model"][k]), k
    assert rep["ranges"] == full_run[0]["ranges"]
    a = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer}
    b = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(full_run[1])).graph.initializer}
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    _check_fp32_checkpoint(work, rep, out)


def _check_fp32_checkpoint(work, rep, out):
    """--fp32-checkpoint keeps the very weights the INT8 file was made from: exporting it again gives the
    FP32 ONNX whose sha256 the INT8 file's calibration table records."""
    from pspnet_deploy.checkpoint import load_model
    from pspnet_deploy.export import export_onnx
    from pspnet_deploy.precision.table import table_path_for
    from pspnet_deploy.utils import sha256_file

    tuned = Path(rep["fp32_checkpoint"])
    net, meta = load_model(tuned)
    assert meta["qat"]["from_checkpoint_sha256"] == sha256_file(work / "tiny.pt")
    orig, _ = load_model(work / "tiny.pt")
    before, after = orig.state_dict(), net.state_dict()
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    # the ONNX records its checkpoint's file name; pspnet-qat exported the weights as qat.pt
    same_name = work / "again" / "qat.pt"
    same_name.parent.mkdir()
    same_name.write_bytes(tuned.read_bytes())
    again = work / "again" / "again.fp32.onnx"
    export_onnx(same_name, again, input_size=tuple(rep["input_size"]), num_verify=1, progress=False)
    table = json.loads(table_path_for(out).read_text())
    assert table["source_onnx_sha256"] == sha256_file(again)
    assert not list(tuned.parent.glob(".*tmp*"))


def test_qat_uint8_in_labels_out(work, full_run, capsys):
    """--input-kind uint8 --channel-order BGR --output-kind labels: the same fine-tuned network (resumed
    from the full run's state, so only the export runs), pixels in and labels out, the preprocessing
    FP32 in front of the first Q/DQ, parity gated by the exporter; its labels are the float QAT file's
    argmax on the NumPy preprocessing of the same pixels, and the PyTorch fake-quant model's."""
    import onnx
    import onnxruntime as ort

    from pspnet_deploy.card import read_card
    from pspnet_deploy.checkpoint import load_model
    from pspnet_deploy.data import Preprocess
    from pspnet_deploy.data.samples import generated_images
    from pspnet_deploy.qat import QATModel, QATPlan, run_qat

    out = work / "u8" / "m.int8.onnx"
    state_path = full_run[1].with_suffix(".qat-state.pt")
    rep = run_qat(work / "tiny.pt", out, _cfg(), resume=state_path, input_kind="uint8", channel_order="BGR",
                  output_kind="labels")
    assert rep["export_parity"]["passed"] and rep["ranges"] == full_run[0]["ranges"]
    card = read_card(out)
    assert (card.precision, card.input_kind, card.input_channel_order, card.output_kind) == \
        ("int8", "uint8", "BGR", "labels")
    assert card.meta["calibration_method"] == "qat" and card.inputs[0]["shape"] == [1, 64, 96, 3]
    m = onnx.load(str(out))
    ops = [n.op_type for n in m.graph.node]
    assert ops[:6] == ["Cast", "Slice", "Sub", "Div", "Transpose", "QuantizeLinear"] and "ArgMax" in ops[-2:]
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert not list(check_onnx_for_tensorrt(str(out)))

    pixels = generated_images(64, 96, 2, seed=4)  # RGB uint8, as the toolkit's reader gives
    x = Preprocess.from_dict(card.meta["preprocess"]).batch(pixels).astype(np.float32)  # NumPy preprocessing
    run = lambda path, feed: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(  # noqa: E731
        None, {"input": feed})[0]
    labels = np.concatenate([run(out, np.ascontiguousarray(p[None, :, :, ::-1])) for p in pixels])
    float_qat = np.concatenate([run(full_run[1], x[i:i + 1]) for i in range(len(x))])
    assert labels.dtype == np.int32 and np.array_equal(labels, float_qat.argmax(1))
    state = torch.load(state_path, weights_only=True)
    net, _ = load_model(work / "tiny.pt")
    model = QATModel(net, QATPlan.from_dict(state["plan"]))
    model.load_state_dict(state["model"])
    with torch.no_grad():
        fq = model.eval()(torch.from_numpy(x)).numpy().argmax(1)
    assert (fq == labels).mean() > 0.99
    # the file itself as pspnet-qat's source: refused, naming the options that give the same file
    from pspnet_deploy.cli.common import run as run_cli_inproc
    from pspnet_deploy.cli.qat import PROG, main

    assert run_cli_inproc(PROG, main, [str(out), "--data", "synthetic", "--output", str(work / "u8" / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is an ONNX model" in err[0] and \
        "--input-kind uint8 --channel-order BGR --output-kind labels" in err[0]


def test_bf16_feature_detection_and_refusal(work, tmp_path):
    from pspnet_deploy.cli.common import run
    from pspnet_deploy.cli.qat import PROG, main
    from pspnet_deploy.machine import cpu_has_bf16

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    assert cpu_has_bf16() == bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))
    if cpu_has_bf16():
        pytest.skip("this CPU has BF16: nothing to refuse")
    out = tmp_path / "x.int8.onnx"
    assert run(PROG, main, [str(work / "tiny.pt"), "--data", "synthetic", "--output", str(out), "--bf16", "on",
                            "--no-progress"]) == 2
    assert not out.exists()


def test_cli_bad_input_one_line(tmp_path, capsys):
    from pspnet_deploy.cli.common import run
    from pspnet_deploy.cli.qat import PROG, main

    out = tmp_path / "x.int8.onnx"
    assert run(PROG, main, [str(tmp_path / "missing.pt"), "--data", "synthetic", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.pt" in err[0] and "Traceback" not in err[0]
    assert run(PROG, main, [str(tmp_path / "missing.pt"), "--data", "synthetic", "--output", str(tmp_path / "x.onnx"),
                            "--resume", str(tmp_path / "nope.pt")]) == 2
    capsys.readouterr()
    assert run(PROG, main, [str(tmp_path / "missing.pt"), "--data", "synthetic", "--output", str(out),
                            "--channel-order", "BGR"]) == 2  # refused before the checkpoint is even read
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--channel-order applies to --input-kind uint8" in err[0]
    assert not out.exists()


def test_qat_on_all_ignore_masks_refuses_instead_of_exporting_nan(work, tmp_path):
    """Masks that are the ignore index everywhere make the QAT loss 0/0; the run stops with the line
    that names the masks (pspnet-train's), and no INT8 file is written from NaN weights."""
    from pspnet_deploy.errors import UserError
    from pspnet_deploy.qat import run_qat

    data = all_ignore_dataset(tmp_path / "data", count=8, classes=5)
    out = tmp_path / "out" / "m.int8.onnx"
    with pytest.raises(UserError, match="ignore index 255") as e:
        run_qat(work / "tiny.pt", out, _cfg(data=str(data), epochs=1, crop=[64, 64]), num_images=8, min_images=4,
                cache_dir=tmp_path / "cache")
    assert "--lr" not in str(e.value)
    assert not out.exists()
    assert not (out.parent.exists() and list(out.parent.glob("*.onnx")))
