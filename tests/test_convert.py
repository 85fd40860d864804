"""pspnet-convert, proved against the peers' own code.

mmsegmentation 1.2.2 runs here from PyPI (the ``interop`` extra; mmcv-lite has no compiled ops, so
``mmcv.ops`` is a stub that raises on use: PSPNet never calls it). Each test builds mmseg's PSPNet
from a config shipped in the wheel with random weights and BN statistics, saves it the way
mmengine's Runner does (``meta.cfg`` text, message hub with HistoryBuffers, numpy values, optimizer
and scheduler state), converts it, and compares this project's model and its exported ONNX
(ONNX Runtime) with mmseg's ``inference()`` at sizes where bins 3 and 6 do not divide the feature
map. semseg is not on PyPI: its reference outputs come from the fixture in shared/interop/semseg.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, run_cli
from pspnet_deploy.errors import UserError

SEMSEG = ROOT.parent / "shared" / "interop" / "semseg"
REL_TOL = 1e-5  # of the logit range


# --------------------------------------------------------------------------------------------
# mmsegmentation, imported for real (pspnet_deploy.interop.mmseg_runtime: mmcv.ops stub, MODELS.build)
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mmseg_models():
    from pspnet_deploy.interop import mmseg_runtime

    try:
        return mmseg_runtime.import_mmseg_models()
    except ImportError as e:
        pytest.skip(f"mmsegmentation not importable ({e}); install the interop extra and the Makefile's INTEROP_NODEPS")


def _config_path(name: str) -> Path:
    from pspnet_deploy.interop.mmseg_runtime import shipped_config

    try:
        return shipped_config(name)
    except ImportError:
        pytest.skip("mmsegmentation's configs are not installed")


def _bn_to_plain(obj):
    from pspnet_deploy.interop.mmseg_runtime import _plain_bn

    return _plain_bn(obj)


def build_mmseg(models, config_name: str, seed: int = 0):
    from pspnet_deploy.interop.mmseg_runtime import build_mmseg_pspnet

    return build_mmseg_pspnet(models, _config_path(config_name), seed)


def save_like_mmengine(model, cfg, path: Path, classes) -> None:
    from pspnet_deploy.interop.mmseg_runtime import save_like_mmengine as save

    save(model, cfg, path, classes)


def mmseg_logits(model, x: torch.Tensor) -> torch.Tensor:
    from pspnet_deploy.interop.mmseg_runtime import mmseg_inference

    return mmseg_inference(model, x)


def _assert_close(ours: np.ndarray, ref: np.ndarray, what: str) -> float:
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} vs {ref.shape}"
    rng = float(ref.max() - ref.min())
    diff = float(np.abs(ours - ref).max())
    assert rng > 0
    assert diff <= REL_TOL * rng, f"{what}: max abs diff {diff:.3g} > {REL_TOL} x logit range {rng:.3g}"
    return diff / rng


def _ort_logits(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _non_dividing(h: int, w: int, os_: int) -> None:
    from pspnet_deploy.model import feature_size

    fh, fw = feature_size(h, os_), feature_size(w, os_)
    assert all(f % b for f in (fh, fw) for b in (3, 6)), (fh, fw)


CITYSCAPES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
              "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]

# (shipped config, input H x W, output stride, check the ONNX export too)
CASES = [
    # ResNetV1c deep stem 32-32-64, BasicBlock with undilated conv2, contract_dilation
    pytest.param("pspnet_r18-d8_4xb2-80k_cityscapes-512x1024.py", (97, 129), 8, True, id="r18-d8"),
    # "b": 7x7 stem; the 769x769 configs resize with align_corners=True
    pytest.param("pspnet_r18b-d8_4xb2-80k_cityscapes-769x769.py", (97, 129), 8, True, id="r18b-d8-769"),
    # Bottleneck, 512-channel PPM and head, the config most deployments start from
    pytest.param("pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py", (97, 129), 8, True, id="r50-d8",
                 marks=pytest.mark.slow),
    # d32: stride 2 in stages 3 and 4 with dilations 2 and 4 kept (PyTorch only: the export path is the r50-d8 one)
    pytest.param("pspnet_r50b-d32_4xb2-80k_cityscapes-512x1024.py", (225, 289), 32, False, id="r50b-d32"),
]


@pytest.mark.parametrize("config_name,size,os_,check_onnx", CASES)
def test_mmseg_checkpoint_converts_exactly(mmseg_models, tmp_path, config_name, size, os_, check_onnx):
    from pspnet_deploy.checkpoint import load_model
    from pspnet_deploy.cli.convert import main as convert_main
    from pspnet_deploy.export import export_onnx

    _non_dividing(*size, os_)
    ref_model, cfg = build_mmseg(mmseg_models, config_name, seed=len(config_name))
    src = tmp_path / "iter_80000.pth"
    save_like_mmengine(ref_model, cfg, src, CITYSCAPES)
    out = tmp_path / "converted.pt"
    assert convert_main([str(src), "--output", str(out)]) == 0

    model, meta = load_model(out)
    assert meta["classes"] == CITYSCAPES and meta["palette"][3] == [3, 6, 9]
    assert meta["preprocess"]["channel_order"] == "RGB" and meta["preprocess"]["mean"] == [123.675, 116.28, 103.53]
    assert meta["converted_from"]["source"] == "mmseg" and meta["converted_from"]["notes"] == []
    mc = meta["model"]
    bb = cfg.model.backbone
    assert mc["output_stride"] == os_ and mc["contract_dilation"] is True and mc["basic_conv2_dilated"] is False
    assert mc["stem_channels"] == ([64] if bb.type == "ResNet" else [32, 32, 64])
    assert mc["align_corners"] is cfg.model.decode_head.align_corners

    x = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 3, *size)).astype(np.float32))
    ref = mmseg_logits(ref_model, x).numpy()
    with torch.no_grad():
        ours = model(x).numpy()
    _assert_close(ours, ref, "PyTorch vs mmseg")

    if check_onnx:
        onnx_path = tmp_path / "model.fp32.onnx"
        report = export_onnx(out, onnx_path, input_size=size, verify=False, progress=False)
        assert "MatMul" in report["op_counts"]  # bins 3 and 6 took the exact (non-dividing) path
        _assert_close(_ort_logits(onnx_path, x.numpy()), ref, "ONNX Runtime vs mmseg")

    # the auxiliary head came along (fine-tuning with pspnet-train --init keeps it)
    model_aux, _ = load_model(out, aux=True)
    with torch.no_grad():
        feats = ref_model.extract_feat(x)
        ref_aux = ref_model.auxiliary_head(feats).numpy()
        ours_aux = model_aux.aux_head(model_aux.backbone(x)[0]).numpy()
    _assert_close(ours_aux, ref_aux, "aux head vs mmseg")


# --------------------------------------------------------------------------------------------
# semseg (hszhao/semseg): reference outputs of its own model/pspnet.py, stored in shared/
# --------------------------------------------------------------------------------------------

def _semseg_fixture():
    if not (SEMSEG / "pspnet50_voc21.json").is_file():
        pytest.skip(f"semseg fixture not found at {SEMSEG}")
    sys.path.insert(0, str(SEMSEG))
    try:
        make_weights = importlib.import_module("make_weights")
    finally:
        sys.path.remove(str(SEMSEG))
    return json.loads((SEMSEG / "pspnet50_voc21.json").read_text()), make_weights


def _semseg_checkpoint(path: Path) -> tuple[dict, object]:
    manifest, mw = _semseg_fixture()
    state = mw.weights_from_manifest(manifest["keys"])
    state = {f"module.{k}": v for k, v in state.items()}  # DataParallel, as semseg's train.py saves
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.01, momentum=0.9)
    torch.save({"epoch": 50, "state_dict": state, "optimizer": opt.state_dict()}, path)
    return manifest, mw


def test_semseg_checkpoint_converts_exactly(tmp_path):
    from pspnet_deploy.checkpoint import load_model
    from pspnet_deploy.cli.convert import main as convert_main

    src = tmp_path / "train_epoch_50.pth"
    manifest, mw = _semseg_checkpoint(src)
    out = tmp_path / "psp50_voc.pt"
    assert convert_main([str(src), "--output", str(out), "--input-size", "129", "129", "--assume-defaults", "semseg"]) == 0
    model, meta = load_model(out, aux=True)
    assert meta["converted_from"]["assumed_defaults"]["name"] == "semseg"
    mc = meta["model"]
    assert mc["stem_channels"] == [64, 64, 128] and mc["contract_dilation"] is False and mc["align_corners"] is True
    assert meta["converted_from"]["source"] == "semseg" and meta["preprocess"]["mean"] == [123.675, 116.28, 103.53]
    assert meta["preprocess"]["channel_order"] == "RGB" and len(meta["classes"]) == 21
    x = mw.input_for(manifest["input"]["shape"], seed=manifest["input"]["seed"])
    with torch.no_grad():
        logits = model(x).numpy()
        aux = model.aux_head(model.backbone(x)[0]).numpy()
    _assert_close(logits, np.load(SEMSEG / "pspnet50_voc21.logits.npy"), "semseg logits")
    _assert_close(aux, np.load(SEMSEG / "pspnet50_voc21.aux.npy"), "semseg aux")


def test_semseg_layout_is_not_mmseg(tmp_path):
    from pspnet_deploy.interop import convert_checkpoint

    src = tmp_path / "semseg.pth"
    _semseg_checkpoint(src)
    with pytest.raises(UserError, match="--from mmseg given, but the weights are in semseg's layout"):
        convert_checkpoint(src, tmp_path / "x.pt", source="mmseg")
    assert not (tmp_path / "x.pt").exists()


# --------------------------------------------------------------------------------------------
# no config in the checkpoint: shapes + mmseg defaults, or --config (a shipped config by name)
# --------------------------------------------------------------------------------------------

def test_mmseg_0x_checkpoint_without_cfg_needs_config_or_assumed_defaults(mmseg_models, tmp_path):
    """A bare mmseg state dict (no config) is refused unless the user names a config or says which
    defaults to assume. ``--assume-defaults mmseg-d8`` takes mmseg's default align_corners=False
    (recorded in the checkpoint); the 769x769 config uses True, so the numbers differ; ``--config``
    naming the shipped file makes the conversion exact."""
    from pspnet_deploy.checkpoint import load_model
    from pspnet_deploy.cli.common import run
    from pspnet_deploy.cli.convert import main as convert_main

    name = "pspnet_r18b-d8_4xb2-80k_cityscapes-769x769.py"
    ref_model, _ = build_mmseg(mmseg_models, name, seed=3)
    src = tmp_path / "pspnet_r18b_769.pth"  # mmcv 0.x layout: meta with CLASSES/PALETTE, no config text
    torch.save({"meta": {"CLASSES": tuple(CITYSCAPES), "PALETTE": [[0, 0, 0]] * 19, "mmcv_version": "1.7.0"},
                "state_dict": ref_model.state_dict()}, src)
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((1, 3, 97, 129)).astype(np.float32))
    ref = mmseg_logits(ref_model, x).numpy()

    guessed = tmp_path / "guessed.pt"
    _assert_refused(_cli([str(src), "--output", str(guessed)], tmp_path), guessed,
                    "no config in the checkpoint", "--config", "--assume-defaults mmseg-d8")
    _assert_refused(_cli([str(src), "--output", str(guessed), "--assume-defaults", "semseg"], tmp_path), guessed,
                    "--assume-defaults semseg is for semseg checkpoints")
    assert convert_main([str(src), "--output", str(guessed), "--assume-defaults", "mmseg-d8"]) == 0
    model, meta = load_model(guessed)
    notes = " ".join(meta["converted_from"]["notes"])
    assert "align_corners False" in notes and "--assume-defaults mmseg-d8" in notes
    assert meta["converted_from"]["assumed_defaults"]["name"] == "mmseg-d8"
    assert meta["model"]["stem_channels"] == [64] and meta["model"]["backbone"] == "resnet18"
    with torch.no_grad():
        diff = float(np.abs(model(x).numpy() - ref).max())
    assert diff > 1e-3 * float(ref.max() - ref.min())  # the assumption is visible in the numbers

    exact = tmp_path / "exact.pt"
    assert run("pspnet-convert", convert_main, [str(src), "--output", str(exact), "--config", name]) == 0
    model, meta = load_model(exact)
    assert meta["model"]["align_corners"] is True and meta["preprocess"]["input_size"] == [769, 769]
    assert meta["classes"] == CITYSCAPES and "assumed_defaults" not in meta["converted_from"]
    with torch.no_grad():
        _assert_close(model(x).numpy(), ref, "with --config")
    # a config for other weights: refused with the first tensor that does not fit
    r50 = "pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py"
    with pytest.raises(UserError, match=r"weights do not fit the PSPNet described by pspnet_r50-d8.*: shape of backbone"):
        from pspnet_deploy.interop import convert_checkpoint

        convert_checkpoint(src, tmp_path / "out.pt", config=r50)
    assert not (tmp_path / "out.pt").exists()


def test_converted_checkpoint_fine_tunes_with_train_init(mmseg_models, tmp_path):
    """pspnet-train --init takes the converted architecture (deep stem 32-32-64, undilated BasicBlock
    conv2, align_corners False), keeps its weights and starts a new classifier for 5 classes."""
    from pspnet_deploy.checkpoint import load_checkpoint
    from pspnet_deploy.interop import convert_checkpoint
    from pspnet_deploy.train import TrainConfig, train

    ref_model, cfg = build_mmseg(mmseg_models, "pspnet_r18-d8_4xb2-80k_cityscapes-512x1024.py", seed=5)
    src = tmp_path / "r18.pth"
    save_like_mmengine(ref_model, cfg, src, CITYSCAPES)
    conv = tmp_path / "r18.pt"
    convert_checkpoint(src, conv, input_size=(64, 64))
    res = train(TrainConfig(data="synthetic", out=str(tmp_path / "ft"), init=str(conv), epochs=1, batch_size=2,
                            crop=[64, 64], input_size=[64, 64], max_steps_per_epoch=1, val_split=None, workers=0,
                            threads=1, progress=False))
    assert res["steps"] == 1
    before, after = load_checkpoint(conv), load_checkpoint(tmp_path / "ft" / "last.pt")
    for key in ("stem_channels", "contract_dilation", "basic_conv2_dilated", "align_corners", "head_channels",
                "ppm_channels", "aux_channels"):
        assert after["meta"]["model"][key] == before["meta"]["model"][key], key
    assert after["meta"]["model"]["num_classes"] == 5 != before["meta"]["model"]["num_classes"]
    assert after["meta"]["preprocess"]["mean"] == before["meta"]["preprocess"]["mean"]
    w0 = before["state_dict"]["backbone.stem.0.weight"]
    w1 = after["state_dict"]["backbone.stem.0.weight"]
    assert w0.shape == w1.shape == (32, 3, 3, 3) and float((w1 - w0).abs().max()) < 0.05 * float(w0.abs().max())


# --------------------------------------------------------------------------------------------
# config reader: never executes, matches mmengine's own parser on the shipped configs
# --------------------------------------------------------------------------------------------

def _plain(v):
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


@pytest.mark.parametrize("name", ["pspnet_r18-d8_4xb2-80k_cityscapes-512x1024.py",
                                  "pspnet_r50-d8-rsb_4xb2-adamw-80k_cityscapes-512x1024.py",
                                  "pspnet_r101b-d8_4xb2-80k_cityscapes-769x769.py",
                                  "pspnet_r50-d8_4xb4-80k_ade20k-512x512.py"])
def test_config_reader_matches_mmengine(mmseg_models, name):
    from mmengine.config import Config

    from pspnet_deploy.interop.mmconfig import read_config_file, read_config_text

    path = _config_path(name)
    ref = Config.fromfile(str(path))
    ours = read_config_file(path)
    for key in ("model", "crop_size", "dataset_type"):
        assert _plain(ours[key]) == _plain(ref[key] if not hasattr(ref[key], "to_dict") else ref[key].to_dict()), key
    embedded = read_config_text(ref.pretty_text)  # what mmengine puts in meta['cfg']
    assert _plain(embedded["model"]) == _plain(ref.model.to_dict())


def test_config_reader_never_executes(tmp_path):
    from pspnet_deploy.interop.mmconfig import get, read_config_file

    marker = tmp_path / "pwned"
    cfg_file = tmp_path / "evil.py"
    cfg_file.write_text(
        "import os\n"
        f"os.system('touch {marker}')\n"
        f"x = __import__('os').system('touch {marker}')\n"
        "norm_cfg = dict(type='BN')\n"
        f"model = dict(type='EncoderDecoder', backbone=open('{marker}', 'w'), norm=norm_cfg)\n"
        "crop_size = (512, 512)\n"
        "scale = [r * 2 for r in (1, 2)]\n")
    cfg = read_config_file(cfg_file)
    assert not marker.exists()
    assert get(cfg, "crop_size") == (512, 512)
    with pytest.raises(UserError, match=r"evil.py:5: call of open\(\) is not evaluated"):
        get(cfg, "model")
    with pytest.raises(UserError, match="ListComp"):
        get(cfg, "scale")
    assert not marker.exists()


def test_config_reader_inheritance_and_delete(tmp_path):
    from pspnet_deploy.interop.mmconfig import read_config_file

    (tmp_path / "base.py").write_text("a = dict(x=1, y=dict(p=1, q=2))\nb = [1, 2]\nsize = (4, 5)\n")
    (tmp_path / "child.py").write_text(
        "_base_ = './base.py'\nsize = (6, 7)\na = dict(y=dict(q=3), z=size)\nb = [3]\nc = dict(_delete_=True, k=1)\n"
        "d = '{{_base_.size}}'\ne = _base_.a\nf = {{_base_.b}}\n")
    cfg = read_config_file(tmp_path / "child.py")
    assert cfg["a"] == {"x": 1, "y": {"p": 1, "q": 3}, "z": (6, 7)}
    assert cfg["b"] == [3] and cfg["c"] == {"k": 1} and cfg["d"] == (4, 5) and cfg["e"]["x"] == 1
    assert cfg["f"] == [1, 2]


# --------------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing written; pickle payloads never run
# --------------------------------------------------------------------------------------------

def _cli(args, cwd: Path) -> subprocess.CompletedProcess:
    return run_cli("pspnet_deploy.cli.convert", *args, cwd=cwd, timeout=120)


def _assert_refused(r: subprocess.CompletedProcess, out: Path, *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pspnet-convert: error: "), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    assert "Traceback" not in r.stderr
    assert not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


class _Payload:
    """Pickles as ``os.system('touch <marker>')``: what a booby-trapped checkpoint contains."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _GetattrPayload:
    """Pickles as ``getattr(collections.OrderedDict, 'fromkeys')``: reaching a real attribute."""

    def __reduce__(self):
        import collections

        return (getattr, (collections.OrderedDict, "fromkeys"))


