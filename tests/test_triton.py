"""Triton model repositories: config.pbtxt parsed with Triton's own protobuf definitions."""
from __future__ import annotations

import json

import pytest

from conftest import TINY_CLASSES, TINY_SIZE

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="tritonclient[grpc] not installed (pip install tritonclient[grpc])")
text_format = pytest.importorskip("google.protobuf.text_format")


def parse_config(path) -> "model_config_pb2.ModelConfig":
    cfg = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(), cfg)
    return cfg


def dtype_name(v: int) -> str:
    return model_config_pb2.DataType.Name(v)


def test_onnx_fixed_batch_repo(onnx_b1, tmp_path):
    from pspnet_deploy.triton import write_triton_repo
    from pspnet_deploy.utils import sha256_file

    res = write_triton_repo(onnx_b1, tmp_path / "repo", name="psp", instances=2)
    model_dir = tmp_path / "repo" / "psp"
    cfg = parse_config(model_dir / "config.pbtxt")
    assert cfg.name == "psp" and cfg.platform == "onnxruntime_onnx" and cfg.backend == "onnxruntime"
    assert cfg.default_model_filename == "model.onnx"
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")  # fixed batch 1: Triton does not batch
    assert [(i.name, dtype_name(i.data_type), list(i.dims)) for i in cfg.input] == [
        ("input", "TYPE_FP32", [1, 3, *TINY_SIZE])]
    assert [(o.name, dtype_name(o.data_type), list(o.dims)) for o in cfg.output] == [
        ("logits", "TYPE_FP32", [1, 4, *TINY_SIZE])]
    assert len(cfg.instance_group) == 1 and cfg.instance_group[0].count == 2
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_AUTO
    assert sha256_file(model_dir / "1" / "model.onnx") == sha256_file(onnx_b1)
    client = json.loads((model_dir / "pspnet.json").read_text())
    assert client["classes"] == TINY_CLASSES and client["preprocess"]["input_size"] == list(TINY_SIZE)
    assert client["max_batch_size"] == 0 and client["input"] == "input" and client["output"] == "logits"
    assert res["model_file"] == str(model_dir / "1" / "model.onnx")
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "config.pbtxt", "pspnet.json"]


def test_onnx_dynamic_batch_repo(onnx_dyn, tmp_path):
    from pspnet_deploy.triton import write_triton_repo

    write_triton_repo(onnx_dyn, tmp_path / "repo", instance_kind="cpu")  # max batch: the export's range (1, 2, 4)
    (model_dir,) = (tmp_path / "repo").iterdir()
    assert model_dir.name == "pspnet_tiny_b1_d1x2x4_logits_fp32"
    cfg = parse_config(model_dir / "config.pbtxt")
    assert cfg.max_batch_size == 4 and cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == [3, *TINY_SIZE] and list(cfg.output[0].dims) == [4, *TINY_SIZE]
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


def test_labels_output_type(onnx_factory, tmp_path):
    from pspnet_deploy.triton import write_triton_repo

    lab = onnx_factory(output_kind="labels")
    write_triton_repo(lab, tmp_path / "repo", name="labels")
    cfg = parse_config(tmp_path / "repo" / "labels" / "config.pbtxt")
    assert dtype_name(cfg.output[0].data_type) in ("TYPE_INT32", "TYPE_INT64")
    assert list(cfg.output[0].dims) == [1, *TINY_SIZE]


