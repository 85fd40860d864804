"""The one ONNX Runtime session factory, and the one reading of ``PSPNET_ORT_THREADS``.

Every ONNX Runtime session the toolkit opens (export parity, FP16 checks, calibration statistics,
sensitivity probes, the ONNX Runtime runner) comes from :func:`make_session`, so thread count,
graph optimisation level, providers and logging are set the same way everywhere.

Threads: an explicit ``threads`` wins; otherwise ``PSPNET_ORT_THREADS`` (a positive integer) when
set; otherwise ONNX Runtime's default (one per physical core). With a thread count, inter-op
parallelism is 1 (PSPNet is one chain of ops).
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError

THREADS_ENV = "PSPNET_ORT_THREADS"
#: graph optimisation level names -> onnxruntime.GraphOptimizationLevel member names
OPTIMIZATION_LEVELS = {"none": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                       "all": "ORT_ENABLE_ALL"}

__all__ = ["THREADS_ENV", "OPTIMIZATION_LEVELS", "ort_threads", "session_options", "make_session"]


def ort_threads(threads: int | None = None) -> int | None:
    """``threads`` if given, else ``PSPNET_ORT_THREADS`` if set, else None (ONNX Runtime's default)."""
    if threads:
        return int(threads)
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"{THREADS_ENV}={raw!r} is not a positive number of threads; set it to e.g. 4, or unset it")
    return value


def session_options(threads: int | None = None, optimization: str = "all", quiet: bool = False,
                    profile_prefix: str | None = None):
    """``onnxruntime.SessionOptions`` with the toolkit's thread rule and optimisation level;
    ``profile_prefix``: turn on ONNX Runtime's profiler, writing ``<prefix>_<date>.json``."""
    import onnxruntime as ort

    if optimization not in OPTIMIZATION_LEVELS:
        raise UserError(f"graph optimisation must be one of {', '.join(OPTIMIZATION_LEVELS)}, got {optimization!r}")
    so = ort.SessionOptions()
    n = ort_threads(threads)
    if n:
        so.intra_op_num_threads = n
        so.inter_op_num_threads = 1
    if quiet:
        so.log_severity_level = 3  # errors only: no warnings about unused initializers and the like
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[optimization])
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_prefix)
    return so


def make_session(model, threads: int | None = None, optimization: str = "all", providers: list[str] | None = None,
                 quiet: bool = False, profile_prefix: str | None = None):
    """An ``onnxruntime.InferenceSession`` for ``model``: a path, serialized bytes or an ``onnx.ModelProto``.

    ``providers`` default to CPU only. Errors from ONNX Runtime propagate unchanged (callers that
    load a user's file turn them into a :class:`UserError` with the file name).
    """
    import onnxruntime as ort

    if hasattr(model, "SerializeToString"):
        src = model.SerializeToString()
    elif isinstance(model, (bytes, bytearray)):
        src = bytes(model)
    else:
        src = str(Path(model))
    return ort.InferenceSession(src, sess_options=session_options(threads, optimization, quiet, profile_prefix),
                                providers=list(providers) if providers else ["CPUExecutionProvider"])
