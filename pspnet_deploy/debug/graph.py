"""The layer plan of a layerwise comparison: which tensors are compared, in network order, and the
PSPNet module each one belongs to.

A layer is one compute node's output tensor, named as in the ONNX export. ``pspnet-export`` names
every node ``<module scope>/<Op>`` from the dynamo exporter's ``pkg.torch.onnx.name_scopes``
(``backbone.layer1.0.bn1/Conv`` is the Conv that BatchNorm ``bn1`` was folded into); the FP16 and
INT8 files keep those node and tensor names (they only add Cast and Q/DQ nodes), and OpenVINO keeps
the ONNX tensor names on its op outputs. So the *tensor name* is the key on every backend, the
*node name* is what a user sees, and the *module* is:

- for a Conv: its weight's name (``model.backbone.layer3.2.conv1.weight`` -> ``backbone.layer3.2.conv1``),
  followed through DequantizeLinear / Cast;
- otherwise the node's scope (``ppm.pools.2.static_pool/MatMul_w`` -> ``ppm.pools.2``);
- the final resize, which has no scope, is ``upsample``.

A PyTorch model is matched through the same plan: each leaf module's forward hook (the k-th call of
that module) is paired with the k-th node of its scope, or with the scope's last node when the
module runs once and has several nodes (the static pool). Leaf modules with no node (a Conv whose
BatchNorm was folded, Dropout) have nothing to pair and are skipped; nodes outside any leaf module
(Add, Concat, the pyramid's Resize) are compared only between graph backends.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

#: nodes that are not layers of their own (they only change the storage of a tensor)
TRANSPARENT_OPS = {"QuantizeLinear", "DequantizeLinear", "Cast", "Identity", "Constant"}
#: module groups for summaries and the profile, in network order
GROUPS = ("stem", "layer1", "layer2", "layer3", "layer4", "ppm", "head", "upsampling")


@dataclass
class Layer:
    node: str  # node name (ONNX / OpenVINO friendly name), or ``module#k`` for PyTorch-only plans
    tensor: str  # output tensor name: the key on every backend
    op: str
    module: str
    scope: str  # the node's scope as named by the export (hook pairing)
    inputs: list[str] = field(default_factory=list)  # tensor names of the nearest compared ancestors
    shape: list | None = None  # per-image output shape when known (memory estimate)


def node_scope(name: str) -> str:
    scope = name.split("/")[0] if "/" in name else ""
    return re.sub(r"\.static_pool$", "", scope)


def group_of(module: str) -> str:
    """Module group: stem, layer1-4, ppm, head, upsampling."""
    m = module[len("model."):] if module.startswith("model.") else module
    if m.startswith(("backbone.stem", "backbone.maxpool", "backbone.conv1", "backbone.bn1", "backbone.relu")):
        return "stem"
    hit = re.match(r"backbone\.(layer[1-4])", m)
    if hit:
        return hit.group(1)
    if m.startswith("ppm"):
        return "ppm"
    if m.startswith("head"):
        return "head"
    if m in ("upsample", "output") or "upsample" in m or "Resize" in m:
        return "upsampling"
    return "stem" if m in ("input",) else "other"


def _weight_module(name: str) -> str | None:
    """``model.backbone.layer1.0.conv1.weight`` (or its ``_quantized`` / ``_DequantizeLinear...``
    forms) -> ``backbone.layer1.0.conv1``; None for anything else (a bias is not a weight)."""
    hit = re.match(r"^(?:model\.)?(.+)\.weight(?:$|_quantized|_DequantizeLinear|_fp16|_cast)", name)
    return hit.group(1) if hit else None


def onnx_plan(model) -> list[Layer]:
    """Layers of an ONNX graph (FP32, FP16 or Q/DQ INT8), in graph (topological) order."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    outputs = {o.name for o in g.output}
    layers: list[Layer] = []
    tensors: set[str] = set()

    def through(t: str) -> str:
        """Follow a tensor back through transparent nodes to the tensor of a layer (or an input)."""
        seen = 0
        while t in producer and producer[t].op_type in TRANSPARENT_OPS and producer[t].input and seen < 16:
            t = producer[t].input[0]
            seen += 1
        return t

    for n in g.node:
        if n.op_type in TRANSPARENT_OPS or not n.output:
            continue
        scope = node_scope(n.name)
        module = scope
        if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(n.input) > 1:
            w = _weight_module(through(n.input[1])) or _weight_module(n.input[1])
            if w and not w.endswith(("ph", "pwt")):
                module = w
        if not module:
            module = "upsample" if n.output[0] in outputs and n.op_type == "Resize" else (n.name or n.op_type)
        ins = []
        for i in n.input:
            if not i:
                continue
            src = through(i)
            if src in tensors and src not in ins:
                ins.append(src)
        layers.append(Layer(n.name or n.output[0], n.output[0], n.op_type, module, scope, ins))
        tensors.add(n.output[0])
    return layers


def attach_shapes(layers: list[Layer], model) -> None:
    """Per-image output shapes from ONNX shape inference (unknown dims left None)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - shapes are only for the memory estimate
        return
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    for layer in layers:
        s = shapes.get(layer.tensor)
        if s:
            layer.shape = [1] + list(s[1:])


def elem_types(model) -> dict[str, int]:
    """tensor name -> ONNX element type (from shape inference), for extra graph outputs."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        out[vi.name] = vi.type.tensor_type.elem_type
    return out


def pair_hooks(layers: list[Layer], calls: dict[str, int]) -> dict[tuple[str, int], str]:
    """(leaf module name, call index) -> tensor name, by the rule in the module docstring.
    ``calls``: how many times each leaf module ran in one forward pass."""
    by_scope: dict[str, list[Layer]] = {}
    for layer in layers:
        if layer.scope:
            by_scope.setdefault(layer.scope, []).append(layer)
    out = {}
    for mod, n in calls.items():
        nodes = by_scope.get(mod)
        if not nodes:
            continue
        if len(nodes) == n:
            for k, layer in enumerate(nodes):
                out[(mod, k)] = layer.tensor
        elif n == 1:
            out[(mod, 0)] = nodes[-1].tensor
    return out


def sequential_plan(names: list[tuple[str, str, str]]) -> list[Layer]:
    """A plan from an ordered list of (node, tensor, op) with no graph: each layer's input is the
    layer before it (the nearest ancestor in a chain); modules from the node scope."""
    layers = []
    prev = None
    for node, tensor, op in names:
        scope = node_scope(node) if "/" in node else node.split("#")[0]
        layers.append(Layer(node, tensor, op, scope or node, scope, [prev] if prev else []))
        prev = tensor
    return layers