def test_malicious_pickle_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    src = tmp_path / "evil.pth"
    torch.save({"meta": {"note": _Payload(marker)}, "state_dict": {"decode_head.conv_seg.weight": torch.zeros(2)}}, src)
    # the payload is real: an unrestricted torch.load would run it
    torch.load(src, weights_only=False)
    assert marker.exists()
    marker.unlink()

    out = tmp_path / "out.pt"
    r = _cli([str(src), "--output", str(out)], tmp_path)
    _assert_refused(r, out, "posix.system", "nothing from it was executed")
    assert not marker.exists()

    raw = tmp_path / "raw.pkl"  # a bare pickle (torch's legacy path), not a zip
    import pickle

    raw.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}, protocol=2))
    r = _cli([str(raw), "--output", str(out), "--from", "mmseg"], tmp_path)
    _assert_refused(r, out, "refused")
    assert not marker.exists()


def test_getattr_on_real_objects_is_refused(tmp_path):
    from pspnet_deploy.interop.safe_pickle import safe_load

    src = tmp_path / "g.pth"
    torch.save({"x": _GetattrPayload()}, src)
    with pytest.raises(UserError, match=r"getattr\(type, 'fromkeys'\)"):
        safe_load(src)


def _state(keys: dict) -> dict:
    return {k: torch.zeros(shape) for k, shape in keys.items()}


