"""Training on the synthetic scenes: it learns, resumes exactly, runs as 2 processes under
torchrun (gloo, CPU), and bad inputs give one clear line through the real CLI."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import THREADS, run_cli

TINY = ["--backbone", "resnet18", "--head-channels", "32", "--crop", "64", "64", "--threads", str(THREADS),
        "--workers", "0", "--no-progress"]


def cli(args: list[str], timeout: int = 300, torchrun: bool = False) -> subprocess.CompletedProcess:
    """Run pspnet-train as a real subprocess (optionally under torchrun) from the repository root."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] if torchrun \
        else None
    return run_cli("pspnet_deploy.cli.train", *args, timeout=timeout, launcher=launcher)


def position_prior_miou() -> float:
    """mIoU on synthetic val of the best image-blind predictor we can build: each pixel gets the
    class most frequent at that position in the training masks (sky on top, surface below)."""
    from pspnet_deploy.data.synthetic import synthetic
    from pspnet_deploy.metrics import ConfusionMatrix

    train, val = synthetic("train"), synthetic("val")
    h, w = train.default_input_size
    counts = np.zeros((train.info.num_classes, h, w), np.int64)
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    for i in range(len(train)):
        np.add.at(counts, (train.load_mask(i), rows, cols), 1)
    prior = counts.argmax(0)
    cm = ConfusionMatrix(val.info.num_classes)
    for i in range(len(val)):
        cm.update(prior, val.load_mask(i))
    return cm.miou()


@pytest.mark.slow
def test_synthetic_training_learns(tmp_path):
    """24 SGD steps of a tiny PSPNet: the loss falls below chance (ln 5 for 5 classes) and from the
    first epoch to the last, and val mIoU beats the image-blind position prior (about 0.27; a
    constant prediction scores at most 1/5) by a margin. The best.pt checkpoint reproduces the
    validation score the trainer recorded."""
    from pspnet_deploy.evaluate import evaluate
    from pspnet_deploy.data.synthetic import synthetic
    from pspnet_deploy.runners.torch_runner import TorchRunner

    out = tmp_path / "run"
    r = cli(["--data", "synthetic", "--out", str(out), *TINY, "--batch-size", "8", "--epochs", "2",
             "--max-steps-per-epoch", "12", "--lr", "0.02", "--head-lr-mult", "1", "--scale", "0.75", "1.25",
             "--val-every", "2"])
    assert r.returncode == 0, r.stderr[-3000:]
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == [12, 24] and "val_miou" not in history[0]
    losses = [h["loss"] for h in history]
    assert losses[-1] < math.log(5) and losses[-1] < losses[0] - 0.05, losses
    miou = history[-1]["val_miou"]
    chance = position_prior_miou()
    assert 0.2 < chance < 0.35
    assert miou > chance + 0.05, (miou, chance, history[-1]["val_per_class_iou"])

    runner = TorchRunner.from_checkpoint(str(out / "best.pt"))
    assert runner.classes == synthetic("val").info.classes and runner.input_size == (96, 128)
    res = evaluate(runner, synthetic("val"), progress=False)
    assert abs(res["miou"] - miou) < 1e-3


