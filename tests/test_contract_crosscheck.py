"""The contract's cross-checks on real files (issue 20, classes 4, 6 and the convert hint of 9): a
file whose graph, metadata, sidecar or weights contradict each other is refused by the real CLI
(exit 2, one line naming both sides, the input untouched), never trusted one over the other; an
ONNX with NaN/Inf weights is refused naming the tensor; an mmseg or semseg .pth says that
pspnet-convert imports it; an engine used with (or rebuilt from) a changed ONNX says so."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, TINY_CLASSES, TINY_SIZE, run_cli

EVAL = "pspnet_deploy.cli.eval"


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _refused(args, *needles: str, module: str = EVAL, files=()) -> str:
    """Run the CLI; assert exit 2, exactly one stderr line containing every needle, ``files`` unchanged."""
    before = {f: _sha(f) for f in files}
    p = run_cli(module, *args)
    err = p.stderr.strip()
    assert p.returncode == 2, (p.returncode, p.stdout[-500:], err[-2000:])
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
    assert {f: _sha(f) for f in files} == before, "an input was modified"
    return err


def _tampered_onnx(src: Path, dst: Path, meta: dict | None = None, graph=None) -> Path:
    """``src`` copied to ``dst`` with ``pspnet.<key>`` props replaced by ``meta`` (JSON values, written
    as they are: no validation) and ``graph(model)`` applied."""
    import onnx

    m = onnx.load(str(src))
    for k, v in (meta or {}).items():
        props = [p for p in m.metadata_props if p.key == f"pspnet.{k}"]
        p = props[0] if props else m.metadata_props.add()
        p.key, p.value = f"pspnet.{k}", json.dumps(v)
    if graph is not None:
        graph(m)
    onnx.save(m, str(dst))
    return dst


def _onnx_meta(path: Path) -> dict:
    from pspnet_deploy.card import read_card

    return read_card(path).meta


def _five_channels(m) -> None:
    m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 5


# one row per field: (id, metadata changes (a function of the file's metadata), graph change, needles)
ONNX_ROWS = [
    ("classes", lambda md: {"classes": TINY_CLASSES + ["extra"], "palette": md["palette"] + [[1, 2, 3]]}, None,
     ["output has 4 channels but the metadata names 5 classes"]),
    ("graph-channels", lambda md: {}, _five_channels, ["output has 5 channels but the metadata names 4 classes"]),
    ("input-size", lambda md: {"preprocess": {**md["preprocess"], "input_size": [32, 48]}}, None,
     ["input input is 64x96 but the metadata pspnet.preprocess.input_size says 32x48"]),
    ("stored-size", lambda md: {"input_size": [96, 64]}, None,
     ["is 64x96 but the metadata pspnet.input_size says 96x64"]),
    ("dynamic-range", lambda md: {"export": {**md["export"], "dynamic_shape": {"min": [48, 48], "opt": [64, 96],
                                                                             "max": [128, 192]}}}, None,
     ["is fixed at 64x96 but the metadata pspnet.export.dynamic_shape declares a size range"]),
    ("precision-int8", lambda md: {"precision": "int8"}, None,
     ["has no FP16 tensors and no Q/DQ nodes (fp32) but the metadata pspnet.precision says int8"]),
    ("precision-fp16", lambda md: {"precision": "fp16"}, None, ["(fp32) but the metadata pspnet.precision says fp16"]),
    ("output-kind", lambda md: {"output_kind": "labels"}, None,
     ["is float32 (logits) but the metadata pspnet.output_kind says labels"]),
    ("input-kind", lambda md: {"input_kind": "uint8"}, None, ["input is float32 but the metadata says input_kind uint8"]),
    ("ignore-index", lambda md: {"ignore_index": 2}, None, ["ignore_index 2 is the index of class 'car'"]),
]


@pytest.mark.parametrize("row", ONNX_ROWS, ids=[r[0] for r in ONNX_ROWS])
def test_onnx_whose_metadata_contradicts_its_graph_is_refused(onnx_b1, tmp_path, row):
    _id, change, graph, needles = row
    bad = _tampered_onnx(onnx_b1, tmp_path / "m.fp32.onnx", change(_onnx_meta(onnx_b1)), graph)
    err = _refused([bad, "--data", "synthetic", "--limit", "1", "--no-progress"], str(bad), *needles,
                   "the file was edited or mixed up", "re-export the ONNX with pspnet-export", files=[bad])
    assert err.startswith("pspnet-eval: error: ")


def test_build_engine_refuses_a_contradicting_onnx_before_work(onnx_b1, tmp_path):
    """The build's ONNX input goes through the same cross-check (dry run: nothing is built)."""
    bad = _tampered_onnx(onnx_b1, tmp_path / "m.fp32.onnx", {"precision": "int8"})
    _refused([bad, "--dry-run"], "pspnet.precision says int8", module="pspnet_deploy.cli.build_engine", files=[bad])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.fp32.onnx"]


# ------------------------------------------------------------------------------------------ sidecars