DETECTOR = _state({"backbone.conv1.weight": (64, 3, 7, 7), "backbone.layer1.0.conv1.weight": (64, 64, 1, 1),
                   "neck.lateral_convs.0.conv.weight": (256, 256, 1, 1), "rpn_head.rpn_conv.weight": (256, 256, 3, 3),
                   "roi_head.bbox_head.fc_cls.weight": (81, 1024)})
CLASSIFIER = _state({"conv1.weight": (64, 3, 7, 7), "bn1.weight": (64,), "layer1.0.conv1.weight": (64, 64, 3, 3),
                     "fc.weight": (1000, 512), "fc.bias": (1000,)})


@pytest.mark.parametrize("payload,needle", [
    ({"meta": {"cfg": "model = dict(type='FasterRCNN')"}, "state_dict": DETECTOR}, "object detector"),
    ({"state_dict": CLASSIFIER}, r"image classifier \(fc.weight"),
    (CLASSIFIER, "image classifier"),
    ({"epoch": 3}, "no weights found"),
    ([torch.zeros(3)], "not a checkpoint"),
], ids=["detector", "classifier", "bare-classifier", "no-weights", "list"])
def test_not_a_pspnet_is_refused(tmp_path, payload, needle):
    from pspnet_deploy.cli.common import run
    from pspnet_deploy.cli.convert import main as convert_main

    src = tmp_path / "other.pth"
    torch.save(payload, src)
    out = tmp_path / "out.pt"
    with pytest.raises(UserError, match=needle):
        from pspnet_deploy.interop import convert_checkpoint

        convert_checkpoint(src, out)
    assert run("pspnet-convert", convert_main, [str(src), "--output", str(out)]) == 2
    assert not out.exists()


