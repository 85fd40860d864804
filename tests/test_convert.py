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
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from pspnet_deploy.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SEMSEG = ROOT.parent / "shared" / "interop" / "semseg"
REL_TOL = 1e-5  # of the logit range


# --------------------------------------------------------------------------------------------
# mmsegmentation, imported for real
# --------------------------------------------------------------------------------------------

class _StubOps(types.ModuleType):
    """``mmcv.ops`` for mmcv-lite: names resolve (mmseg imports a few at import time), calls raise."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def _unavailable(*args, **kwargs):
            raise RuntimeError(f"mmcv.ops.{name} is not available in mmcv-lite (no compiled ops)")

        _unavailable.__name__ = name
        return _unavailable


def _import_mmseg():
    try:
        import mmcv  # noqa: F401
        import mmengine  # noqa: F401
    except ImportError as e:
        pytest.skip(f"mmsegmentation stack not installed ({e}); pip install -e '.[interop]' and the --no-deps "
                    f"packages of the Makefile's INTEROP_NODEPS")
    if "mmcv.ops" not in sys.modules:
        try:
            importlib.import_module("mmcv.ops")
        except Exception:  # noqa: BLE001 - mmcv-lite: no compiled extension
            for k in [k for k in sys.modules if k == "mmcv.ops" or k.startswith("mmcv.ops.")]:
                del sys.modules[k]
            stub = _StubOps("mmcv.ops")
            stub.__file__ = "<stub: mmcv-lite has no compiled ops>"
            stub.__path__ = []
            sys.modules["mmcv.ops"] = stub
    try:
        import mmseg.models  # noqa: F401
        from mmseg.registry import MODELS
    except ImportError as e:
        pytest.skip(f"mmsegmentation not importable ({e})")
    return MODELS


@pytest.fixture(scope="module")
def mmseg_models():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _import_mmseg()


def _config_path(name: str) -> Path:
    from pspnet_deploy.interop.mmconfig import mmseg_config_root

    root = mmseg_config_root()
    if root is None:
        pytest.skip("mmsegmentation's configs are not installed")
    return root / "pspnet" / name


def _bn_to_plain(obj):
    if isinstance(obj, dict):
        out = {k: _bn_to_plain(v) for k, v in obj.items()}
        if out.get("type") == "SyncBN":
            out["type"] = "BN"
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_bn_to_plain(v) for v in obj)
    return obj


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere, BN statistics included, scaled so a deep stack stays bounded."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("running_mean") or (t.ndim == 1 and name.endswith("bias")):
                t.copy_((torch.rand(t.shape, generator=g) - 0.5) * 0.2)
            elif t.ndim == 1:
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.3)
            else:
                fan_in = int(np.prod(t.shape[1:]))
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / fan_in) ** 0.5)


def build_mmseg(models, config_name: str, seed: int = 0):
    """(mmseg EncoderDecoder in eval mode, mmengine Config) from a shipped config."""
    from mmengine.config import Config, ConfigDict

    cfg = Config.fromfile(str(_config_path(config_name)))
    mcfg = _bn_to_plain(cfg.model.to_dict())
    mcfg["data_preprocessor"] = None
    mcfg["pretrained"] = None
    mcfg["backbone"].pop("init_cfg", None)
    model = models.build(ConfigDict(mcfg))
    _randomise(model, seed)
    return model.eval(), cfg


def save_like_mmengine(model, cfg, path: Path, classes) -> None:
    """What mmengine's ``Runner.save_checkpoint`` writes, with mmengine's own objects and writer."""
    import time

    import mmengine
    from mmengine.logging import MessageHub
    from mmengine.optim import OptimWrapper, PolyLR
    from mmengine.runner.checkpoint import save_checkpoint, weights_to_cpu

    hub = MessageHub.get_instance(f"convert-test-{path.stem}")
    for i in range(3):
        hub.update_scalar("train/loss", 1.0 / (i + 1))
        hub.update_scalar("train/lr", np.float64(0.01))
    hub.update_info("iter", 3)
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    sched = PolyLR(optim, eta_min=1e-4, power=0.9, begin=0, end=80000, by_epoch=False)
    meta = {"epoch": 0, "iter": 3, "cfg": cfg.pretty_text, "seed": np.int64(0), "experiment_name": "test",
            "time": time.strftime("%Y%m%d_%H%M%S"), "mmengine_version": mmengine.__version__,
            "dataset_meta": {"classes": tuple(classes), "palette": [[i, 2 * i % 256, 3 * i % 256] for i in range(len(classes))]}}
    ckpt = {"meta": meta, "state_dict": weights_to_cpu(model.state_dict()), "message_hub": hub.state_dict(),
            "optimizer": optim.state_dict(), "param_schedulers": [sched.state_dict()]}
    save_checkpoint(ckpt, str(path))


def mmseg_logits(model, x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    metas = [{"img_shape": (h, w), "ori_shape": (h, w), "pad_shape": (h, w)}] * x.shape[0]
    with torch.no_grad():
        return model.inference(x, metas)


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

# (shipped config, input H x W, output stride, what it covers)
CASES = [
    ("pspnet_r18-d8_4xb2-80k_cityscapes-512x1024.py", (97, 129), 8),  # ResNetV1c 32-32-64 stem, BasicBlock
    ("pspnet_r18b-d8_4xb2-80k_cityscapes-769x769.py", (97, 129), 8),  # 7x7 stem ("b"), align_corners=True
    ("pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py", (97, 129), 8),  # Bottleneck, contract_dilation
    ("pspnet_r50b-d32_4xb2-80k_cityscapes-512x1024.py", (225, 289), 32),  # d32: strides 2 with dilations 2/4
]


@pytest.mark.parametrize("config_name,size,os_", CASES, ids=[c[0].split("_4x")[0] for c in CASES])
def test_mmseg_checkpoint_converts_exactly(mmseg_models, tmp_path, config_name, size, os_):
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

    onnx_path = tmp_path / "model.fp32.onnx"
    report = export_onnx(out, onnx_path, input_size=size, verify=False, progress=False)
    assert report["static_pool"]["feature_size"] == [s for s in report["static_pool"]["feature_size"]]
    _assert_close(_ort_logits(onnx_path, x.numpy()), ref, "ONNX Runtime vs mmseg")

    # the auxiliary head came along (fine-tuning with pspnet-train --init keeps it)
    model_aux, _ = load_model(out, aux=True)
    with torch.no_grad():
        feats = ref_model.extract_feat(x)
        ref_aux = ref_model.auxiliary_head(feats).numpy()
        ours_aux = model_aux.aux_head(model_aux.backbone(x)[0]).numpy()
    _assert_close(ours_aux, ref_aux, "aux head vs mmseg")
