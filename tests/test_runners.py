"""Runners: PyTorch and ONNX Runtime agree on the same model; engines are checked before TensorRT."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import THREADS, TINY_SIZE


def test_torch_and_onnxruntime_runners_agree(tiny_checkpoint, onnx_b1, rng):
    from pspnet_deploy.runners import load_runner

    tr = load_runner(tiny_checkpoint)
    ort = load_runner(onnx_b1, threads=THREADS)
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

    r = load_runner(onnx_b1, threads=THREADS)
    with pytest.raises(UserError, match="3x64x96"):
        r.infer(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(UserError, match="fixed batch of 1"):
        r.infer(np.zeros((2, 3, *TINY_SIZE), np.float32))


def test_labels_output_matches_argmax_of_logits(onnx_factory, onnx_b1, rng):
    from pspnet_deploy.runners import load_runner

    lab = load_runner(onnx_factory(output_kind="labels"), threads=THREADS)
    log = load_runner(onnx_b1, threads=THREADS)
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


def test_runner_options_one_object_for_every_backend(tiny_checkpoint, onnx_b1):
    """Every backend takes the same options and ignores what does not apply; a name no backend
    knows is a programming error."""
    from pspnet_deploy.runners import RunnerOptions, load_runner

    opts = RunnerOptions(threads=THREADS, providers=["CPUExecutionProvider"], input_size=(48, 64), cuda_graph=True,
                         graph_optimization="basic")
    with load_runner(tiny_checkpoint, opts) as tr, load_runner(onnx_b1, opts) as ort:
        assert tr.input_size == (48, 64)  # PyTorch honours input_size (at least 41 a side, see geometry) ...
        assert ort.input_size == TINY_SIZE  # ... the ONNX's size is fixed: ignored
        assert ort.describe()["providers"] == ["CPUExecutionProvider"] and ort.describe()["threads"] == THREADS
    with load_runner(tiny_checkpoint, opts, input_size=None) as tr:  # keyword overrides win
        assert tr.input_size == TINY_SIZE
    with pytest.raises(TypeError, match="unknown runner option.*cuda_grpah"):
        load_runner(onnx_b1, cuda_grpah=True)


def test_context_manager_closes_the_session(onnx_b1):
    from pspnet_deploy.runners import load_runner

    with load_runner(onnx_b1, threads=THREADS) as r:
        assert r.session is not None
    assert r.session is None  # ONNX Runtime's session released on exit
    with pytest.raises(RuntimeError), load_runner(onnx_b1, threads=THREADS) as r2:
        raise RuntimeError("boom")
    assert r2.session is None  # ... and when the block raises


class _Recorder:
    """Wraps a runner and records the batch sizes it is called with."""

    def __init__(self, runner):
        self.runner, self.calls = runner, []

    def __call__(self, batch):
        self.calls.append(int(batch.shape[0]))
        return self.runner.__class__.infer(self.runner, batch)


def test_padded_batching_is_one_place(tiny_checkpoint, onnx_factory, rng):
    """infer_items: a fixed-batch model gets full batches (last padded by repeating its last item),
    a batch range is respected, and every item's output is the one it would get alone."""
    from pspnet_deploy.runners import load_runner

    items = [rng.standard_normal((3, *TINY_SIZE)).astype(np.float32) for _ in range(5)]
    with load_runner(tiny_checkpoint) as ref:
        alone = [ref.infer(x[None])[0] for x in items]
    with load_runner(onnx_factory(batch=2), threads=THREADS) as fixed:
        rec = _Recorder(fixed)
        fixed.infer = rec
        outs = fixed.infer_items(items, batch=4)
        assert rec.calls == [2, 2, 2] and fixed.batch_limit(4) == 2
    with load_runner(tiny_checkpoint) as ranged:
        ranged.batch_range = (2, 3)  # as an engine profile would say
        rec = _Recorder(ranged)
        ranged.infer = rec
        outs2 = ranged.infer_items(items, batch=8)
        assert rec.calls == [3, 2]  # clamped to the maximum; the remainder padded up to the minimum
        rec.calls.clear()
        ranged.infer_items(items[:1])
        assert rec.calls == [2]
    for a, b, c in zip(alone, outs, outs2):
        assert np.abs(a - b).max() < 1e-3 * max(1.0, np.abs(a).max()) and (a.argmax(0) == c.argmax(0)).mean() > 0.999


def test_model_timer_times_one_call(onnx_b1):
    from pspnet_deploy.errors import UserError
    from pspnet_deploy.runners import load_runner

    with load_runner(onnx_b1, threads=THREADS) as r:
        call, name = r.model_timer(np.zeros((1, 3, *TINY_SIZE), np.float32))
        ms = [call() for _ in range(2)]
        assert name.startswith("wall clock") and all(m > 0 for m in ms)
        with pytest.raises(UserError, match="fixed batch of 1"):  # checked once, before timing
            r.model_timer(np.zeros((2, 3, *TINY_SIZE), np.float32))


def test_onnxruntime_runner_session_comes_from_the_one_factory(onnx_b1, monkeypatch):
    """The runner's session is ort_session.make_session's: an explicit thread count, else
    PSPNET_ORT_THREADS (a bad value refused in one line), one inter-op thread, CPU provider; the
    card handed in is the one used (not read again)."""
    from pspnet_deploy.card import read_card
    from pspnet_deploy.errors import UserError
    from pspnet_deploy.ort_session import THREADS_ENV
    from pspnet_deploy.runners import load_runner

    monkeypatch.setenv(THREADS_ENV, "1")
    card = read_card(onnx_b1)
    with load_runner(onnx_b1, device="cpu", card=card) as r:
        so = r.session.get_session_options()
        assert (so.intra_op_num_threads, so.inter_op_num_threads, r.threads) == (1, 1, 1)
        assert r.session.get_providers() == ["CPUExecutionProvider"] and r.card is card
    with load_runner(onnx_b1, device="cpu", threads=2) as r:
        assert r.session.get_session_options().intra_op_num_threads == 2
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(UserError, match=THREADS_ENV):
        load_runner(onnx_b1, device="cpu")
