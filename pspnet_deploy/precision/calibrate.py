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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..data.preprocess import Preprocess
from ..errors import UserError
from ..onnx_graph import write_onnx_metadata
from ..ort_session import make_session, ort_threads
from ..utils import atomic_path, atomic_write_json, say, sha256_file, work_dir
from .bias_correction import correct_biases
from .calib_data import DEFAULT_NUM_IMAGES, MIN_CALIB_IMAGES, is_image_folder
from .fp16 import fp16_islands
from .mixed_sizes import MixedSizeSet, calibration_batches, load_set, num_batches, stacked_outputs
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
    size_range: tuple | None = None  # a dynamic-shape export's ((min H, W), (opt H, W), (max H, W))


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
    from ..card import card_from_onnx_proto, check_finite_initializers, crosscheck_card, validate_card

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
    crosscheck_card(card)  # the contract's checks of a file (after the precision refusals: they say more here)
    check_finite_initializers(model, path)
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
    dynamic = not (dims[2].dim_value and dims[3].dim_value)
    return SourceModel(path=path, sha256=sha256_file(path), meta=meta, input_name=inp.name, batch=batch, size=(h, w),
                       preprocess=pre, size_range=card.size_range if dynamic else None)


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
        tdata = read_calibration_table(table_path_for(tmp_out))
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
    ``num_images`` chosen evenly over it. A dynamic-shape model (``pspnet-export --dynamic-shape``)
    is calibrated on the images at their own sizes, fitted into its bounds
    (:mod:`.mixed_sizes`); the sizes used are recorded in the table and the file. ``method``:
    minmax, entropy, percentile or auto (each
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

    The run is :class:`_CalibrationRun`'s steps in order: check the options, read the source and
    a reused table's plan, open the evaluation data, then (in a work folder) prepare the graph,
    measure the ranges, build one file per method, choose the method, meet the budget and write.
    """
    t0 = time.time()
    run = _CalibrationRun(
        output=Path(output), data=data, split=split, num_images=num_images, method=method,
        max_miou_drop=max_miou_drop, eval_split=eval_split, eval_limit=eval_limit, force=force, progress=progress,
        eval_data=eval_data, percentile=percentile, placement=placement, backend=backend, table=table,
        min_images=min_images, sensitivity_images=sensitivity_images, max_fp32_nodes=max_fp32_nodes,
        threads=threads, keep_fp32=list(keep_fp32), bias_correction=bias_correction, fallback=fallback,
        parser_check=parser_check, evaluator=evaluator)
    run.check_options()
    run.read_source(fp32_onnx)
    run.read_plan()
    run.open_eval_data()
    run.cache_dir = Path(cache_dir) if cache_dir is not None else run.output.parent / "calib-cache"
    with work_dir(run.output) as work:
        run.work = work
        run.prepare_graph()
        run.measure_ranges()
        run.choose_method()
        run.meet_budget()
        run.write_result()
    run.report["seconds"] = round(time.time() - t0, 1)
    return run.report


@dataclass
class _CalibrationRun:
    """One :func:`calibrate_float_onnx` run: its options, then what each step decides (in order)."""
    output: Path
    data: object
    split: str
    num_images: int
    method: str | None
    max_miou_drop: float | None
    eval_split: str
    eval_limit: int | None
    force: bool
    progress: bool
    eval_data: object
    percentile: float
    placement: str
    backend: str
    table: str | Path | None
    min_images: int
    sensitivity_images: int
    max_fp32_nodes: int | None
    threads: int | None
    keep_fp32: list
    bias_correction: bool | None
    fallback: str | None
    parser_check: bool
    evaluator: Evaluator | None
    # decided by the steps
    method_given: str | None = None
    src: SourceModel | None = None
    needs_eval: bool = False
    eval_spec: object = None
    reuse: dict | None = None
    plan: dict = field(default_factory=dict)
    correction_from_table: bool = False
    eval_ds: object = None
    cache_dir: Path | None = None
    work: Path | None = None
    report: dict = field(default_factory=dict)
    prepped: Path | None = None
    pm: object = None
    pool_nodes: list = field(default_factory=list)
    exclude_base: list = field(default_factory=list)
    units: list = field(default_factory=list)
    calib: object = None  # CalibrationSet, or MixedSizeSet for a dynamic-shape model
    calib_info: dict = field(default_factory=dict)
    method_list: list = field(default_factory=list)
    amax_by_method: dict = field(default_factory=dict)
    corrections: dict = field(default_factory=dict)
    candidates: dict = field(default_factory=dict)
    chosen: str | None = None
    final: Path | None = None
    fp32_nodes: list = field(default_factory=list)
    fp32_miou: float | None = None
    int8_miou: float | None = None

    # -- before any work: options, source, table plan, evaluation data ---------------------------

    def check_options(self) -> None:
        """Every option on its own (no file read yet); ``method`` None becomes the default."""
        self.method_given = self.method
        if self.method is None:  # ModelOpt has no percentile: its default is the better of the two it has
            self.method = DEFAULT_METHOD if self.backend != "modelopt" else MODELOPT_DEFAULT_METHOD
        if self.output.suffix.lower() != ".onnx":
            raise UserError(f"{self.output}: output must be an .onnx file (e.g. model.int8.onnx)")
        if self.method not in METHODS + ("auto",):
            raise UserError(f"unknown calibration method {self.method!r}; choose from {', '.join(METHODS + ('auto',))}")
        if self.placement not in PLACEMENTS:
            raise UserError(f"unknown placement {self.placement!r}; choose from {', '.join(PLACEMENTS)}")
        if self.backend not in ("ort", "modelopt"):
            raise UserError(f"unknown backend {self.backend!r}; choose ort or modelopt")
        # (a table's own fallback never meets ModelOpt: check_modelopt refuses tables)
        if self.fallback not in (None, "fp32") and self.backend != "ort":
            raise UserError("--fallback fp16 works on the files of --backend ort; ModelOpt's keep their nodes FP32")
        if self.max_miou_drop is not None and not (0 <= float(self.max_miou_drop) < 100):
            raise UserError(f"--max-miou-drop is in mIoU points (0.5 = half a point) and must be in [0, 100), "
                            f"got {self.max_miou_drop}")
        if not (0 < self.percentile <= 100):
            raise UserError(f"--percentile must be in (0, 100], got {self.percentile}")
        if self.eval_limit is not None and self.eval_limit <= 0:
            raise UserError(f"--eval-limit must be positive, got {self.eval_limit}")
        self.threads = ort_threads(self.threads)  # a bad PSPNET_ORT_THREADS fails here, before any work
        if self.backend == "modelopt":  # before any statistics: what ModelOpt cannot do, and ModelOpt itself
            check_modelopt(list(METHODS) if self.method == "auto" else [self.method], self.table is not None)
        self.needs_eval = self.max_miou_drop is not None or self.method == "auto"
        if self.needs_eval and self.evaluator is None:
            raise ValueError("max_miou_drop / method='auto' measure accuracy: pass evaluator= "
                             "(e.g. pspnet_deploy.evaluate.onnx_miou)")
        self.eval_spec = self.eval_data if self.eval_data is not None else self.data

    def read_source(self, fp32_onnx) -> None:
        self.src = src = inspect_fp32_onnx(fp32_onnx)
        if self.output.resolve() == src.path.resolve():
            raise UserError(f"{self.output}: output would overwrite the FP32 input; choose another name "
                            f"(e.g. model.int8.onnx)")
        if src.size_range is not None and self.backend == "modelopt":
            raise UserError(f"{src.path}: a dynamic-shape model is calibrated on images at their own sizes, which "
                            f"--backend modelopt cannot take (one tensor of one size); use --backend ort")
        self.report = {"source_onnx": str(src.path), "source_onnx_sha256": src.sha256, "output": str(self.output),
                       "placement": self.placement, "backend": self.backend, "budget_points": self.max_miou_drop}

    def read_plan(self) -> None:
        """A reused table's ranges and plan (FP32 nodes, their precision, bias correction), checked
        against the options; without a table, calibration data is required."""
        src, table = self.src, self.table
        self.reuse = reuse = read_calibration_table(table) if table is not None else None
        if reuse is not None:
            if self.method == "auto":
                raise UserError("--method auto calibrates with every method; it cannot reuse one --calib-table")
            if self.method_given is not None and self.method_given != reuse.get("method"):
                raise UserError(f"{table}: the table's ranges were made with --method {reuse.get('method')}, not "
                                f"{self.method_given}; drop --method to reuse them, or drop --calib-table to "
                                f"calibrate with {self.method_given}")
            if reuse.get("source_onnx_sha256") != src.sha256 and not self.force:
                raise UserError(f"{table}: calibration table was made for another model (sha256 "
                                f"{str(reuse.get('source_onnx_sha256'))[:12]}…, this one {src.sha256[:12]}…); "
                                f"recalibrate, or pass --force to apply it anyway")
            self.method = reuse["method"]
        elif self.data is None:
            raise UserError("no calibration data; pass --data DIR (dataset, folder of images or synthetic)")
        self.plan = plan = table_plan(reuse or {})
        if self.fallback is None:
            self.fallback = plan["fallback"]
        if self.fallback not in FALLBACKS:
            raise UserError(f"unknown fallback precision {self.fallback!r}; choose from {', '.join(FALLBACKS)}")
        self.correction_from_table = self.bias_correction is None
        if self.correction_from_table:
            self.bias_correction = plan["bias_correction"]
        if self.bias_correction and self.data is None:
            raise UserError(f"{table}: the table was made with --bias-correction, which measures each convolution's "
                            f"error on images: pass --data DIR as well, or --no-bias-correction"
                            if self.correction_from_table
                            else "--bias-correction measures each convolution's error on calibration images; pass "
                                 "--data DIR as well as --calib-table")
        self.keep_fp32 = list(dict.fromkeys(list(plan["fp32_nodes"]) + list(self.keep_fp32)))
        if self.bias_correction and self.backend != "ort":
            raise UserError("--bias-correction works on the files of --backend ort; ModelOpt's have their own layout")

    def open_eval_data(self) -> None:
        """The evaluation split when the budget or ``auto`` needs it; refuse calibrating on it."""
        if self.needs_eval and self.eval_spec is None:
            raise UserError("--max-miou-drop and --method auto need an evaluation dataset; pass --eval-data DIR")
        if self.reuse is None and _same_data(self.data, self.eval_spec) and self.split == self.eval_split and not (
                is_image_folder(Path(str(self.data)))):
            if not self.force:
                raise UserError(f"calibrating on the {self.split!r} split, which is the evaluation split, inflates the "
                                f"measured accuracy; calibrate on --split train (or pass --force)")
            say(True, f"warning: calibrating on the evaluation split {self.split!r} (--force); INT8 accuracy measured "
                      f"on it will look better than it is")
        if not self.needs_eval:
            return
        from ..data import open_dataset

        self.eval_ds = open_dataset(self.eval_spec, self.eval_split)
        if len(self.eval_ds) == 0:
            raise UserError(f"{self.eval_spec} [{self.eval_split}]: the evaluation split has no images")
        classes = len(self.src.meta["classes"])
        if self.eval_ds.info.num_classes != classes:
            raise UserError(f"model predicts {classes} classes but {self.eval_spec} has "
                            f"{self.eval_ds.info.num_classes}; evaluate on the dataset the model was trained for")

    # -- the work: graph, ranges, candidates, method, budget, files --------------------------------

    def prepare_graph(self) -> None:
        """Shape inference and BatchNorm folding; what stays FP32 by construction; the kept nodes exist."""
        import onnx

        src = self.src
        say(self.progress, f"preparing {src.path.name} (shape inference, BatchNorm folding)")
        self.prepped = prepare_fp32(src.path, self.work / "fp32.pre.onnx")
        self.pm = pm = onnx.load(str(self.prepped))
        self.pool_nodes = static_pool_nodes(pm)
        self.exclude_base = default_exclusions(pm, self.placement, self.pool_nodes)
        self.units = quantizable_units(pm, self.placement, self.exclude_base)
        self.report["static_pool_nodes"] = self.pool_nodes
        self.report["units"] = len(self.units)
        names = {n.name for n in pm.graph.node}
        unknown = [n for n in self.keep_fp32 if n not in names]
        if unknown:
            where = (f"{self.table} keeps" if self.reuse is not None and unknown[0] in self.plan["fp32_nodes"]
                     else "keep_fp32 names")
            raise UserError(f"{where} node {unknown[0]!r}, which {src.path.name} does not have "
                            f"({len(unknown)} unknown); node names are those of the FP32 file's graph")
        if self.reuse is not None:
            self.report["from_table"] = {"fp32_nodes": self.plan["fp32_nodes"], "fallback": self.fallback,
                                         "bias_correction": bool(self.bias_correction)}

    def load_images(self, data=None):
        """The calibration set (at the model's size, or at each image's own size for a dynamic model)."""
        src = self.src
        return load_set(data if data is not None else self.data, self.split, self.num_images, src.preprocess,
                        src.sha256, self.cache_dir, self.progress, self.min_images, src.size_range)

    def measure_ranges(self) -> None:
        """Per-tensor ranges for every method tried (from images, or from the reused table), then one
        candidate file per method."""
        src, pm = self.src, self.pm
        if self.reuse is None:
            self.calib = calib = self.load_images()
            self.calib_info = {"hash": calib.images_hash, "count": calib.num_images, "skipped": len(calib.skipped),
                               **calib.source}
            if isinstance(calib, MixedSizeSet):
                self.calib_info.update(calib.size_record())
            self.report["cache"] = {"path": str(calib.cache_path), "hit": calib.cache_hit}
            # every tensor either placement may quantize: one statistics pass (and one table) serves both
            tensors = tensors_to_calibrate(pm, PLACEMENT_OPS["ort"], set(default_exclusions(pm, "trt", self.pool_nodes)))
            stats, stats_hit = collect_statistics(pm, tensors, calib, src.input_name, src.batch, self.cache_dir,
                                                  self.progress, self.threads, model_key=src.sha256)
            self.report["cache"]["stats_hit"] = stats_hit
            self.method_list = list(METHODS) if self.method == "auto" else [self.method]
            self.amax_by_method = {m: amax_from_stats(stats, m, self.percentile) for m in self.method_list}
        else:
            self.calib_info = dict(self.reuse.get("images", {}))
            self.method_list = [self.method]
            self.amax_by_method = {self.method: {t: float(v["amax"]) for t, v in self.reuse["tensors"].items()}}
            self.report["cache"] = {"path": None, "hit": None, "table": str(self.table)}
            need = tensors_to_calibrate(pm, PLACEMENT_OPS[self.placement], set(self.exclude_base),
                                        outputs=self.placement != "trt")
            missing = [t for t in need if t not in self.amax_by_method[self.method]]
            if missing:
                raise UserError(f"{self.table}: calibration table has no range for {len(missing)} tensor(s) this model "
                                f"needs (first: {missing[0]}); it was made for another model or version: recalibrate "
                                f"with --data")
        self.report["images"] = self.calib_info
        if self.bias_correction and self.calib is None:  # ranges from the table, images for the correction
            self.calib = self.load_images()
        self.candidates = {m: self.build(m, list(self.keep_fp32), f"int8-{m}") for m in self.method_list}

    def metadata(self, m: str, fp32_nodes: list[str], correction: dict | None) -> dict:
        """The INT8 file's ``pspnet.*`` metadata: the source's, updated with the calibration record."""
        info, src = self.calib_info, self.src
        meta = dict(src.meta)
        calibration = {"method": m, "percentile": self.percentile if m == "percentile" else None,
                       "images_hash": info.get("hash"), "num_images": info.get("count"),
                       "data": info.get("data"), "split": info.get("split"),
                       "placement": self.placement, "backend": self.backend, "fp32_nodes": list(fp32_nodes),
                       "fallback_precision": self.fallback,
                       "static_pool_nodes_fp32": list(self.pool_nodes), "budget_points": self.max_miou_drop,
                       "bias_correction": ({k: v for k, v in correction.items() if k != "shifts"}
                                           if correction is not None else False)}
        if info.get("mixed_sizes"):  # a dynamic-shape model: the sizes its ranges were measured at
            calibration.update({k: info.get(k) for k in ("mixed_sizes", "sizes", "resized_to_bounds", "size_range")})
        meta.update({
            "precision": "int8", "calibration_method": m, "calibration_images_hash": info.get("hash"),
            "source_onnx_sha256": src.sha256, "calibration": calibration,
            "quantization": {"format": "QDQ", "activations": "int8 symmetric per-tensor",
                             "weights": "int8 symmetric per-channel", "bias": "fp32", "zero_point": 0},
        })
        return meta

    def build(self, m: str, fp32_nodes: Sequence[str], name: str, only: Sequence[str] | None = None) -> Path:
        """One Q/DQ file in the work folder: method ``m``'s ranges, ``fp32_nodes`` kept out of INT8;
        ``only``: a sensitivity probe quantizing just those nodes (run, never kept)."""
        import onnx

        path = self.work / f"{name}.onnx"
        excl = sorted(set(self.exclude_base) | set(fp32_nodes) | set(self.keep_fp32))
        if self.backend == "modelopt":
            quantize_modelopt(self.prepped, self.calib.array, m, excl, path)
        else:
            quantize_qdq(self.prepped, self.amax_by_method[m], path, self.placement, excl, only=only, work=self.work)
        if only is not None:  # probes are only run, never kept
            return path
        qm = onnx.load(str(path))  # one load and save per kept file: correction, islands, metadata
        correction = None
        if self.bias_correction:
            n = min(self.calib.num_images, BIAS_CORRECTION_IMAGES)
            correction = correct_biases(qm, self.pm, calibration_batches(self.calib, self.src.batch, n),
                                        threads=self.threads, progress=self.progress,
                                        total=num_batches(self.calib, self.src.batch, n))
            self.corrections[path.name] = correction  # the report names the kept file's
        kept = sorted(set(fp32_nodes) | set(self.keep_fp32))
        if self.fallback == "fp16" and kept:
            fp16_islands(qm, kept)
        _stamp_metadata(qm, self.metadata(m, list(fp32_nodes), correction))
        onnx.save(qm, str(path))
        return path

    def choose_method(self) -> None:
        """Each candidate's mIoU when measured; ``auto`` keeps the best (ties: the preferred method)."""
        scores: dict[str, float] = {}
        if self.needs_eval:
            self.fp32_miou = fp32 = self.miou(self.src.path, "eval fp32")
            self.report["fp32_miou"] = fp32
            for m, p in self.candidates.items():
                scores[m] = self.miou(p, f"eval int8 {m}")
                say(self.progress, f"  {m:<10} mIoU {100 * scores[m]:6.2f}  (FP32 {100 * fp32:6.2f}, "
                                   f"drop {100 * (fp32 - scores[m]):+.2f} points)")
            self.report["methods"] = {m: {"miou": s, "drop_points": 100 * (fp32 - s)} for m, s in scores.items()}
        self.chosen = (max(self.method_list, key=lambda m: (scores[m], -METHOD_PREFERENCE[m]))
                       if self.method == "auto" else self.method_list[0])
        self.report["method"] = self.chosen
        self.final = self.candidates[self.chosen]
        self.fp32_nodes = list(self.keep_fp32)
        self.int8_miou = scores.get(self.chosen)

    def miou(self, path: Path, desc: str) -> float:
        return _miou(self.evaluator, path, self.eval_ds, self.eval_limit, self.threads, self.progress, desc)

    def meet_budget(self) -> None:
        """Over the budget: rank the units by sensitivity and keep the fewest in FP32 that meet it
        (UserError, no model, when ``max_fp32_nodes`` do not suffice)."""
        budget = self.max_miou_drop
        if budget is None or 100 * (self.fp32_miou - self.int8_miou) <= budget:
            return
        if self.calib is None:
            self.calib = self.load_images(self.data if self.data is not None else self.eval_spec)
        src, calib, n = self.src, self.calib, self.sensitivity_images
        ref = _run_outputs(self.prepped, calib, src.input_name, src.batch, n, self.threads)

        def probe(unit: str) -> np.ndarray:
            return _run_outputs(self.build(self.chosen, [], "probe", only=[unit]), calib, src.input_name, src.batch,
                                n, self.threads)

        def trial(kept: list[str]) -> tuple[float, Path]:
            p = self.build(self.chosen, kept, f"plan-{len(kept)}")
            return self.miou(p, f"eval int8, {len(kept)} fp32"), p

        limit = self.max_fp32_nodes if self.max_fp32_nodes is not None else max(1, len(self.units) // 4)
        search = search_mixed_precision(self.units, ref, probe, trial, self.fp32_miou, self.int8_miou, budget, limit,
                                        progress=self.progress)
        files = write_sensitivity_report(search, self.output, title=f"{src.path.name}: INT8 sensitivity "
                                         f"({self.chosen})", budget_points=budget, fp32_miou=self.fp32_miou)
        self.report["sensitivity"] = {"met": search["met"], "kept": search["kept"], "limit": search["limit"],
                                      "ranking": search["ranking"], "files": files,
                                      "plans": [{k: v for k, v in p.items() if k != "path"} for p in search["plans"]]}
        if not search["met"]:
            best = search["best"]
            raise UserError(f"accuracy budget {budget:g} points not met: best plan keeps "
                            f"{len(best['fp32_nodes'])} node(s) in FP32 and loses {best['drop_points']:.2f} points "
                            f"(limit {limit} FP32 nodes, --max-fp32-nodes); see {files['md']}")
        self.fp32_nodes = list(search["best"]["fp32_nodes"])
        self.int8_miou = search["best"]["miou"]
        self.final = search["best"]["path"]

    def write_result(self) -> None:
        """The parser check, then the INT8 file and its table, each written whole (temp name + rename)."""
        import onnx

        report = self.report
        if self.int8_miou is not None:
            report["int8_miou"] = self.int8_miou
            report["drop_points"] = 100 * (self.fp32_miou - self.int8_miou)
        report["fp32_nodes"] = self.fp32_nodes
        if self.bias_correction:
            report["bias_correction"] = self.corrections.get(Path(self.final).name)
        if self.parser_check:
            report["parser_check"] = _parser_check(self.final)
        qm = onnx.load(str(self.final))
        report["qdq"] = qdq_summary(qm)
        # what the file uses
        ranges = self.amax_by_method[self.chosen] if self.backend == "ort" else ranges_from_qdq(qm)
        tbl = make_table(self.chosen, ranges, self.calib_info, self.src, self.placement, self.percentile,
                         self.fp32_nodes, self.pool_nodes, fallback=self.fallback,
                         bias_correction=bool(self.bias_correction))
        tpath = table_path_for(self.output)
        with atomic_path(self.output) as tmp:
            onnx.save(qm, str(tmp))
            atomic_write_json(tpath, tbl)
        report["table"] = str(tpath)
        report["output_sha256"] = sha256_file(self.output)


def _stamp_metadata(m, meta: dict) -> None:
    """Replace a quantized model's pspnet metadata (in place) and check the graph."""
    import onnx

    write_onnx_metadata(m, meta, replace=True)
    onnx.checker.check_model(m)


def _parser_check(path: Path) -> dict | None:
    """TensorRT parser check (:mod:`pspnet_deploy.parser_check`) of the INT8 file."""
    from ..parser_check import check_onnx_for_tensorrt, format_problems

    problems = list(check_onnx_for_tensorrt(str(path)))
    if problems:
        raise UserError(f"the INT8 model fails the TensorRT parser check ({format_problems(problems, 2)}); "
                        f"report this as a bug (nothing written)")
    return {"ok": True, "problems": 0}


def _run_outputs(model_or_path, calib, input_name: str, batch: int | None, limit: int,
                 threads: int | None) -> np.ndarray:
    """The logits of the first ``limit`` calibration images (mixed sizes: :func:`.mixed_sizes.stacked_outputs`)."""
    sess = make_session(model_or_path, threads, quiet=True)
    outs = []
    name = sess.get_outputs()[0].name
    for x, real in calibration_batches(calib, batch, limit):
        outs.append(sess.run([name], {input_name: x})[0][:real])
    return stacked_outputs(outs).astype(np.float32)


def _miou(evaluator: Evaluator, path: Path, dataset, limit: int | None, threads: int | None, progress: bool,
          desc: str) -> float:
    return float(evaluator(path, dataset, limit=limit, threads=threads, progress=progress, desc=desc))