def test_truncated_and_own_checkpoints_are_refused(tmp_path, tiny_checkpoint):
    src = tmp_path / "det.pth"
    torch.save({"state_dict": DETECTOR}, src)
    data = src.read_bytes()
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out.pt"
    _assert_refused(_cli([str(trunc), "--output", str(out)], tmp_path), out, "cannot read checkpoint")
    _assert_refused(_cli([str(tiny_checkpoint), "--output", str(out)], tmp_path), out, "already a pspnet-deploy checkpoint")
    _assert_refused(_cli([str(tmp_path / "missing.pth"), "--output", str(out)], tmp_path), out, "not found")


def test_other_mmseg_models_are_refused(mmseg_models, tmp_path):
    """A real mmseg FCN (decode head FCNHead): same backbone, not a PSPNet."""
    from mmengine.config import Config, ConfigDict

    from pspnet_deploy.interop import convert_checkpoint

    path = _config_path("pspnet_r18-d8_4xb2-80k_cityscapes-512x1024.py").parents[1] / "fcn" / \
        "fcn_r18-d8_4xb2-80k_cityscapes-512x1024.py"
    cfg = Config.fromfile(str(path))
    mcfg = _bn_to_plain(cfg.model.to_dict())
    mcfg.update(data_preprocessor=None, pretrained=None)
    model = mmseg_models.build(ConfigDict(mcfg))
    src = tmp_path / "fcn.pth"
    torch.save({"meta": {"cfg": cfg.pretty_text}, "state_dict": model.state_dict()}, src)
    with pytest.raises(UserError, match="decode head is not PSPHead"):
        convert_checkpoint(src, tmp_path / "out.pt")


def test_semseg_yaml_config_is_checked(tmp_path):
    pytest.importorskip("yaml")
    from pspnet_deploy.checkpoint import load_checkpoint
    from pspnet_deploy.interop import convert_checkpoint

    src = tmp_path / "train_epoch_50.pth"
    _semseg_checkpoint(src)
    good = tmp_path / "voc2012_pspnet50.yaml"  # the shape of semseg's config/voc2012/voc2012_pspnet50.yaml
    good.write_text("DATA:\n  data_root: dataset/voc2012\n  classes: 21\nTRAIN:\n  arch: psp\n  layers: 50\n  train_h: 473\n  train_w: 473\n"
                    "  zoom_factor: 8\n  ignore_label: 255\nTEST:\n  base_size: 512\n  test_h: 473\n  test_w: 473\n"
                    "  scales: [1.0]\n")
    out = tmp_path / "ok.pt"
    convert_checkpoint(src, out, source="semseg", config=good)
    assert "assumed_defaults" not in load_checkpoint(out)["meta"]["converted_from"]
    # data_root names semseg's VOC: its 21 classes (the order of semseg's voc2012_names.txt = mmseg's METAINFO)
    assert load_checkpoint(out)["meta"]["classes"][:3] == ["background", "aeroplane", "bicycle"]
    meta = load_checkpoint(out)["meta"]
    assert meta["preprocess"]["input_size"] == [473, 473] and meta["converted_from"]["config"] == str(good)
    # semseg's tool/test.py: long side to base_size, 473 windows with stride ceil(2/3 x 473), flip
    assert meta["test_time"] == {"source": "semseg tool/test.py", "mode": "slide", "crop": [473, 473],
                                 "stride": [316, 316], "scales": [1.0], "flip": True,
                                 "resize": {"long": 512, "short": None, "keep_ratio": True}}
    bad = tmp_path / "ade20k_pspnet101.yaml"
    bad.write_text("DATA:\n  classes: 150\nTRAIN:\n  layers: 101\n  zoom_factor: 8\n")
    with pytest.raises(UserError, match="config says layers=101 but the weights are ResNet-50"):
        convert_checkpoint(src, tmp_path / "bad.pt", source="semseg", config=bad)
    assert not (tmp_path / "bad.pt").exists()


