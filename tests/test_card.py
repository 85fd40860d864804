"""The model-file contract: one reader for .pt / .onnx / .engine, one writer per format, and the one
place malformed metadata is refused."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY_CLASSES, TINY_PALETTE, TINY_SIZE, tiny_meta
from pspnet_deploy.card import (ModelCard, card_from_meta, model_kind, read_card, sidecar_path, strip_model_suffix,
                                write_onnx_metadata)
from pspnet_deploy.errors import UserError


def _identity_onnx(path: Path, meta: dict | None, batch=1, raw: dict | None = None,
                   channels: int = len(TINY_CLASSES), fp16: bool = False, out_type: int = 1) -> Path:
    """A one-node ONNX (1x1 Conv from Nx3xHxW to one logits channel per class, ``channels``) carrying
    ``meta`` through the real writer, and/or ``raw`` pspnet.* strings written as they are (to plant
    corrupt values). ``fp16``: the graph also holds an FP16 tensor (what an FP16 graph does);
    ``out_type``: the declared output's ONNX element type (6: an int32 label map)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((channels, 3, 1, 1), np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["input", "w"], ["logits"])], "g",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, *TINY_SIZE])],
                          [helper.make_tensor_value_info("logits", out_type, [batch, channels, *TINY_SIZE])],
                          [w] + ([numpy_helper.from_array(np.ones(1, np.float16), "h")] if fp16 else []))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    if meta is not None:
        write_onnx_metadata(m, meta)
    for k, v in (raw or {}).items():
        p = m.metadata_props.add()
        p.key, p.value = f"pspnet.{k}", v
    onnx.save(m, str(path))
    return path


def test_model_kind_is_one_table():
    assert [model_kind(p) for p in ("a.pt", "a.PTH", "a.onnx", "a.engine", "a.plan", "a.trt")] == \
        ["torch", "torch", "onnx", "tensorrt", "tensorrt", "tensorrt"]
    with pytest.raises(UserError, match="unknown model file type '.bin'"):
        model_kind("model.bin")
    assert strip_model_suffix("m.fp16.engine") == "m.fp16" and sidecar_path("d/m.engine") == Path("d/m.engine.json")


def test_checkpoint_card_without_building_the_model(tiny_checkpoint):
    card = read_card(tiny_checkpoint)
    assert isinstance(card, ModelCard) and card.kind == "torch"
    assert card.classes == TINY_CLASSES and card.palette == TINY_PALETTE and card.ignore_index == 255
    assert card.input_size == TINY_SIZE and not card.static_size and card.fixed_batch is None
    assert card.model["backbone"] == "resnet18" and card.precision == "fp32" and card.output_kind == "logits"
    assert card.preprocessing().input_size == TINY_SIZE
    assert card.file_bytes == tiny_checkpoint.stat().st_size


def test_onnx_card_io_batch_and_precision_from_graph(tmp_path):
    meta = {**tiny_meta(), "precision": "fp16", "export": {"dynamic_batch": [1, 2, 4]}}
    card = read_card(_identity_onnx(tmp_path / "m.onnx", meta, batch="N", fp16=True))
    assert card.kind == "onnx" and card.precision == "fp16" and card.classes == TINY_CLASSES
    assert card.inputs == [{"name": "input", "dtype": "float32", "shape": ["N", 3, *TINY_SIZE]}]
    assert card.fixed_batch is None and card.batch_range == (1, 2, 4) and card.static_size
    fixed = read_card(_identity_onnx(tmp_path / "f.onnx", tiny_meta(), batch=2))
    assert fixed.fixed_batch == 2 and fixed.batch_range is None and fixed.precision == "fp32"
    bare = read_card(_identity_onnx(tmp_path / "bare.onnx", None))  # no metadata: facts absent, graph decides
    assert bare.classes is None and bare.precision == "fp32"
    with pytest.raises(UserError, match=r"ONNX has no pspnet.classes metadata; export it with pspnet-export"):
        bare.require("classes", "preprocess")


@pytest.mark.parametrize("raw, message", [
    ({"classes": "[road, car"}, r"pspnet.classes \(a JSON list of class names\) is malformed \('\[road, car'\)"),
    ({"palette": json.dumps([[0, 0, 0]])}, r"pspnet.palette has 1 colours for 4 classes"),
    ({"palette": json.dumps([[0, 0, 0], [1, 2], [3, 4, 5], [6, 7, 8]])}, r"pspnet.palette .* is malformed"),
    ({"preprocess": json.dumps({"input_size": [64]})}, r"pspnet.preprocess .* is malformed"),
    ({"output_kind": json.dumps("probabilities")}, r"pspnet.output_kind \(logits or labels\) is malformed"),
])
def test_malformed_onnx_metadata_is_one_line(tmp_path, raw, message):
    meta = {k: v for k, v in tiny_meta().items() if k not in raw}
    path = _identity_onnx(tmp_path / "bad.onnx", meta, raw=raw)
    with pytest.raises(UserError, match=message) as e:
        read_card(path)
    assert "\n" not in str(e.value) and str(e.value).endswith("re-export the ONNX with pspnet-export")