def test_engine_repo_uses_the_sidecar(onnx_dyn, onnx_b1, tmp_path, fake_engine):
    """An engine (bytes + sidecar, no TensorRT needed to write the repository)."""
    from pspnet_deploy.engine import read_sidecar
    from pspnet_deploy.errors import UserError
    from pspnet_deploy.triton import write_triton_repo
    from pspnet_deploy.utils import atomic_write_json

    src = tmp_path / "dyn.fp32.onnx"
    src.write_bytes(onnx_dyn.read_bytes())
    eng = fake_engine(tmp_path, src, ["--batch", "1", "4", "6"], name="dyn.fp16.engine")
    sc = read_sidecar(eng)  # what a dynamic-batch engine's sidecar says about its IO
    sc["io"] = {"inputs": [{"name": "input", "shape": [-1, 3, *TINY_SIZE], "dtype": "float32"}],
                "outputs": [{"name": "logits", "shape": [-1, 4, *TINY_SIZE], "dtype": "float16"}],
                "profile": {"input": "input", "min": [1, 3, *TINY_SIZE], "opt": [4, 3, *TINY_SIZE],
                            "max": [6, 3, *TINY_SIZE]}}
    atomic_write_json(eng.with_name(eng.name + ".json"), sc)
    write_triton_repo(eng, tmp_path / "repo", name="trt")
    d = tmp_path / "repo" / "trt"
    cfg = parse_config(d / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and cfg.backend == "tensorrt" and cfg.default_model_filename == "model.plan"
    assert cfg.max_batch_size == 6 and cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == [3, *TINY_SIZE] and dtype_name(cfg.output[0].data_type) == "TYPE_FP16"
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert (d / "1" / "model.plan").read_bytes() == eng.read_bytes()
    assert json.loads((d / "1" / "model.plan.json").read_text())["engine"]["sha256"] == sc["engine"]["sha256"]
    with pytest.raises(UserError, match="profile accepts batches up to 6, --max-batch 8 is larger"):
        write_triton_repo(eng, tmp_path / "repo2", max_batch=8)
    with pytest.raises(UserError, match="run on GPUs only"):
        write_triton_repo(eng, tmp_path / "repo2", instance_kind="cpu")
    fixed = fake_engine(tmp_path, onnx_b1, name="fixed.fp32.engine")
    write_triton_repo(fixed, tmp_path / "repo", name="fixed")
    cfg = parse_config(tmp_path / "repo" / "fixed" / "config.pbtxt")
    assert cfg.max_batch_size == 0 and list(cfg.input[0].dims) == [1, 3, *TINY_SIZE]


def test_bad_requests_and_versions(onnx_b1, tmp_path, capsys):
    from pspnet_deploy.cli.common import run
    from pspnet_deploy.cli.triton import main
    from pspnet_deploy.errors import UserError
    from pspnet_deploy.triton import write_triton_repo

    with pytest.raises(UserError, match="fixed batch of 1, so Triton cannot batch it"):
        write_triton_repo(onnx_b1, tmp_path / "r", max_batch=4)
    repo = tmp_path / "repo"
    assert run("pspnet-triton", main, [str(onnx_b1), "--repo", str(repo), "--name", "m"]) == 0
    assert "max_batch_size 0" in capsys.readouterr().out
    assert run("pspnet-triton", main, [str(onnx_b1), "--repo", str(repo), "--name", "m"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "version 1 of model 'm' exists; pass --force" in err[0]
    assert run("pspnet-triton", main, [str(onnx_b1), "--repo", str(repo), "--name", "m", "--force"]) == 0
    assert run("pspnet-triton", main, [str(onnx_b1), "--repo", str(repo), "--name", "m", "--version", "2"]) == 0
    assert sorted(p.name for p in (repo / "m").iterdir()) == ["1", "2", "config.pbtxt", "pspnet.json"]
    ckpt = tmp_path / "x.pt"
    ckpt.write_bytes(b"0")
    assert run("pspnet-triton", main, [str(ckpt), "--repo", str(repo)]) == 2
    assert "serves .onnx, .engine or .xml (OpenVINO) files" in capsys.readouterr().err
    no_sidecar = tmp_path / "lonely.engine"
    no_sidecar.write_bytes(b"0" * 10)
    assert run("pspnet-triton", main, [str(no_sidecar), "--repo", str(repo)]) == 2
    assert "no sidecar" in capsys.readouterr().err