def test_resume_continues_exactly(tmp_path):
    """2 epochs straight == 1 epoch + resume for 1 more: bit-identical weights, optimizer state and
    losses. The poly power is 0 (constant lr) because a 1-epoch run schedules its lr over 1 epoch;
    the schedule itself is a function of the restored step count. CutMix is on: its boxes depend on
    the step, not on a generator state that a resume would have to restore."""
    from pspnet_deploy.checkpoint import load_checkpoint
    from pspnet_deploy.train import TrainConfig, train

    def cfg(out: Path, epochs: int, resume: str | None = None, workers: int = 0) -> TrainConfig:
        return TrainConfig(data="synthetic", out=str(out), backbone="resnet18", head_channels=32, epochs=epochs,
                           batch_size=4, crop=[64, 64], scale=[0.75, 1.25], power=0.0, lr=0.02,
                           max_steps_per_epoch=2, val_split=None, workers=workers, threads=int(THREADS), progress=False,
                           resume=resume, cutmix=0.5)

    straight = train(cfg(tmp_path / "a", 2))
    train(cfg(tmp_path / "b", 1, workers=1))  # augmentation is seeded per sample: worker count must not matter
    first = load_checkpoint(tmp_path / "b" / "last.pt")
    assert first["train_state"]["epoch"] == 1 and first["train_state"]["global_step"] == 2
    resumed = train(cfg(tmp_path / "b", 2, resume=str(tmp_path / "b" / "last.pt"), workers=1))
    assert resumed["steps"] == straight["steps"] == 4
    amp = first["meta"]["autocast_choice"]  # --amp auto on the CPU: measured here, recorded in the checkpoint
    assert amp["mode"] == "auto" and amp["decided_by"] == "measurement" and amp["measured"]["fp32_ms"] > 0
    assert amp["dtype"] == ("bfloat16" if amp["use_bf16"] else None) == first["meta"]["autocast"]
    assert resumed["autocast_choice"]["measured"] == amp["measured"]  # the resumed run decides from the record
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in straight["history"]]
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    moms_a = [s["momentum_buffer"] for s in a["train_state"]["optimizer"]["state"].values()]
    moms_b = [s["momentum_buffer"] for s in b["train_state"]["optimizer"]["state"].values()]
    assert len(moms_a) == len(moms_b) > 0 and all(torch.equal(x, y) for x, y in zip(moms_a, moms_b))
    # and the weights did move: resuming is not a no-op
    assert not torch.equal(first["state_dict"]["head.4.weight"], b["state_dict"]["head.4.weight"])


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path):
    from pspnet_deploy.checkpoint import load_checkpoint

    out = tmp_path / "ddp"
    r = cli(["--data", "synthetic", "--out", str(out), *TINY, "--batch-size", "2", "--epochs", "1",
             "--max-steps-per-epoch", "2", "--val-split", "", "--device", "cpu"], torchrun=True)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    ck = load_checkpoint(out / "last.pt")
    assert ck["train_state"]["global_step"] == 2 and ck["meta"]["classes"][0] == "background"
    assert (out / "best.pt").is_file() and (out / "history.json").is_file()
    assert r.stdout.count("epoch 1/1") == 1  # only rank 0 reports and writes


def _one_line_failure(r: subprocess.CompletedProcess, *needles) -> str:
    assert r.returncode != 0
    err = r.stderr.strip()
    assert "Traceback" not in r.stderr and len(err.splitlines()) == 1, r.stderr[-3000:]
    assert err.startswith("pspnet-train: error: "), err
    for n in needles:
        assert str(n) in err, (n, err)
    return err


def test_cli_missing_dataset_folder(tmp_path):
    r = cli(["--data", str(tmp_path / "no_such_data"), "--out", str(tmp_path / "o"), *TINY])
    _one_line_failure(r, tmp_path / "no_such_data", "not found")
    assert not (tmp_path / "o").exists()


def test_cli_unwritable_output_folder(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    out = tmp_path / "a_file" / "run"  # cannot be created, whoever runs the test (root included)
    r = cli(["--data", "synthetic", "--out", str(out), *TINY])
    _one_line_failure(r, out, "not a folder")
    if os.geteuid() != 0:  # root writes through permissions, so this half needs a normal user
        ro = tmp_path / "readonly"
        ro.mkdir(mode=0o500)
        r = cli(["--data", "synthetic", "--out", str(ro), *TINY])
        _one_line_failure(r, ro, "cannot write here")


def test_cli_corrupt_resume_checkpoint(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"PK\x03\x04 truncated, not a checkpoint" * 10)
    r = cli(["--data", "synthetic", "--out", str(tmp_path / "o"), *TINY, "--resume", str(bad)])
    _one_line_failure(r, bad, "cannot read checkpoint")
