"""FP16: an FP32 ONNX to an FP16 one (weights and activations FP16, inputs/outputs kept FP32) for
strongly typed TensorRT, with the nodes FP16 cannot hold kept FP32.

The FP32 model runs on sample images (the shared observer); every node that reads or writes a
value above ``FP16_MAX / margin``, or holds a weight beyond the FP16 range, stays FP32
(:func:`fp16_block_list`). After conversion, every FP16 tensor is fetched once more on the same
images and any that overflows to Inf/NaN fails the check (:func:`fp16_overflow_tensors`), because
ONNX Runtime on CPU computes most FP16 nodes in FP32 and would hide it.
"""
from __future__ import annotations

import copy
import math
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from ..compare import Comparison, parity_failure, tolerances_for, write_parity_report
from ..compare import check as check_tolerances
from ..errors import UserError
from ..onnx_graph import add_uint8_input, prune, run_checks, static_pool_node_names, strip_uint8_input, write_onnx_metadata
from ..ort_session import make_session, ort_threads
from ..utils import atomic_path, check_writable, say, sha256_file, versions
from .batches import fitted_batches
from .observer import activation_ranges

__all__ = ["FP16_MAX", "check_margin", "fp16_block_list", "fp16_overflow_tensors", "fp16_proto", "storage_failures",
           "convert_fp16", "fp16_islands"]

FP16_MAX = 65504.0


def check_margin(margin: float) -> None:
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin >= 1.0):
        raise UserError(f"FP16 margin must be a number >= 1 (values above 65504 / margin stay FP32), got {margin}")


