"""``pspnet-debug --profile``: where the candidate's time goes, per layer and per module group.

- ONNX Runtime: its profiler (``enable_profiling``) on the candidate's graph as deployed (no extra
  outputs); every ``Node`` event's duration, the precision from the kernel's input types
  (``int8``/``uint8`` inputs: INT8, ``float16``: FP16, else FP32);
- OpenVINO: the per-layer performance counters; the precision is the suffix of the kernel that ran
  (``..._I8``, ``..._BF16``, ``..._FP32``);
- PyTorch: wall time between forward pre- and post-hooks of every leaf module (FP32);
- TensorRT: its layer profiler (an ``IProfiler`` on the execution context), the precision from the
  engine inspector (engines built with ``ProfilingVerbosity.DETAILED``, as ``pspnet-build-engine``
  builds them); TensorRT layer names are those of its (fused) layers, named after ONNX nodes.
  Needs TensorRT and a GPU (one line saying so without them).

Each layer is put in a module group (stem, layer1-4, ppm, head, upsampling) by its node name; a
fused kernel counts in the group of the node it is named after. Beside each group's time: the FLOPs
the project counts (:func:`pspnet_deploy.flops.onnx_flops`, per node) and the achieved GFLOP/s. A
group whose share of the time is more than twice its share of the FLOPs is labelled
``memory/overhead`` (it waits on data or on kernel launches rather than arithmetic), else ``compute``.
"""
from __future__ import annotations

import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import UserError
from .graph import GROUPS, group_of, node_scope

RUNS = 3


def _ort_precision(args: dict) -> str:
    types = [next(iter(t)) for t in args.get("input_type_shape", []) if isinstance(t, dict) and t]
    if any(t in ("int8", "uint8") for t in types):
        return "int8"
    if any(t == "float16" for t in types):
        return "fp16"
    return "fp32"


def _ov_precision(exec_type: str) -> str:
    tail = exec_type.rsplit("_", 1)[-1].lower()
    return {"i8": "int8", "u8": "int8", "bf16": "bf16", "f16": "fp16", "fp16": "fp16", "fp32": "fp32",
            "f32": "fp32"}.get(tail, tail or "?")


def _layer_group(node: str, tensor_node: dict | None = None) -> str:
    """The module group of a profiled layer. Nodes without a module scope that a Q/DQ pair, a cast
    or a layout change added (``relu_9_QuantizeLinear``, ``relu_9_DequantizeLinear/duplicated``,
    ``max_pool2d_nchwc``) belong to the group of the layer whose tensor they convert
    (``tensor_node``: tensor name -> node name of the plan), as do the kernels ONNX Runtime names
    after an inserted cast (``InsertedPrecisionFreeCast_relu_21_nchwc``: the fused Conv writing
    ``relu_21``)."""
    import re

    scope = node_scope(node) if "/" in node else node
    g = group_of(scope)
    if g == "other" and tensor_node:
        # ONNX Runtime's CPU cast insertion (FP16 graphs) names a fused kernel after the tensor it writes:
        # InsertedPrecisionFreeCast_relu_21_nchwc is the Conv(+Relu) that produces relu_21
        base = node.split("/")[0].removeprefix("InsertedPrecisionFreeCast_")
        hit = re.match(r"^(.+?)_(QuantizeLinear|DequantizeLinear|cast|Cast|q|dq|nchwc)(?:$|_)", base)
        if hit:
            if hit.group(1) == "input":
                return "stem"
            if hit.group(1) in tensor_node:
                return group_of(node_scope(tensor_node[hit.group(1)]))
    if g == "other" and ("upsample" in node.lower() or "resize" in node.lower() or "interpolate" in node.lower()):
        return "upsampling"
    return g


def profile_onnx(cand, x: np.ndarray, threads: int | None) -> list[dict]:
    from ..ort_session import make_session

    with tempfile.TemporaryDirectory(prefix="pspnet-debug-prof-") as tmp:
        sess = make_session(cand.model, threads=threads, providers=cand.providers, quiet=True,
                            profile_prefix=str(Path(tmp) / "ort"))
        name = sess.get_inputs()[0].name
        batch = cand.batch or 1
        xb = np.concatenate([x[:1]] * batch) if batch > 1 else x[:1]
        sess.run(None, {name: xb})  # warm-up (in the profile too: dropped below)
        for _ in range(RUNS):
            for i in range(x.shape[0]):
                sess.run(None, {name: np.concatenate([x[i:i + 1]] * batch) if batch > 1 else x[i:i + 1]})
        path = sess.end_profiling()
        events = json.loads(Path(path).read_text())
    calls = RUNS * x.shape[0]
    rows: dict[str, dict] = {}
    per_node_calls: Counter = Counter()
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        node = e["name"][: -len("_kernel_time")]
        per_node_calls[node] += 1
        args = e.get("args", {})
        row = rows.setdefault(node, {"node": node, "type": args.get("op_name", "?"), "precision": _ort_precision(args),
                                     "us": [], "provider": args.get("provider")})
        row["us"].append(float(e.get("dur", 0)))
    out = []
    for row in rows.values():
        us = row.pop("us")[1:] if len(row["us"]) > calls else row.pop("us")  # drop the warm-up call
        row["ms"] = sum(us) / 1e3 / max(1, calls)
        out.append(row)
    return out