def test_graph_that_contradicts_its_metadata_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"output has 3 channels but the metadata names 4 classes") as e:
        read_card(_identity_onnx(tmp_path / "c.onnx", tiny_meta(), channels=3))
    assert "\n" not in str(e.value) and str(e.value).endswith("re-export the ONNX with pspnet-export")
    labels = read_card(_identity_onnx(tmp_path / "l.onnx", {**tiny_meta(), "output_kind": "labels"}, channels=1,
                                      out_type=6))
    assert labels.output_kind == "labels"  # a labels output has one channel whatever the classes
    with pytest.raises(UserError, match=r"output logits is float32 \(logits\) but the metadata pspnet.output_kind "
                                        r"says labels"):  # a float map said labels
        read_card(_identity_onnx(tmp_path / "lf.onnx", {**tiny_meta(), "output_kind": "labels"}, channels=1))
    with pytest.raises(UserError, match=r"holds FP16 tensors \(fp16\) but the metadata pspnet.precision says fp32"):
        read_card(_identity_onnx(tmp_path / "p.onnx", {**tiny_meta(), "precision": "fp32"}, fp16=True))
    (tmp_path / "empty.onnx").write_bytes(b"")  # parses as an empty ModelProto
    with pytest.raises(UserError, match=r"empty.onnx: not an ONNX model \(0 bytes, no graph\)"):
        read_card(tmp_path / "empty.onnx")


def test_writers_refuse_what_readers_would(tmp_path):
    import onnx

    from pspnet_deploy.checkpoint import save_checkpoint
    from pspnet_deploy.model import PSPNet

    bad = {**tiny_meta(), "palette": TINY_PALETTE[:2]}
    with pytest.raises(UserError, match="palette has 2 colours for 4 classes"):
        write_onnx_metadata(onnx.ModelProto(), bad)
    with pytest.raises(UserError, match="palette has 2 colours for 4 classes"):
        save_checkpoint(tmp_path / "x.pt", PSPNet(4, "resnet18", bins=(1,), head_channels=8, aux_channels=8), bad)
    assert not (tmp_path / "x.pt").exists()
    assert card_from_meta(tiny_meta()).classes == TINY_CLASSES


def _sidecar(tmp_path: Path, **changes) -> Path:
    eng = tmp_path / "m.fp16.engine"
    eng.write_bytes(b"plan")
    sc = {"format": "pspnet-deploy/engine-sidecar", "version": 1, "precision": "fp16",
          "engine": {"path": str(eng), "size": 4, "sha256": "0" * 64}, "tensorrt": {"version": "10.3.0"},
          "io": {"inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 3, *TINY_SIZE]}],
                 "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, 4, *TINY_SIZE]}],
                 "profile": {"input": "input", "min": [1, 3, *TINY_SIZE], "opt": [2, 3, *TINY_SIZE],
                             "max": [8, 3, *TINY_SIZE]}},
          "onnx": {"path": str(tmp_path / "m.fp16.onnx"), "sha256": "1" * 64},
          "model": {k: v for k, v in tiny_meta().items() if k != "dataset"}}
    for dotted, value in changes.items():
        section, _, key = dotted.partition("__")
        if key:
            sc[section][key] = value
        else:
            sc[section] = value
    sidecar_path(eng).write_text(json.dumps(sc))
    return eng


def test_engine_card_comes_from_its_sidecar(tmp_path):
    card = read_card(_sidecar(tmp_path))
    assert card.kind == "tensorrt" and card.precision == "fp16" and card.classes == TINY_CLASSES
    assert card.batch_range == (1, 2, 8) and card.fixed_batch is None and card.input_size == TINY_SIZE
    assert card.provenance["onnx_sha256"] == "1" * 64 and card.sidecar["tensorrt"]["version"] == "10.3.0"


@pytest.mark.parametrize("changes, message", [
    ({"io__inputs": {"name": "input"}}, r"sidecar io.inputs is malformed \(dict, expected a list\)"),
    ({"io__profile": {"min": "1x3", "opt": [2], "max": [8]}}, r"sidecar io.profile is malformed"),
    ({"engine__size": "4 bytes"}, r"sidecar engine.size is malformed \('4 bytes'\)"),
    ({"model__classes": "road,car"}, r"classes \(a JSON list of class names\) is malformed"),
    ({"model__palette": [[0, 0, 0]]}, r"palette has 1 colours for 4 classes"),
    ({"model": ["classes"]}, r"sidecar has no 'model' section"),
    ({"tensorrt": None}, r"sidecar has no 'tensorrt' section"),
])
def test_malformed_sidecar_is_one_line(tmp_path, changes, message):
    with pytest.raises(UserError, match=message) as e:
        read_card(_sidecar(tmp_path, **changes))
    assert "\n" not in str(e.value) and "pspnet-build-engine" in str(e.value)


def test_check_size_of_a_dynamic_model_uses_its_bounds():
    """ModelCard.check_size asks check_bounds (the one bounds check) for a dynamic-shape model."""
    meta = {**tiny_meta(), "model": {"bins": [1, 2, 3, 6], "output_stride": 8},
            "export": {"dynamic_shape": {"min": [48, 48], "opt": [64, 96], "max": [96, 128]}}}
    card = card_from_meta(meta, "dyn.onnx", kind="onnx")
    assert card.check_size() == (64, 96) and card.check_size((96, 128)) == (96, 128)
    with pytest.raises(UserError, match=r"dyn.onnx: input 100x128 is outside the model's size range 48x48 .. 96x128"):
        card.check_size((100, 128))
