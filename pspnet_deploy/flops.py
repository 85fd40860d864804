"""Network FLOPs and the machine's measured FP32 peak, so a benchmark can say how much of it a model uses.

Convention: FLOPs = 2 x multiply-accumulates of the convolutions and matrix products (Conv,
ConvTranspose, MatMul, Gemm), per image. Element-wise ops, pooling, resizes and softmax/argmax are
not counted (well under 1 % of a PSPNet). Both counters follow this convention, so a checkpoint
and its ONNX export give the same number:

- :func:`torch_flops`: :class:`torch.utils.flop_counter.FlopCounterMode` over one forward pass of
  the model built on the ``meta`` device (shapes only: no weights, no arithmetic, instant);
- :func:`onnx_flops`: ONNX shape inference, then MACs of every Conv/ConvTranspose/MatMul/Gemm
  from its weight and output shapes (weights not loaded, so external-data and Q/DQ INT8 graphs
  work; the batch dimension is set to 1).

:func:`measure_fp32_peak` times large float32 matrix products (torch, same thread count as the
models) and reports the best rate: a measured practical peak, not a datasheet number.
"""
from __future__ import annotations

import time
from pathlib import Path

from .errors import UserError

COUNTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def torch_flops(model_config: dict, input_size: tuple[int, int], batch: int = 1) -> int:
    """FLOPs of one forward pass of the PSPNet described by ``model_config`` (deploy form, no aux)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .model import build_model

    h, w = (int(v) for v in input_size)
    with torch.device("meta"):
        model = build_model(model_config, aux=False).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.empty(batch, 3, h, w, device="meta"))
    return int(counter.get_total_flops())


def torch_module_flops(model, input_size: tuple[int, int], batch: int = 1) -> int:
    """FLOPs of any module's forward pass on a ``meta`` copy of it."""
    import copy

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    h, w = (int(v) for v in input_size)
    meta = copy.deepcopy(model).to("meta").eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(torch.empty(batch, 3, h, w, device="meta"))
    return int(counter.get_total_flops())


