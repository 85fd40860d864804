"""Training-recipe pieces of issue 13: split expressions (hold a sequence out for selection),
colour jitter, softened class weights, CutMix."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import CAMVID, needs_camvid
from pspnet_deploy.data import Preprocess, open_dataset
from pspnet_deploy.data.registry import parse_split
from pspnet_deploy.data.transforms import TrainTransform, jitter_colors
from pspnet_deploy.errors import UserError


def _camvid_with_sequences(root: Path, rng) -> Path:
    """A CamVid layout whose train split holds two 'sequences' (file-name prefixes)."""
    names = {"train": ["0001TP_0001", "0001TP_0002", "0006R0_f0001", "0006R0_f0002", "0006R0_f0003"],
             "val": ["0016E5_0001"]}
    for split, stems in names.items():
        for d in (root / split, root / f"{split}annot"):
            d.mkdir(parents=True)
        for i, stem in enumerate(stems):
            cv2.imwrite(str(root / split / f"{stem}.png"), rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
            mask = np.zeros((40, 48), np.uint8)  # class i on the top 8(i+1) rows, class 0 below
            mask[:8 * (i + 1)] = i % 11
            cv2.imwrite(str(root / f"{split}annot" / f"{stem}.png"), mask)
    return root


def _stems(ds) -> list[str]:
    return [p.stem for p in ds.image_paths]


def test_split_expressions_hold_a_sequence_out(tmp_path, rng):
    root = _camvid_with_sequences(tmp_path / "camvid", rng)
    train = _stems(open_dataset(root, "train!0006R0"))
    held = _stems(open_dataset(root, "train@0006R0"))
    assert train == ["0001TP_0001", "0001TP_0002"]
    assert held == ["0006R0_f0001", "0006R0_f0002", "0006R0_f0003"]
    assert not set(train) & set(held)
    both = open_dataset(root, "train!0006R0+val")
    assert _stems(both) == train + ["0016E5_0001"]
    # the joined dataset still maps void and reads masks of the right split
    assert both.load_mask(2).shape == (40, 48)
    assert _stems(open_dataset(root, "train@0001TP,0006R0")) == _stems(open_dataset(root, "train"))


@pytest.mark.parametrize("split, needle", [
    ("train@9999", "no images starting with 9999"),
    ("train!0001TP,0006R0", "no images left"),
    ("train@", "expected NAME"),
    ("tr ain", "expected NAME"),
    ("test", "not found"),
])
def test_bad_split_expressions_are_one_line(tmp_path, rng, split, needle):
    root = _camvid_with_sequences(tmp_path / "camvid", rng)
    with pytest.raises(UserError) as e:
        open_dataset(root, split)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_split_expressions_refused_for_generated_data():
    with pytest.raises(UserError, match="need a dataset of image files"):
        open_dataset("synthetic", "train+val")


def test_parse_split():
    assert parse_split("train") == [("train", "", ())]
    assert parse_split("train!0006R0+val") == [("train", "!", ("0006R0",)), ("val", "", ())]
    assert parse_split("train@a,b") == [("train", "@", ("a", "b"))]


@needs_camvid
def test_camvid_sequences_split_cleanly():
    held = open_dataset(CAMVID, "train@0006R0")
    rest = open_dataset(CAMVID, "train!0006R0")
    assert len(held) + len(rest) == len(open_dataset(CAMVID, "train")) and len(held) > 50
    assert all(p.name.startswith("0006R0") for p in held.image_paths)
    assert not any(p.name.startswith("0006R0") for p in rest.image_paths)


def test_jitter_changes_light_not_geometry(rng):
    img = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    out = jitter_colors(img, np.random.default_rng(3), 0.4)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - img).mean() > 1.0  # it does something
    again = jitter_colors(img, np.random.default_rng(3), 0.4)
    np.testing.assert_array_equal(out, again)  # seeded
    flat = np.full((8, 8, 3), 100, np.uint8)  # a grey image stays grey (no hue shift)
    g = jitter_colors(flat, np.random.default_rng(5), 0.4)
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()


def test_jitter_off_keeps_the_augmentation_stream(rng):
    """color_jitter=0 draws no random numbers, so runs and resumes made before it stay identical."""
    img = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    mask = rng.integers(0, 11, (60, 80), dtype=np.uint8)
    pre = Preprocess(input_size=(48, 48))
    a = TrainTransform((48, 48), pre, seed=7)
    b = TrainTransform((48, 48), pre, seed=7, color_jitter=0.0)
    xa, ya = a(img, mask)
    xb, yb = b(img, mask)
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
    c = TrainTransform((48, 48), pre, seed=7, color_jitter=0.3)
    xc, yc = c(img, mask)
    assert not np.array_equal(xa, xc)
    with pytest.raises(UserError, match="--color-jitter"):
        TrainTransform((48, 48), pre, color_jitter=1.5)


def test_class_weight_modes(tmp_path, rng):
    import torch

    from pspnet_deploy.train import class_weights

    root = _camvid_with_sequences(tmp_path / "camvid", rng)
    ds = open_dataset(root, "train")  # ids 0..4 with unequal areas
    assert class_weights(ds, "none") is None
    mf = class_weights(ds, "median-freq")
    sq = class_weights(ds, "sqrt-median-freq")
    assert mf.shape == sq.shape == (11,)
    assert (mf[5:] == 0).all() and (mf[:5] > 0).all()  # absent classes get no weight
    assert float(mf[:5].max() / mf[:5].min()) > 2  # unequal frequencies, unequal weights
    assert float(mf[:5].median()) == pytest.approx(1.0)  # median frequency / freq: the median class weighs 1
    torch.testing.assert_close(sq, mf.sqrt())
    with pytest.raises(UserError, match="sqrt-median-freq"):
        class_weights(ds, "inverse")


def test_every_class_weight_mode_passes_the_config_check_and_the_cli():
    """The modes train.class_weights computes are the ones TrainConfig and the CLI accept (one list,
    train_config.CLASS_WEIGHTS): sqrt-median-freq was once refused before training started."""
    from pspnet_deploy.cli.train import build_parser
    from pspnet_deploy.train_config import CLASS_WEIGHTS, TrainConfig

    assert "sqrt-median-freq" in CLASS_WEIGHTS
    for mode in CLASS_WEIGHTS:
        TrainConfig(data="synthetic", class_weights=mode).validate()
        assert build_parser().parse_args(["--class-weights", mode]).class_weights == mode
    with pytest.raises(UserError, match="--class-weights must be one of"):
        TrainConfig(data="synthetic", class_weights="inverse").validate()


def test_cutmix_moves_labels_with_their_pixels():
    import torch

    from pspnet_deploy.train import cutmix

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 40, 48, generator=g)
    y = torch.randint(0, 11, (3, 40, 48), generator=g)
    x0, y0 = x.clone(), y.clone()
    assert cutmix(x, y, np.random.default_rng(0), 0.0) == (x, y)  # off: the same tensors, nothing drawn
    xm, ym = cutmix(x, y, np.random.default_rng(1), 1.0)
    assert torch.equal(x, x0) and torch.equal(y, y0)  # inputs untouched
    prev = torch.arange(3).roll(1)
    from_prev = (xm != x).any(1)  # pixels that now come from the previous image of the batch
    assert torch.equal(xm[from_prev.unsqueeze(1).expand_as(xm)], x[prev][from_prev.unsqueeze(1).expand_as(xm)])
    assert torch.equal(ym[from_prev], y[prev][from_prev]) and torch.equal(ym[~from_prev], y[~from_prev])
    rows, cols = from_prev[0].any(1).nonzero(), from_prev[0].any(0).nonzero()
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert 0.24 <= box / (40 * 48) <= 0.51 and int(from_prev[0].sum()) == int(box)  # one box, 25-50 % of the crop
    assert torch.equal(from_prev[0], from_prev[1]) and torch.equal(from_prev[0], from_prev[2])  # the same box in each
    again = cutmix(x, y, np.random.default_rng(1), 1.0)  # resumable: the same generator state, the same box
    assert torch.equal(again[0], xm) and torch.equal(again[1], ym)


def test_cutmix_option_is_checked_before_training():
    from pspnet_deploy.cli.train import build_parser
    from pspnet_deploy.train_config import TrainConfig

    assert build_parser().parse_args(["--cutmix", "0.5"]).cutmix == 0.5
    TrainConfig(data="synthetic", cutmix=1.0).validate()
    with pytest.raises(UserError, match="--cutmix must be <= 1"):
        TrainConfig(data="synthetic", cutmix=1.5).validate()


def _torchvision_resnet(path: Path, backbone: str = "resnet18", seed: int = 3) -> dict:
    """A state dict in torchvision's ResNet layout (conv1, bn1, layerN, fc), from our backbone."""
    import torch

    from pspnet_deploy.model import PSPNet

    torch.manual_seed(seed)
    m = PSPNet(num_classes=5, backbone=backbone, head_channels=32)
    state = {}
    for k, v in m.state_dict().items():
        if k.startswith("backbone."):
            k = k[len("backbone."):].replace("stem.0.", "conv1.").replace("stem.1.", "bn1.")
            state[k] = v.clone()
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    return state


