"""Export a checkpoint to a clean, static ONNX graph; FP16 variant; parity gate; TensorRT check.

The flow of :func:`export_onnx`:

1. load the checkpoint in deploy form (no aux head, eval mode, dropout removed) and replace every
   adaptive average pool of the pyramid pooling by its exact static equivalent for the feature
   size the input size gives (:mod:`pspnet_deploy.model.static_pool`);
2. ``torch.onnx.export(dynamo=True)`` (opset 20 by default, weights inline, no external data):
   with static sizes it yields a graph with no Gather, no Shape arithmetic and constant Resize
   sizes. For ``dynamic_batch`` the batch is a symbolic dim and each Resize gets constant spatial
   ``sizes`` with ``axes=[2, 3]`` instead of the exporter's Shape/Slice/Concat chain;
3. tidy: unused nodes pruned, readable node names from the module scopes (the pyramid pooling
   nodes are ``ppm.pools.<i>.static_pool/<Op>``), exporter debug metadata stripped;
4. optionally FP16 (:func:`convert_fp16`): weights and activations FP16, IO kept FP32, nodes
   whose values come near the FP16 limit on real images kept FP32;
5. checks: ``onnx.checker`` (full), the static-graph rules (:func:`check_static_graph`) and the
   TensorRT parser support matrix (:func:`pspnet_deploy.parser_check.check_onnx_for_tensorrt`);
6. ``pspnet.*`` metadata (JSON values: preprocessing, classes, palette, provenance, options);
7. parity gate: ONNX Runtime against PyTorch on real or generated images
   (:mod:`pspnet_deploy.compare`); a failure raises :class:`UserError` and leaves nothing at OUT.
   The report goes beside the model as ``<OUT stem>.parity.json``.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from .compare import check as check_tolerances
from .compare import Comparison, format_metrics, jsonable, tolerances_for
from .errors import UserError
from .utils import atomic_path, atomic_write_json, sha256_file, versions

__all__ = ["export_onnx", "convert_fp16", "static_pool_node_names", "write_onnx_metadata", "check_static_graph",
           "default_output_path", "verification_images", "fp16_block_list", "fp16_overflow_tensors", "activation_ranges", "DEFAULT_OPSET", "FP16_MAX",
           "BANNED_OPS", "parity_report_path"]

FP16_MAX = 65504.0
DEFAULT_OPSET = 20
MIN_OPSET = 18  # the dynamo exporter emits opset 18 and above
MAX_PROTO_BYTES = 2 * 1024 ** 3
INPUT_NAME = "input"
#: operators a clean static PSPNet graph must not contain (gathers, control flow, shape arithmetic)
BANNED_OPS = frozenset({"Gather", "GatherND", "GatherElements", "Loop", "If", "Scan", "Shape", "Size",
                        "ConstantOfShape", "Range", "NonZero", "Compress", "Unique", "SequenceConstruct",
                        "SequenceAt", "SplitToSequence", "ConcatFromSequence"})
#: node inputs that hold shapes: they must be constants in a static graph (op -> input indices)
SHAPE_INPUTS = {"Reshape": (1,), "Expand": (1,), "Tile": (1,), "Slice": (1, 2, 3, 4), "Pad": (1, 2, 3),
                "Resize": (1, 2, 3), "Unsqueeze": (1,), "Squeeze": (1,), "Split": (1,)}
POOL_OPS = ("MatMul", "AveragePool", "GlobalAveragePool")
_POOL_NAME = re.compile(r"^ppm\.pools\.(\d+)\.static_pool/")


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(f"pspnet-export: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# paths
# --------------------------------------------------------------------------------------------

def default_output_path(checkpoint: str | Path, out: str | Path | None, precision: str = "fp32",
                        root: str | Path = "export") -> Path:
    """Where the ONNX goes. ``out`` ending in ``.onnx``: exactly there. ``out`` an existing folder
    or ending in ``/``: ``out/model.<precision>.onnx``. A bare name (no folder, no suffix):
    ``export/<name>/model.<precision>.onnx``. None: ``export/<checkpoint stem>/model.<precision>.onnx``."""
    fname = f"model.{precision}.onnx"
    if out is None:
        return Path(root) / Path(checkpoint).stem / fname
    s = str(out)
    p = Path(s)
    if s.endswith(("/", os.sep)) or p.is_dir():
        return p / fname
    if p.suffix.lower() == ".onnx":
        return p
    if p.parent == Path(".") and not p.suffix:
        return Path(root) / p.name / fname
    raise UserError(f"{out}: output must end in .onnx, be a folder, or be a bare name (-> export/<name>/)")


def parity_report_path(onnx_path: str | Path) -> Path:
    """``model.fp32.onnx`` -> ``model.fp32.parity.json`` (beside the model)."""
    return Path(onnx_path).with_suffix(".parity.json")


def _finish_report(report: dict, out_path: Path, t0: float) -> None:
    """Add the written file's hash, size and the elapsed time; write the report beside the model."""
    report["sha256"] = sha256_file(out_path)
    report["size_bytes"] = out_path.stat().st_size
    report["time_s"] = round(time.time() - t0, 2)
    atomic_write_json(parity_report_path(out_path), jsonable(report))


