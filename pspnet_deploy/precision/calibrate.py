"""INT8 by calibration: an FP32 ONNX in, an explicit Q/DQ INT8 ONNX out (TensorRT's format).

This module runs the job; each step lives in its own module of :mod:`pspnet_deploy.precision`:
the input check (:func:`inspect_fp32_onnx`), calibration images (:mod:`.calib_data`), statistics
and range methods (:mod:`.ranges`, through the shared :mod:`.observer`), Q/DQ writing
(:mod:`.qdq`), the table (:mod:`.table`) and the accuracy-budget search (:mod:`.sensitivity`).

``pspnet.*`` metadata is carried over and updated: ``precision`` "int8", ``calibration_method``,
``calibration_images_hash``, ``source_onnx_sha256`` and a ``calibration`` record (what was kept in
FP32 and why).

Accuracy (``max_miou_drop`` in mIoU *points*, or ``method="auto"``) is measured by an
``evaluator(onnx_path, dataset, limit=, threads=, progress=, desc=) -> mIoU`` the caller passes
(the command layer passes :func:`pspnet_deploy.evaluate.onnx_miou`), so this stage does not
import the runners above it. When INT8 loses more than the budget, quantization units are ranked
by how much quantizing each alone disturbs the logits and the most sensitive kept in FP32,
fewest first, until the budget holds.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..data.preprocess import Preprocess
from ..errors import UserError
from ..onnx_graph import write_onnx_metadata
from ..ort_session import make_session, ort_threads
from ..utils import atomic_path, atomic_write_json, say, sha256_file, work_dir
from .batches import iter_batches
from .bias_correction import correct_biases
from .calib_data import DEFAULT_NUM_IMAGES, MIN_CALIB_IMAGES, is_image_folder, load_calibration_set
from .fp16 import fp16_islands
from .qdq import (FALLBACKS, MODELOPT_DEFAULT_METHOD, PLACEMENT_OPS, PLACEMENTS, QUANTIZED_OPS, check_modelopt, default_exclusions, prepare_fp32,
                  qdq_summary, quantizable_units, quantize_modelopt, quantize_qdq, ranges_from_qdq, static_pool_nodes,
                  tensors_to_calibrate)
from .ranges import DEFAULT_METHOD, DEFAULT_PERCENTILE, METHOD_PREFERENCE, METHODS, amax_from_stats, collect_statistics
from .sensitivity import search_mixed_precision, write_sensitivity_report
from .table import make_table, read_calibration_table, table_path_for, table_plan

__all__ = ["SourceModel", "inspect_fp32_onnx", "calibrate_onnx", "Evaluator"]

#: ``evaluator(onnx_path, dataset, limit=, threads=, progress=, desc=) -> mIoU in [0, 1]``
Evaluator = Callable[..., float]


@dataclass
class SourceModel:
    path: Path
    sha256: str
    meta: dict
    input_name: str
    batch: int | None  # fixed batch size, None when dynamic
    size: tuple[int, int]
    preprocess: Preprocess


def inspect_fp32_onnx(path: str | Path) -> SourceModel:
    """Check that ``path`` is an FP32, unquantized pspnet-export ONNX; one clear UserError if not."""
    import onnx
    from onnx import TensorProto

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: ONNX model not found; pass the model.fp32.onnx written by pspnet-export")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - onnx raises several types for bad files
        raise UserError(f"{path}: cannot read ONNX model ({type(e).__name__}); pass the model.fp32.onnx written by "
                        f"pspnet-export") from e
    from ..card import card_from_onnx_proto, validate_card

    card = validate_card(card_from_onnx_proto(model, path))
    meta = card.meta
    ops = {n.op_type for n in model.graph.node}
    precision = str(meta.get("precision", "")).lower()
    if ops & QUANTIZED_OPS or precision == "int8":
        raise UserError(f"{path}: model is already quantized ({', '.join(sorted(ops & QUANTIZED_OPS)) or 'precision int8'}); "
                        f"pass the FP32 ONNX (model.fp32.onnx) it came from")
    fp16 = any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer) or any(
        v.type.tensor_type.elem_type == TensorProto.FLOAT16 for v in list(model.graph.input) + list(model.graph.output))
    if fp16 or precision == "fp16":
        raise UserError(f"{path}: model is FP16; calibration needs the FP32 ONNX (pspnet-export without --fp16, "
                        f"model.fp32.onnx)")
    missing = [k for k in ("preprocess", "classes", "palette") if k not in meta]
    if missing:
        raise UserError(f"{path}: ONNX has no pspnet.{missing[0]} metadata (not written by pspnet-export); pass the "
                        f"model.fp32.onnx written by pspnet-export, or export the checkpoint with pspnet-export")
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise UserError(f"{path}: expected one image input, found {len(inputs)}; pass the ONNX written by pspnet-export")
    inp = inputs[0]
    if inp.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise UserError(f"{path}: input {inp.name!r} is not float32; calibration needs the FP32 ONNX")
    dims = inp.type.tensor_type.shape.dim
    if len(dims) != 4 or dims[1].dim_value not in (0, 3):
        raise UserError(f"{path}: input {inp.name!r} is not Nx3xHxW; pass the ONNX written by pspnet-export")
    h, w = dims[2].dim_value, dims[3].dim_value
    if (not h or not w) and card.size_range is not None:  # dynamic-shape export: at the optimise-for size
        h, w = card.input_size
    if not h or not w:
        raise UserError(f"{path}: input height/width are not fixed; re-export with a fixed --input-size")
    batch = dims[0].dim_value or None
    try:
        pre = Preprocess.from_dict(meta["preprocess"]).with_size(h, w)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: pspnet.preprocess metadata is unreadable ({e}); re-export with pspnet-export") from e
    return SourceModel(path=path, sha256=sha256_file(path), meta=meta, input_name=inp.name, batch=batch, size=(h, w),
                       preprocess=pre)


def _same_data(a, b) -> bool:
    if a is None or b is None:
        return False
    sa, sb = str(a), str(b)
    if sa.startswith("synthetic") or sb.startswith("synthetic"):
        return sa.split(":")[0] == sb.split(":")[0] and (sa.split(":") + ["0"])[1] == (sb.split(":") + ["0"])[1]
    try:
        return Path(sa).resolve() == Path(sb).resolve()
    except OSError:
        return sa == sb


#: calibration images the bias correction measures on (each budget plan is corrected again)
BIAS_CORRECTION_IMAGES = 64


def calibrate_onnx(fp32_onnx: str | Path, output: str | Path, data=None, *args, **kwargs) -> dict:
    """Calibrate an FP32 ONNX (see :func:`calibrate_float_onnx` for every argument).

    A uint8-input model (``pspnet-export --input-kind uint8``) is calibrated on its float body:
    the in-graph preprocessing is taken off (:func:`~pspnet_deploy.onnx_graph.strip_uint8_input`),
    the body calibrated with the preprocessed float images as any FP32 export, and the same
    preprocessing put back in front of the Q/DQ graph, so the pixel path (Cast, Sub, Div,
    Transpose) stays FP32 and the first convolution's input is quantized from the normalised
    values, exactly as for the float model. The file's and the table's ``source_onnx_sha256``
    name the uint8 file."""
    import json
    import shutil

    import onnx

    from ..card import onnx_meta_from_proto
    from ..onnx_graph import add_uint8_input, has_uint8_input, strip_uint8_input

    src = Path(fp32_onnx)
    model = None
    if src.is_file() and Path(output).suffix.lower() == ".onnx":
        try:
            model = onnx.load(str(src), load_external_data=False)
        except Exception:  # noqa: BLE001 - the float path's inspection says what is wrong with the file
            model = None
    if model is None or not has_uint8_input(model):
        return calibrate_float_onnx(fp32_onnx, output, data, *args, **kwargs)
    meta = onnx_meta_from_proto(model)
    order = str(meta.get("input_channel_order", "RGB")).upper()
    if "preprocess" not in meta:
        raise UserError(f"{src}: ONNX has no pspnet.preprocess metadata; export it with pspnet-export")
    strip_uint8_input(model)
    write_onnx_metadata(model, {"input_kind": "float"})
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    real_sha = sha256_file(src)
    kwargs.setdefault("cache_dir", output.parent / "calib-cache")
    with work_dir(output) as work:  # named as a temporary: a killed run's is removed by the next write there
        body = work / src.name
        onnx.save(model, str(body))
        body_sha = sha256_file(body)
        table = kwargs.get("table")
        if table is not None and Path(table).is_file():  # a table of the uint8 file names its sha; the body runs
            tdata = read_calibration_table(table)
            if tdata.get("source_onnx_sha256") == real_sha:
                tdata["source_onnx_sha256"] = body_sha
                kwargs["table"] = work / Path(table).name
                atomic_write_json(kwargs["table"], tdata)
        tmp_out = work / "out" / output.name
        tmp_out.parent.mkdir()
        report = calibrate_float_onnx(body, tmp_out, data, *args, **kwargs)
        q = onnx.load(str(tmp_out))
        add_uint8_input(q, meta["preprocess"], order)
        write_onnx_metadata(q, {"input_kind": "uint8", "input_channel_order": order, "source_onnx_sha256": real_sha})
        onnx.checker.check_model(q)
        tpath = table_path_for(output)
        tdata = json.loads(table_path_for(tmp_out).read_text(encoding="utf-8"))
        tdata["source_onnx"], tdata["source_onnx_sha256"] = src.name, real_sha
        for f in tmp_out.parent.iterdir():  # reports written beside the output (sensitivity) move with it
            if f.name not in (tmp_out.name, table_path_for(tmp_out).name):
                shutil.move(str(f), str(output.parent / f.name))
        with atomic_path(output) as tmp:
            onnx.save(q, str(tmp))
            atomic_write_json(tpath, tdata)
    report.update({"source_onnx": str(src), "source_onnx_sha256": real_sha, "output": str(output),
                   "table": str(tpath), "output_sha256": sha256_file(output),
                   "input_kind": "uint8", "input_prefix": "FP32 (not quantized)"})
    return report


def calibrate_float_onnx(fp32_onnx: str | Path, output: str | Path, data=None, split: str = "train",
                   num_images: int = DEFAULT_NUM_IMAGES, method: str | None = None, max_miou_drop: float | None = None,
                   eval_split: str = "val", eval_limit: int | None = None, cache_dir: str | Path | None = None,
                   force: bool = False, progress: bool = True, *, eval_data=None,
                   percentile: float = DEFAULT_PERCENTILE, placement: str = "trt", backend: str = "ort",
                   table: str | Path | None = None, min_images: int = MIN_CALIB_IMAGES, sensitivity_images: int = 16,
                   max_fp32_nodes: int | None = None, threads: int | None = None,
                   keep_fp32: Sequence[str] = (), bias_correction: bool | None = None, fallback: str | None = None,
                   parser_check: bool = True, evaluator: Evaluator | None = None) -> dict:
    """Calibrate ``fp32_onnx`` and write the Q/DQ INT8 model to ``output`` (plus ``.calib.json``).

    ``data``: dataset folder, ``synthetic[:SEED]`` or a folder of images (no masks needed);
    ``num_images`` chosen evenly over it. ``method``: minmax, entropy, percentile or auto (each
    tried, the best mIoU on ``eval_split`` kept). ``max_miou_drop``: allowed INT8 - FP32 mIoU loss
    in *points* (0.5 = half a point); over it, the most sensitive nodes stay FP32 (sensitivity
    report beside the output) or, if ``max_fp32_nodes`` of them do not suffice, UserError and no
    model. ``table``: reuse the ranges of an earlier ``.calib.json`` instead of images, and its plan
    (:func:`~.table.table_plan`): its FP32 nodes are kept too, and ``fallback`` / ``bias_correction``
    left as None take the table's (None without a table: FP32 fallback, no correction).
    ``keep_fp32``: node names kept FP32 from the start (a plan decided before, e.g. the FP32 nodes
    of the calibrated file that quantization-aware training starts from).
    ``bias_correction``: take each quantized convolution's mean output shift out of its FP32 bias,
    measured on the first ``BIAS_CORRECTION_IMAGES`` calibration images (:mod:`.bias_correction`);
    needs ``data`` even with ``table``.
    ``fallback``: the precision of the nodes kept out of INT8 (the budget's plan and ``keep_fp32``):
    ``fp32``, or ``fp16`` islands (:func:`.fp16.fp16_islands`), which a strongly typed TensorRT
    network runs in FP16; the static pyramid pooling stays FP32 either way.
    ``eval_data`` defaults to ``data``. Calibrating on ``eval_split`` of the evaluation data is
    refused unless ``force``. ``evaluator`` measures mIoU when the budget or ``auto`` needs it
    (see the module docstring). Returns a report dict (also the basis of the CLI's JSON).
    """
    t0 = time.time()
    method_given = method
    if method is None:  # ModelOpt has no percentile: its default is the better of the two it has on held-out frames
        method = DEFAULT_METHOD if backend != "modelopt" else MODELOPT_DEFAULT_METHOD
    output = Path(output)
    if output.suffix.lower() != ".onnx":
        raise UserError(f"{output}: output must be an .onnx file (e.g. model.int8.onnx)")
    if method not in METHODS + ("auto",):
        raise UserError(f"unknown calibration method {method!r}; choose from {', '.join(METHODS + ('auto',))}")
    if placement not in PLACEMENTS:
        raise UserError(f"unknown placement {placement!r}; choose from {', '.join(PLACEMENTS)}")
    if backend not in ("ort", "modelopt"):
        raise UserError(f"unknown backend {backend!r}; choose ort or modelopt")
    # (a table's own fallback never meets ModelOpt: check_modelopt refuses tables)
    if fallback not in (None, "fp32") and backend != "ort":
        raise UserError("--fallback fp16 works on the files of --backend ort; ModelOpt's keep their nodes FP32")
    if max_miou_drop is not None and not (0 <= float(max_miou_drop) < 100):
        raise UserError(f"--max-miou-drop is in mIoU points (0.5 = half a point) and must be in [0, 100), "
                        f"got {max_miou_drop}")
    if not (0 < percentile <= 100):
        raise UserError(f"--percentile must be in (0, 100], got {percentile}")
    if eval_limit is not None and eval_limit <= 0:
        raise UserError(f"--eval-limit must be positive, got {eval_limit}")
    threads = ort_threads(threads)  # a bad PSPNET_ORT_THREADS fails here, before any work
    if backend == "modelopt":  # before any statistics: what ModelOpt cannot do, and ModelOpt itself
        check_modelopt(list(METHODS) if method == "auto" else [method], table is not None)
    src = inspect_fp32_onnx(fp32_onnx)
    if output.resolve() == src.path.resolve():
        raise UserError(f"{output}: output would overwrite the FP32 input; choose another name (e.g. model.int8.onnx)")
    needs_eval = max_miou_drop is not None or method == "auto"
    if needs_eval and evaluator is None:
        raise ValueError("max_miou_drop / method='auto' measure accuracy: pass evaluator= "
                         "(e.g. pspnet_deploy.evaluate.onnx_miou)")
    eval_spec = eval_data if eval_data is not None else data
    reuse = read_calibration_table(table) if table is not None else None
    if reuse is not None:
        if method == "auto":
            raise UserError("--method auto calibrates with every method; it cannot reuse one --calib-table")
        if method_given is not None and method_given != reuse.get("method"):
            raise UserError(f"{table}: the table's ranges were made with --method {reuse.get('method')}, not "
                            f"{method_given}; drop --method to reuse them, or drop --calib-table to calibrate with "
                            f"{method_given}")
        if reuse.get("source_onnx_sha256") != src.sha256 and not force:
            raise UserError(f"{table}: calibration table was made for another model (sha256 "
                            f"{str(reuse.get('source_onnx_sha256'))[:12]}…, this one {src.sha256[:12]}…); "
                            f"recalibrate, or pass --force to apply it anyway")
        method = reuse["method"]
    elif data is None:
        raise UserError("no calibration data; pass --data DIR (dataset, folder of images or synthetic)")
    # a reused table brings its plan (FP32 nodes, their precision, bias correction) unless told otherwise
    plan = table_plan(reuse or {})
    if fallback is None:
        fallback = plan["fallback"]
    if fallback not in FALLBACKS:
        raise UserError(f"unknown fallback precision {fallback!r}; choose from {', '.join(FALLBACKS)}")
    correction_from_table = bias_correction is None
    if correction_from_table:
        bias_correction = plan["bias_correction"]
    if bias_correction and data is None:
        raise UserError(f"{table}: the table was made with --bias-correction, which measures each convolution's "
                        f"error on images: pass --data DIR as well, or --no-bias-correction" if correction_from_table
                        else "--bias-correction measures each convolution's error on calibration images; pass "
                             "--data DIR as well as --calib-table")
    keep_fp32 = list(dict.fromkeys(list(plan["fp32_nodes"]) + list(keep_fp32)))
    if bias_correction and backend != "ort":
        raise UserError("--bias-correction works on the files of --backend ort; ModelOpt's have their own layout")
    if needs_eval and eval_spec is None:
        raise UserError("--max-miou-drop and --method auto need an evaluation dataset; pass --eval-data DIR")
    if reuse is None and _same_data(data, eval_spec) and split == eval_split and not (
            is_image_folder(Path(str(data)))):
        if not force:
            raise UserError(f"calibrating on the {split!r} split, which is the evaluation split, inflates the measured "
                            f"accuracy; calibrate on --split train (or pass --force)")
        say(True, f"warning: calibrating on the evaluation split {split!r} (--force); INT8 accuracy measured on it "
                  f"will look better than it is")
    cache_dir = Path(cache_dir) if cache_dir is not None else output.parent / "calib-cache"
    eval_ds = None
    if needs_eval:
        from ..data import open_dataset

        eval_ds = open_dataset(eval_spec, eval_split)
        if len(eval_ds) == 0:
            raise UserError(f"{eval_spec} [{eval_split}]: the evaluation split has no images")
        if eval_ds.info.num_classes != len(src.meta["classes"]):
            raise UserError(f"model predicts {len(src.meta['classes'])} classes but {eval_spec} has "
                            f"{eval_ds.info.num_classes}; evaluate on the dataset the model was trained for")
    report: dict = {"source_onnx": str(src.path), "source_onnx_sha256": src.sha256, "output": str(output),
                    "placement": placement, "backend": backend, "budget_points": max_miou_drop}
    with work_dir(output) as work:
        import onnx

        say(progress, f"preparing {src.path.name} (shape inference, BatchNorm folding)")
        prepped = prepare_fp32(src.path, work / "fp32.pre.onnx")
        pm = onnx.load(str(prepped))
        pool_nodes = static_pool_nodes(pm)
        exclude_base = default_exclusions(pm, placement, pool_nodes)
        units = quantizable_units(pm, placement, exclude_base)
        report["static_pool_nodes"] = pool_nodes
        report["units"] = len(units)
        names = {n.name for n in pm.graph.node}
        unknown = [n for n in keep_fp32 if n not in names]
        if unknown:
            where = f"{table} keeps" if reuse is not None and unknown[0] in plan["fp32_nodes"] else "keep_fp32 names"
            raise UserError(f"{where} node {unknown[0]!r}, which {src.path.name} does not have "
                            f"({len(unknown)} unknown); node names are those of the FP32 file's graph")
        if reuse is not None:
            report["from_table"] = {"fp32_nodes": plan["fp32_nodes"], "fallback": fallback,
                                    "bias_correction": bool(bias_correction)}

        calib = None
        if reuse is None:
            calib = load_calibration_set(data, split, num_images, src.preprocess, src.sha256, cache_dir, progress,
                                         min_images=min_images)
            calib_info = {"hash": calib.images_hash, "count": calib.num_images, "skipped": len(calib.skipped),
                          **calib.source}
            report["cache"] = {"path": str(calib.cache_path), "hit": calib.cache_hit}
            # every tensor either placement may quantize: one statistics pass (and one table) serves both
            tensors = tensors_to_calibrate(pm, PLACEMENT_OPS["ort"], set(default_exclusions(pm, "trt", pool_nodes)))
            stats, stats_hit = collect_statistics(pm, tensors, calib, src.input_name, src.batch, cache_dir, progress,
                                                  threads, model_key=src.sha256)
            report["cache"]["stats_hit"] = stats_hit
            method_list = list(METHODS) if method == "auto" else [method]
            amax_by_method = {m: amax_from_stats(stats, m, percentile) for m in method_list}
        else:
            calib_info = dict(reuse.get("images", {}))
            method_list = [method]
            amax_by_method = {method: {t: float(v["amax"]) for t, v in reuse["tensors"].items()}}
            report["cache"] = {"path": None, "hit": None, "table": str(table)}
            need = tensors_to_calibrate(pm, PLACEMENT_OPS[placement], set(exclude_base), outputs=placement != "trt")
            missing = [t for t in need if t not in amax_by_method[method]]
            if missing:
                raise UserError(f"{table}: calibration table has no range for {len(missing)} tensor(s) this model needs "
                                f"(first: {missing[0]}); it was made for another model or version: recalibrate "
                                f"with --data")
        report["images"] = calib_info
        if bias_correction and calib is None:  # ranges from the table, images for the correction
            calib = load_calibration_set(data, split, num_images, src.preprocess, src.sha256, cache_dir, progress,
                                         min_images=min_images)
        corrections: dict[str, dict] = {}

        def meta_for(m: str, fp32_nodes: list[str], correction: dict | None) -> dict:
            meta = dict(src.meta)
            meta.update({
                "precision": "int8", "calibration_method": m, "calibration_images_hash": calib_info.get("hash"),
                "source_onnx_sha256": src.sha256,
                "calibration": {"method": m, "percentile": percentile if m == "percentile" else None,
                                "images_hash": calib_info.get("hash"), "num_images": calib_info.get("count"),
                                "data": calib_info.get("data"), "split": calib_info.get("split"),
                                "placement": placement, "backend": backend, "fp32_nodes": list(fp32_nodes),
                                "fallback_precision": fallback,
                                "static_pool_nodes_fp32": list(pool_nodes), "budget_points": max_miou_drop,
                                "bias_correction": ({k: v for k, v in correction.items() if k != "shifts"}
                                                    if correction is not None else False)},
                "quantization": {"format": "QDQ", "activations": "int8 symmetric per-tensor",
                                 "weights": "int8 symmetric per-channel", "bias": "fp32", "zero_point": 0},
            })
            return meta

        def build(m: str, fp32_nodes: Sequence[str], name: str, only: Sequence[str] | None = None) -> Path:
            path = work / f"{name}.onnx"
            excl = sorted(set(exclude_base) | set(fp32_nodes) | set(keep_fp32))
            if backend == "modelopt":
                quantize_modelopt(prepped, calib.array, m, excl, path)
            else:
                quantize_qdq(prepped, amax_by_method[m], path, placement, excl, only=only, work=work)
            if only is not None:  # probes are only run, never kept
                return path
            qm = onnx.load(str(path))  # one load and save per kept file: correction, islands, metadata
            correction = None
            if bias_correction:
                correction = correct_biases(qm, pm, iter_batches(calib.array, src.batch, limit=BIAS_CORRECTION_IMAGES),
                                            threads=threads, progress=progress,
                                            total=min(calib.num_images, BIAS_CORRECTION_IMAGES))
                corrections[path.name] = correction  # the report names the kept file's
            kept = sorted(set(fp32_nodes) | set(keep_fp32))
            if fallback == "fp16" and kept:
                fp16_islands(qm, kept)
            _stamp_metadata(qm, meta_for(m, list(fp32_nodes), correction))
            onnx.save(qm, str(path))
            return path

        candidates = {m: build(m, list(keep_fp32), f"int8-{m}") for m in method_list}
        fp32_miou = None
        scores: dict[str, float] = {}
        if needs_eval:
            fp32_miou = _miou(evaluator, src.path, eval_ds, eval_limit, threads, progress, "eval fp32")
            report["fp32_miou"] = fp32_miou
            for m, p in candidates.items():
                scores[m] = _miou(evaluator, p, eval_ds, eval_limit, threads, progress, f"eval int8 {m}")
                say(progress, f"  {m:<10} mIoU {100 * scores[m]:6.2f}  (FP32 {100 * fp32_miou:6.2f}, "
                              f"drop {100 * (fp32_miou - scores[m]):+.2f} points)")
            report["methods"] = {m: {"miou": s, "drop_points": 100 * (fp32_miou - s)} for m, s in scores.items()}
        chosen = (max(method_list, key=lambda m: (scores[m], -METHOD_PREFERENCE[m])) if method == "auto"
                  else method_list[0])
        report["method"] = chosen
        final = candidates[chosen]
        fp32_nodes: list[str] = list(keep_fp32)
        int8_miou = scores.get(chosen)
        if max_miou_drop is not None and 100 * (fp32_miou - int8_miou) > max_miou_drop:
            if calib is None:
                calib = load_calibration_set(data if data is not None else eval_spec, split, num_images,
                                             src.preprocess, src.sha256, cache_dir, progress, min_images=min_images)
            ref = _run_outputs(prepped, calib.array, src.input_name, src.batch, sensitivity_images, threads)

            def probe(unit: str) -> np.ndarray:
                p = build(chosen, [], "probe", only=[unit])
                return _run_outputs(p, calib.array, src.input_name, src.batch, sensitivity_images, threads)

            def trial(kept: list[str]) -> tuple[float, Path]:
                p = build(chosen, kept, f"plan-{len(kept)}")
                return _miou(evaluator, p, eval_ds, eval_limit, threads, progress, f"eval int8, {len(kept)} fp32"), p

            limit = max_fp32_nodes if max_fp32_nodes is not None else max(1, len(units) // 4)
            search = search_mixed_precision(units, ref, probe, trial, fp32_miou, int8_miou, max_miou_drop, limit,
                                            progress=progress)
            files = write_sensitivity_report(search, output, title=f"{src.path.name}: INT8 sensitivity ({chosen})",
                                             budget_points=max_miou_drop, fp32_miou=fp32_miou)
            report["sensitivity"] = {"met": search["met"], "kept": search["kept"], "limit": search["limit"],
                                     "ranking": search["ranking"], "files": files,
                                     "plans": [{k: v for k, v in p.items() if k != "path"} for p in search["plans"]]}
            if not search["met"]:
                best = search["best"]
                raise UserError(f"accuracy budget {max_miou_drop:g} points not met: best plan keeps "
                                f"{len(best['fp32_nodes'])} node(s) in FP32 and loses {best['drop_points']:.2f} points "
                                f"(limit {limit} FP32 nodes, --max-fp32-nodes); see {files['md']}")
            fp32_nodes = list(search["best"]["fp32_nodes"])
            int8_miou = search["best"]["miou"]
            final = search["best"]["path"]
        if int8_miou is not None:
            report["int8_miou"] = int8_miou
            report["drop_points"] = 100 * (fp32_miou - int8_miou)
        report["fp32_nodes"] = fp32_nodes
        if bias_correction:
            report["bias_correction"] = corrections.get(Path(final).name)
        if parser_check:
            report["parser_check"] = _parser_check(final)
        qm = onnx.load(str(final))
        report["qdq"] = qdq_summary(qm)
        ranges = amax_by_method[chosen] if backend == "ort" else ranges_from_qdq(qm)  # what the file uses
        tbl = make_table(chosen, ranges, calib_info, src, placement, percentile, fp32_nodes, pool_nodes,
                         fallback=fallback, bias_correction=bool(bias_correction))
        tpath = table_path_for(output)
        with atomic_path(output) as tmp:
            onnx.save(qm, str(tmp))
            atomic_write_json(tpath, tbl)
        report["table"] = str(tpath)
        report["output_sha256"] = sha256_file(output)
    report["seconds"] = round(time.time() - t0, 1)
    return report


def _stamp_metadata(m, meta: dict) -> None:
    """Replace a quantized model's pspnet metadata (in place) and check the graph."""
    import onnx

    del m.metadata_props[:]
    write_onnx_metadata(m, meta)
    onnx.checker.check_model(m)


def _parser_check(path: Path) -> dict | None:
    """TensorRT parser check (:mod:`pspnet_deploy.parser_check`) of the INT8 file."""
    from ..parser_check import check_onnx_for_tensorrt, format_problems

    problems = list(check_onnx_for_tensorrt(str(path)))
    if problems:
        raise UserError(f"the INT8 model fails the TensorRT parser check ({format_problems(problems, 2)}); "
                        f"report this as a bug (nothing written)")
    return {"ok": True, "problems": 0}


def _run_outputs(model_or_path, array: np.ndarray, input_name: str, batch: int | None, limit: int,
                 threads: int | None) -> np.ndarray:
    sess = make_session(model_or_path, threads, quiet=True)
    outs = []
    name = sess.get_outputs()[0].name
    for x, real in iter_batches(array, batch, limit=limit):
        outs.append(sess.run([name], {input_name: x})[0][:real])
    return np.concatenate(outs).astype(np.float32)



def _miou(evaluator: Evaluator, path: Path, dataset, limit: int | None, threads: int | None, progress: bool,
          desc: str) -> float:
    return float(evaluator(path, dataset, limit=limit, threads=threads, progress=progress, desc=desc))
