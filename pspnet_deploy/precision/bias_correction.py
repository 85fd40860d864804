"""Empirical bias correction of the quantized convolutions of a Q/DQ model (Nagel et al., "Data-Free
Quantization Through Weight Equalization and Bias Correction", ICCV 2019, section 4.2, the
empirical variant).

Rounding the weights to INT8 per channel and clipping the input activation to its calibrated range
shift the *mean* of a convolution's output: ``E[W_q * x_q] != E[W * x]``. That shift is a constant
per output channel, so it can be taken out of the convolution's FP32 bias, which costs nothing at
run time and keeps the file's format (biases stay FP32, the Q/DQ pairs and the ranges unchanged).

Each convolution's *own* error is measured, not the error accumulated from the layers before it:
beside every quantized Conv, a twin Conv with the original FP32 weights and bias reads the same
activation before its QuantizeLinear. Over the calibration images, ``mean(Conv_q) - mean(twin)`` per output
channel (over images, rows and columns) is what this layer adds; it is subtracted from the bias.
Because no layer's correction contains its predecessors' errors, all convolutions are corrected
from one pass without counting an upstream error twice.
"""
from __future__ import annotations

import copy
from typing import Iterable

import numpy as np

from .observer import observe

__all__ = ["correct_biases"]

_TWIN = "__bc_twin__"


def _dequantize_input(prod: dict, name: str) -> str:
    """The FP32 tensor behind an activation's DequantizeLinear(QuantizeLinear(x)) pair, or ``name``."""
    dq = prod.get(name)
    if dq is not None and dq.op_type == "DequantizeLinear":
        q = prod.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            return q.input[0]
    return name


def correct_biases(qdq_model, fp32_model, batches: Iterable[tuple[np.ndarray, int]], *, threads: int | None = None,
                   progress: bool = False, total: int | None = None) -> dict:
    """Correct the FP32 biases of ``qdq_model``'s INT8-weight convolutions in place.

    ``fp32_model``: the pre-processed FP32 model it was quantized from (BatchNorm folded; the
    quantized Convs keep their node names, which is how the original weights are found).
    ``batches``: ``(images, real rows)`` pairs of preprocessed calibration images. Returns a report
    with how many convolutions were corrected, the mean ``|shift|`` per convolution (``shifts``) and
    the largest shift relative to the mean ``|bias|`` of its layer (``max_shift_rel``).
    """
    from onnx import TensorProto, helper, numpy_helper

    fp_convs = {n.name: n for n in fp32_model.graph.node if n.op_type == "Conv"}
    fp_inits = {i.name: i for i in fp32_model.graph.initializer}
    inits = {i.name: i for i in qdq_model.graph.initializer}
    prod = {o: n for n in qdq_model.graph.node for o in n.output}

    probe = copy.deepcopy(qdq_model)
    pairs = []  # (conv node in qdq_model, output name, twin output name)
    for n in qdq_model.graph.node:
        if n.op_type != "Conv" or len(n.input) < 2:
            continue
        wdq = prod.get(n.input[1])
        src = fp_convs.get(n.name)
        if wdq is None or wdq.op_type != "DequantizeLinear" or src is None or src.input[1] not in fp_inits:
            continue  # an FP32 convolution (kept by the plan or the placement): nothing to correct
        twin_w = f"{_TWIN}{n.name}.weight"
        w = fp_inits[src.input[1]]
        probe.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(w).astype(np.float32), twin_w))
        twin_out = f"{_TWIN}{n.name}.out"
        ins = [_dequantize_input(prod, n.input[0]), twin_w]
        if len(src.input) > 2 and src.input[2] in fp_inits:  # the original bias: a corrected model re-measures ~0
            ins.append(f"{_TWIN}{n.name}.bias")
            probe.graph.initializer.append(numpy_helper.from_array(
                numpy_helper.to_array(fp_inits[src.input[2]]).astype(np.float32), ins[-1]))
        probe.graph.node.append(helper.make_node("Conv", ins, [twin_out], name=f"{_TWIN}{n.name}",
                                                 **{a.name: helper.get_attribute_value(a) for a in n.attribute}))
        pairs.append((n, n.output[0], twin_out))
    if not pairs:
        return {"corrected": 0, "max_shift_rel": 0.0, "shifts": {}}

    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}

    def update(name: str, values: np.ndarray) -> None:
        v = np.asarray(values)
        s = v.sum(axis=tuple(k for k in range(v.ndim) if k != 1), dtype=np.float64)  # no float64 copy of v
        sums[name] = sums.get(name, 0.0) + s
        counts[name] = counts.get(name, 0) + v.size // v.shape[1]

    tensors = [t for _, a, b in pairs for t in (a, b)]
    for t in tensors:  # typed outputs, so ONNX Runtime does not have to guess
        probe.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    observe(probe, tensors, batches, update, threads=threads, progress=progress, desc="bias correction", total=total)

    corrected, worst, shifts = 0, 0.0, {}
    for n, out, twin in pairs:
        shift = (sums[out] / counts[out] - sums[twin] / counts[twin]).astype(np.float32)
        if len(n.input) > 2 and n.input[2] in inits:
            init = inits[n.input[2]]
            bias = numpy_helper.to_array(init).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(bias - shift, init.name))
        else:  # no bias yet: the correction becomes one
            name = f"{n.name}.bias_correction"
            bias = np.zeros_like(shift)
            qdq_model.graph.initializer.append(numpy_helper.from_array(-shift, name))
            while len(n.input) < 3:
                n.input.append("")
            n.input[2] = name
        scale = float(np.abs(bias).mean()) or 1.0
        worst = max(worst, float(np.abs(shift).max()) / scale)
        shifts[n.name] = float(np.abs(shift).mean())
        corrected += 1
    return {"corrected": corrected, "max_shift_rel": round(worst, 4), "shifts": shifts}