def test_mmseg_preprocessing_facts():
    """1.x data_preprocessor and 0.x img_norm_cfg -> channel order, mean/std, size."""
    from pspnet_deploy.interop.mmconfig import read_config_text
    from pspnet_deploy.interop.mmseg import preprocess_from_mmseg

    v1 = read_config_text("crop_size = (480, 640)\ndata_preprocessor = dict(type='SegDataPreProcessor', "
                          "mean=[1.0, 2.0, 3.0], std=[4.0, 5.0, 6.0], bgr_to_rgb=False, size=crop_size)\n"
                          "model = dict(type='EncoderDecoder', data_preprocessor=data_preprocessor)\n")
    pre, assumed = preprocess_from_mmseg(v1)
    assert pre == {"mean": [1.0, 2.0, 3.0], "std": [4.0, 5.0, 6.0], "channel_order": "BGR", "input_size": [480, 640]}
    assert assumed == []
    v0 = read_config_text("img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)\n"
                          "crop_size = (769, 769)\n")
    pre, _ = preprocess_from_mmseg(v0)
    assert pre["channel_order"] == "RGB" and pre["input_size"] == [769, 769] and pre["mean"][0] == 123.675
    pre, assumed = preprocess_from_mmseg(None)
    assert pre["channel_order"] == "RGB" and len(assumed) == 2


# --------------------------------------------------------------------------------------------
# never guess: a --config that disagrees with the embedded one, options this PSPNet cannot
# reproduce (each refused by name), channel order of mmseg's data preprocessor
# --------------------------------------------------------------------------------------------

R18 = "pspnet_r18-d8_4xb2-80k_cityscapes-512x1024.py"


