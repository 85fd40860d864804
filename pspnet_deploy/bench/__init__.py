"""Benchmark model files (.pt, .onnx, .engine): latency, throughput, accuracy, memory, FLOPs.

:func:`run_bench` is the entry point (``pspnet-bench`` is a thin front end). For every model x
batch size x scope it times ``iterations`` calls (or calls for ``duration`` seconds) after
``warmup`` calls, and reports :func:`latency_stats` of the per-call times and the throughput.

Scopes, always labelled in the report:

- ``model``: the input batch is already preprocessed, at the model size, in the runner's memory
  (a numpy array; for a PyTorch model on CUDA a tensor already on the GPU). One call is
  ``runner.infer(batch)``: the network plus the runner's own input/output handling.
- ``end2end``: one call decodes ``batch`` image files from disk (page cache warm after warm-up),
  preprocesses them, infers and postprocesses each output to a label map at the image's original
  size (bilinear logits resize + argmax, exactly as pspnet-eval does).

Timers: in ``model`` scope each runner times itself (:meth:`Runner.model_timer
<pspnet_deploy.runners.base.Runner.model_timer>`): PyTorch on CUDA uses CUDA events around the
call (input staged on the GPU, the output stays there); a backend without a device clock of its
own is timed by wall clock (``time.perf_counter``) around a call that takes and returns host
arrays, so it includes the copies and the device synchronisation. Each row names its timer.

Load sweep (``concurrency``, like Triton's perf_analyzer): per model and level N, N requests of one
image are kept in flight by N threads (:meth:`Runner.request_workers
<pspnet_deploy.runners.base.Runner.request_workers>`: ONNX Runtime and PyTorch share one model
between the threads, OpenVINO gets N infer requests on N streams, TensorRT N execution contexts on N
CUDA streams); each request's wall time is a
latency sample and the throughput is the images completed over the wall time of the level.
``report["load"]`` holds one row per model and level (``concurrency``, ``throughput_ips``,
p50/p99), plotted as a latency-throughput curve.

Recommendation (:func:`recommend`): with accuracy measured and ``max_miou_drop`` (points against
the reference, the first model), the fastest (model, concurrency) within the budget and the
optional ``max_latency_ms`` on p50, and why each faster candidate was rejected.

Memory: :mod:`pspnet_deploy.memory` (process RSS high-water mark, CUDA memory), reset before each
measurement; the report names the method.

The package, by concern: :mod:`.models` (model arguments, cards, loading), :mod:`.timing` (the
measuring loop, end-to-end calls, the load sweep's levels), :mod:`.accuracy` (mIoU and agreement),
:mod:`.recommend` (the recommendation) and :mod:`.run` (:func:`run_bench` as named steps); the
report files and plots are :mod:`pspnet_deploy.report`.
"""
from __future__ import annotations

from .accuracy import measure_accuracy, pixel_agreement
from .models import ModelSpec, check_batches, load_model_runner, model_device, parse_model_arg, peek_model
from .recommend import recommend, recommendation
from .run import run_bench
from .timing import (PERCENTILES, SCOPES, check_concurrency, collect, dataset_images, end2end_call, end2end_images,
                     latency_stats, load_level, measure_peak, synthetic_images, throughput_ips)

_dataset_images = dataset_images  # the name the tests knew

__all__ = ["PERCENTILES", "SCOPES", "ModelSpec", "check_batches", "check_concurrency", "collect", "dataset_images",
           "end2end_call", "end2end_images", "latency_stats", "load_level", "load_model_runner", "measure_accuracy",
           "measure_peak", "model_device", "parse_model_arg", "peek_model", "pixel_agreement", "recommend",
           "recommendation", "run_bench", "synthetic_images", "throughput_ips"]