def profile_torch(cand, x: np.ndarray) -> list[dict]:
    import torch

    model = cand.model
    leaves = {n: m for n, m in model.named_modules() if n and not list(m.children())}
    acc: dict[str, float] = {}
    start: dict[str, float] = {}

    def pre(name):
        def fn(mod, inp):
            start[name] = time.perf_counter()
        return fn

    def post(name):
        def fn(mod, inp, out):
            acc[name] = acc.get(name, 0.0) + (time.perf_counter() - start[name]) * 1e3
        return fn

    with torch.no_grad():
        model(torch.from_numpy(x[:1]).to(cand.device))  # warm-up
        handles = [m.register_forward_pre_hook(pre(n)) for n, m in leaves.items()]
        handles += [m.register_forward_hook(post(n)) for n, m in leaves.items()]
        t0 = time.perf_counter()
        try:
            for _ in range(RUNS):
                for i in range(x.shape[0]):
                    model(torch.from_numpy(x[i:i + 1]).to(cand.device))
        finally:
            for h in handles:
                h.remove()
        total = (time.perf_counter() - t0) * 1e3
    calls = RUNS * x.shape[0]
    rows = [{"node": n, "type": type(leaves[n]).__name__, "precision": "fp32", "ms": ms / calls}
            for n, ms in acc.items()]
    inside = sum(r["ms"] for r in rows)
    rows.append({"node": "upsample/Resize (outside leaf modules)", "type": "functional", "precision": "fp32",
                 "ms": max(0.0, total / calls - inside)})
    return rows


def _flops_by_group(cand, reference_onnx: Path | None) -> dict[str, float]:
    from ..flops import engine_source_onnx, onnx_flops

    src = None
    if cand.kind == "onnx":
        src = cand.path
    elif cand.kind == "tensorrt":
        src = cand.onnx_path
    elif cand.kind == "openvino":
        try:
            src = engine_source_onnx(cand.card)
        except Exception:  # noqa: BLE001 - FLOPs are context, not the measurement
            src = None
    src = src or reference_onnx
    if src is None:
        return {}
    res = onnx_flops(src)
    out: dict[str, float] = {}
    for node, f in res.get("per_node", {}).items():
        g = _layer_group(node)
        out[g] = out.get(g, 0.0) + f
    return out


def profile_candidate(cand, x: np.ndarray, device: str = "cpu", threads: int | None = None, progress: bool = True,
                      reference_onnx: Path | None = None) -> tuple[list[dict], dict]:
    """(per-group rows ``{module, ms, precision, gflops, gflops_per_s, bound, layers}``, info with
    the per-layer rows and the source)."""
    if cand.kind == "onnx":
        layers = profile_onnx(cand, x, threads)
        source = "ONNX Runtime profiler (Node events, kernel time)"
    elif cand.kind == "openvino":
        from ..runners.openvino_runner import profile_ir

        layers = profile_ir(cand.path, x, runs=RUNS, threads=threads)
        for row in layers:
            row["precision"] = _ov_precision(row.get("exec_type", ""))
        source = "OpenVINO performance counters (PERF_COUNT, real time)"
    elif cand.kind == "torch":
        layers = profile_torch(cand, x)
        source = "PyTorch forward hooks (wall time per leaf module)"
    elif cand.kind == "tensorrt":
        from ..runners.trt_runner import profile_engine

        layers = profile_engine(cand.path, x, runs=RUNS, device=cand.device)
        source = "TensorRT layer profiler (IExecutionContext.profiler)"
    else:
        raise UserError(f"{cand.path}: no profiler for {cand.kind} files")
    plan = cand.plan() or []
    tensor_node = {layer.tensor: layer.node for layer in plan}
    for row in layers:
        row["group"] = _layer_group(row["node"], tensor_node)
    flops = _flops_by_group(cand, reference_onnx)
    total_ms = sum(r["ms"] for r in layers) or 1.0
    total_fl = sum(flops.values()) or 0.0
    groups = []
    for g in GROUPS + ("other",):
        rs = [r for r in layers if r["group"] == g]
        if not rs:
            continue
        ms = sum(r["ms"] for r in rs)
        by_prec: Counter = Counter()
        for r in rs:
            by_prec[r["precision"]] += r["ms"]
        prec = ", ".join(f"{p} {100 * v / ms:.0f} %" for p, v in by_prec.most_common()) if ms > 0 else \
            ", ".join(sorted(by_prec))
        fl = flops.get(g)
        row = {"module": g, "ms": ms, "precision": prec, "layers": len(rs),
               "gflops": fl / 1e9 if fl else None, "gflops_per_s": (fl / 1e9) / (ms / 1e3) if fl and ms > 0 else None}
        if fl and total_fl:
            row["bound"] = "memory/overhead" if ms / total_ms > 2 * fl / total_fl else "compute"
        groups.append(row)
    info = {"source": source, "runs_per_image": RUNS, "images": int(x.shape[0]), "total_ms": total_ms,
            "note": "ms per image summed over the layers of each group; a fused kernel counts in the group of "
                    "the node it is named after; bound: memory/overhead when a group's time share is over twice "
                    "its FLOP share; other: kernels named after no model node (layout reorders)",
            "layers": sorted(layers, key=lambda r: -r["ms"])}
    return groups, info
