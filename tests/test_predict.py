"""pspnet-predict: the files it writes, for images, folders and videos; bad inputs get one line."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import THREADS, TINY_PALETTE, run_cli


def read_png(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    return img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = array if array.ndim == 2 else cv2.cvtColor(array, cv2.COLOR_RGBA2BGRA if array.shape[2] == 4
                                                   else cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), arr)


@pytest.fixture(scope="module")
def onnx_model(onnx_b1):
    return onnx_b1


@pytest.fixture
def images(tmp_path, rng):
    """A folder with RGB, grayscale, RGBA and 16-bit images of odd sizes, one in a subfolder."""
    d = tmp_path / "shots"
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    rgb = cv2.resize(small, (120, 80), interpolation=cv2.INTER_LINEAR)
    write_png(d / "a_rgb.png", rgb)
    write_png(d / "b_gray.png", cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    write_png(d / "c_rgba.png", np.dstack([rgb[:50, :70], np.full((50, 70), 128, np.uint8)]))
    write_png(d / "sub" / "d_16bit.png", (rgb[:64, :96].astype(np.uint16) * 257))
    return d


def test_predict_writes_labels_colors_and_overlays(onnx_model, images, tmp_path):
    from pspnet_deploy.data.io import read_image
    from pspnet_deploy.predict import Predictor
    from pspnet_deploy.runners import load_runner
    from pspnet_deploy.sliding import make_predictor

    runner = load_runner(onnx_model, threads=THREADS)
    out = tmp_path / "out"
    res = Predictor(runner, out, overlay=True, alpha=0.4).run([images])
    assert res.images == 4 and res.videos == 0 and len(res.files) == 12
    names = ["shots/a_rgb", "shots/b_gray", "shots/c_rgba", "shots/sub/d_16bit"]
    pal = np.asarray(TINY_PALETTE, np.uint8)
    for name in names:
        src = images / (name.split("/", 1)[1] + ".png")
        img = read_image(src)
        labels = read_png(out / "labels" / f"{name}.png")
        color = read_png(out / "color" / f"{name}.png")
        over = read_png(out / "overlay" / f"{name}.png")
        assert labels.dtype == np.uint8 and labels.shape == img.shape[:2]
        assert labels.max() < 4
        assert np.array_equal(labels, make_predictor("whole")(runner, img))  # what the model says, at full size
        assert np.array_equal(color, pal[labels])
        expect = cv2.addWeighted(pal[labels], 0.4, img, 0.6, 0)
        assert np.abs(over.astype(int) - expect.astype(int)).max() <= 1
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == sorted(
        f"{kind}/{n}.png" for kind in ("labels", "color", "overlay") for n in names)
    assert not list(out.rglob(".*"))  # no temporary files left behind


def test_predict_cli_slide_mode_in_a_subprocess(onnx_model, images, tmp_path):
    out = tmp_path / "o"
    p = run_cli("pspnet_deploy.cli.predict", onnx_model, images / "a_rgb.png", "--output", out, "--mode", "slide",
                "--flip", timeout=120)
    assert p.returncode == 0, p.stderr
    assert "segmented 1 image" in p.stdout
    labels = read_png(out / "labels" / "a_rgb.png")
    assert labels.shape == (80, 120) and labels.max() < 4
    assert (out / "color" / "a_rgb.png").is_file() and not (out / "overlay").exists()


def test_predict_multi_scale_matches_the_predictor(onnx_model, images, tmp_path, capsys):
    """--scales (implies slide): the written labels are make_predictor's multi-scale argmax."""
    from pspnet_deploy.cli.common import run
    from pspnet_deploy.cli.predict import main
    from pspnet_deploy.runners import load_runner
    from pspnet_deploy.sliding import make_predictor

    out = tmp_path / "ms"
    assert run("pspnet-predict", main, [str(onnx_model), str(images / "a_rgb.png"), "--output", str(out),
                                        "--scales", "0.75", "1.25", "--threads", "1"]) == 0
    assert "(slide, scales 0.75 1.25)" in capsys.readouterr().out
    with load_runner(str(onnx_model), threads=1) as r:
        want = make_predictor("slide", scales=(0.75, 1.25))(r, read_png(images / "a_rgb.png")[..., :3])
    assert np.array_equal(read_png(out / "labels" / "a_rgb.png"), want)


def make_video(path: Path, rng, frames: int = 5, size=(96, 64), fourcc="mp4v") -> list[np.ndarray]:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, size)
    assert w.isOpened()
    out = []
    base = cv2.resize(rng.integers(0, 256, (4, 6, 3), dtype=np.uint8), size, interpolation=cv2.INTER_LINEAR)
    for i in range(frames):
        f = np.roll(base, 4 * i, axis=1)
        w.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
        out.append(f)
    w.release()
    return out


def test_predict_video_writes_colour_video_and_label_frames(onnx_model, tmp_path, rng):
    from pspnet_deploy.predict import Predictor
    from pspnet_deploy.runners import load_runner

    clip = tmp_path / "clip.mp4"
    make_video(clip, rng, frames=5)
    out = tmp_path / "out"
    res = Predictor(load_runner(onnx_model, threads=THREADS), out, overlay=True, video_frames=True, max_frames=4).run([clip])
    assert res.videos == 1 and res.frames == 4
    for kind in ("color", "overlay"):
        cap = cv2.VideoCapture(str(out / "video" / f"clip.{kind}.mp4"))
        assert cap.isOpened()
        n = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            assert frame.shape == (64, 96, 3)
            n += 1
        cap.release()
        assert n == 4
        assert abs(cv2.VideoCapture(str(out / "video" / f"clip.{kind}.mp4")).get(cv2.CAP_PROP_FPS) - 10.0) < 0.5
    frames = sorted((out / "labels" / "clip").glob("*.png"))
    assert [f.name for f in frames] == [f"{i:06d}.png" for i in range(4)]
    assert all(read_png(f).shape == (64, 96) and read_png(f).max() < 4 for f in frames)


def run_main(argv):
    from pspnet_deploy.cli.common import run
    from pspnet_deploy.cli.predict import main

    return run("pspnet-predict", main, argv)


def test_bad_inputs_give_one_line_and_nonzero_exit(onnx_model, tmp_path, capsys):
    bad_video = tmp_path / "broken.mp4"
    bad_video.write_bytes(os.urandom(2048))
    assert run_main([str(onnx_model), str(bad_video), "--output", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.mp4" in err[0] and "video" in err[0]
    assert not (tmp_path / "o1" / "video" / "broken.color.mp4").exists()

    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    assert run_main([str(onnx_model), str(notes), "--output", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown input type .txt" in err[0]

    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    assert run_main([str(onnx_model), str(corrupt), "--output", str(tmp_path / "o3")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot decode image" in err[0]

    assert run_main([str(onnx_model), str(tmp_path / "nope.png"), "--output", str(tmp_path / "o4")]) == 2
    assert "input not found" in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_main([str(onnx_model), str(empty), "--output", str(tmp_path / "o5")]) == 2
    assert "no images in this folder" in capsys.readouterr().err

    img = tmp_path / "x.png"
    write_png(img, np.zeros((64, 96, 3), np.uint8))
    assert run_main([str(onnx_model), str(img), "--output", str(tmp_path / "o6"), "--alpha", "1.5"]) == 2
    assert "--alpha" in capsys.readouterr().err
    assert run_main([str(onnx_model), str(img), "--output", str(tmp_path / "o7"), "--cuda-graph"]) == 2
    assert "TensorRT engines" in capsys.readouterr().err