def _check_writable(path: Path) -> None:
    """Fail early (before minutes of export) when the output cannot be written."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"")
        raise _ProbeDone  # leave nothing behind


class _ProbeDone(Exception):
    pass


def check_writable(path: str | Path) -> None:
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give an .onnx file path")
    try:
        _check_writable(path)
    except _ProbeDone:
        pass
    except PermissionError as e:
        raise UserError(f"{path}: cannot write here ({e.strerror}); choose a writable output path") from e


# --------------------------------------------------------------------------------------------
# metadata and node names
# --------------------------------------------------------------------------------------------

def write_onnx_metadata(model_proto, meta: dict) -> None:
    """Set ``pspnet.<key>`` metadata_props (JSON values) on ``model_proto``, replacing same keys.

    Keys may be given with or without the ``pspnet.`` prefix. Read back with
    :func:`pspnet_deploy.runners.ort_runner.read_onnx_metadata`.
    """
    entries = {}
    for k, v in meta.items():
        key = k if k.startswith("pspnet.") else f"pspnet.{k}"
        entries[key] = json.dumps(jsonable(v), sort_keys=False, allow_nan=False)
    keep = [(p.key, p.value) for p in model_proto.metadata_props if p.key not in entries]
    del model_proto.metadata_props[:]
    for k, v in keep + sorted(entries.items()):
        e = model_proto.metadata_props.add()
        e.key, e.value = k, v


def static_pool_node_names(onnx_model) -> list[str]:
    """Names of the nodes that implement the static pyramid pooling (``ppm.pools.<i>.static_pool/*``:
    AveragePool, or the two MatMuls of the exact averaging), in graph order. INT8 calibration
    keeps these out of quantization. ``onnx_model``: ModelProto or path."""
    import onnx

    if isinstance(onnx_model, (str, Path)):
        onnx_model = onnx.load(str(onnx_model), load_external_data=False)
    return [n.name for n in onnx_model.graph.node if n.op_type in POOL_OPS and _POOL_NAME.match(n.name)]


def _scopes(node) -> list[str]:
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                v = json.loads(p.value.replace("'", '"'))
                return [str(s) for s in v]
            except (json.JSONDecodeError, TypeError):
                return []
    return []


def _rename_and_strip(model, bins: Sequence[int], pool_modes: Sequence[str]) -> None:
    """Readable, unique node names from the module scopes; static pool nodes named
    ``ppm.pools.<i>.static_pool/<Op>``; exporter debug metadata removed."""
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    used: dict[str, int] = {}

    def unique(base: str) -> str:
        k = used.get(base, 0)
        used[base] = k + 1
        return base if k == 0 else f"{base}_{k}"

    for node in graph.node:
        scopes = [s[len("model."):] if s.startswith("model.") else s for s in _scopes(node)]
        modules = [s for s in scopes[1:-1] if s and s != "model"] if len(scopes) >= 2 else []
        pool_idx = None
        for s in modules:
            m = re.match(r"^ppm\.pools\.(\d+)(\.|$)", s)
            if m:
                pool_idx = int(m.group(1))
        if pool_idx is None and node.op_type == "MatMul":  # fall back on the averaging matrices' names
            for i in node.input:
                m = re.search(r"ppm\.pools\.(\d+)\.(ph|pwt)$", i)
                if m and i in inits:
                    pool_idx = int(m.group(1))
        if pool_idx is not None and node.op_type in POOL_OPS:
            op = node.op_type
            if op == "MatMul":
                op = "MatMul_w" if any(i.endswith(".pwt") for i in node.input) else "MatMul_h"
            node.name = unique(f"ppm.pools.{pool_idx}.static_pool/{op}")
        elif modules:
            node.name = unique(f"{modules[-1]}/{node.op_type}")
        else:
            node.name = unique(node.name or node.op_type)
        del node.metadata_props[:]
        node.doc_string = ""
    for coll in (graph.input, graph.output, graph.value_info):
        for v in coll:
            del v.metadata_props[:]
            v.doc_string = ""
    for t in graph.initializer:
        if hasattr(t, "metadata_props"):
            del t.metadata_props[:]
    del graph.metadata_props[:]
    del model.metadata_props[:]
    graph.doc_string = ""
    model.doc_string = ""
    expected = sum(1 if m == "avgpool" else 2 for m in pool_modes)
    found = static_pool_node_names(model)
    if len(found) != expected:
        raise RuntimeError(f"expected {expected} static pooling nodes for bins {list(bins)} ({list(pool_modes)}), "
                           f"found {len(found)}: {found}")


def _prune(graph) -> None:
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


def _fold_resize_sizes(model) -> int:
    """Resize nodes whose ``sizes`` is computed (the exporter's Shape/Slice/Concat for a dynamic
    batch) get constant spatial sizes with ``axes=[2, 3]``; returns how many were changed."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name for t in graph.initializer}
    shapes = {}
    for v in list(graph.value_info) + list(graph.output):
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    changed = 0
    for node in graph.node:
        if node.op_type != "Resize" or len(node.input) < 4 or not node.input[3] or node.input[3] in inits:
            continue
        shp = shapes.get(node.output[0])
        if not shp or len(shp) != 4 or shp[2] is None or shp[3] is None:
            raise RuntimeError(f"cannot make Resize {node.name} static: unknown output size {shp}")
        name = f"{node.output[0]}.sizes"
        graph.initializer.append(numpy_helper.from_array(np.asarray(shp[2:], np.int64), name=name))
        node.input[3] = name
        for i, a in enumerate(node.attribute):
            if a.name == "axes":
                del node.attribute[i]
                break
        node.attribute.append(helper.make_attribute("axes", [2, 3]))
        changed += 1
    return changed


# --------------------------------------------------------------------------------------------
# graph checks
# --------------------------------------------------------------------------------------------

def check_static_graph(model, expected_pool_nodes: int | None = None) -> list[str]:
    """Rules for a clean static graph; returns the violations ([] = clean).

    No gathers, control flow or shape arithmetic (:data:`BANNED_OPS`); shape inputs (Reshape,
    Slice, Resize sizes, ...) constant; Resize bilinear with ``align_corners`` and constant sizes;
    every weight inline (no external data); spatial input dims static; under 2 GB.
    """
    graph = model.graph
    consts = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    out = []
    for node in graph.node:
        if node.op_type in BANNED_OPS:
            out.append(f"node {node.name!r} is {node.op_type} (no gathers, control flow or shape arithmetic allowed)")
        for idx in SHAPE_INPUTS.get(node.op_type, ()):
            if len(node.input) > idx and node.input[idx] and node.input[idx] not in consts:
                out.append(f"node {node.name!r} ({node.op_type}) takes a computed shape input {node.input[idx]!r}")
        if node.op_type == "Resize":
            a = {x.name: x for x in node.attribute}
            mode = a["mode"].s.decode() if "mode" in a else "nearest"
            ctm = a["coordinate_transformation_mode"].s.decode() if "coordinate_transformation_mode" in a else "half_pixel"
            if mode != "linear" or ctm != "align_corners":
                out.append(f"node {node.name!r} Resize is {mode}/{ctm}; expected linear/align_corners")
            if len(node.input) < 4 or not node.input[3]:
                out.append(f"node {node.name!r} Resize has no static sizes")
    for t in graph.initializer:
        if t.data_location == 1 or len(t.external_data):
            out.append(f"initializer {t.name!r} is stored as external data; the file must be self-contained")
            break
    for v in graph.input:
        dims = v.type.tensor_type.shape.dim
        if len(dims) != 4 or not all(d.HasField("dim_value") for d in dims[1:]):
            out.append(f"input {v.name!r} must be N x 3 x H x W with static C, H, W")
    if model.ByteSize() >= MAX_PROTO_BYTES:
        out.append("model is 2 GB or more; ONNX protobuf cannot hold it in one file")
    if expected_pool_nodes is not None:
        n = len(static_pool_node_names(model))
        if n != expected_pool_nodes:
            out.append(f"pyramid pooling has {n} nodes, expected {expected_pool_nodes}")
    return out


def _run_checks(model, trt_major: int, expected_pool_nodes: int | None, what: str) -> dict:
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


# --------------------------------------------------------------------------------------------
# torch -> onnx
# --------------------------------------------------------------------------------------------

def _deploy_module(model, output_kind: str):
    import torch
    from torch import nn

    class DeployModel(nn.Module):
        def __init__(self, net: nn.Module, kind: str):
            super().__init__()
            self.model = net
            self.kind = kind

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.model(x)
            if self.kind == "labels":
                return torch.argmax(y, dim=1).to(torch.int32)
            return y

    return DeployModel(model, output_kind).eval()


@contextlib.contextmanager
def _quiet_exporter():
    """The dynamo exporter logs progress and warnings (torchvision missing, ...): keep stdout clean."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx",
                                             "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as devnull, warnings.catch_warnings(), contextlib.redirect_stdout(devnull):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _torch_to_onnx(module, batch: int, input_size: tuple[int, int], dynamic_batch, opset: int, output_name: str):
    import torch

    h, w = input_size
    example_batch = batch
    dynamic_shapes = None
    if dynamic_batch is not None:
        lo, _opt, hi = dynamic_batch
        example_batch = min(max(2, lo), hi) if hi >= 2 else 1
        dynamic_shapes = ({0: torch.export.Dim("batch", min=lo, max=hi)},)
    example = torch.zeros(example_batch, 3, h, w)
    try:
        with _quiet_exporter(), torch.inference_mode(False), torch.no_grad():
            prog = torch.onnx.export(module, (example,), None, input_names=[INPUT_NAME], output_names=[output_name],
                                     opset_version=opset, dynamo=True, external_data=False, verbose=False,
                                     optimize=True, dynamic_shapes=dynamic_shapes)
    except Exception as e:  # noqa: BLE001
        raise RuntimeError(f"torch.onnx.export failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e
    return prog.model_proto


def _static_graph(model, input_size, dynamic_batch, batch: int, output_kind: str, opset: int):
    """Deployed, static-pool ONNX ModelProto for ``model`` (a loaded PSPNet) plus pool info."""
    import onnx

    from .model.static_pool import make_static

    static = make_static(model, input_size)
    pools = list(static.ppm.pools)
    pool_info = [{"bin": list(p.out_size), "mode": p.mode} for p in pools]
    module = _deploy_module(static, output_kind)
    output_name = "labels" if output_kind == "labels" else "logits"
    proto = _torch_to_onnx(module, batch, input_size, dynamic_batch, opset, output_name)
    if dynamic_batch is not None:
        _fold_resize_sizes(proto)
    _prune(proto.graph)
    _rename_and_strip(proto, static.ppm.bins, [p["mode"] for p in pool_info])
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    return proto, {"feature_size": list(static.static_feature_size), "pools": pool_info,
                   "nodes": static_pool_node_names(proto)}


# --------------------------------------------------------------------------------------------
# images for parity and FP16 calibration
# --------------------------------------------------------------------------------------------

def generated_images(h: int, w: int, num: int, seed: int = 0) -> list[np.ndarray]:
    """Scene-like RGB uint8 images: smooth colour fields, a few solid shapes, mild noise."""
    import cv2

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num):
        low = rng.integers(0, 256, size=(rng.integers(3, 8), rng.integers(3, 8), 3)).astype(np.uint8)
        img = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.int16)
        for _ in range(rng.integers(2, 6)):
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            y1, x1 = min(h, y0 + rng.integers(h // 8 + 1, h // 2 + 2)), min(w, x0 + rng.integers(w // 8 + 1, w // 2 + 2))
            img[y0:y1, x0:x1] = rng.integers(0, 256, size=3)
        img = img + rng.normal(0, 6, size=img.shape)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def verification_images(preprocess, verify_data: str | Path | None = None, split: str = "val", num: int = 4,
                        seed: int = 0) -> tuple[np.ndarray, dict]:
    """``num`` preprocessed images (float32 NCHW at ``preprocess.input_size``) and where they came
    from: evenly spaced images of ``verify_data`` / ``split`` (any layout :func:`open_dataset` reads)
    or generated ones when ``verify_data`` is None."""
    h, w = preprocess.input_size
    if num < 1:
        raise UserError(f"number of verification images must be at least 1, got {num}")
    if verify_data is not None:
        from .data import open_dataset

        ds = open_dataset(verify_data, split)
        if len(ds) == 0:
            raise UserError(f"{verify_data}: split {split!r} has no images to verify with")
        idx = sorted(set(np.linspace(0, len(ds) - 1, min(num, len(ds))).round().astype(int).tolist()))
        imgs = [ds.load_image(i) for i in idx]
        src = {"kind": "dataset", "path": str(verify_data), "split": split,
               "files": [Path(ds.image_paths[i]).name for i in idx] if hasattr(ds, "image_paths") else idx}
    else:
        imgs = generated_images(h, w, num, seed)
        src = {"kind": "generated", "seed": seed, "count": num}
    return preprocess.batch(imgs).astype(np.float32), src


def _batches(images: np.ndarray, batch: int, dynamic_batch) -> list[np.ndarray]:
    """Batches the model accepts, cycling through ``images`` to fill them: ``batch``-sized for a
    fixed batch; for a dynamic one the smallest batch and (if larger) as many images as fit."""
    n = len(images)

    def take(start: int, size: int) -> np.ndarray:
        return np.stack([images[(start + k) % n] for k in range(size)])

    if dynamic_batch is not None:
        lo, _opt, hi = dynamic_batch
        sizes = [lo]
        big = min(hi, max(n, lo))
        if big > lo:
            sizes.append(big)
        out, start = [], 0
        for s in sizes:
            out.append(take(start, s))
            start += s
        return out
    return [take(i, batch) for i in range(0, n, batch)]


# --------------------------------------------------------------------------------------------
# FP16
# --------------------------------------------------------------------------------------------

def _ort_session(model_bytes: bytes, threads: int | None, optimize: bool = True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model_bytes, sess_options=so, providers=["CPUExecutionProvider"])


def activation_ranges(model, batches: list[np.ndarray], threads: int | None = None,
                      chunk_bytes: int = 1 << 30, elem_types: Sequence[int] = (1,)) -> dict[str, float]:
    """Max |value| (inf where NaN/Inf occur) of every tensor of ``elem_types`` (default float32;
    10 = float16) of ``model`` over ``batches``: graph input, intermediates and outputs, each
    fetched as a graph output with ONNX Runtime (no graph optimisation), so every tensor is
    materialised in its own type. Tensors are fetched in chunks of about ``chunk_bytes`` per run."""
    import onnx

    model = onnx.shape_inference.infer_shapes(copy.deepcopy(model))
    g = model.graph
    produced = {o for n in g.node for o in n.output if o}
    seen: set[str] = set()
    float_vis = []
    for v in list(g.output) + list(g.value_info):
        if v.type.tensor_type.elem_type in tuple(elem_types) and v.name in produced and v.name not in seen:
            seen.add(v.name)
            float_vis.append(v)
    bsz = max(len(b) for b in batches)

    def nbytes(v) -> int:
        n = 4 * bsz
        for d in v.type.tensor_type.shape.dim:
            n *= d.dim_value if d.HasField("dim_value") else 1
        return n

    chunks, cur, cur_b = [], [], 0
    for v in float_vis:
        b = nbytes(v)
        if cur and cur_b + b > chunk_bytes:
            chunks.append(cur)
            cur, cur_b = [], 0
        cur.append(v)
        cur_b += b
    if cur:
        chunks.append(cur)
    ranges: dict[str, float] = {}
    in_name = g.input[0].name
    if g.input[0].type.tensor_type.elem_type in tuple(elem_types):
        ranges[in_name] = max(float(np.abs(b).max()) for b in batches)
    for chunk in chunks:
        m = copy.deepcopy(model)
        del m.graph.output[:]
        m.graph.output.extend(chunk)
        sess = _ort_session(m.SerializeToString(), threads, optimize=False)
        names = [v.name for v in chunk]
        for b in batches:
            outs = sess.run(names, {in_name: b})
            for name, arr in zip(names, outs):
                a = np.abs(arr.astype(np.float32))
                mx = float(a.max()) if a.size else 0.0
                if not np.isfinite(a).all():
                    mx = math.inf
                ranges[name] = max(ranges.get(name, 0.0), mx)
        del sess
    return ranges


def fp16_block_list(fp32_model, ranges: dict[str, float], margin: float = 4.0,
                    block_ops: Sequence[str] = ()) -> tuple[list[str], dict]:
    """Nodes to keep in FP32: every node that reads or writes a tensor whose observed max |value|
    exceeds ``FP16_MAX / margin``, or has a weight beyond the FP16 range, or whose op type is in
    ``block_ops``. Blocking both the producer and the consumers keeps such a tensor FP32 end to
    end (a cast to FP16 between them would overflow)."""
    from onnx import numpy_helper

    limit = FP16_MAX / float(margin)
    g = fp32_model.graph
    big_weights = {}
    for t in g.initializer:
        if t.data_type == 1:
            a = numpy_helper.to_array(t)
            if a.size and float(np.abs(a).max()) > FP16_MAX:
                big_weights[t.name] = float(np.abs(a).max())
    hot = {k: v for k, v in ranges.items() if v > limit}
    blocked, reasons = [], {}
    for node in g.node:
        why = [f"{t} max |x| {ranges[t]:.4g}" for t in list(node.input) + list(node.output) if t in hot]
        why += [f"weight {t} max |w| {big_weights[t]:.4g}" for t in node.input if t in big_weights]
        if node.op_type in block_ops:
            why.append(f"op type {node.op_type} kept FP32 on request")
        if why:
            blocked.append(node.name)
            reasons[node.name] = "; ".join(why[:3])
    return blocked, {"threshold": limit, "margin": float(margin), "fp16_max": FP16_MAX, "reasons": reasons,
                     "tensors_over_threshold": len(hot),
                     "max_activation": max((v for v in ranges.values() if math.isfinite(v)), default=0.0)}


def fp16_overflow_tensors(fp16_model, batches: list[np.ndarray], threads: int | None = None) -> dict[str, float]:
    """FP16 tensors of ``fp16_model`` holding NaN/Inf on ``batches`` (name -> max |finite value|).

    ONNX Runtime on CPU runs most FP16 nodes in FP32 and drops the FP16 round trips between them,
    so an overflow inside the graph can vanish from its output; TensorRT stores those tensors in
    FP16. Fetching every FP16 tensor as an output materialises it in FP16, as TensorRT would.
    """
    ranges = activation_ranges(fp16_model, batches, threads, elem_types=(10,))
    return {k: v for k, v in ranges.items() if not math.isfinite(v)}


def _fp16_proto(fp32_model, batches: list[np.ndarray], margin: float, threads: int | None, block_ops=()):
    """(fp16 ModelProto, info) from an FP32 ModelProto and calibration batches."""
    from onnxconverter_common import float16

    if any(not n.name for n in fp32_model.graph.node):
        raise ValueError("every node needs a name before FP16 conversion")
    ranges = activation_ranges(fp32_model, batches, threads)
    if any(not math.isfinite(v) for v in ranges.values()):
        bad = [k for k, v in ranges.items() if not math.isfinite(v)][:3]
        raise UserError(f"the FP32 model produces NaN/Inf on the calibration images (tensors {bad}); "
                        f"fix the model before converting to FP16")
    blocked, info = fp16_block_list(fp32_model, ranges, margin, block_ops)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fp16 = float16.convert_float_to_float16(copy.deepcopy(fp32_model), keep_io_types=True,
                                                node_block_list=blocked, op_block_list=list(block_ops),
                                                max_finite_val=FP16_MAX, min_positive_val=2 ** -24)
    _prune(fp16.graph)  # the converter leaves value_info of tensors its cast clean-up removed
    info.update(blocked_nodes=blocked, converter="onnxconverter_common.float16.convert_float_to_float16",
                keep_io_types=True, op_block_list=list(block_ops))
    return fp16, info


def convert_fp16(fp32_onnx_path, out_path, calibration_images=None, margin: float = 4.0, verify: bool = True,
                 tolerances: dict | None = None, trt_major: int = 10, threads: int | None = None,
                 block_ops: Sequence[str] = (), num_images: int = 4, split: str = "val",
                 progress: bool = True) -> dict:
    """FP16 variant of an existing FP32 ONNX written by pspnet-export (for strongly typed TensorRT).

    ``calibration_images``: preprocessed float32 NCHW array at the model's input size, or a
    dataset folder (``num_images`` of ``split``), or None for generated images (recorded as such).
    The FP32 model runs on them with ONNX Runtime; nodes touching values above
    ``FP16_MAX / margin`` stay FP32 (:func:`fp16_block_list`). Inputs/outputs stay FP32. With
    ``verify`` the FP16 file is compared with the FP32 one (ONNX Runtime, FP16 tolerances) and a
    failure leaves nothing at ``out_path``. Returns the report (also at ``<out>.parity.json``).
    """
    import onnx

    from .data.preprocess import Preprocess
    from .runners.ort_runner import read_onnx_metadata

    t0 = time.time()
    _check_margin(margin)
    src_path = Path(fp32_onnx_path)
    if not src_path.is_file():
        raise UserError(f"{src_path}: ONNX file not found")
    meta = read_onnx_metadata(src_path)
    if str(meta.get("precision", "fp32")) != "fp32":
        raise UserError(f"{src_path}: is {meta.get('precision')}, not an FP32 export; convert the FP32 ONNX")
    fp32 = onnx.load(str(src_path))
    out_path = Path(out_path)
    check_writable(out_path)
    inp = fp32.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    h, w = dims[2], dims[3]
    fixed_batch = dims[0]
    dyn = meta.get("export", {}).get("dynamic_batch") if fixed_batch is None else None
    if fixed_batch is None and not dyn:
        dyn = [1, 1, 64]
    if isinstance(calibration_images, np.ndarray):
        images = calibration_images.astype(np.float32)
        if images.ndim != 4 or images.shape[1:] != (3, h, w):
            raise UserError(f"calibration images must be N x 3 x {h} x {w}, got {images.shape}")
        src = {"kind": "array", "count": int(len(images))}
    else:
        pre = Preprocess.from_dict(meta["preprocess"]).with_size(h, w) if "preprocess" in meta else Preprocess((h, w))
        images, src = verification_images(pre, calibration_images, split, num_images)
    batches = _batches(images, fixed_batch or 1, dyn)
    _log(progress, f"FP16: calibrating activation ranges on {len(images)} images ({src['kind']})")
    fp16, info = _fp16_proto(fp32, batches, margin, threads, block_ops)
    info["calibration"] = src
    new_meta = dict(meta)
    new_meta.update(precision="fp16", fp16=info, source_onnx={"path": str(src_path), "sha256": sha256_file(src_path)})
    write_onnx_metadata(fp16, new_meta)
    expected = len(static_pool_node_names(fp32))
    checks = _run_checks(fp16, trt_major, expected, str(out_path))
    report = {"path": str(out_path), "precision": "fp16", "source": str(src_path), "fp16": info, "checks": checks,
              "nodes": len(fp16.graph.node), "versions": versions()}
    tol = tolerances_for("fp16", tolerances)
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(fp16.SerializeToString())
        if verify:
            ref_sess = _ort_session(fp32.SerializeToString(), threads)
            cand_sess = _ort_session(tmp.read_bytes(), threads)
            comp, agree, pixels = Comparison(), 0, 0
            for b in batches:
                ref = ref_sess.run(None, {inp.name: b})[0]
                cand = cand_sess.run(None, {inp.name: b})[0]
                if ref.ndim == 3:  # labels model: compare label maps only
                    agree, pixels = agree + int((ref == cand).sum()), pixels + int(ref.size)
                else:
                    comp.update(ref, cand.astype(np.float32))
            if pixels:
                metrics = {"argmax_agreement": agree / pixels, "num_pixels": pixels, "argmax_disagree": pixels - agree,
                           "nonfinite": 0, "candidate_kind": "labels"}
            else:
                metrics = comp.result()
            failures = check_tolerances(metrics, tol) + _storage_failures(fp16, batches, threads, metrics)
            report["parity"] = {"reference": "fp32 onnx (onnxruntime)", "images": src, "tolerances": tol,
                                "metrics": metrics, "failures": failures, "passed": not failures}
            if failures:
                raise UserError(f"{out_path}: FP16 parity check failed against {src_path.name}: {'; '.join(failures)} "
                                f"(nothing written; raise --fp16-margin or loosen tolerances)")
        else:
            report["parity"] = {"skipped": True}
    _finish_report(report, out_path, t0)
    _log(progress, f"wrote {out_path} ({len(info['blocked_nodes'])} nodes kept FP32)")
    return report


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------

def _validate(batch, dynamic_batch, output_kind, opset, trt_major, num_verify):
    from .parser_check import OPSET_RANGE

    if output_kind not in ("logits", "labels"):
        raise UserError(f"output kind must be 'logits' or 'labels', got {output_kind!r}")
    if dynamic_batch is not None:
        try:
            lo, opt, hi = (int(v) for v in dynamic_batch)
        except (TypeError, ValueError):
            raise UserError(f"--dynamic-batch takes MIN OPT MAX, got {dynamic_batch}") from None
        if not 1 <= lo <= opt <= hi:
            raise UserError(f"--dynamic-batch needs 1 <= MIN <= OPT <= MAX, got {lo} {opt} {hi}")
        dynamic_batch = (lo, opt, hi)
    elif int(batch) < 1:
        raise UserError(f"--batch must be at least 1, got {batch}")
    if trt_major not in OPSET_RANGE:
        raise UserError(f"no TensorRT support table for major version {trt_major}; known: {sorted(OPSET_RANGE)}")
    hi_opset = OPSET_RANGE[trt_major][1]
    opset = min(DEFAULT_OPSET, hi_opset) if opset is None else int(opset)
    if not MIN_OPSET <= opset <= hi_opset:
        raise UserError(f"--opset {opset} is unsupported: the exporter writes opset >= {MIN_OPSET} and TensorRT "
                        f"{trt_major} parses up to {hi_opset}")
    if num_verify < 1:
        raise UserError(f"--num-verify must be at least 1, got {num_verify}")
    return dynamic_batch, opset


def _check_margin(margin: float) -> None:
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin >= 1.0):
        raise UserError(f"FP16 margin must be a number >= 1 (values above 65504 / margin stay FP32), got {margin}")


def export_onnx(checkpoint, out=None, input_size=None, batch: int = 1, dynamic_batch=None, fp16: bool = False,
                output_kind: str = "logits", opset: int | None = None, verify: bool = True, verify_data=None,
                verify_split: str = "val", num_verify: int = 4, tolerances: dict | None = None,
                progress: bool = True, trt_major: int = 10, fp16_margin: float = 4.0, threads: int | None = None,
                seed: int = 0) -> dict:
    """Export ``checkpoint`` to ONNX at ``out`` (see :func:`default_output_path`); returns the report.

    ``input_size`` (H, W) defaults to the checkpoint's preprocessing size. ``batch`` fixes the
    batch; ``dynamic_batch=(min, opt, max)`` makes it symbolic (the range goes to the metadata for
    engine profiles). ``fp16`` writes the FP16 variant (IO FP32). ``output_kind`` ``"labels"``
    puts ArgMax in the graph (int32 label map N x H x W). ``verify`` runs the parity gate on
    ``num_verify`` images of ``verify_data`` (``verify_split``) or generated ones, with
    ``tolerances`` overriding :data:`pspnet_deploy.compare.DEFAULT_TOLERANCES`. Raises
    :class:`UserError` (nothing written) on bad input, a TensorRT parser problem or a parity failure.
    """
    import torch

    from . import __version__
    from .checkpoint import load_model
    from .data.preprocess import Preprocess

    t0 = time.time()
    dynamic_batch, opset = _validate(batch, dynamic_batch, output_kind, opset, trt_major, num_verify)
    if fp16:
        _check_margin(fp16_margin)
    precision = "fp16" if fp16 else "fp32"
    out_path = default_output_path(checkpoint, out, precision)
    model, meta = load_model(checkpoint)
    for key in ("classes", "palette", "preprocess"):
        if key not in meta:
            raise UserError(f"{checkpoint}: checkpoint metadata has no {key!r}; it was not written by pspnet-train")
    pre = Preprocess.from_dict(meta["preprocess"])
    if input_size is None:
        input_size = tuple(pre.input_size)
    h, w = (int(v) for v in input_size)
    if h <= 0 or w <= 0:
        raise UserError(f"input size must be positive, got {h}x{w}")
    pre = pre.with_size(h, w)
    check_writable(out_path)
    if threads is None:
        threads = int(os.environ.get("PSPNET_ORT_THREADS") or torch.get_num_threads())

    _log(progress, f"exporting {checkpoint} at {h}x{w} ({precision}, {output_kind}, opset {opset}, "
                   f"{'batch ' + '/'.join(map(str, dynamic_batch)) if dynamic_batch else f'batch {batch}'})")
    images = src = None
    if verify or fp16:  # read the images first: a bad --verify-data fails before the long export
        images, src = verification_images(pre, verify_data, verify_split, num_verify, seed)
    batches = _batches(images, int(batch), dynamic_batch) if images is not None else []
    proto, pool = _static_graph(model, (h, w), dynamic_batch, int(batch), output_kind, opset)
    n_pool = len(pool["nodes"])
    fp16_info = None
    if fp16:
        _log(progress, f"FP16: calibrating activation ranges on {len(images)} images ({src['kind']})")
        proto, fp16_info = _fp16_proto(proto, batches, fp16_margin, threads)
        fp16_info["calibration"] = src

    export_opts = {"exporter": "torch.onnx.export(dynamo=True)", "opset": opset, "batch": None if dynamic_batch else int(batch),
                   "dynamic_batch": list(dynamic_batch) if dynamic_batch else None, "output_kind": output_kind,
                   "fp16": bool(fp16), "input_name": INPUT_NAME, "output_name": proto.graph.output[0].name,
                   "label_dtype": "int32" if output_kind == "labels" else None, "trt_major": trt_major}
    onnx_meta = {
        "format": "pspnet-deploy/onnx", "preprocess": pre.to_dict(), "classes": list(meta["classes"]),
        "palette": [list(map(int, c)) for c in meta["palette"]], "ignore_index": int(meta.get("ignore_index", 255)),
        "input_size": [h, w], "output_kind": output_kind, "precision": precision,
        "checkpoint_sha256": meta.get("sha256"), "checkpoint": Path(checkpoint).name,
        "toolkit_version": __version__, "versions": versions(), "model": meta.get("model", {}),
        "export": export_opts, "static_pool": {"feature_size": pool["feature_size"], "pools": pool["pools"],
                                                "nodes": pool["nodes"]},
        "dataset": meta.get("dataset"),
    }
    if fp16_info is not None:
        onnx_meta["fp16"] = fp16_info
    write_onnx_metadata(proto, onnx_meta)
    proto.producer_name = "pspnet-deploy"
    proto.producer_version = __version__
    checks = _run_checks(proto, trt_major, n_pool, str(out_path))
    op_counts: dict[str, int] = {}
    for n in proto.graph.node:
        op_counts[n.op_type] = op_counts.get(n.op_type, 0) + 1
    report = {
        "path": str(out_path), "precision": precision, "input_size": [h, w], "output_kind": output_kind,
        "batch": export_opts["batch"], "dynamic_batch": export_opts["dynamic_batch"], "opset": opset,
        "checkpoint": {"path": str(checkpoint), "sha256": meta.get("sha256")},
        "nodes": len(proto.graph.node), "op_counts": dict(sorted(op_counts.items())),
        "static_pool": onnx_meta["static_pool"], "checks": checks, "versions": onnx_meta["versions"],
    }
    if fp16_info is not None:
        report["fp16"] = fp16_info
    tol = tolerances_for(precision, tolerances)
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(proto.SerializeToString())
        if verify:
            _log(progress, f"parity: ONNX Runtime vs PyTorch on {len(images)} images ({src['kind']})")
            parity = _parity(model, tmp, batches, threads, tol, src, fp16_model=proto if fp16 else None)
            report["parity"] = parity
            if not parity["passed"]:
                raise UserError(f"{out_path}: parity check failed ({precision}): {'; '.join(parity['failures'])} "
                                f"[{format_metrics(parity['metrics'])}]; nothing written")
            _log(progress, f"parity ok: {format_metrics(parity['metrics'])}")
        else:
            report["parity"] = {"skipped": True}
    _finish_report(report, out_path, t0)
    _log(progress, f"wrote {out_path} ({report['size_bytes'] / 1e6:.1f} MB, {report['nodes']} nodes, "
                   f"pyramid pooling {n_pool} nodes) and {parity_report_path(out_path).name}")
    return report


def _storage_failures(fp16_model, batches, threads, metrics: dict) -> list[str]:
    over = fp16_overflow_tensors(fp16_model, batches, threads)
    metrics["fp16_overflow_tensors"] = len(over)
    if over:
        return [f"{len(over)} FP16 tensor(s) overflow to Inf/NaN (e.g. {', '.join(list(over)[:3])})"]
    return []


def _parity(model, onnx_path: Path, batches: list[np.ndarray], threads: int, tol: dict, src: dict,
            fp16_model=None) -> dict:
    import torch

    from .runners.ort_runner import OrtRunner, read_onnx_metadata

    runner = OrtRunner(str(onnx_path), read_onnx_metadata(onnx_path), threads=threads)
    comp = Comparison()
    model.eval()
    with torch.inference_mode():
        for b in batches:
            comp.update(model(torch.from_numpy(b)).float().numpy(), runner.infer(b))
    metrics = comp.result()
    failures = check_tolerances(metrics, tol)
    if fp16_model is not None:
        failures += _storage_failures(fp16_model, batches, threads, metrics)
    return {"reference": "pytorch fp32 (adaptive pooling, eval)", "candidate": "onnxruntime " + _ort_version(),
            "images": src, "batches": [int(len(b)) for b in batches], "tolerances": tol, "metrics": metrics,
            "failures": failures, "passed": not failures}


def _ort_version() -> str:
    try:
        import onnxruntime

        return onnxruntime.__version__
    except ImportError:  # pragma: no cover
        return "?"
