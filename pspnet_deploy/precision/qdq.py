"""Writing the Q/DQ INT8 model: where Q/DQ pairs go (two placements) and how, from given ranges.

The file this writes (the contract :mod:`pspnet_deploy.engine` and TensorRT rely on): INT8
``QuantizeLinear``/``DequantizeLinear`` pairs, symmetric, every zero point 0; activations per
tensor, weights per output channel (INT8 initializers feeding a ``DequantizeLinear``), biases FP32.
Made by ONNX Runtime's ``quantize_static`` (``QuantFormat.QDQ``, ``per_channel=True``, ``QInt8``,
``ActivationSymmetric``/``WeightSymmetric`` True, ``QuantizeBias`` False) with the ranges handed
over through its ``calibration_cache_path``; or by NVIDIA ModelOpt (``backend="modelopt"``).

- Placement ``"trt"`` (default, TensorRT's recommendation): Q/DQ on the inputs of the weighted ops
  (Conv, ConvTranspose, Gemm, MatMul) and on the *residual* input of each residual Add, nothing
  between Conv, its folded BatchNorm and ReLU, nothing on Resize/Concat, so TensorRT fuses
  Conv+bias+ReLU(+residual Add) into one INT8 kernel.
- Placement ``"ort"``: ONNX Runtime's default (inputs and outputs of every quantizable op), which
  ONNX Runtime's CPU kernels fuse better; TensorRT accepts it too.
- The export's exact static pyramid pooling is never quantized, and BatchNorm is folded into the
  convolutions first (:func:`prepare_fp32`), so no Q/DQ sits between a Conv and its BatchNorm.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import os
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import UserError
from ..onnx_graph import static_pool_node_names

__all__ = ["PLACEMENTS", "FALLBACKS", "PLACEMENT_OPS", "WEIGHTED_OPS", "QUANTIZED_OPS", "MODELOPT_METHODS", "MODELOPT_DEFAULT_METHOD", "prepare_fp32",
           "static_pool_nodes", "default_exclusions", "quantizable_units", "tensors_to_calibrate", "quantize_qdq",
           "qdq_summary", "ranges_from_qdq", "check_modelopt", "quantize_modelopt"]

PLACEMENTS = ("trt", "ort")
#: precisions of the nodes an INT8 file keeps out of INT8 (pspnet-calibrate --fallback)
FALLBACKS = ("fp32", "fp16")

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: op types quantized per placement (static pooling nodes are excluded by name in both)
PLACEMENT_OPS = {
    "trt": WEIGHTED_OPS + ("Add",),
    "ort": WEIGHTED_OPS + ("Add", "Relu", "Clip", "MaxPool", "Resize", "Concat", "AveragePool", "GlobalAveragePool"),
}
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
                 "DynamicQuantizeLinear", "QLinearAdd", "QLinearMul", "QLinearConcat", "QGemm", "MatMulNBits"}
#: calibration methods ModelOpt offers, by our names
MODELOPT_METHODS = {"minmax": "max", "entropy": "entropy"}
#: backend modelopt's default (no percentile or mse there): minmax lost 0.61 mIoU points on held-out frames, entropy 3.40
MODELOPT_DEFAULT_METHOD = "minmax"


@contextlib.contextmanager
def _quiet():
    """ONNX Runtime's quantizer logs through the root logger and prints; keep the CLI output clean."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(open(os.devnull, "w")) as f:  # noqa: SIM115
            try:
                yield
            finally:
                f.close()
    finally:
        root.setLevel(level)


def prepare_fp32(source: Path, out: Path) -> Path:
    """ONNX Runtime's pre-processing: shape inference and basic optimisation (BatchNorm folded into
    Conv, constants folded), so no Q/DQ lands between a Conv and its BatchNorm."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _quiet():
        quant_pre_process(str(source), str(out), skip_symbolic_shape=True)
    return out


def static_pool_nodes(model) -> list[str]:
    """Nodes implementing the export's exact static pyramid pooling (never quantized), sorted."""
    names = set(static_pool_node_names(model))
    present = {n.name for n in model.graph.node}
    return sorted(names & present)


def _extra_options(placement: str) -> dict:
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
    if placement == "trt":
        extra["OpTypesToExcludeOutputQuantization"] = list(PLACEMENT_OPS["trt"])
    return extra


