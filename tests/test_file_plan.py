"""The run's file plan (pspnet_deploy.runfiles): no command writes onto one of its own inputs.

Each row runs the real command in a subprocess with an output that *is* an input: the same path,
a symlink to it, a hard link to it, a path through ``..``, a file of the dataset folder, two outputs
on one path, or a folder the run replaces that holds the input. Every row must end in exit 2 with
one line, and the input's bytes (and the folder's listing) must be unchanged.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from conftest import run_cli


def _digest(d: Path) -> dict:
    return {str(p.relative_to(d)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink()
                                    else os.readlink(p) if p.is_symlink() else "dir")
            for p in sorted(d.rglob("*"))}


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_checkpoint, onnx_b1) -> dict:
    import cv2
    import numpy as np

    d = tmp_path_factory.mktemp("plan")
    ck = d / "model.pt"
    ck.write_bytes(Path(tiny_checkpoint).read_bytes())
    onnx = d / "model.fp32.onnx"
    onnx.write_bytes(Path(onnx_b1).read_bytes())
    os.symlink(onnx, d / "link.onnx")
    os.link(onnx, d / "hard.onnx")
    os.symlink(onnx, d / "w.bin")  # an IR named w.xml would write its weights through this link
    os.link(ck, d / "hard.pt")
    (d / "sub").mkdir()
    imgs = d / "photos"
    imgs.mkdir()
    cv2.imwrite(str(imgs / "a.png"), np.full((64, 96, 3), 90, np.uint8))
    # a folder dataset (images/, masks/, classes.txt)
    ds = d / "ds"
    (ds / "images").mkdir(parents=True)
    (ds / "masks").mkdir()
    for i in range(2):
        cv2.imwrite(str(ds / "images" / f"{i}.png"), np.full((64, 96, 3), 40 * i, np.uint8))
        cv2.imwrite(str(ds / "masks" / f"{i}.png"), np.zeros((64, 96), np.uint8))
    (ds / "classes.txt").write_text("background\nroad\ncar\nboat\n")
    os.link(ds / "images" / "0.png", d / "data_link.png")
    # a Triton repository whose version folder holds the model it would be rebuilt from
    vdir = d / "repo" / "m" / "1"
    vdir.mkdir(parents=True)
    (vdir / "model.onnx").write_bytes(onnx.read_bytes())
    return {"d": d, "ck": ck, "onnx": onnx, "ds": ds, "imgs": imgs, "vdir": vdir}


T = ["--threads", "1"]
# (id, module, args (format keys: d ck onnx ds imgs vdir), words the one error line must contain)
ROWS = [
    ("eval-json-is-model", "eval", "{onnx} --data synthetic --json {onnx}", "is the model"),
    ("eval-json-symlink-to-model", "eval", "{d}/link.onnx --data synthetic --json {onnx}", "through a link"),
    ("eval-json-hard-link-to-model", "eval", "{onnx} --data synthetic --json {d}/hard.onnx", "hard link"),
    ("eval-json-dotdot", "eval", "{onnx} --data synthetic --json {d}/sub/../model.fp32.onnx", "is the model"),
    ("eval-json-dataset-file", "eval", "{onnx} --data {ds} --split all --json {ds}/classes.txt", "a file of the --data"),
    ("eval-json-hard-link-to-dataset-file", "eval", "{onnx} --data {ds} --json {d}/data_link.png", "hard link to"),
    ("export-json-is-checkpoint", "export", "{ck} --onnx {d}/o/m.onnx --json {ck}", "is the checkpoint"),
    ("export-json-hard-link-checkpoint", "export", "{ck} --onnx {d}/o/m.onnx --json {d}/hard.pt", "hard link"),
    ("export-json-is-onnx-output", "export", "{ck} --onnx {d}/o/m.onnx --json {d}/o/m.onnx", "given as both"),
    ("calibrate-output-is-input", "calibrate", "{onnx} --data synthetic -o {d}/hard.onnx", "hard link"),
    ("calibrate-json-is-table", "calibrate", "{onnx} --calib-table {d}/t.json -o {d}/q.int8.onnx --json {d}/t.json",
     "is the --calib-table"),
    ("qat-fp32-checkpoint-is-input", "qat", "{ck} --data synthetic -o {d}/q.onnx --fp32-checkpoint {ck}",
     "is the checkpoint"),
    ("qat-json-is-output", "qat", "{ck} --data synthetic -o {d}/q.onnx --json {d}/q.onnx", "given as both"),
    ("triton-version-folder-holds-model", "triton", "{vdir}/model.onnx --repo {d}/repo --name m --force",
     "holds the model"),
    ("train-init-is-out-best", "train", "--init {d}/run/best.pt --out {d}/run --data synthetic", "is the --init"),
    ("convert-output-is-source", "convert", "{ck} --output {d}/hard.pt", "hard link to the source checkpoint"),
    ("build-engine-timing-cache-is-onnx", "build_engine", "{onnx} --timing-cache {onnx} --dry-run", "is the ONNX"),
    ("build-engine-ir-weights-link-to-onnx", "build_engine", "{onnx} --backend openvino --engine {d}/w.xml --dry-run",
     "is the ONNX"),
]


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_output_that_is_an_input_is_refused(files, row, tmp_path):
    name, module, args, needle = row
    d = files["d"]
    if name == "train-init-is-out-best":
        (d / "run").mkdir(exist_ok=True)
        if not (d / "run" / "best.pt").exists():
            (d / "run" / "best.pt").write_bytes(files["ck"].read_bytes())
    if name == "calibrate-json-is-table":
        (d / "t.json").write_text('{"format": "pspnet-deploy/calibration-table", "tensors": {}}')
    before = _digest(d)
    argv = [a.format(**files) for a in args.split()] + (T if module not in ("triton", "build_engine", "convert") else [])
    r = run_cli(f"pspnet_deploy.cli.{module}", *argv, cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert needle in lines[0], lines[0]
    assert _digest(d) == before  # every input byte unchanged, nothing written
    assert not list(tmp_path.iterdir())


def test_guard_refuses_a_write_onto_an_input_even_when_undeclared(tmp_path):
    """The last line of defence: with a plan checked, a writer that was never declared still cannot
    replace an input (atomic_path asks the plan before it renames)."""
    from pspnet_deploy.errors import UserError
    from pspnet_deploy.runfiles import RunFiles, reset
    from pspnet_deploy.utils import atomic_write_text

    src = tmp_path / "in.onnx"
    src.write_bytes(b"model")
    os.link(src, tmp_path / "alias.onnx")
    RunFiles().read(src, "model").write(tmp_path / "out.json", "report").check()
    try:
        for target in (src, tmp_path / "alias.onnx", tmp_path / "x" / ".." / "in.onnx"):
            with pytest.raises(UserError, match="refusing to overwrite"):
                atomic_write_text(target, "oops")
        atomic_write_text(tmp_path / "out.json", "{}")  # a declared output is fine
    finally:
        reset()
    assert src.read_bytes() == b"model" and (tmp_path / "out.json").read_text() == "{}"
    atomic_write_text(src, "now free")  # no plan active: ordinary writes
    assert src.read_text() == "now free"


def test_resume_from_the_runs_own_checkpoint_is_allowed(tmp_path):
    """--resume OUT/last.pt continues the run that wrote it: not refused as "output is an input"."""
    from pspnet_deploy.cli.train import declare_files
    from pspnet_deploy.runfiles import reset
    from pspnet_deploy.train_config import TrainConfig

    out = tmp_path / "run"
    (out / ".checkpoints" / "g1").mkdir(parents=True)
    (out / ".checkpoints" / "g1" / "last.pt").write_bytes(b"x")
    os.symlink(".checkpoints/g1/last.pt", out / "last.pt")
    try:
        declare_files(TrainConfig(out=str(out), resume=str(out / "last.pt")))
    finally:
        reset()