def _refused_inproc(capsys, args, out: Path, *needles: str) -> str:
    from pspnet_deploy.cli.common import run
    from pspnet_deploy.cli.convert import main as convert_main

    capsys.readouterr()
    assert run("pspnet-convert", convert_main, [str(a) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pspnet-convert: error: "), err
    for n in needles:
        assert n in err[0], err[0]
    assert not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    return err[0]


@pytest.fixture(scope="module")
def r18_checkpoint(mmseg_models, tmp_path_factory):
    """A real mmengine checkpoint of mmseg's PSPNet-R18-d8 (embedded config)."""
    d = tmp_path_factory.mktemp("r18")
    model, cfg = build_mmseg(mmseg_models, R18, seed=11)
    src = d / "iter_80000.pth"
    save_like_mmengine(model, cfg, src, CITYSCAPES)
    return src


def _child_config(tmp_path: Path, body: str, base: str = R18, name: str = "child.py") -> Path:
    p = tmp_path / name
    p.write_text(f"_base_ = {str(_config_path(base))!r}\n{body}\n")
    return p


@pytest.mark.parametrize("body,needle", [
    ("model = dict(backbone=dict(strides=(1, 2, 2, 2)))", "strides is [1, 2, 2, 2] there, [1, 2, 1, 1] in the checkpoint"),
    ("model = dict(backbone=dict(dilations=(1, 1, 1, 2)))", "dilations is [1, 1, 1, 2] there"),
    ("model = dict(decode_head=dict(align_corners=True), auxiliary_head=dict(align_corners=True))",
     "align_corners is True there, False in the checkpoint"),
    ("model = dict(decode_head=dict(num_classes=21), auxiliary_head=dict(num_classes=21))",
     "num_classes is 21 there, 19 in the checkpoint"),
    ("model = dict(decode_head=dict(pool_scales=(1, 3, 6, 8)))", "bins is [1, 3, 6, 8] there"),
    ("model = dict(data_preprocessor=dict(bgr_to_rgb=False))", "channel_order is 'BGR' there, 'RGB' in the checkpoint"),
    ("model = dict(data_preprocessor=dict(mean=[0.0, 0.0, 0.0]))", "preprocessing mean is"),
], ids=["d32-strides", "dilations", "align_corners", "num_classes", "bins", "channel-order", "mean"])
def test_config_disagreeing_with_embedded_is_refused(r18_checkpoint, tmp_path, capsys, body, needle):
    out = tmp_path / "out.pt"
    cfg = _child_config(tmp_path, body)
    line = _refused_inproc(capsys, [r18_checkpoint, "--output", out, "--config", cfg], out, needle,
                           "disagrees with the config embedded in iter_80000.pth")
    assert "omit --config" in line


def test_config_agreeing_with_embedded_converts(r18_checkpoint, tmp_path, capsys):
    """The same forward pass (here: another schedule and crop size) is accepted and said so; --assume-defaults
    on a checkpoint that carries its config is refused."""
    from pspnet_deploy.checkpoint import load_checkpoint
    from pspnet_deploy.cli.convert import main as convert_main

    cfg = _child_config(tmp_path, "train_cfg = dict(max_iters=10)\nmodel = dict(backbone=dict(frozen_stages=1))")
    out = tmp_path / "ok.pt"
    assert convert_main([str(r18_checkpoint), "--output", str(out), "--config", str(cfg)]) == 0
    assert load_checkpoint(out)["meta"]["converted_from"]["config"] == f"{cfg} (agrees with the embedded config)"
    bad = tmp_path / "bad.pt"
    _refused_inproc(capsys, [r18_checkpoint, "--output", bad, "--assume-defaults", "mmseg-d8"], bad,
                    "the checkpoint carries its config", "omit --assume-defaults")


@pytest.mark.parametrize("body,needle", [
    ("model = dict(decode_head=dict(act_cfg=dict(type='LeakyReLU', negative_slope=0.1)))",
     "decode head act_cfg {'negative_slope': 0.1, 'type': 'LeakyReLU'} is not supported"),
    ("model = dict(auxiliary_head=dict(act_cfg=dict(type='GELU')))", "auxiliary head act_cfg"),
    ("model = dict(decode_head=dict(conv_cfg=dict(type='Conv2dAdaptivePadding')))",
     "decode head conv_cfg {'type': 'Conv2dAdaptivePadding'} is not supported"),
    ("norm_cfg = dict(type='GN', num_groups=8, requires_grad=True)\n"
     "model = dict(backbone=dict(norm_cfg=norm_cfg), decode_head=dict(norm_cfg=norm_cfg), "
     "auxiliary_head=dict(norm_cfg=norm_cfg))", "backbone uses norm 'GN'; only BN/SyncBN"),
    ("model = dict(decode_head=dict(norm_cfg=dict(type='BN', eps=1e-3)))", "decode head norm_cfg option eps=0.001"),
    ("model = dict(backbone=dict(out_indices=(1, 2, 3)))", "backbone out_indices (1, 2, 3) are not supported"),
], ids=["leaky-relu", "gelu-aux", "conv-type", "group-norm", "bn-eps", "out-indices"])
def test_unsupported_forward_options_are_refused_by_name(mmseg_models, tmp_path, capsys, body, needle):
    """Each config is built and saved by mmseg/mmengine's own code (the model is real); the
    converter refuses it by the option's name instead of dropping it."""
    from mmengine.config import Config

    cfg_path = _child_config(tmp_path, body)
    try:
        model, cfg = build_mmseg(mmseg_models, str(cfg_path), seed=2)
    except Exception as e:  # noqa: BLE001 - mmseg itself cannot build it: nothing to convert
        pytest.fail(f"mmseg could not build the config: {e}")
    assert isinstance(cfg, Config)
    src = tmp_path / "src.pth"
    save_like_mmengine(model, cfg, src, CITYSCAPES)
    out = tmp_path / "out.pt"
    _refused_inproc(capsys, [src, "--output", out], out, needle)


@pytest.mark.parametrize("flags,order", [({"bgr_to_rgb": True}, "RGB"), ({"bgr_to_rgb": False}, "BGR"),
                                         ({"rgb_to_bgr": True}, "RGB")], ids=["bgr_to_rgb", "none", "rgb_to_bgr"])
def test_channel_order_matches_mmseg_data_preprocessor(mmseg_models, flags, order):
    """mmcv decodes images as BGR; mmseg's SegDataPreProcessor swaps channels when bgr_to_rgb or
    rgb_to_bgr is set. The recorded Preprocess gives the same tensor from the RGB image."""
    from mmseg.models.data_preprocessor import SegDataPreProcessor

    from pspnet_deploy.data.preprocess import Preprocess
    from pspnet_deploy.interop.mmconfig import read_config_text
    from pspnet_deploy.interop.mmseg import preprocess_from_mmseg

    mean, std = [10.0, 120.0, 200.0], [30.0, 60.0, 90.0]
    args = ", ".join(f"{k}={v}" for k, v in flags.items())
    cfg = read_config_text(f"model = dict(data_preprocessor=dict(type='SegDataPreProcessor', mean={mean}, std={std}, "
                           f"{args}))\ncrop_size = (8, 8)\n")
    pre, _ = preprocess_from_mmseg(cfg)
    assert pre["channel_order"] == order
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    dp = SegDataPreProcessor(mean=mean, std=std, **flags)
    ref = dp({"inputs": [torch.from_numpy(rgb[..., ::-1].copy()).permute(2, 0, 1)]}, training=False)["inputs"][0]
    ours = Preprocess(input_size=(8, 8), mean=tuple(pre["mean"]), std=tuple(pre["std"]),
                      channel_order=pre["channel_order"]).normalize(rgb)
    np.testing.assert_allclose(ours, ref.numpy(), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------
# class names and palettes of the dataset the config names (mmseg's METAINFO, no mmseg at runtime)
# --------------------------------------------------------------------------------------------

def test_dataset_table_is_mmseg_metainfo(mmseg_models):
    """The table in pspnet_deploy/interop/datasets.py is mmseg 1.2.2's own METAINFO, class by class."""
    import mmseg.datasets  # noqa: F401 - registers the dataset classes
    from mmseg.registry import DATASETS

    from pspnet_deploy.interop.datasets import MMSEG_DATASETS

    for name in ("CityscapesDataset", "ADE20KDataset", "PascalVOCDataset", "COCOStuffDataset", "LoveDADataset",
                 "PotsdamDataset", "ISPRSDataset", "PascalContextDataset59"):
        assert name in MMSEG_DATASETS, name
    for name, table in MMSEG_DATASETS.items():
        info = DATASETS.get(name).METAINFO
        assert table["classes"] == list(info["classes"]), name
        assert table["palette"] == [list(c) for c in info["palette"]], name


def test_dataset_names_come_from_the_config(mmseg_models, tmp_path):
    """A checkpoint without dataset_meta (mmcv 0.x, a trimmed file) whose config names ADE20K gets
    ADE20K's 150 names and palette; the table module imports no mmseg."""
    from pspnet_deploy.checkpoint import load_checkpoint
    from pspnet_deploy.interop import convert_checkpoint

    cfg_path = _child_config(tmp_path, "dataset_type = 'ADE20KDataset'\n"
                                       "model = dict(decode_head=dict(num_classes=150), auxiliary_head=dict(num_classes=150))")
    model, cfg = build_mmseg(mmseg_models, str(cfg_path), seed=4)
    src = tmp_path / "ade.pth"
    torch.save({"meta": {"cfg": cfg.pretty_text}, "state_dict": model.state_dict()}, src)
    out = tmp_path / "ade.pt"
    convert_checkpoint(src, out)
    meta = load_checkpoint(out)["meta"]
    assert len(meta["classes"]) == 150 and meta["classes"][:3] == ["wall", "building", "sky"]
    assert meta["palette"][:2] == [[120, 120, 120], [180, 120, 120]] and meta["dataset"]["name"] == "ADE20KDataset"
    assert not any("generic" in n for n in meta["converted_from"]["notes"])
    # the dataset says 150 classes, weights with 19: the names are not used, and it is said
    out19 = tmp_path / "c19.pt"
    model19, cfg19 = build_mmseg(mmseg_models, R18, seed=4)
    src19 = tmp_path / "c19.pth"
    text = cfg19.pretty_text.replace("dataset_type = 'CityscapesDataset'", "dataset_type = 'ADE20KDataset'")
    assert text != cfg19.pretty_text
    torch.save({"meta": {"cfg": text}, "state_dict": model19.state_dict()}, src19)
    convert_checkpoint(src19, out19)
    meta = load_checkpoint(out19)["meta"]
    assert meta["classes"][0] == "class_0" and any("ADE20KDataset has 150 classes" in n for n in meta["converted_from"]["notes"])
    src_text = (ROOT / "pspnet_deploy" / "interop" / "datasets.py").read_text()
    assert "import" not in src_text.split('"""')[2]


# --------------------------------------------------------------------------------------------
# test-time procedure: recorded from the source, applied by pspnet-eval / pspnet-predict --test-time source
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,expected", [
    (R18, {"mode": "whole", "resize": {"long": 2048, "short": 1024, "keep_ratio": True}, "crop": None, "stride": None,
           "scales": [1.0], "flip": False}),
    ("pspnet_r18b-d8_4xb2-80k_cityscapes-769x769.py",
     {"mode": "slide", "resize": {"long": 2049, "short": 1025, "keep_ratio": True}, "crop": [769, 769],
      "stride": [513, 513], "scales": [1.0], "flip": False}),
    ("pspnet_r50-d8_4xb4-80k_ade20k-512x512.py",
     {"mode": "whole", "resize": {"long": 2048, "short": 512, "keep_ratio": True}, "crop": None, "stride": None,
      "scales": [1.0], "flip": False}),
], ids=["cityscapes-512x1024", "cityscapes-769", "ade20k"])
def test_mmseg_test_time_is_read_from_the_config(mmseg_models, name, expected):
    """What mmseg 1.2.2's own Config says (test_cfg, the test dataloader's Resize) is what is recorded."""
    from mmengine.config import Config

    from pspnet_deploy.interop.mmconfig import read_config_file
    from pspnet_deploy.interop.mmseg import test_time_from_mmseg

    path = _config_path(name)
    tt, notes = test_time_from_mmseg(read_config_file(path))
    assert notes == [] and {k: v for k, v in tt.items() if k != "source"} == expected
    ref = Config.fromfile(str(path))
    resize = [s for s in ref.test_dataloader.dataset.pipeline if s["type"] == "Resize"][0]
    assert (max(resize["scale"]), min(resize["scale"])) == (tt["resize"]["long"], tt["resize"]["short"])
    assert ref.model.test_cfg["mode"] == tt["mode"]


def test_test_time_source_reproduces_mmseg_slide_inference(mmseg_models, tmp_path, capsys):
    """A config with a keep-ratio test resize and sliding windows: the converted checkpoint records
    them, and pspnet-predict --test-time source gives mmseg's own procedure (mmcv's Resize, then
    EncoderDecoder.slide_inference, then the resize back to the original size) label for label."""
    import cv2
    import torch.nn.functional as F
    from mmcv.transforms import Resize

    from pspnet_deploy.checkpoint import load_checkpoint
    from pspnet_deploy.cli.common import run
    from pspnet_deploy.cli.eval import main as eval_main
    from pspnet_deploy.cli.predict import main as predict_main
    from pspnet_deploy.data.preprocess import Preprocess
    from pspnet_deploy.interop import convert_checkpoint

    cfg_path = _child_config(tmp_path, "model = dict(test_cfg=dict(mode='slide', crop_size=(97, 97), stride=(65, 65)))\n"
                                       "test_pipeline = [dict(type='LoadImageFromFile'), "
                                       "dict(type='Resize', scale=(240, 180), keep_ratio=True), dict(type='PackSegInputs')]\n"
                                       "test_dataloader = dict(dataset=dict(pipeline=test_pipeline))")
    model, cfg = build_mmseg(mmseg_models, str(cfg_path), seed=6)
    src = tmp_path / "slide.pth"
    save_like_mmengine(model, cfg, src, CITYSCAPES)
    out = tmp_path / "slide.pt"
    convert_checkpoint(src, out)
    meta = load_checkpoint(out)["meta"]
    assert meta["test_time"]["mode"] == "slide" and meta["test_time"]["crop"] == [97, 97]
    assert meta["test_time"]["resize"] == {"long": 240, "short": 180, "keep_ratio": True}
    assert meta["preprocess"]["input_size"] == [512, 1024]  # the training crop; the windows are the test crop

    rgb = np.random.default_rng(3).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    img = tmp_path / "img.png"
    cv2.imwrite(str(img), rgb[..., ::-1])
    # mmseg: BGR image -> mmcv Resize -> normalise (RGB, proven equal above) -> slide_inference -> back to 120x160
    scaled = Resize(scale=(240, 180), keep_ratio=True)({"img": rgb[..., ::-1].copy()})["img"]
    assert scaled.shape[:2] == (180, 240)
    pre = Preprocess.from_dict(meta["preprocess"])
    x = torch.from_numpy(pre.normalize(np.ascontiguousarray(scaled[..., ::-1])))[None]
    with torch.no_grad():
        logits = model.slide_inference(x, [{"img_shape": (180, 240), "ori_shape": (120, 160), "pad_shape": (180, 240)}])
        ref = F.interpolate(logits, size=(120, 160), mode="bilinear", align_corners=False)[0].argmax(0).numpy()

    pred_dir = tmp_path / "pred"
    assert run("pspnet-predict", predict_main, [str(out), str(img), "--output", str(pred_dir), "--test-time", "source"]) == 0
    ours = cv2.imread(str(pred_dir / "labels" / "img.png"), cv2.IMREAD_UNCHANGED)
    assert ours.shape == ref.shape and float((ours == ref).mean()) == 1.0
    # and plain whole-image prediction at the training crop differs (the procedure matters)
    plain = tmp_path / "plain"
    assert run("pspnet-predict", predict_main, [str(out), str(img), "--output", str(plain)]) == 0
    assert float((cv2.imread(str(plain / "labels" / "img.png"), cv2.IMREAD_UNCHANGED) == ref).mean()) < 1.0

    capsys.readouterr()
    assert run("pspnet-eval", eval_main, [str(out), "--data", str(tmp_path), "--test-time", "source", "--flip"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "drop --mode/--flip/--scales/--stride" in err[0]


def test_test_time_source_refusals(tiny_checkpoint, r18_checkpoint, tmp_path, capsys):
    """No record (a model trained here): refused. A whole-image source procedure at 1024x2048 on an
    ONNX exported at another size: refused, naming the size to export."""
    from pspnet_deploy.cli.common import run
    from pspnet_deploy.cli.predict import main as predict_main
    from pspnet_deploy.export import export_onnx
    from pspnet_deploy.interop import convert_checkpoint

    import cv2

    img = tmp_path / "img.png"
    cv2.imwrite(str(img), np.zeros((64, 64, 3), np.uint8))
    capsys.readouterr()
    assert run("pspnet-predict", predict_main, [str(tiny_checkpoint), str(img), "--output", str(tmp_path / "p"),
                                                "--test-time", "source"]) == 2
    assert "no test-time procedure recorded" in capsys.readouterr().err
    conv = tmp_path / "r18.pt"
    convert_checkpoint(r18_checkpoint, conv, input_size=(97, 129))
    onnx_path = tmp_path / "r18.onnx"
    export_onnx(conv, onnx_path, input_size=(97, 129), verify=False, progress=False)
    assert run("pspnet-predict", predict_main, [str(onnx_path), str(img), "--output", str(tmp_path / "q"),
                                                "--test-time", "source"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runs whole images resized to 1024x2048" in err[0] and "--input-size 1024 2048" in err[0]
    assert not (tmp_path / "q").exists()


# --------------------------------------------------------------------------------------------
# MobileNetV2 (configs/mobilenet_v2/mobilenet-v2-d8_pspnet_*), ResNeSt refused by name
# --------------------------------------------------------------------------------------------

MBV2 = "mobilenet_v2/mobilenet-v2-d8_pspnet_4xb2-80k_cityscapes-512x1024.py"
# mmseg's own config with its widths cut (widen_factor 0.25: stages 8..80 channels, head 32, aux 16)
MBV2_TINY = ("model = dict(backbone=dict(widen_factor=0.25), decode_head=dict(in_channels=80, channels=32), "
             "auxiliary_head=dict(in_channels=24, channels=16))")


@pytest.mark.parametrize("full", [False, True], ids=["tiny", "full-width"])
def test_mmseg_mobilenet_v2_pspnet_converts_exactly(mmseg_models, tmp_path, full):
    """mmseg's MobileNetV2-PSPNet (dilation on the first block of a stage only, ReLU6, residuals
    where widths match), random weights and BN statistics, at 97x129: the converted model and its
    ONNX (exact static pooling, ONNX Runtime) match mmseg's inference; the aux head too."""
    from pspnet_deploy.checkpoint import load_model
    from pspnet_deploy.cli.convert import main as convert_main
    from pspnet_deploy.export import export_onnx

    size = (97, 129)
    _non_dividing(*size, 8)
    cfg_path = _config_path(MBV2) if full else _child_config(tmp_path, MBV2_TINY, base=MBV2)
    ref_model, cfg = build_mmseg(mmseg_models, str(cfg_path), seed=21)
    src = tmp_path / "mbv2.pth"
    save_like_mmengine(ref_model, cfg, src, CITYSCAPES)
    out = tmp_path / "mbv2.pt"
    assert convert_main([str(src), "--output", str(out), "--input-size", *map(str, size)]) == 0
    model, meta = load_model(out)
    mc = meta["model"]
    assert mc["backbone"] == "mobilenet_v2" and mc["widen_factor"] == (1.0 if full else 0.25)
    assert mc["strides"] == [1, 2, 2, 1, 1, 1, 1] and mc["dilations"] == [1, 1, 1, 2, 2, 4, 4] and mc["output_stride"] == 8
    assert meta["converted_from"]["notes"] == [] and meta["classes"] == CITYSCAPES

    x = torch.from_numpy(np.random.default_rng(5).standard_normal((1, 3, *size)).astype(np.float32))
    ref = mmseg_logits(ref_model, x).numpy()
    with torch.no_grad():
        _assert_close(model(x).numpy(), ref, "PyTorch vs mmseg (MobileNetV2)")
    if not full:
        onnx_path = tmp_path / "mbv2.fp32.onnx"
        report = export_onnx(out, onnx_path, input_size=size, verify=False, progress=False)
        assert "MatMul" in report["op_counts"]  # bins 3 and 6 took the exact (non-dividing) static path
        _assert_close(_ort_logits(onnx_path, x.numpy()), ref, "ONNX Runtime vs mmseg (MobileNetV2)")
    model_aux, _ = load_model(out, aux=True)
    with torch.no_grad():
        ref_aux = ref_model.auxiliary_head(ref_model.extract_feat(x)).numpy()
        ours_aux = model_aux.aux_head(model_aux.backbone(x)[0]).numpy()
    _assert_close(ours_aux, ref_aux, "aux head vs mmseg (MobileNetV2)")


def test_mmseg_mobilenet_v2_refusal(mmseg_models, tmp_path, capsys):
    """MobileNetV2 with another activation than ReLU6: refused by name."""
    relu = MBV2_TINY.replace("widen_factor=0.25)", "widen_factor=0.25, act_cfg=dict(type='ReLU'))")
    assert relu != MBV2_TINY
    cfg_path = _child_config(tmp_path, relu, base=MBV2, name="relu.py")
    model, cfg = build_mmseg(mmseg_models, str(cfg_path), seed=1)
    src = tmp_path / "relu.pth"
    save_like_mmengine(model, cfg, src, CITYSCAPES)
    out = tmp_path / "out.pt"
    _refused_inproc(capsys, [src, "--output", out], out, "backbone act_cfg", "ReLU6 only")


RESNEST = "resnest/resnest_s101-d8_pspnet_4xb4-160k_ade20k-512x512.py"


@pytest.mark.parametrize("body", [
    # ResNeSt-101 as shipped, widths cut (stem 16, base 8: stages 32..256 out) to stay fast
    "model = dict(backbone=dict(stem_channels=16, base_channels=8), decode_head=dict(in_channels=256, channels=16), "
    "auxiliary_head=dict(in_channels=128, channels=8))",
    # radix 1 (sigmoid attention) and no avg_down_stride, depth 50
    "model = dict(backbone=dict(depth=50, stem_channels=16, base_channels=8, radix=1, avg_down_stride=False), "
    "decode_head=dict(in_channels=256, channels=16), auxiliary_head=dict(in_channels=128, channels=8))",
    # as shipped, full width (stem 128, base 64, 2048-channel PPM input)
    pytest.param("", marks=pytest.mark.slow),
], ids=["s101-tiny", "s50-radix1", "s101-full"])
def test_mmseg_resnest_pspnet_converts_exactly(mmseg_models, tmp_path, body):
    """mmseg's ResNeSt PSPNet (split attention, avg-pool downsampling, ResNetV1d stem) at 97x129
    with random weights and BN statistics: the converted model matches mmseg's inference."""
    from pspnet_deploy.checkpoint import load_model
    from pspnet_deploy.cli.convert import main as convert_main

    size = (97, 129)
    cfg_path = _child_config(tmp_path, body, base=RESNEST)
    ref_model, cfg = build_mmseg(mmseg_models, str(cfg_path), seed=9)
    src = tmp_path / "resnest.pth"
    save_like_mmengine(ref_model, cfg, src, [f"c{i}" for i in range(150)])
    out = tmp_path / "resnest.pt"
    assert convert_main([str(src), "--output", str(out)]) == 0
    model, meta = load_model(out)
    assert meta["model"]["backbone"] in ("resnest101", "resnest50")
    assert meta["model"]["resnest"]["base_channels"] == (8 if body else 64) and meta["converted_from"]["notes"] == []
    x = torch.from_numpy(np.random.default_rng(8).standard_normal((1, 3, *size)).astype(np.float32))
    ref = mmseg_logits(ref_model, x).numpy()
    with torch.no_grad():
        _assert_close(model(x).numpy(), ref, "PyTorch vs mmseg (ResNeSt)")
    model_aux, _ = load_model(out, aux=True)
    with torch.no_grad():
        ref_aux = ref_model.auxiliary_head(ref_model.extract_feat(x)).numpy()
        ours_aux = model_aux.aux_head(model_aux.backbone(x)[0]).numpy()
    _assert_close(ours_aux, ref_aux, "aux head vs mmseg (ResNeSt)")