def default_exclusions(model, placement: str, pool_nodes: Sequence[str]) -> list[str]:
    """Nodes never quantized: the static pooling, Adds with a constant operand (a bias, not a
    residual), and, for ``ort`` placement, the ops after the last weighted op (the final upsampling
    of the logits)."""
    inits = {i.name for i in model.graph.initializer}
    ex = set(pool_nodes)
    for n in model.graph.node:
        if n.op_type == "Add" and any(i in inits for i in n.input):
            ex.add(n.name)
    if placement == "ort":
        ex |= set(_tail_after_last_weighted(model))
    return sorted(ex)


def _tail_after_last_weighted(model) -> list[str]:
    nodes = list(model.graph.node)
    last = max((k for k, n in enumerate(nodes) if n.op_type in WEIGHTED_OPS), default=-1)
    return [n.name for n in nodes[last + 1:]]


def quantizable_units(model, placement: str, exclude: Sequence[str]) -> list[str]:
    """The units of the sensitivity search, in graph order: each weighted op and each Add that the
    placement quantizes (kept FP32, a unit computes in FP32 on its FP32 inputs)."""
    ex = set(exclude)
    ops = set(PLACEMENT_OPS[placement]) & set(PLACEMENT_OPS["trt"])
    return [n.name for n in model.graph.node if n.op_type in ops and n.name not in ex]


def tensors_to_calibrate(model, op_types: Sequence[str], exclude: set[str], outputs: bool = True) -> list[str]:
    """Float activations (not initializers) read (and, with ``outputs``, written) by the nodes that
    may be quantized."""
    from onnx import TensorProto

    inits = {i.name for i in model.graph.initializer}
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    names: list[str] = []
    seen = set()
    for node in model.graph.node:
        if node.op_type not in op_types or node.name in exclude:
            continue
        for t in list(node.input) + (list(node.output) if outputs else []):
            if t and t not in inits and t not in seen and types.get(t) == TensorProto.FLOAT:
                seen.add(t)
                names.append(t)
    return names


def _supports_range_cache() -> bool:
    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def quantize_qdq(prepped: Path, amax: dict[str, float], out: Path, placement: str = "trt",
                 exclude: Sequence[str] = (), only: Sequence[str] | None = None, work: Path | None = None) -> Path:
    """Write the Q/DQ INT8 model for ``prepped`` (pre-processed FP32) with the given activation ranges.

    ``exclude``: node names kept in FP32; ``only``: quantize just these nodes (sensitivity probes).
    """
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quantize_static)
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    if not _supports_range_cache():
        import onnxruntime

        raise UserError(f"onnxruntime {onnxruntime.__version__} cannot take precomputed ranges "
                        f"(quantize_static has no calibration_cache_path); pip install -U onnxruntime")
    work = Path(work or out.parent)
    cache = work / f".ranges-{uuid.uuid4().hex[:8]}.json"
    ranges = TensorsData(CalibrationMethod.MinMax, {
        t: TensorData(lowest=np.array(-a, np.float32), highest=np.array(a, np.float32)) for t, a in amax.items()})
    save_tensors_data(ranges, cache)
    try:
        if only is not None and not only:
            raise ValueError("nothing to quantize")
        with _quiet():
            quantize_static(str(prepped), str(out), calibration_data_reader=None, calibration_cache_path=str(cache),
                            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(PLACEMENT_OPS[placement]),
                            per_channel=True, reduce_range=False, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8, nodes_to_quantize=list(only) if only else None,
                            nodes_to_exclude=list(exclude), calibrate_method=CalibrationMethod.MinMax,
                            extra_options=_extra_options(placement))
    finally:
        cache.unlink(missing_ok=True)
    import onnx

    m = onnx.load(str(out))
    fp32 = set(exclude)
    if only:
        fp32 |= {n.name for n in m.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")} - set(only)
    changed = _restore_fp32_inputs(m, fp32)
    if placement == "trt":
        changed += _drop_main_branch_add_qdq(m)
    if changed:
        _prune_dead_qdq(m)
        onnx.save(m, str(out))
    return out


def _restore_fp32_inputs(model, names: set[str]) -> int:
    """quantize_static rewires *every* reader of a quantized activation to its DequantizeLinear,
    excluded nodes included. Give the nodes in ``names`` (kept FP32: the static pooling, the budget's
    FP32 nodes) their original FP32 input back. Returns how many inputs were restored."""
    prod = {o: n for n in model.graph.node for o in n.output}
    restored = 0
    for n in model.graph.node:
        if n.name not in names or n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for k, t in enumerate(n.input):
            dq = prod.get(t)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = prod.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":  # an activation pair, not an INT8 weight
                n.input[k] = q.input[0]
                restored += 1
    return restored


def _drop_main_branch_add_qdq(model) -> int:
    """TensorRT fuses ``Conv -> Add(residual) -> ReLU`` when the Conv's output reaches the Add
    unquantized and only the residual input carries Q/DQ. Remove the Q/DQ that quantize_static
    put on the main-branch input of each residual Add (the input produced by the later weighted
    op). Returns how many were removed."""
    nodes = list(model.graph.node)
    order = {n.name: k for k, n in enumerate(nodes)}
    prod = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    removed = 0
    for add in [n for n in nodes if n.op_type == "Add"]:
        srcs = []
        for k, t in enumerate(add.input):
            dq = prod.get(t)
            q = prod.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is None or q.op_type != "QuantizeLinear":
                srcs = []
                break
            p = prod.get(q.input[0])
            srcs.append((k, q.input[0], p))
        if len(srcs) != 2:
            continue
        weighted = [s for s in srcs if s[2] is not None and s[2].op_type in WEIGHTED_OPS]
        if not weighted:
            continue
        k, fp_tensor, _ = max(weighted, key=lambda s: order[s[2].name])
        add.input[k] = fp_tensor
        removed += 1
    return removed


def _prune_dead_qdq(model) -> None:
    """Delete Q/DQ nodes whose outputs nobody reads any more, and their unused initializers."""
    while True:
        used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        dead = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    used = {i for n in model.graph.node for i in n.input}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)


