"""ONNX graph facts that export and the precision steps share.

- the names of the nodes that implement the exact static pyramid pooling (export names them,
  FP16 conversion and INT8 calibration keep them FP32);
- pruning of dead nodes, initializers and value_info;
- the rules of a clean static graph (:func:`check_static_graph`) and the checks every written
  ONNX passes (:func:`run_checks`: ``onnx.checker``, those rules, the TensorRT parser matrix);
- writing ``pspnet.*`` metadata;
- the uint8 image input (:func:`add_uint8_input` / :func:`strip_uint8_input`): the one builder of
  the in-graph preprocessing of ``pspnet-export --input-kind uint8``. The precision steps (FP16,
  INT8 calibration) work on the float body and put the prefix back, so the uint8 path is never
  quantized or cast to FP16.
"""
from __future__ import annotations

import re
from pathlib import Path

from .card import write_onnx_metadata  # noqa: F401 - re-exported: the card owns the ONNX metadata format
from .errors import UserError

__all__ = ["BANNED_OPS", "SHAPE_INPUTS", "POOL_OPS", "MAX_PROTO_BYTES", "static_pool_node_names", "prune",
           "check_static_graph", "run_checks", "write_onnx_metadata", "add_uint8_input", "strip_uint8_input",
           "has_uint8_input", "UINT8_PREFIX"]

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


#: node and initializer name prefix of the in-graph preprocessing of a uint8 model
UINT8_PREFIX = "input_prep/"
#: the float N x 3 x H x W tensor the uint8 prefix hands to the network
UINT8_NCHW = "input_prep/nchw"


def has_uint8_input(model) -> bool:
    """True when the graph's image input is uint8 (an ``--input-kind uint8`` export)."""
    from onnx import TensorProto

    inits = {t.name for t in model.graph.initializer}
    ins = [v for v in model.graph.input if v.name not in inits]
    return bool(ins) and ins[0].type.tensor_type.elem_type == TensorProto.UINT8


def add_uint8_input(model, preprocess: dict, channel_order: str = "RGB") -> None:
    """Make ``model``'s float N x 3 x H x W image input a uint8 N x H x W x 3 one in ``channel_order``
    (RGB or BGR), in place: Cast, a channel flip when ``channel_order`` differs from the
    preprocessing's, Sub mean, Div std (the float32 ops of :meth:`Preprocess.normalize`, in its
    order, so FP32 results match the NumPy preprocessing bit for bit) and Transpose to NCHW."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from .data.preprocess import Preprocess

    order = channel_order.upper()
    if order not in ("RGB", "BGR"):
        raise UserError(f"channel order must be RGB or BGR, got {channel_order!r}")
    pre = Preprocess.from_dict(preprocess)
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    inp = [v for v in graph.input if v.name not in inits][0]
    t = inp.type.tensor_type
    if t.elem_type != TensorProto.FLOAT or len(t.shape.dim) != 4:
        raise ValueError(f"input {inp.name!r} is not a float N x 3 x H x W tensor")
    name = inp.name
    for node in graph.node:
        for k, i in enumerate(node.input):
            if i == name:
                node.input[k] = UINT8_NCHW
    dims = list(t.shape.dim)
    P = UINT8_PREFIX
    nodes = [helper.make_node("Cast", [name], [P + "float"], to=TensorProto.FLOAT, name=P + "Cast")]
    x = P + "float"
    if order != pre.channel_order.upper():
        for nm, v in (("starts", [-1]), ("ends", [-(2 ** 62)]), ("axes", [3]), ("steps", [-1])):
            graph.initializer.append(numpy_helper.from_array(np.asarray(v, np.int64), P + nm))
        nodes.append(helper.make_node("Slice", [x, P + "starts", P + "ends", P + "axes", P + "steps"], [P + "flip"],
                                      name=P + "Slice"))
        x = P + "flip"
    graph.initializer.append(numpy_helper.from_array(np.asarray(pre.mean, np.float32).reshape(1, 1, 1, 3), P + "mean"))
    graph.initializer.append(numpy_helper.from_array(np.asarray(pre.std, np.float32).reshape(1, 1, 1, 3), P + "std"))
    nodes += [helper.make_node("Sub", [x, P + "mean"], [P + "centred"], name=P + "Sub"),
              helper.make_node("Div", [P + "centred", P + "std"], [P + "normalized"], name=P + "Div"),
              helper.make_node("Transpose", [P + "normalized"], [UINT8_NCHW], perm=[0, 3, 1, 2], name=P + "Transpose")]
    body = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + body)
    t.elem_type = TensorProto.UINT8
    _permute_dims(t, (0, 2, 3, 1))  # N x 3 x H x W -> N x H x W x 3


def _permute_dims(t, order) -> None:
    """Reorder the shape dims of tensor type ``t`` (symbolic names kept)."""
    dims = list(t.shape.dim)
    copies = [type(d)() for d in dims]
    for c, k in zip(copies, order):
        c.CopyFrom(dims[k])
    del t.shape.dim[:]
    t.shape.dim.extend(copies)


def strip_uint8_input(model) -> bool:
    """Undo :func:`add_uint8_input` in place (the float N x 3 x H x W body the precision steps work
    on); returns False (model untouched) when the input is not uint8."""
    from onnx import TensorProto

    if not has_uint8_input(model):
        return False
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    inp = [v for v in graph.input if v.name not in inits][0]
    if not any(n.name.startswith(UINT8_PREFIX) for n in graph.node):
        raise UserError(f"input {inp.name!r} is uint8 but the graph has no {UINT8_PREFIX}* preprocessing; "
                        f"export it with pspnet-export --input-kind uint8")
    body = [n for n in graph.node if not n.name.startswith(UINT8_PREFIX)]
    for node in body:
        for k, i in enumerate(node.input):
            if i == UINT8_NCHW:
                node.input[k] = inp.name
    del graph.node[:]
    graph.node.extend(body)
    keep = [t for t in graph.initializer if not t.name.startswith(UINT8_PREFIX)]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    vis = [v for v in graph.value_info if not v.name.startswith(UINT8_PREFIX)]
    del graph.value_info[:]
    graph.value_info.extend(vis)
    t = inp.type.tensor_type
    _permute_dims(t, (0, 3, 1, 2))  # N x H x W x 3 -> N x 3 x H x W
    t.elem_type = TensorProto.FLOAT
    return True


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
        hw_static = dims[1:2] if dynamic else dims[1:]
        if len(dims) != 4 or not all(d.HasField("dim_value") for d in hw_static):
            out.append(f"input {v.name!r} must be N x 3 x H x W (N x H x W x 3 uint8) with static C"
                       f"{'' if dynamic else ', H, W'}")
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