def _tampered_sidecar(eng: Path, edit) -> None:
    sc = eng.with_name(eng.name + ".json")
    data = json.loads(sc.read_text())
    edit(data)
    sc.write_text(json.dumps(data))


SIDECAR_ROWS = [
    ("classes", lambda d: d["model"].update(classes=["a", "b", "c", "d"]),
     ["sidecar model.classes (['a', 'b', 'c', 'd']) differs from its pspnet_metadata.classes"]),
    ("preprocess", lambda d: d["model"]["preprocess"].update(mean=[0.5, 0.5, 0.5]),
     ["sidecar model.preprocess", "differs from its pspnet_metadata.preprocess"]),
    ("preprocess-missing", lambda d: d["model"].pop("preprocess"),
     ["sidecar pspnet_metadata.preprocess is recorded but its model section has none"]),
    ("ignore-index", lambda d: d["model"].update(ignore_index=0),
     ["sidecar model.ignore_index (0) differs from its pspnet_metadata.ignore_index (255)"]),
    ("precision", lambda d: d.update(precision="fp16"), ["sidecar precision fp16 but it records a fp32 ONNX"]),
    ("output-channels", lambda d: d["io"]["outputs"][0].update(shape=[1, 7, *TINY_SIZE]),
     ["recorded output has 7 channels but the metadata names 4 classes"]),
    ("output-kind", lambda d: d["io"]["outputs"][0].update(dtype="int32"),
     ["recorded output logits is int32 (a label map) but the sidecar model.output_kind says logits"]),
]


@pytest.mark.parametrize("row", SIDECAR_ROWS, ids=[r[0] for r in SIDECAR_ROWS])
def test_engine_sidecar_that_contradicts_itself_is_refused(fake_engine, onnx_b1, tmp_path, row):
    _id, edit, needles = row
    eng = fake_engine(tmp_path, onnx_b1)
    _tampered_sidecar(eng, edit)
    _refused([eng, "--data", "synthetic", "--limit", "1", "--no-progress"], str(eng), *needles,
             "the file was edited or mixed up", "rebuild the engine with pspnet-build-engine",
             files=[eng, eng.with_name(eng.name + ".json")])


@pytest.fixture(scope="module")
def ir(tmp_path_factory, onnx_b1):
    pytest.importorskip("openvino")
    from pspnet_deploy.engine.openvino import build_openvino

    d = tmp_path_factory.mktemp("ovx")
    src = d / "tiny.fp32.onnx"
    src.write_bytes(onnx_b1.read_bytes())
    build_openvino(src, log=lambda m: None)
    return d / "tiny.fp32.xml"


def test_openvino_ir_whose_graph_contradicts_its_sidecar_is_refused(ir, tmp_path):
    """The OpenVINO runner compares the IR's own inputs/outputs with the sidecar it was given."""
    for f in (ir, ir.with_suffix(".bin"), ir.with_name(ir.name + ".json")):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    xml = tmp_path / ir.name
    _tampered_sidecar(xml, lambda d: d["io"]["inputs"][0].update(shape=[1, 3, 48, 64]))
    _refused([xml, "--data", "synthetic", "--limit", "1", "--no-progress"], str(xml),
             "the IR's input input is 1x3x64x96 but its sidecar tiny.fp32.xml.json records 1x3x48x64",
             "rebuild the IR with pspnet-build-engine --backend openvino", files=[xml, xml.with_suffix(".bin")])


# ------------------------------------------------------------------------------------------ checkpoints

def test_checkpoint_whose_classes_contradict_its_classifier_is_refused(tiny_checkpoint, tmp_path):
    import torch

    payload = torch.load(tiny_checkpoint, weights_only=True)
    meta = json.loads(payload["meta"])
    meta.update(classes=TINY_CLASSES + ["x", "y"], palette=meta["palette"] + [[1, 1, 1], [2, 2, 2]])
    payload["meta"] = json.dumps(meta)
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    _refused([bad, "--data", "synthetic", "--limit", "1", "--no-progress"], str(bad),
             "the classifier head.4.weight has 4 output channels but the checkpoint metadata names 6 classes",
             files=[bad])


# ------------------------------------------------------------------------------------------ NaN / Inf weights

@pytest.mark.parametrize("external", [False, True], ids=["inline", "external-data"])
def test_onnx_with_a_nan_initializer_is_refused_naming_it(onnx_b1, tmp_path, external):
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(onnx_b1))
    init = next(t for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) > 8)
    arr = numpy_helper.to_array(init).copy()
    arr.flat[3] = np.nan
    arr.flat[5] = np.inf
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    bad = tmp_path / "nan.fp32.onnx"
    if external:
        onnx.save(m, str(bad), save_as_external_data=True, location="nan.data", size_threshold=0)
    else:
        onnx.save(m, str(bad))
    files = [bad] + ([tmp_path / "nan.data"] if external else [])
    _refused([bad, "--data", "synthetic", "--limit", "1", "--no-progress"], str(bad),
             f"initializer {init.name} holds 2 NaN/Inf values of {arr.size}", "re-export it from a good checkpoint",
             files=files)


