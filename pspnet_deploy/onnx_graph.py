"""ONNX graph facts that export and the precision steps share.

- the names of the nodes that implement the exact static pyramid pooling (export names them,
  FP16 conversion and INT8 calibration keep them FP32);
- pruning of dead nodes, initializers and value_info;
- the rules of a clean static graph (:func:`check_static_graph`) and the checks every written
  ONNX passes (:func:`run_checks`: ``onnx.checker``, those rules, the TensorRT parser matrix);
- writing ``pspnet.*`` metadata.
"""
from __future__ import annotations

import re
from pathlib import Path

from .card import write_onnx_metadata  # noqa: F401 - re-exported: the card owns the ONNX metadata format
from .errors import UserError

__all__ = ["BANNED_OPS", "SHAPE_INPUTS", "POOL_OPS", "MAX_PROTO_BYTES", "static_pool_node_names", "prune",
           "check_static_graph", "run_checks", "write_onnx_metadata"]

MAX_PROTO_BYTES = 2 * 1024 ** 3
#: operators a clean static PSPNet graph must not contain (gathers, control flow, shape arithmetic)
BANNED_OPS = frozenset({"Gather", "GatherND", "GatherElements", "Loop", "If", "Scan", "Shape", "Size",
                        "ConstantOfShape", "Range", "NonZero", "Compress", "Unique", "SequenceConstruct",
                        "SequenceAt", "SplitToSequence", "ConcatFromSequence"})
#: node inputs that hold shapes: they must be constants in a static graph (op -> input indices)
SHAPE_INPUTS = {"Reshape": (1,), "Expand": (1,), "Tile": (1,), "Slice": (1, 2, 3, 4), "Pad": (1, 2, 3),
                "Resize": (1, 2, 3), "Unsqueeze": (1,), "Squeeze": (1,), "Split": (1,)}
#: op types of the static pyramid pooling nodes (named ``ppm.pools.<i>.static_pool/<Op>`` by export)
POOL_OPS = ("MatMul", "AveragePool", "GlobalAveragePool")
_POOL_NAME = re.compile(r"^ppm\.(pools\.(\d+)\.static_pool|dynamic_pool)/")
#: what a dynamic-shape graph (symbolic H and W) may compute from its input's shape
DYNAMIC_SHAPE_OPS = frozenset({"Shape", "Range"})


def static_pool_node_names(onnx_model) -> list[str]:
    """Names of the nodes that implement the static pyramid pooling (``ppm.pools.<i>.static_pool/*``:
    AveragePool, or the two MatMuls of the exact averaging), in graph order. INT8 calibration
    keeps these out of quantization. ``onnx_model``: ModelProto or path."""
    import onnx

    if isinstance(onnx_model, (str, Path)):
        onnx_model = onnx.load(str(onnx_model), load_external_data=False)
    return [n.name for n in onnx_model.graph.node if n.op_type in POOL_OPS and _POOL_NAME.match(n.name)]


def prune(graph) -> None:
    """Drop nodes, initializers and value_info no graph output depends on."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output if o):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    vis = [v for v in graph.value_info if v.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(vis)


def check_static_graph(model, expected_pool_nodes: int | None = None) -> list[str]:
    """Rules for a clean static graph; returns the violations ([] = clean).

    No gathers, control flow or shape arithmetic (:data:`BANNED_OPS`); shape inputs (Reshape,
    Slice, Resize sizes, ...) constant; Resize bilinear (``align_corners``, or ``half_pixel`` for
    models with ``align_corners=False`` such as converted mmseg ones) with constant sizes; every weight inline (no external data); spatial input dims static; under 2 GB.
    A dynamic-shape graph (input H and W both symbolic) may use Shape and Range and computed
    shape inputs (its pooling windows and resize sizes come from the input's shape); the rest holds.
    """
    graph = model.graph
    consts = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    out = []
    # a dynamic-shape graph (symbolic input H and W, pspnet-export --dynamic-shape) computes its
    # pooling windows and resize sizes from shapes: Shape/Range and computed shape inputs allowed
    dims = graph.input[0].type.tensor_type.shape.dim if graph.input else []
    dynamic = len(dims) == 4 and all(d.HasField("dim_param") for d in dims[2:])
    for node in graph.node:
        if dynamic and node.op_type in DYNAMIC_SHAPE_OPS:
            continue
        if node.op_type in BANNED_OPS:
            out.append(f"node {node.name!r} is {node.op_type} (no gathers, control flow or shape arithmetic allowed)")
        for idx in () if dynamic else SHAPE_INPUTS.get(node.op_type, ()):
            if len(node.input) > idx and node.input[idx] and node.input[idx] not in consts:
                out.append(f"node {node.name!r} ({node.op_type}) takes a computed shape input {node.input[idx]!r}")
        if node.op_type == "Resize":
            a = {x.name: x for x in node.attribute}
            mode = a["mode"].s.decode() if "mode" in a else "nearest"
            ctm = a["coordinate_transformation_mode"].s.decode() if "coordinate_transformation_mode" in a else "half_pixel"
            if mode != "linear" or ctm not in ("align_corners", "half_pixel", "pytorch_half_pixel"):
                out.append(f"node {node.name!r} Resize is {mode}/{ctm}; expected linear/align_corners or half_pixel")
            if len(node.input) < 4 or not node.input[3]:
                out.append(f"node {node.name!r} Resize has no static sizes")
    for t in graph.initializer:
        if t.data_location == 1 or len(t.external_data):
            out.append(f"initializer {t.name!r} is stored as external data; the file must be self-contained")
            break
    for v in graph.input:
        dims = v.type.tensor_type.shape.dim
        if len(dims) != 4 or not all(d.HasField("dim_value") for d in dims[1:2 if dynamic else 4]):
            out.append(f"input {v.name!r} must be N x 3 x H x W with static C{'' if dynamic else ', H, W'}")
    if model.ByteSize() >= MAX_PROTO_BYTES:
        out.append("model is 2 GB or more; ONNX protobuf cannot hold it in one file")
    if expected_pool_nodes is not None:
        n = len(static_pool_node_names(model))
        if n != expected_pool_nodes:
            out.append(f"pyramid pooling has {n} nodes, expected {expected_pool_nodes}")
    return out


def run_checks(model, trt_major: int, expected_pool_nodes: int | None, what: str) -> dict:
    import onnx

    from .parser_check import check_onnx_for_tensorrt, format_problems

    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # noqa: BLE001 - onnx raises several types
        raise RuntimeError(f"{what}: onnx.checker rejects the exported graph: {str(e).splitlines()[0][:300]}") from e
    static = check_static_graph(model, expected_pool_nodes)
    if static:
        raise RuntimeError(f"{what}: graph is not clean and static: " + "; ".join(static[:5]))
    problems = check_onnx_for_tensorrt(model, trt_major=trt_major)
    if problems:
        raise UserError(f"{what}: TensorRT {trt_major} ONNX parser would reject {len(problems)} node(s): "
                        + format_problems(problems))
    return {"onnx_checker": "ok", "static_graph": [], "tensorrt_parser": {"trt_major": trt_major, "problems": []}}

