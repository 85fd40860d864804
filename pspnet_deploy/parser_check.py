"""Will TensorRT's ONNX parser take this file? A check without TensorRT.

Every node, attribute and tensor type is held against the support matrix of the TensorRT ONNX
parser (onnx-tensorrt ``docs/operators.md``; TensorRT 10.0 parses opsets 9 to 20, later 10.x
releases more). The tables below are a conservative transcription of that matrix for the
operators a segmentation network (and its FP16 / INT8 Q/DQ variants) can contain, plus the
explicitly unsupported operators; an operator in neither table is reported as unknown, so the
check fails closed.

Used on every ONNX the project writes (FP32, FP16, INT8 with explicit Q/DQ). A problem names the
node and says what TensorRT will refuse. ``check_onnx_for_tensorrt`` returns the problems; an
empty list means nothing known stands in the way (the real parser remains the final word).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Problem", "check_onnx_for_tensorrt", "format_problems", "OPSET_RANGE", "SUPPORTED_OPS", "UNSUPPORTED_OPS"]

# ONNX TensorProto data types
F32, U8, I8, U16, I16, I32, I64, STR, BOOL, F16, F64, U32, U64, C64, C128, BF16 = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16
FP8 = {17, 18, 19, 20}  # FLOAT8E4M3FN, FLOAT8E4M3FNUZ, FLOAT8E5M2, FLOAT8E5M2FNUZ
U4, I4, FP4 = 21, 22, 23
TYPE_NAMES = {F32: "float32", U8: "uint8", I8: "int8", U16: "uint16", I16: "int16", I32: "int32", I64: "int64",
              STR: "string", BOOL: "bool", F16: "float16", F64: "float64", U32: "uint32", U64: "uint64",
              C64: "complex64", C128: "complex128", BF16: "bfloat16", 17: "float8e4m3fn", 18: "float8e4m3fnuz",
              19: "float8e5m2", 20: "float8e5m2fnuz", U4: "uint4", I4: "int4", FP4: "float4e2m1"}

#: Supported default-domain opsets per TensorRT major version (TensorRT 10.0: 9..20; 8.6: ..17).
OPSET_RANGE = {8: (7, 17), 9: (9, 19), 10: (9, 20), 11: (9, 24)}

FLOAT = frozenset({F32, F16, BF16})
FLOAT_INT = FLOAT | {I32, I64}
ANY = FLOAT_INT | {BOOL}
QUANT = frozenset({I8, I4, U4} | FP8 | {FP4})  # allowed only as Q/DQ storage

#: op -> allowed types of the first (data) input; None = not type-checked
SUPPORTED_OPS: dict[str, frozenset | None] = {
    **{op: FLOAT for op in (
        "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "AveragePool", "BatchNormalization", "Ceil", "Celu",
        "Clip", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "Dropout", "Elu", "Erf", "Exp", "Floor", "Gelu",
        "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "GroupNormalization", "GRU", "HardSigmoid",
        "HardSwish", "Hardmax", "ImageScaler", "InstanceNormalization", "IsInf", "LayerNormalization",
        "LeakyRelu", "Log", "LogSoftmax", "LpNormalization", "LpPool", "LRN", "LSTM", "MatMul", "MaxPool",
        "MeanVarianceNormalization", "Mish", "ParametricSoftplus", "PRelu", "QuantizeLinear", "RandomNormal",
        "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Reciprocal", "Resize", "RNN", "Round",
        "ScaledTanh", "Selu", "Sigmoid", "Sin", "Sinh", "Softmax", "Softplus", "Softsign", "Sqrt", "Tan", "Tanh",
        "ThresholdedRelu", "Upsample", "Einsum", "GridSample", "RoiAlign", "NonMaxSuppression", "NonZero",
        "DeformConv")},
    **{op: FLOAT_INT for op in (
        "Abs", "Add", "ArgMax", "ArgMin", "DepthToSpace", "Div", "Equal", "Greater", "GreaterOrEqual", "Less",
        "LessOrEqual", "Max", "Mean", "Min", "Mod", "Mul", "Neg", "Pad", "Pow", "Range", "ReduceL1", "ReduceL2",
        "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum",
        "ReduceSumSquare", "Relu", "Shrink", "Sign", "SpaceToDepth", "Sub", "Sum", "TopK", "Scatter",
        "ScatterElements", "ScatterND", "IsNaN")},
    **{op: ANY for op in (
        "Concat", "Constant", "ConstantOfShape", "Expand", "EyeLike", "Flatten", "Gather", "GatherElements",
        "GatherND", "Identity", "If", "Loop", "OneHot", "Reshape", "ReverseSequence", "Scan", "Shape", "Size",
        "Slice", "Split", "Squeeze", "Tile", "Transpose", "Trilu", "Unsqueeze", "Where")},
    "Cast": FLOAT_INT | {U8, BOOL},
    "CastLike": FLOAT_INT | {U8, BOOL},
    "And": frozenset({BOOL}), "Or": frozenset({BOOL}), "Xor": frozenset({BOOL}), "Not": frozenset({BOOL}),
    "DequantizeLinear": QUANT,
    "BlackmanWindow": None, "HammingWindow": None, "HannWindow": None,
}

#: explicitly unsupported by the parser (operators.md "N")
UNSUPPORTED_OPS = frozenset({
    "AffineGrid", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor", "Col2Im",
    "CenterCropPad", "Compress", "ConcatFromSequence", "ConvInteger", "DFT", "Det", "DynamicQuantizeLinear",
    "ImageDecoder", "MatMulInteger", "MaxRoiPool", "MaxUnpool", "MelWeightMatrix", "Multinomial",
    "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement", "OptionalHasElement", "QLinearConv",
    "QLinearMatMul", "RegexFullMatch", "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase",
    "SequenceInsert", "SequenceLength", "SequenceMap", "SoftmaxCrossEntropyLoss", "SplitToSequence",
    "StringConcat", "StringNormalizer", "StringSplit", "TfIdfVectorizer", "Unique",
})

RESIZE_COORD_MODES = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
RESIZE_MODES = {"nearest", "linear"}
RESIZE_NEAREST_MODES = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
PAD_MODES = {"constant", "reflect", "edge", "wrap"}
#: types TensorRT takes as network inputs/outputs
IO_TYPES = FLOAT_INT | {U8, BOOL}
#: types TensorRT cannot represent at all
BAD_TYPES = {STR, U16, I16, U32, U64, C64, C128, F64}
#: ops whose "axes" (attribute or second input) must be constants
AXES_INPUT_OPS = {"ReduceL1": 1, "ReduceL2": 1, "ReduceLogSum": 1, "ReduceLogSumExp": 1, "ReduceMax": 1,
                  "ReduceMean": 1, "ReduceMin": 1, "ReduceProd": 1, "ReduceSum": 1, "ReduceSumSquare": 1,
                  "Squeeze": 1, "Unsqueeze": 1}


@dataclass(frozen=True)
class Problem:
    """One thing the TensorRT parser would refuse: which node (``"<graph>"`` for the model itself),
    its op type, and why."""

    node: str
    op_type: str
    message: str

    def __str__(self) -> str:
        if self.node == "<graph>":
            return f"model: {self.message}"
        return f"node {self.node!r} ({self.op_type}): {self.message}"


def format_problems(problems: list[Problem], limit: int = 5) -> str:
    """One line naming the first ``limit`` problems."""
    shown = "; ".join(str(p) for p in problems[:limit])
    more = f"; and {len(problems) - limit} more" if len(problems) > limit else ""
    return shown + more


def _attrs(node) -> dict:
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _load(model_or_path):
    import onnx

    if isinstance(model_or_path, (str, Path)):
        return onnx.load(str(model_or_path), load_external_data=False)
    return model_or_path


def check_onnx_for_tensorrt(model_or_path, trt_major: int = 10, max_opset: int | None = None) -> list[Problem]:
    """Problems the TensorRT ``trt_major`` ONNX parser would have with this model ([] = none known).

    Checks: opset range and domains; every operator against :data:`SUPPORTED_OPS` /
    :data:`UNSUPPORTED_OPS`; tensor types (no float64, strings, 16-bit or unsigned-32/64 ints;
    uint8 only as network IO; INT8/INT4/FP8 only as Q/DQ storage); Resize coordinate, interpolation
    and nearest modes and constant sizes/scales; 2D/3D pooling without dilation; Q/DQ zero points
    all zero, INT8/FP8/INT4 typed, constant scales (per-tensor or per-axis); constant axes where the
    parser needs them; Dropout not training; TopK K constant and < 3840.

    The steps, in order: :func:`_check_opset`, :func:`_graph_facts` (types, constants, producers
    and consumers of every tensor), :func:`_check_io`, :func:`_check_tensor_types`, then
    :func:`_check_node` on every node (and every node of the model's functions).
    """
    if trt_major not in OPSET_RANGE:
        from .errors import UserError

        raise UserError(f"no TensorRT support table for major version {trt_major}; known: {sorted(OPSET_RANGE)}")
    model = _load(model_or_path)
    facts = _graph_facts(model)
    problems = _check_opset(model, trt_major, max_opset) + _check_io(model.graph, facts) + _check_tensor_types(facts)

    def is_const(name: str) -> bool:
        return name in facts.consts

    for node in model.graph.node:
        problems.extend(_check_node(node, facts.types, facts.consts, is_const, trt_major))
    for fn in model.functions:
        for node in fn.node:
            problems.extend(_check_node(node, facts.types, facts.consts, is_const, trt_major,
                                        scope=f"function {fn.name}: "))
    return problems


def _check_opset(model, trt_major: int, max_opset: int | None) -> list[Problem]:
    """The default-domain opset is imported and within what TensorRT ``trt_major`` parses."""
    lo, hi = OPSET_RANGE[trt_major]
    if max_opset is not None:
        hi = int(max_opset)
    opset = None
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            opset = imp.version  # other declared domains matter only where a node uses them (checked per node)
    if opset is None:
        return [Problem("<graph>", "", "no default ONNX opset imported")]
    if not lo <= opset <= hi:
        return [Problem("<graph>", "", f"opset {opset} is outside the range TensorRT {trt_major} parses "
                                       f"({lo}..{hi}); export with --opset {min(max(opset, lo), hi)}")]
    return []


@dataclass
class _Facts:
    """What the checks need to know about every tensor of a graph."""

    types: dict  # tensor name -> ONNX elem type (inferred where the graph does not say)
    consts: dict  # tensor name -> value, for initializers and Constant outputs
    inits: dict  # initializer name -> TensorProto
    producers: dict  # tensor name -> node
    consumers: dict  # tensor name -> [node, ...]
    io_names: set  # graph input and output names


def _graph_facts(model) -> _Facts:
    """Types (from ONNX shape inference where it works), constants, producers and consumers."""
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True).graph
    except Exception:  # noqa: BLE001 - shape inference is a help, not a requirement
        inferred = graph
    types: dict[str, int] = {}
    for vi in list(inferred.value_info) + list(inferred.input) + list(inferred.output):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    inits = {t.name: t for t in graph.initializer}
    for t in graph.initializer:
        types[t.name] = t.data_type
    consts: dict[str, np.ndarray] = {}
    for name, t in inits.items():
        if not t.external_data:
            try:
                consts[name] = numpy_helper.to_array(t)
            except Exception:  # noqa: BLE001
                pass
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            _constant_facts(node, types, consts)
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return _Facts(types=types, consts=consts, inits=inits, producers={o: n for n in graph.node for o in n.output},
                  consumers=consumers, io_names={v.name for v in graph.input} | {v.name for v in graph.output})


def _constant_facts(node, types: dict, consts: dict) -> None:
    """The type (and value, where it is a tensor or ints) of a Constant node's output."""
    from onnx import numpy_helper

    a = _attrs(node)
    if "value" in a:
        consts[node.output[0]] = numpy_helper.to_array(a["value"])
        types[node.output[0]] = a["value"].data_type
        return
    for key in ("value_float", "value_floats"):
        if key in a:
            types[node.output[0]] = F32
    for key in ("value_int", "value_ints"):
        if key in a:
            types[node.output[0]] = I64
            consts[node.output[0]] = np.asarray(a[key], np.int64)


def _check_io(graph, facts: _Facts) -> list[Problem]:
    """Graph inputs and outputs are tensors of a type TensorRT takes as network IO."""
    problems = []
    for v in list(graph.input) + list(graph.output):
        if v.name in facts.inits:
            continue
        t = v.type.tensor_type.elem_type if v.type.HasField("tensor_type") else None
        if t is None:
            problems.append(Problem("<graph>", "", f"input/output {v.name!r} is not a tensor (sequences, maps and "
                                                   f"optionals are unsupported)"))
        elif t not in IO_TYPES:
            problems.append(Problem("<graph>", "", f"input/output {v.name!r} has type {TYPE_NAMES.get(t, t)}, "
                                                   f"which TensorRT does not take as network IO"))
    return problems


def _check_tensor_types(facts: _Facts) -> list[Problem]:
    """Tensor types anywhere in the graph: none TensorRT lacks; uint8 only as IO (or into a
    DequantizeLinear); quantized types only between QuantizeLinear and DequantizeLinear."""
    problems = []

    def at(name: str, message: str) -> None:
        owner = facts.producers.get(name)
        problems.append(Problem(owner.name if owner is not None else "<graph>",
                                owner.op_type if owner is not None else "", message))

    for name, t in facts.types.items():  # one problem per tensor at most
        users = facts.consumers.get(name, [])
        if t in BAD_TYPES:
            at(name, f"tensor {name!r} has type {TYPE_NAMES.get(t, t)}, which TensorRT does not support")
        elif t == U8 and name not in facts.io_names:
            if not (users and all(u.op_type == "DequantizeLinear" for u in users)):
                at(name, f"tensor {name!r} is uint8 inside the network; TensorRT takes uint8 only as network input "
                         f"or output")
        elif t in QUANT:
            owner = facts.producers.get(name)
            from_q = owner is not None and owner.op_type == "QuantizeLinear"
            to_dq = bool(users) and all(u.op_type == "DequantizeLinear" for u in users)
            is_zero_point = bool(users) and all(u.op_type in ("QuantizeLinear", "DequantizeLinear")
                                                and len(u.input) > 2 and u.input[2] == name for u in users)
            if not (from_q or to_dq or is_zero_point):
                at(name, f"tensor {name!r} is {TYPE_NAMES.get(t, t)} outside QuantizeLinear/DequantizeLinear; "
                         f"TensorRT supports quantized types only as explicit Q/DQ")
    return problems


def _check_node(node, types, consts, is_const, trt_major: int, scope: str = "") -> list[Problem]:
    """One node: its domain and operator against the support tables, its first input's type, then
    the operator's own rules (:data:`_OP_RULES`)."""
    probs: list[Problem] = []
    name = node.name or f"<unnamed {node.op_type}>"
    op = node.op_type

    def bad(msg: str) -> None:
        probs.append(Problem(name, op, scope + msg))

    if node.domain not in ("", "ai.onnx"):
        bad(f"custom domain {node.domain!r}: TensorRT needs a plugin for it")
        return probs
    if op in UNSUPPORTED_OPS:
        bad(f"operator {op} is not supported by the TensorRT {trt_major} ONNX parser")
        return probs
    if op not in SUPPORTED_OPS:
        bad(f"operator {op} is not in the TensorRT {trt_major} ONNX parser support matrix")
        return probs
    allowed = SUPPORTED_OPS[op]
    if allowed is not None and node.input and node.input[0]:
        t = types.get(node.input[0])
        if t is not None and t not in allowed:
            bad(f"input type {TYPE_NAMES.get(t, t)} is not supported for {op} "
                f"(supported: {', '.join(sorted(TYPE_NAMES.get(x, str(x)) for x in allowed))})")
    rule = _OP_RULES.get(op) or (_check_axes_input if op in AXES_INPUT_OPS else None)
    if rule is not None:
        rule(node, _attrs(node), types, consts, is_const, bad)
    return probs


# ---- the rules of single operators: rule(node, attributes, types, consts, is_const, bad)

def _check_resize(node, a, types, consts, is_const, bad) -> None:
    ctm = a.get("coordinate_transformation_mode", "half_pixel")
    if ctm not in RESIZE_COORD_MODES:
        bad(f"coordinate_transformation_mode {ctm!r} is unsupported (supported: {', '.join(sorted(RESIZE_COORD_MODES))})")
    mode = a.get("mode", "nearest")
    if mode not in RESIZE_MODES:
        bad(f"mode {mode!r} is unsupported (supported: nearest, linear)")
    nm = a.get("nearest_mode", "round_prefer_floor")
    if mode == "nearest" and nm not in RESIZE_NEAREST_MODES:
        bad(f"nearest_mode {nm!r} is unsupported")
    if int(a.get("antialias", 0)):
        bad("antialiasing is not supported")
    if a.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        bad(f"keep_aspect_ratio_policy {a['keep_aspect_ratio_policy']!r} is unsupported (only 'stretch')")
    # roi (input 1) is ignored outside tf_crop_and_resize; non-constant sizes with axes are interlaced
    # at run time by the parser (supported)
    scales = node.input[2] if len(node.input) > 2 else ""
    sizes = node.input[3] if len(node.input) > 3 else ""
    axes = a.get("axes")
    if scales and not sizes and not is_const(scales) and axes is not None and list(axes) != list(range(len(axes))):
        bad("a non-constant scales tensor with a non-trivial axes attribute is unsupported")


def _check_pool(node, a, types, consts, is_const, bad) -> None:
    k = a.get("kernel_shape", [])
    if len(k) not in (2, 3):
        bad(f"{len(k)}D pooling is unsupported (2D or 3D only)")
    if any(int(d) != 1 for d in a.get("dilations", [])):
        bad("dilations other than 1 are unsupported")
    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
        bad("the Indices output is unsupported")


def _check_qdq(node, a, types, consts, is_const, bad) -> None:
    """Q/DQ: constant positive finite scales, per-tensor or per-axis; zero points constant, zero and
    of a quantized type; no uint8 quantization."""
    op = node.op_type
    scale = node.input[1] if len(node.input) > 1 else ""
    if scale and not is_const(scale):
        bad(f"scale {scale!r} must be a constant (initializer)")
    elif scale:
        s = consts[scale]
        if s.ndim > 1 and "block_size" not in a:
            bad(f"scale has rank {s.ndim}; only per-tensor or per-axis (1-D) scales are supported")
        if np.any(s <= 0) or not np.all(np.isfinite(s)):
            bad("scales must be positive and finite")
    zp = node.input[2] if len(node.input) > 2 else ""
    if zp:
        if not is_const(zp):
            bad(f"zero point {zp!r} must be a constant (initializer)")
        elif np.any(consts[zp].astype(np.float64) != 0):
            bad("zero point must be 0 (TensorRT quantization is symmetric)")
        zt = types.get(zp)
        if zt is not None and zt not in QUANT:
            bad(f"zero point type {TYPE_NAMES.get(zt, zt)} is unsupported (INT8, FP8 or INT4)")
    elif op == "QuantizeLinear" and int(a.get("output_dtype", 0)) in (0, U8):
        bad("no int8 zero point: the output would be uint8, which TensorRT does not quantize to; "
            "give an int8 zero point of 0")
    if op == "DequantizeLinear" and node.input and node.input[0] and types.get(node.input[0]) == U8:
        bad("uint8 input: TensorRT dequantizes INT8/FP8/INT4 only")


def _check_dropout(node, a, types, consts, is_const, bad) -> None:
    if len(node.input) > 2 and node.input[2]:
        t = node.input[2]
        if not is_const(t) or bool(np.asarray(consts[t]).any()):
            bad("training_mode must be a constant false")


def _check_topk(node, a, types, consts, is_const, bad) -> None:
    k = node.input[1] if len(node.input) > 1 else ""
    if not is_const(k):
        bad("K must be a constant")
    elif int(np.asarray(consts[k]).ravel()[0]) >= 3840:
        bad("K must be less than 3840")
    if int(a.get("sorted", 1)) != 1:
        bad("sorted must be 1")


def _check_arg(node, a, types, consts, is_const, bad) -> None:
    if int(a.get("select_last_index", 0)):
        bad("select_last_index=1 is unsupported")


def _check_pad(node, a, types, consts, is_const, bad) -> None:
    mode = a.get("mode", "constant")
    if mode not in PAD_MODES:
        bad(f"pad mode {mode!r} is unsupported")


def _check_conv(node, a, types, consts, is_const, bad) -> None:
    k = a.get("kernel_shape")
    if k is not None and len(k) not in (1, 2, 3):
        bad(f"{len(k)}D convolution is unsupported")


def _check_axes_input(node, a, types, consts, is_const, bad) -> None:
    idx = AXES_INPUT_OPS[node.op_type]
    if len(node.input) > idx and node.input[idx] and not is_const(node.input[idx]):
        bad("axes must be a constant")


def _check_cast(node, a, types, consts, is_const, bad) -> None:
    to = int(a.get("to", 0))
    if to not in IO_TYPES:
        bad(f"cast to {TYPE_NAMES.get(to, to)} is unsupported")


def _check_scatter_nd(node, a, types, consts, is_const, bad) -> None:
    if a.get("reduction", "none") != "none":
        bad("ScatterND reduction other than 'none' is unsupported")


#: operator -> its rule (operators taking an axes input use :func:`_check_axes_input`)
_OP_RULES = {"Resize": _check_resize, "AveragePool": _check_pool, "MaxPool": _check_pool, "LpPool": _check_pool,
             "QuantizeLinear": _check_qdq, "DequantizeLinear": _check_qdq, "Dropout": _check_dropout,
             "TopK": _check_topk, "ArgMax": _check_arg, "ArgMin": _check_arg, "Pad": _check_pad,
             "Conv": _check_conv, "ConvTranspose": _check_conv, "Cast": _check_cast, "ScatterND": _check_scatter_nd}
