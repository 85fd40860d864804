"""Sliding-window inference: exact where it must be, close where it can only be close."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import THREADS, TINY_SIZE


@pytest.fixture(scope="module")
def torch_runner(tiny_checkpoint):
    from pspnet_deploy.runners import load_runner

    return load_runner(tiny_checkpoint)


@pytest.fixture(scope="module")
def ort_runner(onnx_b1):
    from pspnet_deploy.runners import load_runner

    with load_runner(onnx_b1, threads=THREADS) as r:
        yield r


def smooth_image(rng, h, w):
    """Spatially coherent content (a real segmentation model sees regions, not noise)."""
    small = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


@pytest.mark.parametrize("which", ["torch_runner", "ort_runner"])
def test_window_equal_to_image_is_exactly_whole_inference(which, request, rng):
    from pspnet_deploy.sliding import make_predictor, slide_logits, whole_logits

    runner = request.getfixturevalue(which)
    img = smooth_image(rng, *TINY_SIZE)
    s, w = slide_logits(runner, img), whole_logits(runner, img)
    assert s.shape == (4, *TINY_SIZE)
    assert np.array_equal(s, w)
    assert np.array_equal(make_predictor("slide")(runner, img), make_predictor("whole")(runner, img))


def test_slide_averages_its_windows(torch_runner, rng):
    """Recompute the overlapping windows by hand: the average must match to float rounding."""
    from pspnet_deploy.sliding import slide_logits, window_starts

    img = smooth_image(rng, 100, 150)
    s = slide_logits(torch_runner, img, stride_frac=2 / 3)
    wh, ww = TINY_SIZE
    ys, xs = window_starts(100, wh, int(wh * 2 / 3)), window_starts(150, ww, int(ww * 2 / 3))
    assert ys == [0, 36] and xs == [0, 54]
    norm = torch_runner.preprocess.normalize(img)
    acc = np.zeros((4, 100, 150), np.float64)
    cnt = np.zeros((100, 150))
    for y in ys:
        for x in xs:
            out = torch_runner.infer(np.ascontiguousarray(norm[None, :, y:y + wh, x:x + ww]))[0]
            acc[:, y:y + wh, x:x + ww] += out
            cnt[y:y + wh, x:x + ww] += 1
    assert cnt.min() == 1 and cnt.max() == 4
    np.testing.assert_allclose(s, acc / cnt, rtol=1e-4, atol=1e-4)


def test_smaller_window_stays_close_to_whole_image_inference(tiny_checkpoint, torch_runner, rng):
    """A 64x96 window sliding over a 96x144 image vs the model run on the whole image at 96x144."""
    from pspnet_deploy.runners import load_runner
    from pspnet_deploy.sliding import slide_logits, whole_logits

    big = load_runner(tiny_checkpoint, input_size=(96, 144))
    img = smooth_image(rng, 96, 144)
    s, w = slide_logits(torch_runner, img), whole_logits(big, img)
    assert s.shape == w.shape == (4, 96, 144)
    assert np.corrcoef(s.ravel(), w.ravel())[0, 1] > 0.9
    assert (s.argmax(0) == w.argmax(0)).mean() > 0.6
    # and it is closer to native-resolution inference than squeezing the image into one window is
    squeezed = whole_logits(torch_runner, img)
    assert np.abs(s - w).mean() < np.abs(squeezed - w).mean()


def test_image_smaller_than_window_is_padded_and_cropped(torch_runner, rng):
    from pspnet_deploy.sliding import make_predictor, slide_logits

    img = smooth_image(rng, 40, 70)
    s = slide_logits(torch_runner, img)
    assert s.shape == (4, 40, 70) and np.isfinite(s).all()
    padded = np.zeros((3, *TINY_SIZE), np.float32)
    padded[:, :40, :70] = torch_runner.preprocess.normalize(img)
    ref = torch_runner.infer(padded[None])[0][:, :40, :70]
    np.testing.assert_allclose(s, ref, rtol=1e-5, atol=1e-5)
    labels = make_predictor("slide", flip=True)(torch_runner, img)
    assert labels.shape == (40, 70) and labels.max() < 4


def test_fixed_batch_runner_gets_full_batches(tiny_checkpoint, torch_runner, rng):
    """A runner with a fixed batch of 2 (it refuses any other batch) gives what a free-batch runner
    gives, also for an odd window count (the last batch padded, the padding dropped)."""
    from pspnet_deploy.runners import load_runner
    from pspnet_deploy.sliding import slide_logits

    b2 = load_runner(tiny_checkpoint)
    b2.fixed_batch = 2  # as an export with --batch 2 would be: check_batch now refuses other sizes
    seen = []
    infer = b2.infer
    b2.infer = lambda x: (seen.append(x.shape[0]), infer(x))[1]
    for h, w in ((100, 150), (64, 150), (64, 200)):  # 4, 2 and 3 windows
        img = smooth_image(rng, h, w)
        np.testing.assert_allclose(slide_logits(b2, img), slide_logits(torch_runner, img), rtol=1e-4, atol=1e-4)
    assert seen == [2, 2, 2, 2, 2]


def test_flip_averages_the_mirrored_prediction(torch_runner, rng):
    from pspnet_deploy.sliding import predict_scores, whole_logits

    img = smooth_image(rng, 70, 100)
    both = predict_scores(torch_runner, img, mode="whole", flip=True)
    a = whole_logits(torch_runner, img)
    b = whole_logits(torch_runner, np.ascontiguousarray(img[:, ::-1]))[:, :, ::-1]
    np.testing.assert_allclose(both, (a + b) / 2, rtol=1e-6, atol=1e-6)


def test_labels_runner_votes(onnx_factory, ort_runner, rng):
    from pspnet_deploy.runners import load_runner
    from pspnet_deploy.sliding import make_predictor

    lab = load_runner(onnx_factory(output_kind="labels"), threads=THREADS)
    img = smooth_image(rng, *TINY_SIZE)
    assert (make_predictor("slide")(lab, img) == make_predictor("whole")(ort_runner, img)).mean() > 0.999
    big = smooth_image(rng, 90, 130)
    out = make_predictor("slide")(lab, big)
    assert out.shape == (90, 130) and out.max() < 4


def test_bad_arguments_and_image_conversions(torch_runner):
    from pspnet_deploy.errors import UserError
    from pspnet_deploy.sliding import ensure_rgb, make_predictor, slide_logits

    with pytest.raises(UserError, match="'whole' or 'slide'"):
        make_predictor("tiles")
    with pytest.raises(UserError, match="stride"):
        make_predictor("slide", stride=1.5)
    with pytest.raises(UserError, match="stride"):
        slide_logits(torch_runner, np.zeros((64, 96, 3), np.uint8), stride_frac=0)
    gray = np.full((10, 12), 7, np.uint8)
    assert ensure_rgb(gray).shape == (10, 12, 3) and ensure_rgb(gray)[..., 2].max() == 7
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 0] = 200
    assert ensure_rgb(rgba).shape == (10, 12, 3) and ensure_rgb(rgba)[0, 0, 0] == 200
    deep = np.full((10, 12, 3), 65535, np.uint16)
    assert ensure_rgb(deep).dtype == np.uint8 and ensure_rgb(deep).max() == 255
    with pytest.raises(UserError, match="float32"):
        ensure_rgb(np.zeros((10, 12, 3), np.float32))
    with pytest.raises(UserError, match="channels"):
        ensure_rgb(np.zeros((10, 12, 2), np.uint8))
    labels = make_predictor("whole")(torch_runner, gray)
    assert labels.shape == (10, 12)


def test_eval_cli_slide_and_flip_on_synthetic(synthetic_checkpoint, tmp_path, capsys):
    """pspnet-eval --mode slide --flip goes through make_predictor; labels come back at image size."""
    from pspnet_deploy.cli.common import run
    from pspnet_deploy.cli.eval import main
    ckpt = synthetic_checkpoint
    results = {}
    for mode in ("whole", "slide"):
        out = tmp_path / f"{mode}.json"
        args = [str(ckpt), "--data", "synthetic", "--limit", "2", "--mode", mode, "--flip", "--no-progress",
                "--json", str(out)]
        assert run("pspnet-eval", main, args) == 0, capsys.readouterr().err
        results[mode] = __import__("json").loads(out.read_text())
        assert results[mode]["data"]["mode"] == mode and results[mode]["data"]["flip"] is True
        assert results[mode]["num_images"] == 2
    total = sum(map(sum, results["slide"]["confusion_matrix"]))
    assert total == sum(map(sum, results["whole"]["confusion_matrix"])) > 0  # every labelled pixel, both modes


def test_multi_scale_averages_each_scale_and_its_mirror(torch_runner, rng):
    """--scales: logits of the sliding window at each rescaled image, back at full size, averaged with mirrors."""
    from pspnet_deploy.sliding import make_predictor, predict_scores, slide_logits

    img = smooth_image(rng, 70, 100)
    scales = (0.5, 1.0, 1.5)
    got = predict_scores(torch_runner, img, mode="slide", flip=True, scales=scales)
    mirror = np.ascontiguousarray(img[:, ::-1])
    parts = [slide_logits(torch_runner, img, scale=s) for s in scales]
    parts += [slide_logits(torch_runner, mirror, scale=s)[:, :, ::-1] for s in scales]
    assert got.shape == parts[0].shape == (torch_runner.num_classes, 70, 100)
    np.testing.assert_allclose(got, sum(parts) / len(parts), rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, predict_scores(torch_runner, img, mode="slide", flip=True), atol=1e-3)  # scales count
    labels = make_predictor("slide", flip=True, scales=scales)(torch_runner, img)
    assert np.array_equal(labels, got.argmax(0))


def test_scales_are_checked(torch_runner):
    from pspnet_deploy.errors import UserError
    from pspnet_deploy.sliding import check_scales, describe, make_predictor

    with pytest.raises(UserError, match="needs --mode slide"):
        make_predictor("whole", scales=(0.5, 1.0))
    with pytest.raises(UserError, match=r"in \(0, 4\]"):
        check_scales((0.0, 1.0), "slide")
    with pytest.raises(UserError, match="repeat"):
        check_scales((1.0, 1.0), "slide")
    assert check_scales([1], "whole") == (1.0,)
    assert describe("slide", True, (0.5, 1.0, 1.75)) == "slide + flip, scales 0.5 1 1.75"
    assert describe("whole", False) == "whole"


def test_eval_cli_scales_imply_slide(synthetic_checkpoint, tmp_path, capsys):
    from pspnet_deploy.cli.common import run
    from pspnet_deploy.cli.eval import main
    ckpt = synthetic_checkpoint
    out = tmp_path / "ms.json"
    args = [str(ckpt), "--data", "synthetic", "--limit", "2", "--scales", "0.75", "1", "--no-progress", "--json", str(out)]
    assert run("pspnet-eval", main, args) == 0, capsys.readouterr().err
    assert "slide, scales 0.75 1" in capsys.readouterr().out
    data = __import__("json").loads(out.read_text())["data"]
    assert data["mode"] == "slide" and data["scales"] == [0.75, 1.0] and data["flip"] is False