def _shape(vi) -> list | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            return None
    return dims


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def onnx_flops(path: str | Path, input_size: tuple[int, int] | None = None) -> dict:
    """Per-image FLOPs of an ONNX graph. Returns ``{"flops", "counted_nodes", "uncounted_nodes", "per_node",
    "method"}`` (``per_node``: node name -> its FLOPs).

    A symbolic batch is pinned to 1; symbolic spatial sizes of a 4-D input are pinned to
    ``input_size`` (H, W) when given. ``uncounted_nodes`` lists Conv/MatMul/Gemm nodes whose
    shapes could still not be inferred; then ``flops`` is a lower bound.
    """
    import onnx
    from onnx import shape_inference

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - onnx raises several types for bad files
        raise UserError(f"{path}: cannot read ONNX model ({type(e).__name__}); is it a valid .onnx file?") from e
    init_names = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:  # per image: pin a symbolic batch to 1
        if inp.name in init_names:
            continue
        dims = inp.type.tensor_type.shape.dim
        if len(dims) and not dims[0].HasField("dim_value"):
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1
        if input_size is not None and len(dims) == 4:
            for d, v in zip((dims[2], dims[3]), input_size):
                if not d.HasField("dim_value"):
                    d.ClearField("dim_param")
                    d.dim_value = int(v)
    batch = 1
    first = [i for i in model.graph.input if i.name not in init_names]
    if first and first[0].type.tensor_type.shape.dim and first[0].type.tensor_type.shape.dim[0].HasField("dim_value"):
        batch = max(1, int(first[0].type.tensor_type.shape.dim[0].dim_value))
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - fall back to whatever shapes the file already has
        inferred = model
    shapes: dict[str, list] = {}
    for i in inferred.graph.initializer:
        shapes[i.name] = [int(d) for d in i.dims]
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        s = _shape(vi)
        if s is not None:
            shapes[vi.name] = s
    # constants produced by Constant nodes (rare for weights, but cheap to support)
    for node in inferred.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    shapes[node.output[0]] = [int(d) for d in a.t.dims]

    macs = 0
    counted, uncounted = 0, []
    per_node: dict[str, int] = {}
    for node in inferred.graph.node:
        if node.op_type not in COUNTED_OPS:
            continue
        try:
            if node.op_type == "Conv":
                w, out = shapes[node.input[1]], shapes[node.output[0]]
                m = _prod(out[:1]) * _prod(out[2:]) * _prod(w)  # N*Ho*Wo * Cout*(Cin/g)*kh*kw
            elif node.op_type == "ConvTranspose":
                x, w = shapes[node.input[0]], shapes[node.input[1]]
                m = _prod(x[:1]) * _prod(x[2:]) * _prod(w)  # N*Hi*Wi * Cin*(Cout/g)*kh*kw
            elif node.op_type == "MatMul":
                a, out = shapes[node.input[0]], shapes[node.output[0]]
                m = _prod(out) * a[-1]
            else:  # Gemm
                a, out = shapes[node.input[0]], shapes[node.output[0]]
                trans_a = next((x.i for x in node.attribute if x.name == "transA"), 0)
                m = _prod(out) * (a[0] if trans_a else a[-1])
        except (KeyError, IndexError):
            uncounted.append(node.name or node.op_type)
            continue
        macs += m
        counted += 1
        per_node[node.name or node.output[0]] = int(2 * m // batch)
    return {"flops": int(2 * macs // batch), "counted_nodes": counted, "uncounted_nodes": uncounted,
            "per_node": per_node,
            "method": "2 x MACs of Conv/ConvTranspose/MatMul/Gemm from ONNX shape inference, per image"}


def engine_source_onnx(engine, strict: bool = False) -> Path | None:
    """The ONNX file an engine was built from (``engine``: its path or its card), if its sidecar
    names one that still exists and still has the sha256 the sidecar records (a changed ONNX is
    another graph: None, or with ``strict`` the contract's one-line refusal)."""
    from .card import ModelCard, check_engine_source, engine_source_mismatch, read_card

    card = engine if isinstance(engine, ModelCard) else read_card(engine)
    src = card.provenance.get("onnx_path")
    if isinstance(src, str):
        cand = Path(src) if Path(src).is_absolute() else Path(card.path).parent / src
        if cand.suffix == ".onnx" and cand.is_file():
            if strict:
                check_engine_source(card.path, cand, sidecar=card.sidecar)
            elif card.sidecar and engine_source_mismatch(card.sidecar, cand):
                return None
            return cand
    return None


def measure_fp32_peak(device: str = "cpu", size: int = 2048, repeats: int = 5, threads: int | None = None) -> dict:
    """Best float32 GFLOP/s of ``size`` x ``size`` torch matrix products on ``device``.

    CPU: at ``threads`` (default: torch's current setting, which is what the models use).
    CUDA: timed with CUDA events, TF32 switched off so the number is true FP32.
    """
    import torch

    if size <= 0 or repeats <= 0:
        raise UserError(f"peak benchmark needs a positive size and repeat count, got {size} and {repeats}")
    dev = torch.device(device)
    prev_threads = torch.get_num_threads()
    if threads and dev.type == "cpu":
        torch.set_num_threads(int(threads))
    flop = 2.0 * size ** 3
    best = 0.0
    try:
        g = torch.Generator(device="cpu").manual_seed(0)
        a = torch.randn(size, size, generator=g).to(dev)
        b = torch.randn(size, size, generator=g).to(dev)
        if dev.type == "cuda":
            prev_tf32 = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = False
            try:
                torch.mm(a, b)
                torch.cuda.synchronize(dev)
                for _ in range(repeats):
                    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    s.record()
                    torch.mm(a, b)
                    e.record()
                    e.synchronize()
                    best = max(best, flop / (s.elapsed_time(e) / 1e3))
            finally:
                torch.backends.cuda.matmul.allow_tf32 = prev_tf32
        else:
            torch.mm(a, b)  # warm-up
            for _ in range(repeats):
                t = time.perf_counter()
                torch.mm(a, b)
                best = max(best, flop / (time.perf_counter() - t))
        used = torch.get_num_threads() if dev.type == "cpu" else None
    finally:
        torch.set_num_threads(prev_threads)
    return {"device": str(dev), "gflops": best / 1e9, "threads": used, "size": size, "repeats": repeats,
            "method": f"best of {repeats} torch.mm float32 {size}x{size} products"
                      + (f" at {used} thread(s)" if used else " (CUDA events, TF32 off)")}