def fp16_block_list(fp32_model, ranges: dict[str, float], margin: float = 4.0,
                    block_ops: Sequence[str] = ()) -> tuple[list[str], dict]:
    """Nodes to keep in FP32: every node that reads or writes a tensor whose observed max |value|
    exceeds ``FP16_MAX / margin``, or has a weight beyond the FP16 range, or whose op type is in
    ``block_ops``, and the dynamic-shape export's pyramid pooling (``ppm.dynamic_pool/*``). Blocking both the producer and the consumers keeps such a tensor FP32 end to
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
        if node.name.startswith("ppm.dynamic_pool/"):  # averaging matrices built from the shape: exact in FP32
            why.append("dynamic pyramid pooling kept FP32")
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


def fp16_proto(fp32_model, batches: list[np.ndarray], margin: float, threads: int | None, block_ops=()):
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
    prune(fp16.graph)  # the converter leaves value_info of tensors its cast clean-up removed
    info.update(blocked_nodes=blocked, converter="onnxconverter_common.float16.convert_float_to_float16",
                keep_io_types=True, op_block_list=list(block_ops))
    return fp16, info


def fp16_islands(model, nodes: Sequence[str]) -> list[str]:
    """Run the named nodes of an (INT8 Q/DQ) model in FP16, in place: their FP32 weights and biases
    become FP16 initializers, their FP32 activation inputs pass through a ``Cast`` to FP16 (one per
    tensor, shared by the islands that read it) and their outputs are cast back to FP32 under the
    original names, so the rest of the graph is unchanged. A strongly typed TensorRT network runs
    such a node in FP16 instead of FP32 (the accuracy-budget plan's nodes kept out of INT8).
    Nodes whose weights exceed the FP16 range stay FP32. Returns the nodes converted."""
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    want = set(nodes)
    inits = {i.name: i for i in g.initializer}
    readers: dict[str, int] = {}
    for n in g.node:
        for t in n.input:
            readers[t] = readers.get(t, 0) + 1
    float_inits = {k for k, v in inits.items() if v.data_type == TensorProto.FLOAT}

    def fits(n) -> bool:
        return all(float(np.abs(numpy_helper.to_array(inits[t])).max(initial=0)) <= FP16_MAX
                   for t in n.input if t in float_inits)

    casts: dict[str, str] = {}  # FP32 tensor -> its FP16 cast
    out_nodes, done = [], []
    for n in g.node:
        if n.name not in want or not fits(n):
            out_nodes.append(n)
            continue
        for k, t in enumerate(n.input):
            if not t:
                continue
            if t in float_inits:
                name = t if readers.get(t, 0) == 1 else f"{t}.fp16"
                if name not in inits:
                    inits[name] = numpy_helper.from_array(numpy_helper.to_array(inits[t]).astype(np.float16), name)
                    g.initializer.append(inits[name])
                elif name == t:
                    inits[t].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(inits[t]).astype(np.float16), t))
                n.input[k] = name
            elif t not in inits:
                if t not in casts:
                    casts[t] = f"{t}.fp16"
                    out_nodes.append(helper.make_node("Cast", [t], [casts[t]], to=TensorProto.FLOAT16,
                                                      name=f"{t}.cast_fp16"))
                n.input[k] = casts[t]
        outs = list(n.output)
        for k, o in enumerate(outs):
            n.output[k] = f"{o}.fp16out"
        out_nodes.append(n)
        for o in outs:
            out_nodes.append(helper.make_node("Cast", [f"{o}.fp16out"], [o], to=TensorProto.FLOAT, name=f"{o}.cast_fp32"))
        done.append(n.name)
    del g.node[:]
    g.node.extend(out_nodes)
    return done


def storage_failures(fp16_model, batches, threads, metrics: dict) -> list[str]:
    over = fp16_overflow_tensors(fp16_model, batches, threads)
    metrics["fp16_overflow_tensors"] = len(over)
    if over:
        return [f"{len(over)} FP16 tensor(s) overflow to Inf/NaN (e.g. {', '.join(list(over)[:3])})"]
    return []


def convert_fp16(fp32_onnx_path, out_path, calibration_images=None, margin: float = 4.0, verify: bool = True,
                 tolerances: dict | None = None, trt_major: int = 10, threads: int | None = None,
                 block_ops: Sequence[str] = (), num_images: int = 4, split: str = "val",
                 progress: bool = True) -> dict:
    """FP16 variant of an existing FP32 ONNX written by pspnet-export (for strongly typed TensorRT).

    ``calibration_images``: preprocessed float32 NCHW array at the model's input size, or a
    dataset folder (``num_images`` of ``split``), or None for generated images (recorded as such).
    A dynamic-shape export (``pspnet-export --dynamic-shape``) gets them at its optimise-for size
    plus one image at its minimum and one at its maximum size (``calibration.sizes``), so ranges
    and the parity check cover the declared bounds, as the export's own ``--fp16`` does.
    The FP32 model runs on them with ONNX Runtime; nodes touching values above
    ``FP16_MAX / margin`` stay FP32 (:func:`fp16_block_list`). Inputs/outputs stay FP32. With
    ``verify`` the FP16 file is compared with the FP32 one (ONNX Runtime, FP16 tolerances) and a
    failure leaves nothing at ``out_path``. Returns the report (also at ``<out>.parity.json``).
    """
    import onnx

    from ..data.preprocess import Preprocess
    from ..data.samples import verification_images
    from ..card import read_card

    t0 = time.time()
    check_margin(margin)
    threads = ort_threads(threads)  # a bad PSPNET_ORT_THREADS fails here, before any work
    src_path = Path(fp32_onnx_path)
    if not src_path.is_file():
        raise UserError(f"{src_path}: ONNX file not found")
    card = read_card(src_path, kind="onnx")
    meta = card.meta
    if str(meta.get("precision", "fp32")) != "fp32":
        raise UserError(f"{src_path}: is {meta.get('precision')}, not an FP32 export; convert the FP32 ONNX")
    fp32 = onnx.load(str(src_path))
    # a uint8-input model: FP16 of the float body, the pixel path put back in front in FP32
    u8_order = str(meta.get("input_channel_order", "RGB")).upper() if strip_uint8_input(fp32) else None
    out_path = Path(out_path)
    check_writable(out_path, "an .onnx file path")
    inp = fp32.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    h, w = dims[2], dims[3]
    size_range = card.size_range if (h is None or w is None) else None
    if size_range is not None:  # a dynamic-shape export: ranges at the optimise-for size and both bounds
        h, w = card.input_size
    fixed_batch = dims[0]
    dyn = meta.get("export", {}).get("dynamic_batch") if fixed_batch is None else None
    if fixed_batch is None and not dyn:
        dyn = [1, 1, 64]
    pre = Preprocess.from_dict(meta["preprocess"]).with_size(h, w) if "preprocess" in meta else Preprocess((h, w))
    if isinstance(calibration_images, np.ndarray):
        images = calibration_images.astype(np.float32)
        if images.ndim != 4 or images.shape[1:] != (3, h, w):
            raise UserError(f"calibration images must be N x 3 x {h} x {w}, got {images.shape}")
        src = {"kind": "array", "count": int(len(images))}
    else:
        images, src = verification_images(pre, calibration_images, split, num_images)
    batches = fitted_batches(images, fixed_batch or 1, dyn)
    if size_range is not None:
        for sh, sw in dict.fromkeys(tuple(s) for s in (size_range[0], size_range[2]) if tuple(s) != (h, w)):
            more, _ = verification_images(pre.with_size(sh, sw), None if isinstance(calibration_images, np.ndarray)
                                          else calibration_images, split, 1)
            batches += fitted_batches(more, fixed_batch or 1, dyn)
        src = dict(src, sizes=[list(b.shape[2:]) for b in batches])
    say(progress, f"pspnet-export: FP16: calibrating activation ranges on {len(images)} images ({src['kind']})")
    fp16, info = fp16_proto(fp32, batches, margin, threads, block_ops)
    info["calibration"] = src
    new_meta = dict(meta)
    new_meta.update(precision="fp16", fp16=info, source_onnx={"path": str(src_path), "sha256": sha256_file(src_path)})
    write_onnx_metadata(fp16, new_meta)
    fp16_body = fp16
    if u8_order is not None:
        fp16_body = onnx.ModelProto()
        fp16_body.CopyFrom(fp16)
        add_uint8_input(fp16, meta["preprocess"], u8_order)
        fp16 = onnx.shape_inference.infer_shapes(fp16)
    expected = len(static_pool_node_names(fp32))
    checks = run_checks(fp16, trt_major, expected, str(out_path))
    report = {"path": str(out_path), "precision": "fp16", "source": str(src_path), "fp16": info, "checks": checks,
              "nodes": len(fp16.graph.node), "versions": versions()}
    tol = tolerances_for("fp16", tolerances)
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(fp16.SerializeToString())
        if verify:
            ref_sess = make_session(fp32, threads)
            cand_sess = make_session(tmp.read_bytes(), threads)
            comp, agree, pixels = Comparison(any_size=size_range is not None), 0, 0
            for b in batches:
                ref = ref_sess.run(None, {inp.name: b})[0]
                cand = cand_sess.run(None, {inp.name: b if u8_order is None else pre.to_uint8(b, u8_order)})[0]
                if ref.ndim == 3:  # labels model: compare label maps only
                    agree, pixels = agree + int((ref == cand).sum()), pixels + int(ref.size)
                else:
                    comp.update(ref, cand.astype(np.float32))
            if pixels:
                metrics = {"argmax_agreement": agree / pixels, "num_pixels": pixels, "argmax_disagree": pixels - agree,
                           "nonfinite": 0, "candidate_kind": "labels"}
            else:
                metrics = comp.result()
            failures = check_tolerances(metrics, tol) + storage_failures(fp16_body, batches, threads, metrics)
            report["parity"] = {"reference": "fp32 onnx (onnxruntime)", "images": src, "tolerances": tol,
                                "metrics": metrics, "failures": failures, "passed": not failures}
            if failures:
                raise parity_failure(report, out_path, t0, f"{out_path}: FP16 parity check failed against "
                                     f"{src_path.name}: {'; '.join(failures)} (no model written; raise "
                                     f"--fp16-margin or loosen tolerances)")
        else:
            report["parity"] = {"skipped": True}
    write_parity_report(report, out_path, t0)
    say(progress, f"pspnet-export: wrote {out_path} ({len(info['blocked_nodes'])} nodes kept FP32)")
    return report

