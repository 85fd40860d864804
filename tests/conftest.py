"""Shared fixtures: tiny real models and checkpoints (no downloads, seconds on 2 cores)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(int(os.environ.get("PSPNET_TEST_THREADS", "1")))

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
