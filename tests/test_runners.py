"""Runners: PyTorch and ONNX Runtime agree on the same model; engines are checked before TensorRT."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_SIZE

_ONNX_CACHE: dict[tuple, Path] = {}


def _fallback_export(ckpt: Path, out: Path, batch: int, dynamic_batch: tuple | None, output_kind: str) -> None:
    """Used only until pspnet_deploy.export lands: TorchScript export of the static-pool model + metadata."""
    import onnx

    from pspnet_deploy.checkpoint import load_model
    from pspnet_deploy.model.static_pool import make_static

    model, meta = load_model(ckpt)
    m = make_static(model, TINY_SIZE)
    if output_kind == "labels":
        m = torch.nn.Sequential(m, _Argmax())
    x = torch.randn(batch, 3, *TINY_SIZE)
    out_name = "labels" if output_kind == "labels" else "logits"
    axes = {"input": {0: "batch"}, out_name: {0: "batch"}} if dynamic_batch else None
    torch.onnx.export(m, x, str(out), dynamo=False, opset_version=17, input_names=["input"],
                      output_names=[out_name], dynamic_axes=axes)
    mo = onnx.load(str(out))
    entries = {"classes": meta["classes"], "palette": meta["palette"], "preprocess": meta["preprocess"],
               "ignore_index": 255, "output_kind": output_kind, "precision": "fp32",
               "checkpoint_sha256": meta["sha256"]}
    if dynamic_batch:
        entries["export"] = {"dynamic_batch": list(dynamic_batch)}
    for k, v in entries.items():
        p = mo.metadata_props.add()
        p.key, p.value = f"pspnet.{k}", json.dumps(v)
    onnx.save(mo, str(out))


class _Argmax(torch.nn.Module):
    def forward(self, x):
        return x.argmax(1)


def tiny_onnx(tmp_path_factory, ckpt: Path, batch: int = 1, dynamic_batch: tuple | None = None,
              output_kind: str = "logits") -> Path:
    """An ONNX of the tiny checkpoint, cached for the session: written by the project's exporter
    (pspnet_deploy.export.export_onnx; a plain TorchScript export of the same static model only
    where that module is absent)."""
    key = (str(ckpt), batch, dynamic_batch, output_kind)
    if key in _ONNX_CACHE and _ONNX_CACHE[key].is_file():
        return _ONNX_CACHE[key]
    dyn = "x".join(map(str, dynamic_batch)) if dynamic_batch else "no"
    out = tmp_path_factory.mktemp("onnx") / f"tiny_b{batch}_d{dyn}_{output_kind}.fp32.onnx"
    try:
        from pspnet_deploy.export import export_onnx
    except ImportError:
        export_onnx = None
    if export_onnx is not None:
        export_onnx(str(ckpt), str(out), input_size=TINY_SIZE, batch=batch, dynamic_batch=dynamic_batch,
                    output_kind=output_kind, verify=False, progress=False, threads=1)
    else:
        _fallback_export(ckpt, out, batch, dynamic_batch, output_kind)
    _ONNX_CACHE[key] = out
    return out


@pytest.fixture(scope="module")
def onnx_b1(tmp_path_factory, tiny_checkpoint):
    return tiny_onnx(tmp_path_factory, tiny_checkpoint)


def test_torch_and_onnxruntime_runners_agree(tiny_checkpoint, onnx_b1, rng):
    from pspnet_deploy.runners import load_runner

    tr = load_runner(tiny_checkpoint)
    ort = load_runner(onnx_b1, threads=1)
    assert (tr.backend, ort.backend) == ("torch", "onnxruntime")
    assert tr.input_size == ort.input_size == TINY_SIZE
    assert tr.classes == ort.classes and tr.palette == ort.palette
    assert tr.preprocess.to_dict() == ort.preprocess.to_dict()
    images = [rng.integers(0, 256, (80, 120, 3), dtype=np.uint8) for _ in range(2)]
    for img in images:
        x = ort.preprocess(img)[None]
        a, b = tr.infer(x), ort.infer(x)
        assert a.shape == b.shape == (1, 4, *TINY_SIZE) and a.dtype == b.dtype == np.float32
        assert np.abs(a - b).max() < 1e-3 * max(1.0, np.abs(a).max())
        agree = (a.argmax(1) == b.argmax(1)).mean()
        assert agree > 0.999
    d = ort.describe()
    assert d["backend"] == "onnxruntime" and d["fixed_batch"] == 1 and d["num_classes"] == 4
    assert len(d["sha256"]) == 64 and d["input_size"] == list(TINY_SIZE)


def test_runner_rejects_wrong_input_shape(onnx_b1):
    from pspnet_deploy.errors import UserError
    from pspnet_deploy.runners import load_runner

    r = load_runner(onnx_b1, threads=1)
    with pytest.raises(UserError, match="3x64x96"):
        r.infer(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(UserError, match="fixed batch of 1"):
        r.infer(np.zeros((2, 3, *TINY_SIZE), np.float32))


def test_labels_output_matches_argmax_of_logits(tmp_path_factory, tiny_checkpoint, onnx_b1, rng):
    from pspnet_deploy.runners import load_runner

    lab = load_runner(tiny_onnx(tmp_path_factory, tiny_checkpoint, output_kind="labels"), threads=1)
    log = load_runner(onnx_b1, threads=1)
    assert lab.output_kind == "labels"
    x = log.preprocess(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))[None]
    out = lab.infer(x)
    assert out.shape == (1, *TINY_SIZE) and out.dtype.kind in "iu"
    assert (out == log.infer(x).argmax(1)).mean() > 0.999
    assert np.array_equal(lab.infer_labels(x), out)


def test_load_runner_refuses_engine_without_sidecar_before_tensorrt(tmp_path):
    from pspnet_deploy.errors import UserError
    from pspnet_deploy.runners import load_runner

    eng = tmp_path / "model.fp16.engine"
    eng.write_bytes(b"\0" * 64)
    with pytest.raises(UserError, match="no sidecar model.fp16.engine.json"):
        load_runner(eng)
    with pytest.raises(UserError, match="model file not found"):
        load_runner(tmp_path / "missing.engine")
    other = tmp_path / "x.bin"
    other.write_bytes(b"1")
    with pytest.raises(UserError, match="unknown model file type"):
        load_runner(other)