def test_finite_check_is_cached_per_file_state(onnx_b1, tmp_path):
    """The scan runs once per file state: a second read of the same bytes does not rescan, a changed
    file does (its mtime and size are the key)."""
    import onnx

    from pspnet_deploy.card import check_finite_initializers
    from pspnet_deploy.card import onnx_format
    from pspnet_deploy.errors import UserError

    m = onnx.load(str(onnx_b1))
    check_finite_initializers(m, onnx_b1)
    key = next(k for k in onnx_format._FINITE_CACHE if k[0][0] == str(onnx_b1.resolve()))
    assert onnx_format._FINITE_CACHE[key] is True
    f16 = onnx.helper.make_tensor("h", onnx.TensorProto.FLOAT16, [2], np.array([1, np.inf], np.float16),
                                  raw=False)
    m.graph.initializer.append(f16)
    with pytest.raises(UserError, match="initializer h holds 1 NaN/Inf value of 2"):
        check_finite_initializers(m, tmp_path / "other.onnx")  # another file: scanned


# ------------------------------------------------------------------------------------------ foreign checkpoints

def _fake_mmseg(path: Path) -> Path:
    import torch

    sd = {"backbone.conv1.weight": torch.zeros(4, 3, 3, 3), "decode_head.psp_modules.0.1.conv.weight": torch.zeros(2, 4, 1, 1),
          "decode_head.conv_seg.weight": torch.zeros(3, 4, 1, 1)}
    torch.save({"meta": {"epoch": 1, "CLASSES": ["a", "b", "c"]}, "state_dict": sd}, path)
    return path


SEMSEG = ROOT.parent / "shared" / "interop" / "semseg" / "pspnet50_voc21.json"


def _fake_semseg(path: Path) -> Path:
    """semseg's real layout (the key names of the reference fixture's PSPNet-50, ``module.``
    prefixes, ``{'epoch', 'state_dict', 'optimizer'}``), each tensor one zero (small)."""
    import torch

    keys = [k for k, _shape in json.loads(SEMSEG.read_text())["keys"]]
    torch.save({"epoch": 50, "state_dict": {f"module.{k}": torch.zeros(1) for k in keys}, "optimizer": {}}, path)
    return path


@pytest.mark.parametrize("make, what", [(_fake_mmseg, "an mmsegmentation checkpoint"),
                                        (_fake_semseg, "a semseg (hszhao) checkpoint")], ids=["mmseg", "semseg"])
def test_foreign_checkpoint_points_to_pspnet_convert(tmp_path, make, what):
    pth = make(tmp_path / "iter_80000.pth")
    _refused([pth, "--data", "synthetic", "--limit", "1", "--no-progress"], str(pth), what,
             f"import it first: pspnet-convert {pth} --output OUT.pt", files=[pth])


def test_foreign_checkpoint_holding_objects_is_recognised_without_unpickling(tmp_path):
    """mmengine's meta holds Python objects that torch.load(weights_only=True) refuses: the layout is
    read from the pickle's names (pickletools lists opcodes, nothing is built) and export says so too."""
    import torch

    sd = {"backbone.stem.0.weight": torch.zeros(2, 3, 3, 3), "decode_head.conv_seg.weight": torch.zeros(3, 2, 1, 1)}
    pth = tmp_path / "mm.pth"
    torch.save({"meta": {"hook": Path("x")}, "state_dict": sd}, pth)
    _refused([pth, "--onnx", tmp_path / "out.onnx"], "an mmsegmentation checkpoint", "pspnet-convert",
             module="pspnet_deploy.cli.export", files=[pth])
    assert not (tmp_path / "out.onnx").exists()


# ------------------------------------------------------------------------------------------ engine vs its ONNX

def test_rebuild_from_a_changed_onnx_says_so(fake_engine, onnx_b1, tmp_path):
    from pspnet_deploy.card import check_engine_source, engine_source_mismatch, read_sidecar_json
    from pspnet_deploy.errors import UserError

    eng = fake_engine(tmp_path, onnx_b1)
    sc = read_sidecar_json(eng)
    assert engine_source_mismatch(sc, onnx_b1) is None
    changed = _tampered_onnx(onnx_b1, tmp_path / "tiny.fp32.onnx", {"dataset": {"name": "changed"}})
    assert "has sha256" in engine_source_mismatch(sc, changed)
    with pytest.raises(UserError, match="was not built from this ONNX: .* rebuild from the changed ONNX"):
        check_engine_source(eng, changed, sidecar=sc)
    p = run_cli("pspnet_deploy.cli.build_engine", changed, "--engine", eng, "--dry-run")
    assert p.returncode == 0, p.stderr
    assert "was built from another ONNX" in p.stderr and "rebuilding from the changed ONNX" in p.stderr
    p = run_cli("pspnet_deploy.cli.build_engine", onnx_b1, "--engine", eng, "--dry-run")
    assert p.returncode == 0 and "another ONNX" not in p.stderr  # the same ONNX: nothing to say
