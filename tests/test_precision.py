"""Shared machinery of export and the precision steps: the ONNX Runtime session factory, batch
fitting and the one activation observer (FP16 ranges and INT8 statistics read the same values).

Models are built with onnx.helper so every expected number is computed here with numpy.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from pspnet_deploy.errors import UserError

C = 3  # channels of the toy model


def _toy_model(scale: float = 2.0):
    """input (N,3,4,5) -> Mul(scale) -> "m" -> Relu -> "r" -> Add(-1) -> output "y" (all float32)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shape = [None, C, 4, 5]
    g = helper.make_graph(
        [helper.make_node("Mul", ["x", "s"], ["m"], name="mul"), helper.make_node("Relu", ["m"], ["r"], name="relu"),
         helper.make_node("Add", ["r", "b"], ["y"], name="add")],
        "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [numpy_helper.from_array(np.array(scale, np.float32), "s"), numpy_helper.from_array(np.array(-1.0, np.float32), "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return onnx.shape_inference.infer_shapes(m)


# ----------------------------------------------------------------------------------------------
# session factory: one thread rule
# ----------------------------------------------------------------------------------------------


def test_session_factory_thread_rule(monkeypatch):
    from pspnet_deploy.ort_session import THREADS_ENV, make_session, ort_threads

    model = _toy_model()
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert ort_threads() is None and ort_threads(2) == 2
    assert make_session(model).get_session_options().intra_op_num_threads == 0  # ONNX Runtime's default
    monkeypatch.setenv(THREADS_ENV, "3")
    opts = make_session(model).get_session_options()
    assert opts.intra_op_num_threads == 3 and opts.inter_op_num_threads == 1
    assert make_session(model, threads=1).get_session_options().intra_op_num_threads == 1  # explicit wins
    none = make_session(model.SerializeToString(), optimization="none").get_session_options()
    import onnxruntime as ort

    assert none.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for bad in ("zero", "0", "-2"):
        monkeypatch.setenv(THREADS_ENV, bad)
        with pytest.raises(UserError, match=f"{THREADS_ENV}=.* is not a positive number of threads"):
            ort_threads()


def test_runner_and_precision_steps_read_threads_the_same_way(monkeypatch, tmp_path):
    """The observer's sessions and the ONNX Runtime session of a file get the env thread count."""
    import onnxruntime as ort

    from pspnet_deploy.ort_session import THREADS_ENV, session_options

    monkeypatch.setenv(THREADS_ENV, "2")
    assert session_options().intra_op_num_threads == 2
    path = tmp_path / "toy.onnx"
    path.write_bytes(_toy_model().SerializeToString())
    from pspnet_deploy.ort_session import make_session

    sess = make_session(path)
    assert isinstance(sess, ort.InferenceSession) and sess.get_providers() == ["CPUExecutionProvider"]
    assert sess.get_session_options().intra_op_num_threads == 2


# ----------------------------------------------------------------------------------------------
# batch fitting
# ----------------------------------------------------------------------------------------------


def test_batch_fitting_fixed_dynamic_and_any():
    from pspnet_deploy.precision.batches import batch_indices, fitted_batches, iter_batches

    assert batch_indices(5, 2) == [([0, 1], 2), ([2, 3], 2), ([4, 0], 1)]  # wrap to the first images
    assert batch_indices(3) == [([0], 1), ([1], 1), ([2], 1)]  # any batch size: one image each
    assert batch_indices(5, 2, limit=3) == [([0, 1], 2), ([2, 0], 1)]
    assert batch_indices(3, dynamic=(1, 2, 4)) == [([0], 1), ([1, 2, 0], 2)]  # both ends of the range
    assert batch_indices(2, dynamic=(2, 2, 2)) == [([0, 1], 2)]
    arr = np.arange(5 * 2, dtype=np.float64).reshape(5, 2)
    got = list(iter_batches(arr, 2))
    assert [r for _, r in got] == [2, 2, 1] and all(x.dtype == np.float32 and x.flags.c_contiguous for x, _ in got)
    assert np.array_equal(got[-1][0], arr[[4, 0]])
    assert [len(b) for b in fitted_batches(arr, dynamic=(1, 2, 8))] == [1, 5]


# ----------------------------------------------------------------------------------------------
# the one observer: FP16 ranges and INT8 statistics agree on the same tensors
# ----------------------------------------------------------------------------------------------


def test_observer_feeds_fp16_ranges_and_int8_statistics_alike(tmp_path):
    from pspnet_deploy.precision.calib_data import CalibrationSet
    from pspnet_deploy.precision.observer import activation_ranges
    from pspnet_deploy.precision.ranges import amax_from_stats, collect_statistics

    rng = np.random.default_rng(0)
    images = rng.normal(0, 3, (4, C, 4, 5)).astype(np.float32)
    model = _toy_model(scale=2.0)
    expected = {"x": np.abs(images).max(), "m": np.abs(2 * images).max(), "r": np.maximum(2 * images, 0).max(),
                "y": np.abs(np.maximum(2 * images, 0) - 1).max()}
    # FP16 path: every float tensor, fixed batch 3 (the second batch wraps to image 0 and 1)
    ranges = activation_ranges(model, [images[[0, 1, 2]], images[[3, 0, 1]]])
    assert set(ranges) == set(expected)
    for t, v in expected.items():
        assert ranges[t] == pytest.approx(float(v), rel=1e-6), t
    # INT8 path: histograms of the same tensors through the same observer, batch 3 -> real rows only
    calib = CalibrationSet(images, [f"i{k}" for k in range(4)], "hash", {})
    stats, hit = collect_statistics(model, ["x", "m", "r", "y"], calib, "x", 3, tmp_path, progress=False, threads=1)
    assert not hit
    minmax = amax_from_stats(stats, "minmax")
    for t in expected:
        assert minmax[t] == pytest.approx(ranges[t], rel=1e-6), t
        assert int(stats[t][0].sum()) == images.size  # wrapped rows are not counted twice
    stats2, hit2 = collect_statistics(model, ["x", "m", "r", "y"], calib, "x", 3, tmp_path, progress=False, threads=1)
    assert hit2 and all(np.array_equal(stats[t][0], stats2[t][0]) for t in stats)


def test_observer_marks_overflow_and_chunks_runs():
    """FP16 tensors that overflow read as inf; splitting the tensors over runs gives the same ranges."""
    from onnxconverter_common import float16

    from pspnet_deploy.precision.fp16 import fp16_overflow_tensors
    from pspnet_deploy.precision.observer import activation_ranges

    images = np.full((1, C, 4, 5), 200.0, np.float32)
    model = _toy_model(scale=1000.0)  # 200 * 1000 = 2e5 > 65504
    one = activation_ranges(model, [images])
    chunked = activation_ranges(model, [images], chunk_bytes=1)  # one tensor per run
    assert one == chunked and one["m"] == pytest.approx(2e5)
    naive = float16.convert_float_to_float16(model, keep_io_types=True)
    over = fp16_overflow_tensors(naive, [images])
    assert over and all(math.isinf(v) for v in over.values())
    assert fp16_overflow_tensors(float16.convert_float_to_float16(_toy_model(scale=1.0), keep_io_types=True),
                                 [images]) == {}


def test_bad_thread_env_fails_before_any_work(monkeypatch, tmp_path):
    from pspnet_deploy.ort_session import THREADS_ENV
    from pspnet_deploy.precision.calibrate import calibrate_onnx
    from pspnet_deploy.precision.fp16 import convert_fp16

    monkeypatch.setenv(THREADS_ENV, "four")
    for call in (lambda: calibrate_onnx(tmp_path / "m.fp32.onnx", tmp_path / "o.int8.onnx", "synthetic",
                                        cache_dir=tmp_path / "cache", progress=False),
                 lambda: convert_fp16(tmp_path / "m.fp32.onnx", tmp_path / "o.fp16.onnx", progress=False)):
        with pytest.raises(UserError, match=f"{THREADS_ENV}='four' is not a positive number"):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
