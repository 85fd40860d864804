"""The pipelined predictor: outputs in input order, the same labels as one image at a time, and a
killed run (a real subprocess, SIGKILL) resumed with --resume to the same outputs."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from conftest import ROOT, TINY_SIZE

THREADS = 2


def _folder(path, n, size=(240, 320)):
    from pspnet_deploy.data.samples import generated_images

    path.mkdir()
    for i, im in enumerate(generated_images(size[0], size[1], n, 3)):
        cv2.imwrite(str(path / f"f{i:03d}.png"), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    return path


def _labels(folder):
    return {p.relative_to(folder).as_posix(): cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
            for p in sorted(folder.rglob("*.png")) if not p.name.startswith(".")}  # not a killed writer's temp


def test_order_and_same_labels_as_one_at_a_time(onnx_b1, tmp_path):
    from pspnet_deploy.predict import Predictor
    from pspnet_deploy.runners import load_runner

    src = _folder(tmp_path / "imgs", 7)
    with load_runner(onnx_b1, threads=THREADS) as r:
        res = Predictor(r, tmp_path / "out", queue_depth=2).run([src])
        names = [f"imgs/f{i:03d}.png" for i in range(7)]
        assert res.files == [str(tmp_path / "out" / k / n) for n in names for k in ("labels", "color")]
        p = Predictor(r, tmp_path / "ref")
        from pspnet_deploy.predict import Item

        for it in sorted(src.iterdir()):  # the sequential path, image by image
            p.image(Item(it, f"imgs/{it.stem}", "image"))
    a, b = _labels(tmp_path / "out"), _labels(tmp_path / "ref")
    assert list(a) == list(b) and len(a) == 14 and all(np.array_equal(a[k], b[k]) for k in a)


def test_error_in_reader_is_raised_and_stops(onnx_b1, tmp_path):
    from pspnet_deploy.errors import UserError
    from pspnet_deploy.predict import Predictor
    from pspnet_deploy.runners import load_runner

    src = _folder(tmp_path / "imgs", 3)
    (src / "f001.png").write_bytes(b"not a png")
    with load_runner(onnx_b1, threads=THREADS) as r, pytest.raises(UserError):
        Predictor(r, tmp_path / "out").run([src])
    assert not (tmp_path / "out" / "labels" / "imgs" / "f002.png").exists()


def test_killed_run_resumes(onnx_b1, tmp_path):
    src = _folder(tmp_path / "imgs", 40, size=(480, 640))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "pspnet_deploy.cli.predict", str(onnx_b1), str(src), "--output", str(out),
           "--threads", str(THREADS), "--resume"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if len(list((out / "color" / "imgs").glob("*.png"))) >= 3 if (out / "color" / "imgs").is_dir() else False:
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    done = len(list((out / "color" / "imgs").glob("*.png")))
    assert 3 <= done < 40
    assert all(cv2.imread(str(p)) is not None for p in (out / "color" / "imgs").glob("*.png"))  # whole files only
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "skipped" in r.stdout
    ref = tmp_path / "ref"
    r = subprocess.run(cmd[:6] + [str(ref), "--threads", str(THREADS)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    a, b = _labels(out), _labels(ref)
    assert list(a) == list(b) and len(a) == 80
    assert all(np.array_equal(a[k], b[k]) for k in a)