def test_backbone_weights_start_the_backbone(tmp_path):
    """pspnet-train --backbone-weights: a torchvision-layout ResNet file becomes the backbone (the
    classifier dropped, the PSPNet head new) and the checkpoint records which file it was."""
    import torch

    from pspnet_deploy.checkpoint import load_checkpoint
    from pspnet_deploy.train import TrainConfig, train
    from pspnet_deploy.utils import sha256_file

    src = _torchvision_resnet(tmp_path / "resnet18.pth")
    cfg = TrainConfig(data="synthetic", out=str(tmp_path / "run"), backbone="resnet18", head_channels=32, epochs=1,
                      batch_size=2, crop=[96, 96], lr=1e-9, max_steps_per_epoch=1, val_split=None, workers=0,
                      threads=1, progress=False, backbone_weights=str(tmp_path / "resnet18.pth"))
    train(cfg)
    ck = load_checkpoint(tmp_path / "run" / "last.pt")
    sd = ck["state_dict"]
    for theirs, ours in [("conv1.weight", "backbone.stem.0.weight"), ("layer4.1.conv2.weight", "backbone.layer4.1.conv2.weight"),
                         ("layer2.0.downsample.0.weight", "backbone.layer2.0.downsample.0.weight")]:
        assert torch.allclose(sd[ours].float(), src[theirs], atol=1e-5), ours
    fresh = _torchvision_resnet(tmp_path / "other.pth", seed=4)  # a different file gives different weights
    assert not torch.allclose(fresh["conv1.weight"], src["conv1.weight"])
    info = ck["meta"]["backbone_weights"]
    assert info["sha256"] == sha256_file(tmp_path / "resnet18.pth") and info["dropped"] == 2


@pytest.mark.parametrize("case, needle", [
    ("with_init", "--backbone-weights starts a new model from ImageNet weights; it cannot be combined with --init"),
    ("missing", "--backbone-weights file not found"),
    ("not_resnet", "not a torchvision/timm ResNet state dict"),
    ("other_depth", "weights do not fit the model"),
])
def test_backbone_weights_bad_input_is_one_line(tmp_path, case, needle):
    import torch

    from conftest import run_cli

    path = tmp_path / "w.pth"
    extra = []
    if case == "with_init":
        _torchvision_resnet(path)
        extra = ["--init", str(path)]
    elif case == "not_resnet":
        torch.save({"encoder.weight": torch.zeros(3)}, path)
    elif case == "other_depth":
        _torchvision_resnet(path, backbone="resnet34")
    out = tmp_path / "run"
    r = run_cli("pspnet_deploy.cli.train", "--data", "synthetic", "--out", out, "--epochs", "1", "--batch-size", "2",
                "--crop", "96", "96", "--max-steps-per-epoch", "1", "--val-split", "", "--no-progress",
                "--backbone-weights", path, *extra)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pspnet-train: error: ") and needle in lines[0], r.stderr
    assert not out.exists()
