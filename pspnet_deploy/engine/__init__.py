"""Compiled models (TensorRT engines, OpenVINO IRs), split by concern:

- :mod:`.plan`: what to build (options, precision, profile, paths), decided without TensorRT;
- :mod:`.build`: the TensorRT build (with :mod:`pspnet_deploy.runners.trt_runner` the only code
  that imports ``tensorrt`` and the CUDA bindings);
- :mod:`.sidecar`: the sidecar written next to an engine and the checks that refuse an engine
  built for another TensorRT version or GPU, or a damaged file (``build.check_engine`` runs them
  on the machine it probes: the build imports the sidecar, never the other way round);
- :mod:`.device`: CUDA device strings, compute capabilities and the driver's view of a GPU;
- :mod:`.openvino`: OpenVINO IRs for CPUs (build, the CPU and its ISA, the checks that refuse an
  IR), writing the same sidecar; with :mod:`pspnet_deploy.runners.openvino_runner` the only code
  that imports ``openvino``. Not imported here: ``from pspnet_deploy.engine.openvino import ...``.

Running an engine is the TensorRT runner's job (:mod:`pspnet_deploy.runners.trt_runner`); making
the FP16 / INT8 ONNX a build asks for is the command layer's (:mod:`pspnet_deploy.cli.build_engine`).
"""
from __future__ import annotations

from ..card import sidecar_path
from .build import build_engine, check_engine, environment, tensorrt_version
from .device import TensorRTUnavailable, cuda_device_info, parse_device, require_engine_support
from .plan import (DEFAULT_MAX_BATCH, BuildOptions, BuildPlan, default_engine_path, format_parser_errors, onnx_io,
                   onnx_precision, plan_build, variant_path)
from .sidecar import check_engine_file, check_environment, make_sidecar, read_sidecar, rebuild_command

__all__ = ["DEFAULT_MAX_BATCH", "BuildOptions", "BuildPlan", "TensorRTUnavailable", "build_engine", "check_engine",
           "check_engine_file", "check_environment", "cuda_device_info", "default_engine_path", "environment",
           "format_parser_errors", "make_sidecar", "onnx_io", "onnx_precision", "parse_device", "plan_build",
           "read_sidecar", "rebuild_command", "require_engine_support", "sidecar_path", "tensorrt_version",
           "variant_path"]