def qdq_summary(model) -> dict:
    """Counts that say what the Q/DQ model is: Q/DQ nodes, quantized weighted ops, FP32 ones."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    prod = {o: n for n in model.graph.node for o in n.output}
    q = sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
    dq = sum(n.op_type == "DequantizeLinear" for n in model.graph.node)
    int8_w, fp32_w, fp16_w = [], [], []
    for n in model.graph.node:
        if n.op_type in WEIGHTED_OPS and len(n.input) > 1:
            srcs = [prod.get(i) for i in n.input[:2]]
            if any(p is not None and p.op_type == "DequantizeLinear" for p in srcs):
                int8_w.append(n.name)
            elif n.input[1] in inits and inits[n.input[1]].data_type == 10:  # an FP16 island (--fallback fp16)
                fp16_w.append(n.name)
            else:
                fp32_w.append(n.name)
    zps = [numpy_helper.to_array(inits[n.input[2]]) for n in model.graph.node
           if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in inits]
    return {"quantize_linear": q, "dequantize_linear": dq, "int8_weighted_ops": len(int8_w),
            "fp32_weighted_ops": fp32_w, "fp16_weighted_ops": fp16_w, "all_zero_points_zero": all(int(np.abs(z).max(initial=0)) == 0 for z in zps)}


def ranges_from_qdq(model) -> dict[str, float]:
    """Activation amax (= scale * 127) of each QuantizeLinear on an activation, read from a Q/DQ model."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits and n.input[1] in inits:
            sc = numpy_helper.to_array(inits[n.input[1]])
            if sc.size == 1:
                out[n.input[0]] = float(sc.reshape(())) * 127.0
    return out


def check_modelopt(methods: Sequence[str], from_table: bool):
    """Refuse what backend ``modelopt`` cannot do, before any work: methods it lacks, a reused
    table (it calibrates from images), and ModelOpt missing. Returns the module."""
    bad = [m for m in methods if m not in MODELOPT_METHODS]
    if bad:
        raise UserError(f"backend modelopt supports methods {' and '.join(MODELOPT_METHODS)}, not {', '.join(bad)}"
                        + ("; --method auto would try them all" if len(methods) > 1 else "")
                        + "; choose --method minmax or entropy, or --backend ort")
    if from_table:
        raise UserError("backend modelopt calibrates from images; it cannot reuse a --calib-table")
    try:
        import modelopt.onnx.quantization as moq
    except ImportError as e:
        raise UserError("backend modelopt needs NVIDIA ModelOpt (pip install 'nvidia-modelopt[onnx]', GPU machines); "
                        "or use --backend ort") from e
    return moq


def quantize_modelopt(prepped: Path, images: np.ndarray, method: str, exclude: Sequence[str], out: Path) -> Path:
    """INT8 Q/DQ by ModelOpt (TensorRT-aware placement), after :func:`check_modelopt`. Untested here:
    ModelOpt is not installed."""
    moq = check_modelopt([method], False)
    moq.quantize(onnx_path=str(prepped), quantize_mode="int8", calibration_data=np.asarray(images),
                 calibration_method=MODELOPT_METHODS[method], nodes_to_exclude=list(exclude), output_path=str(out),
                 calibration_eps=["cpu"], high_precision_dtype="fp32")
    return out
