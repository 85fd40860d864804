"""Export a checkpoint to a clean, static ONNX graph (FP32 or FP16); parity gate; report.

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
4. optionally FP16 (:func:`pspnet_deploy.precision.fp16.fp16_proto`): weights and activations
   FP16, IO kept FP32, nodes whose values come near the FP16 limit on real images kept FP32;
5. checks (:func:`pspnet_deploy.onnx_graph.run_checks`): ``onnx.checker`` (full), the
   static-graph rules and the TensorRT parser support matrix;
   With ``input_kind="uint8"`` the float graph (FP32 or FP16) gets the in-graph preprocessing
   (:func:`pspnet_deploy.onnx_graph.add_uint8_input`): uint8 N x H x W x 3 pixels in
   ``channel_order`` in; cast, mean/std from the checkpoint's Preprocess and transpose inside;
6. ``pspnet.*`` metadata (JSON values: preprocessing, classes, palette, provenance, options);
7. parity gate: ONNX Runtime against PyTorch on real or generated images (a uint8 model gets the
   uint8 pixels, PyTorch the NumPy preprocessing of the same pixels)
   (:mod:`pspnet_deploy.compare`); a failure raises :class:`UserError` and leaves nothing at OUT.
   The report goes beside the model as ``<OUT stem>.parity.json``; when the gate fails no model is
   written and the report goes to ``<OUT stem>.parity-failed.json``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from .compare import Comparison, format_metrics, parity_failure, parity_report_path, tolerances_for, write_parity_report
from .compare import check as check_tolerances
from .errors import UserError
from .onnx_graph import POOL_OPS, add_uint8_input, prune, run_checks, static_pool_node_names, write_onnx_metadata
from .ort_session import make_session, ort_threads
from .precision.batches import fitted_batches
from .precision.fp16 import check_margin, fp16_proto, storage_failures
from .utils import atomic_path, check_writable, say, versions

__all__ = ["export_onnx", "default_output_path", "parity_sizes", "resolve_size_range", "DEFAULT_OPSET", "INPUT_NAME"]

DEFAULT_OPSET = 20
MIN_OPSET = 18  # the dynamo exporter emits opset 18 and above
INPUT_NAME = "input"


def _log(progress: bool, msg: str) -> None:
    say(progress, f"pspnet-export: {msg}")


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



# --------------------------------------------------------------------------------------------
# node names
# --------------------------------------------------------------------------------------------


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

    pool_dyn_seen = False  # the dynamic pyramid pooling's first MatMul pools rows, the second columns
    for node in graph.node:
        scopes = [s[len("model."):] if s.startswith("model.") else s for s in _scopes(node)]
        modules = [s for s in scopes[1:-1] if s and s != "model"] if len(scopes) >= 2 else []
        if node.op_type in POOL_OPS and any(s == "ppm.dynamic_pool" for s in modules):
            op = node.op_type if node.op_type != "MatMul" else ("MatMul_w" if pool_dyn_seen else "MatMul_h")
            pool_dyn_seen = pool_dyn_seen or node.op_type == "MatMul"
            node.name = unique(f"ppm.dynamic_pool/{op}")
            del node.metadata_props[:]
            node.doc_string = ""
            continue
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
    expected = sum(1 if m == "avgpool" else 2 for m in pool_modes) if pool_modes else 2
    found = static_pool_node_names(model)
    if len(found) != expected:
        raise RuntimeError(f"expected {expected} static pooling nodes for bins {list(bins)} ({list(pool_modes)}), "
                           f"found {len(found)}: {found}")


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


def _torch_to_onnx(module, batch: int, input_size: tuple[int, int], dynamic_batch, opset: int, output_name: str,
                   size_range=None):
    import torch

    h, w = input_size
    example_batch = batch
    dims = {}
    if dynamic_batch is not None:
        lo, _opt, hi = dynamic_batch
        example_batch = min(max(2, lo), hi) if hi >= 2 else 1
        dims[0] = torch.export.Dim("batch", min=lo, max=hi)
    if size_range is not None:  # symbolic H and W within the declared bounds
        (lo_h, lo_w), _opt, (hi_h, hi_w) = size_range
        dims[2] = torch.export.Dim("height", min=lo_h, max=hi_h)
        dims[3] = torch.export.Dim("width", min=lo_w, max=hi_w)
    dynamic_shapes = (dims,) if dims else None
    example = torch.zeros(example_batch, 3, h, w)
    try:
        with _quiet_exporter(), torch.inference_mode(False), torch.no_grad():
            prog = torch.onnx.export(module, (example,), None, input_names=[INPUT_NAME], output_names=[output_name],
                                     opset_version=opset, dynamo=True, external_data=False, verbose=False,
                                     optimize=True, dynamic_shapes=dynamic_shapes)
    except Exception as e:  # noqa: BLE001
        raise RuntimeError(f"torch.onnx.export failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e
    return prog.model_proto


def _dynamic_graph(model, size_range, dynamic_batch, batch: int, output_kind: str, opset: int):
    """Deployed ONNX ModelProto with symbolic H and W and the exact dynamic pyramid pooling
    (:mod:`pspnet_deploy.model.dynamic_pool`) plus pool info; exported at the optimise-for size."""
    import onnx

    from .model.dynamic_pool import make_dynamic

    dyn = make_dynamic(model)
    module = _deploy_module(dyn, output_kind)
    output_name = "labels" if output_kind == "labels" else "logits"
    proto = _torch_to_onnx(module, batch, tuple(size_range[1]), dynamic_batch, opset, output_name, size_range)
    prune(proto.graph)
    _rename_and_strip(proto, dyn.ppm.bins, [])
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    return proto, {"feature_size": None, "pools": [{"bin": [b, b], "mode": "dynamic"} for b in dyn.ppm.bins],
                   "nodes": static_pool_node_names(proto)}


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
    prune(proto.graph)
    _rename_and_strip(proto, static.ppm.bins, [p["mode"] for p in pool_info])
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    return proto, {"feature_size": list(static.static_feature_size), "pools": pool_info,
                   "nodes": static_pool_node_names(proto)}


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------


def _validate(batch, dynamic_batch, output_kind, opset, trt_major, num_verify, input_kind="float", channel_order="RGB"):
    from .parser_check import OPSET_RANGE

    if input_kind not in ("float", "uint8"):
        raise UserError(f"input kind must be 'float' or 'uint8', got {input_kind!r}")
    if str(channel_order).upper() not in ("RGB", "BGR"):
        raise UserError(f"--channel-order must be RGB or BGR, got {channel_order!r}")
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


def export_onnx(checkpoint, out=None, input_size=None, batch: int = 1, dynamic_batch=None, fp16: bool = False,
                output_kind: str = "logits", opset: int | None = None, verify: bool = True, verify_data=None,
                verify_split: str = "val", num_verify: int = 4, tolerances: dict | None = None,
                progress: bool = True, trt_major: int = 10, fp16_margin: float = 4.0, threads: int | None = None,
                seed: int = 0, dynamic_shape: bool = False, min_size=None, max_size=None,
                input_kind: str = "float", channel_order: str = "RGB") -> dict:
    """Export ``checkpoint`` to ONNX at ``out`` (see :func:`default_output_path`); returns the report.

    ``input_size`` (H, W) defaults to the checkpoint's preprocessing size. ``batch`` fixes the
    batch; ``dynamic_batch=(min, opt, max)`` makes it symbolic (the range goes to the metadata for
    engine profiles). ``fp16`` writes the FP16 variant (IO FP32). ``output_kind`` ``"labels"``
    puts ArgMax in the graph (int32 label map N x H x W). ``verify`` runs the parity gate on
    ``num_verify`` images of ``verify_data`` (``verify_split``) or generated ones, with
    ``tolerances`` overriding :data:`pspnet_deploy.compare.DEFAULT_TOLERANCES`. ``input_kind``
    ``"uint8"`` makes the input uint8 N x H x W x 3 pixels in ``channel_order`` (``RGB``, what the
    toolkit's image reader gives, or ``BGR``, what ``cv2.imread`` gives) with the preprocessing in
    the graph. Raises
    :class:`UserError` (nothing written) on bad input, a TensorRT parser problem or a parity failure.

    ``dynamic_shape``: symbolic H and W between ``min_size`` (default: the model's smallest input,
    :func:`pspnet_deploy.geometry.min_input_size`) and ``max_size`` (default: twice
    ``input_size``), ``input_size`` being the size to optimise for; the pyramid pooling stays exact
    at every size (:mod:`pspnet_deploy.model.dynamic_pool`) and the parity gate runs at several
    sizes (:func:`parity_sizes`). The bounds go to the metadata (``pspnet.export.dynamic_shape``).
    """
    import torch

    from . import __version__

    t0 = time.time()
    # 1. arguments, source and output path, all checked before the long work
    dynamic_batch, opset = _validate(batch, dynamic_batch, output_kind, opset, trt_major, num_verify, input_kind,
                                     channel_order)
    channel_order = str(channel_order).upper()
    if fp16:
        check_margin(fp16_margin)
    precision = "fp16" if fp16 else "fp32"
    out_path = default_output_path(checkpoint, out, precision)
    model, meta, pre = _load_source(checkpoint, input_size)
    h, w = pre.input_size
    size_range = None
    if dynamic_shape and input_kind == "uint8":  # the in-graph pixel path is built for one fixed H x W
        raise UserError("--dynamic-shape with --input-kind uint8 is not supported (the in-graph preprocessing is "
                        "built for one size); export a float-input dynamic model, or a uint8 model at one --input-size")
    if dynamic_shape:
        size_range = resolve_size_range(meta.get("model", {}), (h, w), min_size, max_size,
                                        int(dynamic_batch[2]) if dynamic_batch else int(batch))
    elif min_size is not None or max_size is not None:
        raise UserError("--min-size and --max-size need --dynamic-shape")
    check_writable(out_path, "an .onnx file path")
    if threads is None:
        threads = ort_threads() or torch.get_num_threads()

    shape_note = "" if size_range is None else \
        f" (dynamic {size_range[0][0]}x{size_range[0][1]} .. {size_range[2][0]}x{size_range[2][1]})"
    _log(progress, f"exporting {checkpoint} at {h}x{w}{shape_note} ({precision}, {output_kind}, opset {opset}, "
                   f"{'batch ' + '/'.join(map(str, dynamic_batch)) if dynamic_batch else f'batch {batch}'})")
    # 2. the verification images (read first: a bad --verify-data fails before the long export)
    images, batches, src = _verification_batches(pre, verify or fp16, verify_data, verify_split, num_verify, seed,
                                                 int(batch), dynamic_batch, size_range)
    # 3. the graph, its precision and its input
    if size_range is not None:
        proto, pool = _dynamic_graph(model, size_range, dynamic_batch, int(batch), output_kind, opset)
    else:
        proto, pool = _static_graph(model, (h, w), dynamic_batch, int(batch), output_kind, opset)
    fp16_info = None
    if fp16:
        _log(progress, f"FP16: calibrating activation ranges on {len(images)} images ({src['kind']})")
        proto, fp16_info = fp16_proto(proto, batches, fp16_margin, threads)
        fp16_info["calibration"] = src
    fp16_body = proto if fp16 else None  # what the FP16 storage check runs (float in)
    if input_kind == "uint8":  # after FP16: the pixel path stays FP32 and the precision steps see the float body
        proto, fp16_body = _with_uint8_input(proto, pre, channel_order, fp16)

    # 4. metadata, checks, report
    export_opts = _export_options(proto, opset, batch, dynamic_batch, output_kind, fp16, trt_major, input_kind,
                                  size_range)
    onnx_meta = _onnx_metadata(checkpoint, meta, pre, output_kind, precision, input_kind, channel_order, export_opts,
                               pool, size_range is not None, fp16_info)
    write_onnx_metadata(proto, onnx_meta)
    proto.producer_name = "pspnet-deploy"
    proto.producer_version = __version__
    n_pool = len(pool["nodes"])
    checks = run_checks(proto, trt_major, n_pool, str(out_path))
    report = _report(proto, out_path, checkpoint, meta, precision, output_kind, input_kind, export_opts, onnx_meta,
                     checks, fp16_info)

    # 5. written under a temporary name, kept only when the parity gate passes
    tol = tolerances_for(precision, tolerances)
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(proto.SerializeToString())
        if verify:
            _log(progress, f"parity: ONNX Runtime vs PyTorch on {len(images)} images ({src['kind']})")
            feed = (lambda b: pre.to_uint8(b, channel_order)) if input_kind == "uint8" else None
            parity = _parity(model, tmp, batches, threads, tol, src, fp16_model=fp16_body, feed=feed)
            report["parity"] = parity
            if not parity["passed"]:
                raise parity_failure(report, out_path, t0, f"{out_path}: parity check failed ({precision}): "
                                   f"{'; '.join(parity['failures'])} [{format_metrics(parity['metrics'])}]; "
                                   f"no model written")
            _log(progress, f"parity ok: {format_metrics(parity['metrics'])}")
        else:
            report["parity"] = {"skipped": True}
    write_parity_report(report, out_path, t0)
    _log(progress, f"wrote {out_path} ({report['size_bytes'] / 1e6:.1f} MB, {report['nodes']} nodes, "
                   f"pyramid pooling {n_pool} nodes) and {parity_report_path(out_path).name}")
    return report


def _load_source(checkpoint, input_size):
    """The deploy-form model, the checkpoint's metadata and its preprocessing at the export size."""
    from .checkpoint import load_model
    from .data.preprocess import Preprocess

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
    return model, meta, pre.with_size(h, w)


def _verification_batches(pre, needed: bool, verify_data, verify_split, num_verify, seed, batch: int, dynamic_batch,
                          size_range):
    """(images, batches fitted to the graph's batch, their source) for the parity gate and the FP16
    ranges; a dynamic-shape export gets one more image at each other size of :func:`parity_sizes`.
    (None, [], None) when neither needs images."""
    from .data.samples import verification_images

    if not needed:
        return None, [], None
    images, src = verification_images(pre, verify_data, verify_split, num_verify, seed)
    batches = fitted_batches(images, batch, dynamic_batch)
    if size_range is not None:
        for sh, sw in parity_sizes(size_range)[1:]:
            more, _ = verification_images(pre.with_size(sh, sw), verify_data, verify_split, 1, seed)
            batches += fitted_batches(more, batch, dynamic_batch)
        src = dict(src, sizes=[list(b.shape[2:]) for b in batches])
    return images, batches, src


def _with_uint8_input(proto, pre, channel_order: str, fp16: bool):
    """The graph with the in-graph preprocessing in front (uint8 pixels in), and the float body the
    FP16 storage check runs (a copy taken before, for FP16; else None)."""
    import onnx

    fp16_body = None
    if fp16:
        fp16_body = onnx.ModelProto()
        fp16_body.CopyFrom(proto)
    add_uint8_input(proto, pre.to_dict(), channel_order)
    return onnx.shape_inference.infer_shapes(proto, strict_mode=True), fp16_body


def _export_options(proto, opset, batch, dynamic_batch, output_kind, fp16, trt_major, input_kind, size_range) -> dict:
    """``pspnet.export``: how the graph was made."""
    opts = {"exporter": "torch.onnx.export(dynamo=True)", "opset": opset, "batch": None if dynamic_batch else int(batch),
            "dynamic_batch": list(dynamic_batch) if dynamic_batch else None, "output_kind": output_kind,
            "fp16": bool(fp16), "input_name": INPUT_NAME, "output_name": proto.graph.output[0].name,
            "label_dtype": "int32" if output_kind == "labels" else None, "trt_major": trt_major,
            "input_kind": input_kind}
    if size_range is not None:
        opts["dynamic_shape"] = {k: list(v) for k, v in zip(("min", "opt", "max"), size_range)}
    return opts


def _onnx_metadata(checkpoint, meta, pre, output_kind, precision, input_kind, channel_order, export_opts, pool,
                   dynamic: bool, fp16_info) -> dict:
    """Every ``pspnet.*`` metadata value of the exported file."""
    from . import __version__

    h, w = pre.input_size
    onnx_meta = {
        "format": "pspnet-deploy/onnx", "preprocess": pre.to_dict(), "classes": list(meta["classes"]),
        "palette": [list(map(int, c)) for c in meta["palette"]], "ignore_index": int(meta.get("ignore_index", 255)),
        "input_size": [h, w], "output_kind": output_kind, "precision": precision, "input_kind": input_kind,
        "checkpoint_sha256": meta.get("sha256"), "checkpoint": Path(checkpoint).name,
        "toolkit_version": __version__, "versions": versions(), "model": meta.get("model", {}),
        "export": export_opts, ("dynamic_pool" if dynamic else "static_pool"): {
            "feature_size": pool["feature_size"], "pools": pool["pools"], "nodes": pool["nodes"]},
        "dataset": meta.get("dataset"),
    }
    if input_kind == "uint8":
        onnx_meta["input_channel_order"] = channel_order
    if fp16_info is not None:
        onnx_meta["fp16"] = fp16_info
    if meta.get("test_time"):  # the source's test-time procedure (pspnet-convert), for --test-time source
        onnx_meta["test_time"] = meta["test_time"]
    return onnx_meta


def _report(proto, out_path, checkpoint, meta, precision, output_kind, input_kind, export_opts, onnx_meta, checks,
            fp16_info) -> dict:
    """The export report (the parity result is added by the gate)."""
    op_counts: dict[str, int] = {}
    for n in proto.graph.node:
        op_counts[n.op_type] = op_counts.get(n.op_type, 0) + 1
    report = {
        "path": str(out_path), "precision": precision, "input_size": list(onnx_meta["input_size"]),
        "output_kind": output_kind, "dynamic_shape": export_opts.get("dynamic_shape"),
        "input_kind": input_kind,
        "batch": export_opts["batch"], "dynamic_batch": export_opts["dynamic_batch"], "opset": export_opts["opset"],
        "checkpoint": {"path": str(checkpoint), "sha256": meta.get("sha256")},
        "nodes": len(proto.graph.node), "op_counts": dict(sorted(op_counts.items())),
        "static_pool": onnx_meta.get("static_pool", onnx_meta.get("dynamic_pool")), "checks": checks,
        "versions": onnx_meta["versions"],
    }
    if fp16_info is not None:
        report["fp16"] = fp16_info
    return report


def resolve_size_range(model_config: dict, opt, min_size=None, max_size=None, batch: int = 1):
    """((min H, min W), (opt H, opt W), (max H, max W)) of a dynamic-shape export, checked.

    ``min_size`` defaults to the model's smallest input (the feature map must hold the deepest
    bin: :func:`pspnet_deploy.geometry.min_input_size`, checked by
    :func:`pspnet_deploy.utils.check_input_size`), ``max_size`` to twice ``opt`` (at most
    :data:`pspnet_deploy.utils.MAX_SIDE`); each side must satisfy min <= opt <= max."""
    from .geometry import min_input_size
    from .utils import MAX_SIDE, check_input_size

    need = min_input_size(model_config.get("bins", (1, 2, 3, 6)), int(model_config.get("output_stride", 8)))
    opt = check_input_size(opt, "--input-size", min_side=need)
    lo = check_input_size(min_size, "--min-size", min_side=need) if min_size is not None else (need, need)
    hi = check_input_size(max_size, "--max-size", batch=batch, min_side=need) if max_size is not None else \
        (min(2 * opt[0], MAX_SIDE), min(2 * opt[1], MAX_SIDE))
    if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
        raise UserError(f"--dynamic-shape needs --min-size <= --input-size <= --max-size on each side, got "
                        f"{lo[0]}x{lo[1]}, {opt[0]}x{opt[1]}, {hi[0]}x{hi[1]}")
    return lo, opt, hi


#: sizes the dynamic-shape parity gate adds (clipped to the bounds): not multiples of 8 or of the bins
PARITY_EXTRA_SIZES = ((97, 131), (241, 319), (360, 480))


def parity_sizes(size_range) -> list[tuple[int, int]]:
    """Sizes the parity gate of a dynamic-shape export runs at: the optimise-for size first, then
    the minimum, the maximum and :data:`PARITY_EXTRA_SIZES` clipped to the bounds (no repeats)."""
    lo, opt, hi = size_range
    sizes = [tuple(opt), tuple(lo), tuple(hi)]
    sizes += [(min(max(h, lo[0]), hi[0]), min(max(w, lo[1]), hi[1])) for h, w in PARITY_EXTRA_SIZES]
    return list(dict.fromkeys(sizes))


def _parity(model, onnx_path: Path, batches: list[np.ndarray], threads: int, tol: dict, src: dict,
            fp16_model=None, feed=None) -> dict:
    """``feed(batch)``: what the ONNX takes for a preprocessed float batch (a uint8 model: the
    pixels the batch was normalised from); PyTorch always gets the float batch."""
    import torch

    sess = make_session(onnx_path, threads)
    in_name, out_name = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    comp = Comparison(any_size=True)
    per_size: dict[tuple, Comparison] = {}  # a dynamic-shape model is gated at each size on its own too
    model.eval()
    with torch.inference_mode():
        for b in batches:
            x = feed(b) if feed is not None else np.ascontiguousarray(b, dtype=np.float32)
            cand = sess.run([out_name], {in_name: x})[0]
            ref = model(torch.from_numpy(b)).float().numpy()
            cand = cand.astype(np.float32) if cand.dtype == np.float16 else cand
            comp.update(ref, cand)
            per_size.setdefault(tuple(b.shape[2:]), Comparison()).update(ref, cand)
    metrics = comp.result()
    failures = check_tolerances(metrics, tol)
    sizes = {}
    if len(per_size) > 1:  # every value tolerance at each size; argmax agreement over all pixels only (one
        per_tol = {k: v for k, v in tol.items() if k != "argmax_agreement"}  # small image: too few pixels)
        for (h, w), c in per_size.items():
            sizes[f"{h}x{w}"] = m = c.result()
            failures += [f"{h}x{w}: {f}" for f in check_tolerances(m, per_tol)]
    if fp16_model is not None:
        failures += storage_failures(fp16_model, batches, threads, metrics)
    return {"reference": "pytorch fp32 (adaptive pooling, eval)", "candidate": "onnxruntime " + _ort_version(),
            "images": src, "batches": [int(len(b)) for b in batches], "tolerances": tol, "metrics": metrics,
            "failures": failures, "passed": not failures, **({"sizes": sizes} if sizes else {})}


def _ort_version() -> str:
    try:
        import onnxruntime

        return onnxruntime.__version__
    except ImportError:  # pragma: no cover
        return "?"
