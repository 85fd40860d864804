"""Shared fixtures: tiny real models and checkpoints (no downloads, seconds on 2 cores)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(int(os.environ.get("PSPNET_TEST_THREADS", "1")))  # THREADS below
# test files import openvino themselves, and that import alone sends OpenVINO's telemetry: off, as the
# commands do it (pspnet_deploy.engine.openvino.quiet_openvino_telemetry)
sys.modules.setdefault("openvino_telemetry", None)

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "data" / "camvid"

TINY_CLASSES = ["background", "road", "car", "boat"]
TINY_PALETTE = [[0, 0, 0], [128, 64, 128], [0, 0, 142], [0, 128, 192]]
TINY_SIZE = (64, 96)  # feature map 8x12: bins 3 and 6 do not divide it


def make_tiny_model(num_classes: int = 4, bins=(1, 2, 3, 6), seed: int = 0, head_channels: int = 32):
    """ResNet-18 PSPNet with non-trivial BN statistics (a few train-mode passes on random data)."""
    from pspnet_deploy.model import PSPNet

    torch.manual_seed(seed)
    m = PSPNet(num_classes, "resnet18", output_stride=8, bins=bins, head_channels=head_channels, aux_channels=32)
    for mod in m.modules():  # non-zero residual branches, so every layer matters numerically
        if isinstance(mod, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(mod.weight, 0.5, 1.5)
            torch.nn.init.uniform_(mod.bias, -0.1, 0.1)
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(2, 3, *TINY_SIZE))
    return m.eval()


def tiny_meta(input_size=TINY_SIZE) -> dict:
    from pspnet_deploy.data import Preprocess

    return {"classes": list(TINY_CLASSES), "palette": [list(c) for c in TINY_PALETTE], "ignore_index": 255,
            "preprocess": Preprocess(input_size=tuple(input_size)).to_dict(),
            "dataset": {"name": "tiny", "path": "none"}}


def all_ignore_dataset(root: Path, count: int, classes: int, size: int = 64) -> Path:
    """A dataset folder (images/, masks/, classes.txt) whose masks are the ignore index 255 everywhere:
    random pixels, nothing labelled (the loss is 0/0)."""
    import cv2

    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    gen = np.random.default_rng(0)
    for i in range(count):
        cv2.imwrite(str(root / "images" / f"{i}.png"), gen.integers(0, 255, (size, size, 3), dtype=np.uint8))
        cv2.imwrite(str(root / "masks" / f"{i}.png"), np.full((size, size), 255, np.uint8))
    (root / "classes.txt").write_text("".join(f"c{i}\n" for i in range(classes)))
    return root


def synthetic_meta() -> dict:
    """:func:`tiny_meta` with the classes and palette of the ``synthetic`` dataset (evaluable on it)."""
    from pspnet_deploy.data.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE

    meta = tiny_meta()
    meta.update(classes=list(SYNTHETIC_CLASSES), palette=[list(c) for c in SYNTHETIC_PALETTE])
    return meta


@pytest.fixture(scope="session")
def synthetic_checkpoint(tmp_path_factory) -> Path:
    """The tiny PSPNet saved with :func:`synthetic_meta` (untrained; read-only for the tests)."""
    from pspnet_deploy.checkpoint import save_checkpoint
    from pspnet_deploy.data.synthetic import SYNTHETIC_CLASSES

    path = tmp_path_factory.mktemp("synckpt") / "syn.pt"
    save_checkpoint(path, make_tiny_model(num_classes=len(SYNTHETIC_CLASSES)), synthetic_meta())
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from pspnet_deploy.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, make_tiny_model(), tiny_meta())
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def camvid_available() -> bool:
    return (CAMVID / "val").is_dir()


needs_camvid = pytest.mark.skipif(not camvid_available(), reason="../shared/data/camvid not present")


# ---------------------------------------------------------------------------------- threads and the CLI

THREADS = int(os.environ.get("PSPNET_TEST_THREADS", "1"))
CLI_ENV = {"PSPNET_TEST_THREADS": str(THREADS), "PSPNET_ORT_THREADS": str(THREADS), "OMP_NUM_THREADS": str(THREADS)}


def run_cli(module: str, *args, cwd=ROOT, timeout: int = 300, launcher: list | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m <module> ARGS`` as a real subprocess with this checkout first on the path and
    the test thread count; ``launcher`` replaces ``python`` (e.g. torchrun)."""
    full_env = dict(os.environ, **CLI_ENV, **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return subprocess.run([*(launcher or [sys.executable]), "-m", module, *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------------- model files

@pytest.fixture(scope="session")
def onnx_factory(tmp_path_factory, tiny_checkpoint):
    """``make(batch=1, dynamic_batch=None, output_kind="logits") -> Path``: the tiny checkpoint
    exported by the project's exporter (no parity run), cached for the session."""
    from pspnet_deploy.export import export_onnx

    cache: dict[tuple, Path] = {}

    def make(batch: int = 1, dynamic_batch: tuple | None = None, output_kind: str = "logits") -> Path:
        key = (batch, dynamic_batch, output_kind)
        if key not in cache or not cache[key].is_file():
            dyn = "x".join(map(str, dynamic_batch)) if dynamic_batch else "no"
            out = tmp_path_factory.mktemp("onnx") / f"tiny_b{batch}_d{dyn}_{output_kind}.fp32.onnx"
            export_onnx(str(tiny_checkpoint), str(out), input_size=TINY_SIZE, batch=batch, dynamic_batch=dynamic_batch,
                        output_kind=output_kind, verify=False, progress=False, threads=THREADS)
            cache[key] = out
        return cache[key]

    return make


@pytest.fixture(scope="session")
def onnx_b1(onnx_factory) -> Path:
    """The tiny model, fixed batch 1, logits."""
    return onnx_factory()


@pytest.fixture(scope="session")
def onnx_dyn(onnx_factory) -> Path:
    """The tiny model with a dynamic batch (export range 1/2/4), logits."""
    return onnx_factory(dynamic_batch=(1, 2, 4))


#: what pspnet_deploy.engine.environment() says on a machine with TensorRT 10.3 and an H100
ENV_H100 = {"tensorrt": "10.3.0", "tensorrt_error": None, "cuda_error": None, "device_index": 0, "gpu_error": None,
            "gpu": {"index": 0, "name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "driver": "12.4"}}


def trt_env(**changes) -> dict:
    """ENV_H100 with ``changes`` (``gpu=`` updates the GPU's fields)."""
    env = json.loads(json.dumps(ENV_H100))
    gpu = changes.pop("gpu", None)
    env.update(changes)
    if gpu:
        env["gpu"].update(gpu)
    return env


@pytest.fixture(scope="session")
def fake_engine():
    """``make(folder, onnx, args=(), env=None, payload=..., name=...) -> Path``: an engine-shaped
    file with the sidecar a build writes (the bytes are not a real plan): plan, options and the
    recorded command all come from the real ``pspnet-build-engine`` parser given ``args``."""
    import hashlib

    from pspnet_deploy.cli.build_engine import build_parser, command_line, options_from_args
    from pspnet_deploy.engine import make_sidecar, plan_build
    from pspnet_deploy.utils import atomic_write_json, sha256_file

    def make(folder: Path, onnx: Path, args=(), env: dict | None = None, payload: bytes = b"plan" * 1000,
             name: str = "tiny.fp32.engine") -> Path:
        eng = folder / name
        parser = build_parser()
        a = parser.parse_args([str(onnx), "--engine", str(eng), *map(str, args)])
        opts = options_from_args(a)
        plan = plan_build(onnx, opts, eng)
        io = {"inputs": [{"name": plan.input_name, "shape": [1, 3, *TINY_SIZE], "dtype": "float32"}],
              "outputs": [{"name": "logits", "shape": [1, 4, *TINY_SIZE], "dtype": "float32"}], "profile": None}
        eng.write_bytes(payload)
        sc = make_sidecar(plan, opts, env or ENV_H100, io, hashlib.sha256(payload).hexdigest(), len(payload), 12.5,
                          sha256_file(onnx), command=command_line(a, plan.engine_path, parser, plan))
        atomic_write_json(plan.sidecar_path, sc)
        return eng

    return make


@pytest.fixture(autouse=True)
def _no_file_plan_left():
    """A command's file plan (pspnet_deploy.runfiles) guards writes until the command ends; tests
    that call a CLI's ``main`` in-process end it here, so the next test's fixtures may write freely."""
    yield
    from pspnet_deploy.runfiles import reset

    reset()
