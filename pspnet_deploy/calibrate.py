"""INT8 by calibration: an FP32 ONNX in, an explicit Q/DQ INT8 ONNX out (TensorRT's format).

What the INT8 file is (the contract :mod:`pspnet_deploy.engine` and TensorRT rely on):

- INT8 ``QuantizeLinear``/``DequantizeLinear`` pairs, symmetric, every zero point 0;
  activations per tensor, weights per output channel (stored as INT8 initializers feeding a
  ``DequantizeLinear``), biases left in FP32. Made by ONNX Runtime's ``quantize_static``
  (``QuantFormat.QDQ``, ``per_channel=True``, ``QInt8`` activations and weights,
  ``extra_options`` ``ActivationSymmetric``/``WeightSymmetric`` True, ``QuantizeBias`` False),
  or by NVIDIA ModelOpt when installed and asked for (``backend="modelopt"``).
- Placement ``"trt"`` (default, TensorRT's recommendation): Q/DQ on the inputs of the weighted
  ops (Conv, ConvTranspose, Gemm, MatMul) and on the *residual* input of each residual Add,
  nothing between Conv, its folded BatchNorm and ReLU, nothing on Resize/Concat, so TensorRT fuses
  Conv+bias+ReLU(+residual Add) into one INT8 kernel and writes INT8 where the next layer wants
  it. Placement ``"ort"``: ONNX Runtime's default (inputs and outputs of every quantizable op),
  which ONNX Runtime's CPU kernels fuse better; TensorRT accepts it too.
- The exact static pyramid pooling of the export (AvgPool or two MatMuls with constant averaging
  matrices, :func:`pspnet_deploy.export.static_pool_node_names`) is never quantized: it stays an
  FP32 computation on FP32 input, exactly as exported.
- BatchNorm is folded into the convolutions first (ONNX Runtime's ``quant_pre_process``), so no
  Q/DQ ever sits between a Conv and its BatchNorm.
- ``pspnet.*`` metadata is carried over and updated: ``precision`` "int8",
  ``calibration_method``, ``calibration_images_hash``, ``source_onnx_sha256`` and a
  ``calibration`` record (what was kept in FP32 and why).

Calibration statistics are collected by this module in one pass over the images (a histogram of
``|x|`` per tensor, 2048 bins, plus the exact maximum) and turned into a per-tensor ``amax`` by
each method: ``minmax`` (the maximum), ``percentile`` (the given percentile of ``|x|``) or
``entropy`` (TensorRT's KL-divergence threshold over 128 quantized bins). One pass serves all three,
so ``method="auto"`` costs one collection plus one evaluation per method. The ranges are handed to
``quantize_static`` through its ``calibration_cache_path`` (ORT's own range cache format).

Calibration images are preprocessed with the model's own preprocessing (``pspnet.preprocess``)
and cached as one ``.npy`` tensor keyed by the model hash, the image list (contents) and the
preprocessing, so a second run reads the tensor instead of decoding again.

Accuracy budget (``max_miou_drop``, in mIoU *points*: 0.5 means 0.5 of 100): when INT8 loses more
than that on the evaluation split, quantization units (each weighted op, each residual Add) are
ranked by how much quantizing that unit alone disturbs the logits (on a few calibration images),
and the most sensitive are kept in FP32, fewest first, until the budget holds. See
:mod:`pspnet_deploy.sensitivity`.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import math
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .data.preprocess import Preprocess
from .errors import UserError
from .utils import atomic_path, atomic_write_json, sha256_file

__all__ = ["METHODS", "PLACEMENTS", "DEFAULT_NUM_IMAGES", "MIN_CALIB_IMAGES", "calibrate_onnx",
           "load_calibration_set", "collect_statistics", "amax_from_stats", "quantize_qdq", "read_calibration_table",
           "inspect_fp32_onnx", "qdq_summary"]

METHODS = ("minmax", "entropy", "percentile")
PLACEMENTS = ("trt", "ort")
DEFAULT_NUM_IMAGES = 200
MIN_CALIB_IMAGES = 10
MAX_DECODE_FAILURES = 0.10  # fail when more than this fraction of the chosen images cannot be decoded
DEFAULT_PERCENTILE = 99.99
NUM_BINS = 2048
ENTROPY_QUANT_BINS = 128
TABLE_FORMAT = "pspnet-deploy/calibration-table"
TABLE_VERSION = 1
CACHE_VERSION = 1
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: op types quantized per placement (static pooling nodes are excluded by name in both)
PLACEMENT_OPS = {
    "trt": WEIGHTED_OPS + ("Add",),
    "ort": WEIGHTED_OPS + ("Add", "Relu", "Clip", "MaxPool", "Resize", "Concat", "AveragePool", "GlobalAveragePool"),
}
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
                 "DynamicQuantizeLinear", "QLinearAdd", "QLinearMul", "QLinearConcat", "QGemm", "MatMulNBits"}
METHOD_PREFERENCE = {"entropy": 0, "percentile": 1, "minmax": 2}  # tie-break for "auto"


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# the FP32 model
# ---------------------------------------------------------------------------------------------


@dataclass
class SourceModel:
    path: Path
    sha256: str
    meta: dict
    input_name: str
    batch: int | None  # fixed batch size, None when dynamic
    size: tuple[int, int]
    preprocess: Preprocess


def _read_meta(model) -> dict:
    from .runners.ort_runner import metadata_from_proto

    return metadata_from_proto(model)


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
    meta = _read_meta(model)
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
    if not h or not w:
        raise UserError(f"{path}: input height/width are not fixed; re-export with a fixed --input-size")
    batch = dims[0].dim_value or None
    try:
        pre = Preprocess.from_dict(meta["preprocess"]).with_size(h, w)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: pspnet.preprocess metadata is unreadable ({e}); re-export with pspnet-export") from e
    return SourceModel(path=path, sha256=sha256_file(path), meta=meta, input_name=inp.name, batch=batch, size=(h, w),
                       preprocess=pre)


# ---------------------------------------------------------------------------------------------
# calibration images
# ---------------------------------------------------------------------------------------------


@dataclass
class CalibrationSet:
    array: np.ndarray  # (N, 3, H, W) float32, memory-mapped from the cache file
    ids: list[str]
    images_hash: str
    source: dict
    skipped: list[str] = field(default_factory=list)
    cache_path: Path | None = None
    cache_hit: bool = False

    @property
    def num_images(self) -> int:
        return int(self.array.shape[0])


def _is_image_folder(root: Path) -> bool:
    return root.is_dir() and any(p.suffix.lower() in IMAGE_EXTS and p.is_file() for p in root.iterdir())


def _spaced(total: int, n: int) -> list[int]:
    """``n`` indices spread evenly over ``range(total)`` (deterministic, first and last included)."""
    if n >= total:
        return list(range(total))
    if n == 1:
        return [0]
    return [int(v) for v in np.round(np.linspace(0, total - 1, n)).astype(np.int64)]


class _ImageSource:
    """Uniform access to a dataset split or a plain folder of images (no masks needed)."""

    def __init__(self, data, split: str):
        spec = str(data)
        root = Path(spec)
        if not (spec == "synthetic" or spec.startswith("synthetic:")) and not root.exists():
            raise UserError(f"{root}: calibration data not found; pass a dataset folder, a folder of images or 'synthetic'")
        if _is_image_folder(root) or (root.is_dir() and not any(root.iterdir())):
            self.kind = "folder"
            self.paths = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
            self.dataset = None
            self.split = None
        else:
            from .data import open_dataset

            self.kind = "dataset"
            self.dataset = open_dataset(data, split)
            self.split = split
            self.paths = list(getattr(self.dataset, "image_paths", []))
        self.spec = spec

    def __len__(self) -> int:
        return len(self.paths) if self.dataset is None else len(self.dataset)

    def ident(self, i: int) -> str:
        if i < len(self.paths):
            return str(self.paths[i])
        return f"{self.spec}:{self.split}:{i}"

    def content_hash(self, i: int) -> str | None:
        """sha256 of the file when the image is a real file (cheap); None otherwise."""
        if i < len(self.paths) and Path(self.paths[i]).is_file():
            return sha256_file(self.paths[i])
        return None

    def load(self, i: int) -> np.ndarray:
        if self.dataset is None:
            from .data.io import read_image

            return read_image(self.paths[i])
        return self.dataset.load_image(i)

    def describe(self) -> dict:
        return {"data": self.spec, "kind": self.kind, "split": self.split, "available": len(self)}


def _cache_key(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def load_calibration_set(data, split: str, num_images: int, preprocess: Preprocess, model_sha256: str,
                         cache_dir: str | Path, progress: bool = True, min_images: int = MIN_CALIB_IMAGES,
                         max_decode_failures: float = MAX_DECODE_FAILURES) -> CalibrationSet:
    """Choose ``num_images`` images deterministically, preprocess them, cache the tensor (.npy).

    The cache file is keyed by the model hash, the chosen images (their contents when they are
    files) and the preprocessing; a second call with the same inputs memory-maps it instead.
    """
    from tqdm import tqdm

    if num_images is None or int(num_images) <= 0:
        raise UserError(f"--num-images must be positive, got {num_images}")
    src = _ImageSource(data, split)
    where = f"{data}" + (f" [{split}]" if src.kind == "dataset" else "")
    total = len(src)
    if total < min_images:
        raise UserError(f"{where}: found {total} calibration image{'s' if total != 1 else ''}; calibration needs at "
                        f"least {min_images} (a few hundred is typical); pass a bigger split or folder")
    chosen = _spaced(total, int(num_images))
    # Identity of the chosen images: file contents where they are files, else decoded pixels.
    hasher = hashlib.sha256()
    decoded: dict[int, np.ndarray] = {}
    for i in chosen:
        ch = src.content_hash(i)
        if ch is None:
            try:
                img = src.load(i)
            except UserError:
                ch = "undecodable"
            else:
                decoded[i] = img
                ch = hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest()
        hasher.update(f"{Path(src.ident(i)).name}:{ch}\n".encode())
    images_hash = hasher.hexdigest()
    key = _cache_key(CACHE_VERSION, model_sha256, images_hash, preprocess.to_dict())
    cache_dir = Path(cache_dir)
    npy = cache_dir / f"calib-{key}.npy"
    side = cache_dir / f"calib-{key}.json"
    source = src.describe() | {"chosen": len(chosen)}
    if npy.is_file() and side.is_file():
        try:
            info = json.loads(side.read_text())
            arr = np.load(npy, mmap_mode="r")
            if arr.ndim == 4 and arr.shape[0] == len(info["ids"]) and arr.dtype == np.float32:
                _say(progress, f"calibration images: {arr.shape[0]} from cache {npy}")
                return CalibrationSet(arr, info["ids"], images_hash, source, info.get("skipped", []), npy, True)
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            pass  # unreadable cache: rebuild it
    h, w = preprocess.input_size
    ok_ids: list[str] = []
    skipped: list[str] = []
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(npy) as tmp:
        buf = np.lib.format.open_memmap(str(tmp), mode="w+", dtype=np.float32, shape=(len(chosen), 3, h, w))
        n = 0
        for i in tqdm(chosen, desc="calibration images", disable=not progress, leave=False, dynamic_ncols=True):
            try:
                img = decoded.pop(i) if i in decoded else src.load(i)
            except UserError:
                skipped.append(src.ident(i))
                continue
            buf[n] = preprocess(img)
            ok_ids.append(src.ident(i))
            n += 1
        if len(skipped) > max_decode_failures * len(chosen):
            raise UserError(f"{where}: {len(skipped)} of {len(chosen)} calibration images could not be decoded "
                            f"(first: {skipped[0]}); fix or remove the broken files")
        if n < min_images:
            raise UserError(f"{where}: found {n} decodable calibration images; calibration needs at least {min_images}")
        if n < len(chosen):  # compact: rewrite without the skipped rows
            buf.flush()
            data_ok = np.array(buf[:n])
            del buf
            with open(tmp, "wb") as f:
                np.save(f, data_ok)
        else:
            buf.flush()
            del buf
    atomic_write_json(side, {"ids": ok_ids, "skipped": skipped, "images_hash": images_hash, "model_sha256": model_sha256,
                             "preprocess": preprocess.to_dict(), "source": source})
    if skipped:
        _say(progress, f"warning: skipped {len(skipped)} calibration image(s) that could not be decoded (first: {skipped[0]})")
    arr = np.load(npy, mmap_mode="r")
    return CalibrationSet(arr, ok_ids, images_hash, source, skipped, npy, False)


def _batches(array: np.ndarray, batch: int | None, limit: int | None = None):
    """Yield float32 batches; a fixed batch size is filled by wrapping around to the first images."""
    n = array.shape[0] if limit is None else min(limit, array.shape[0])
    b = batch or 1
    for s in range(0, n, b):
        idx = [(s + k) % n for k in range(b)] if batch else [s]
        yield np.ascontiguousarray(array[idx], dtype=np.float32), min(b, n - s)


# ---------------------------------------------------------------------------------------------
# statistics: |x| histograms per tensor, amax per method
# ---------------------------------------------------------------------------------------------


class _AbsHistogram:
    """Histogram of |x| over [0, width * bins), the range doubling (bins merged pairwise) as needed."""

    def __init__(self, bins: int = NUM_BINS):
        self.bins = int(bins)
        self.hist = np.zeros(self.bins, np.int64)
        self.width = 0.0
        self.amax = 0.0
        self.zeros = 0  # exact zeros seen before any non-zero value fixed the width

    def update(self, x: np.ndarray) -> None:
        a = np.abs(np.asarray(x, np.float32).ravel())  # a new array: scaled in place below
        if a.size == 0:
            return
        m = float(a.max())
        if not math.isfinite(m):
            a = a[np.isfinite(a)]
            m = float(a.max()) if a.size else 0.0
        self.amax = max(self.amax, m)
        if self.width == 0.0:
            if m == 0.0:
                self.zeros += int(a.size)
                return
            self.width = m / self.bins * 1.0000001
            self.hist[0] += self.zeros
            self.zeros = 0
        while m >= self.width * self.bins:
            self.hist = np.concatenate([self.hist.reshape(-1, 2).sum(1), np.zeros(self.bins // 2, np.int64)])
            self.width *= 2.0
        np.multiply(a, np.float32(1.0 / self.width), out=a)
        counts = np.bincount(a.astype(np.int32), minlength=self.bins)
        if counts.size > self.bins:  # rounding at the top edge
            counts[self.bins - 1] += counts[self.bins:].sum()
        self.hist += counts[:self.bins]

    def to_arrays(self) -> tuple[np.ndarray, float, float]:
        h = self.hist.copy()
        if self.width == 0.0:
            h[0] += self.zeros
        return h, self.width, self.amax


def _entropy_amax(hist: np.ndarray, width: float, amax: float, quant_bins: int = ENTROPY_QUANT_BINS) -> float:
    """TensorRT's entropy calibration: the |x| threshold whose ``quant_bins``-level quantization of the
    clipped distribution has the least KL divergence from it.

    For ``i`` kept bins, P is the histogram of bins ``< i`` with everything beyond folded into bin
    ``i-1``; Q spreads each of the ``quant_bins`` groups' mass evenly over its non-empty bins. KL(P||Q)
    is computed in closed form from cumulative sums, for every ``i`` at once.
    """
    h = hist.astype(np.float64).copy()
    n = h.size
    if width <= 0 or h.sum() == 0:
        return float(amax)
    if n > 1:
        h[0] = h[1]  # post-ReLU tensors put most mass in the zero bin; it says nothing about the tail
    last = int(np.nonzero(h)[0].max()) + 1
    if last <= quant_bins:
        return float(amax)  # the whole distribution fits in fewer bins than levels: no clipping helps
    total = h.sum()
    cs = np.concatenate([[0.0], np.cumsum(h)])
    nzc = np.concatenate([[0.0], np.cumsum(h > 0)])
    with np.errstate(divide="ignore", invalid="ignore"):
        hlogh = np.where(h > 0, h * np.log(np.where(h > 0, h, 1.0)), 0.0)
    hlh = np.concatenate([[0.0], np.cumsum(hlogh)])
    i = np.arange(quant_bins, last + 1)[:, None].astype(np.int64)  # (K, 1) bins kept
    g = np.arange(quant_bins)[None, :]
    g_start = -((-g * i) // quant_bins)
    g_end = np.minimum(-((-(g + 1) * i) // quant_bins), i)
    gsum = cs[g_end] - cs[g_start]
    gnz = nzc[g_end] - nzc[g_start]
    ii = i[:, 0]
    kept = cs[ii]  # mass inside the threshold
    out = total - kept  # outliers, folded into the last kept bin
    h_last = h[ii - 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        qv = np.where(gsum > 0, gsum / (np.maximum(gnz, 1) * kept[:, None]), 1.0)
        sum_plogq = np.where(gsum > 0, gsum * np.log(qv), 0.0).sum(1)
        q_last = np.where(h_last > 0, qv[:, -1], 1e-4 / kept)
        sum_plogq = sum_plogq + np.where(out > 0, out * np.log(q_last), 0.0)
        pl = h_last + out
        sum_plogp = hlh[ii - 1] + np.where(pl > 0, pl * np.log(np.where(pl > 0, pl, 1.0)), 0.0)
    kl = (sum_plogp - sum_plogq) / total - np.log(total)
    best = int(ii[int(np.argmin(kl))])
    return float(min(best * width, amax))


def _percentile_amax(hist: np.ndarray, width: float, amax: float, percentile: float) -> float:
    total = hist.sum()
    if total == 0 or width <= 0:
        return float(amax)
    cdf = np.cumsum(hist) / total
    idx = int(np.searchsorted(cdf, percentile / 100.0))
    return float(min((idx + 1) * width, amax))


def amax_from_stats(stats: dict, method: str, percentile: float = DEFAULT_PERCENTILE) -> dict[str, float]:
    """Per-tensor ``amax`` (scale = amax / 127) from :func:`collect_statistics` output."""
    out = {}
    for name, (hist, width, amax) in stats.items():
        if method == "minmax":
            a = amax
        elif method == "percentile":
            a = _percentile_amax(hist, width, amax, percentile)
        elif method == "entropy":
            a = _entropy_amax(hist, width, amax)
        else:
            raise UserError(f"unknown calibration method {method!r}; choose from {', '.join(METHODS)}")
        out[name] = float(a)
    return out


def _tensors_to_calibrate(model, op_types: Sequence[str], exclude: set[str], outputs: bool = True) -> list[str]:
    """Float activations (not initializers) read (and, with ``outputs``, written) by the nodes that
    may be quantized."""
    from onnx import TensorProto

    inits = {i.name for i in model.graph.initializer}
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    names: list[str] = []
    seen = set()
    for node in model.graph.node:
        if node.op_type not in op_types or node.name in exclude:
            continue
        for t in list(node.input) + (list(node.output) if outputs else []):
            if t and t not in inits and t not in seen and types.get(t) == TensorProto.FLOAT:
                seen.add(t)
                names.append(t)
    return names


def _ort_session(model_or_path, threads: int | None, optimize: bool = True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    threads = threads or (int(os.environ["PSPNET_ORT_THREADS"]) if os.environ.get("PSPNET_ORT_THREADS") else None)
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    src = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else str(model_or_path)
    return ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])


def collect_statistics(model, tensors: Sequence[str], calib: CalibrationSet, input_name: str, batch: int | None,
                       cache_dir: str | Path | None = None, progress: bool = True, threads: int | None = None,
                       model_key: str = "") -> tuple[dict, bool]:
    """Run the FP32 model over the calibration tensor and histogram ``|x|`` of every tensor.

    Returns ``({tensor: (hist, bin_width, amax)}, from_cache)``. Cached as ``.npz`` beside the
    image tensor, keyed by the model, the images and the tensor list.
    """
    from onnx import TensorProto, helper
    from tqdm import tqdm

    tensors = list(tensors)
    path = None
    if cache_dir is not None:
        key = _cache_key(CACHE_VERSION, model_key, calib.images_hash, calib.num_images, sorted(tensors), NUM_BINS)
        path = Path(cache_dir) / f"stats-{key}.npz"
        if path.is_file():
            try:
                with np.load(path) as z:
                    stats = {t: (z[f"h{k}"], float(z["width"][k]), float(z["amax"][k])) for k, t in enumerate(tensors)}
                return stats, True
            except (OSError, KeyError, ValueError):
                pass
    aug = type(model)()
    aug.CopyFrom(model)
    have = {o.name for o in aug.graph.output}
    vis = {v.name: v for v in aug.graph.value_info}
    for t in tensors:
        if t not in have and t != input_name:  # the image input is read from the feed
            aug.graph.output.append(vis[t] if t in vis else helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    sess = _ort_session(aug, threads)
    out_names = [o.name for o in sess.get_outputs()]
    want = [t for t in out_names if t in set(tensors)]
    hists = {t: _AbsHistogram() for t in tensors}
    total = calib.num_images
    nb = math.ceil(total / (batch or 1))
    for x, real in tqdm(_batches(calib.array, batch), total=nb, desc="calibration statistics", disable=not progress,
                        leave=False, dynamic_ncols=True):
        outs = sess.run(want, {input_name: x})
        if input_name in hists:
            hists[input_name].update(x[:real])
        for t, v in zip(want, outs):
            hists[t].update(v[:real])
    del sess
    stats = {t: hists[t].to_arrays() for t in tensors}
    if path is not None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, width=np.array([stats[t][1] for t in tensors]), amax=np.array([stats[t][2] for t in tensors]),
                         **{f"h{k}": stats[t][0] for k, t in enumerate(tensors)})
    return stats, False


# ---------------------------------------------------------------------------------------------
# Q/DQ quantization
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet():
    """ONNX Runtime's quantizer logs through the root logger and prints; keep the CLI output clean."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(open(os.devnull, "w")) as f:  # noqa: SIM115
            try:
                yield
            finally:
                f.close()
    finally:
        root.setLevel(level)


def prepare_fp32(source: Path, out: Path) -> Path:
    """ONNX Runtime's pre-processing: shape inference and basic optimisation (BatchNorm folded into
    Conv, constants folded), so no Q/DQ lands between a Conv and its BatchNorm."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _quiet():
        quant_pre_process(str(source), str(out), skip_symbolic_shape=True)
    return out


def _static_pool_nodes(model) -> list[str]:
    """Nodes implementing the export's exact static pyramid pooling (never quantized)."""
    try:
        from .export import static_pool_node_names
    except ImportError:
        return _static_pool_nodes_fallback(model)
    names = set(static_pool_node_names(model))
    present = {n.name for n in model.graph.node}
    return sorted(names & present)


def _static_pool_nodes_fallback(model) -> list[str]:
    """Without the exporter's helper: AveragePool/GlobalAveragePool nodes and MatMuls with a constant
    operand that read the same tensor as the pooling (the pyramid's input) or each other's output."""
    inits = {i.name for i in model.graph.initializer}
    pools = [n for n in model.graph.node if n.op_type in ("AveragePool", "GlobalAveragePool")]
    srcs = {n.input[0] for n in pools}
    out = {n.name for n in pools}
    frontier = set(srcs)
    mm = [n for n in model.graph.node if n.op_type == "MatMul" and any(i in inits for i in n.input)]
    changed = True
    while changed:
        changed = False
        for n in mm:
            if n.name not in out and any(i in frontier for i in n.input):
                out.add(n.name)
                frontier.add(n.output[0])
                changed = True
    return sorted(out)


def _extra_options(placement: str) -> dict:
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
    if placement == "trt":
        extra["OpTypesToExcludeOutputQuantization"] = list(PLACEMENT_OPS["trt"])
    return extra


def default_exclusions(model, placement: str, pool_nodes: Sequence[str]) -> list[str]:
    """Nodes never quantized: the static pooling, Adds with a constant operand (a bias, not a
    residual), and, for ``ort`` placement, the ops after the last weighted op (the final upsampling
    of the logits)."""
    inits = {i.name for i in model.graph.initializer}
    ex = set(pool_nodes)
    for n in model.graph.node:
        if n.op_type == "Add" and any(i in inits for i in n.input):
            ex.add(n.name)
    if placement == "ort":
        ex |= set(_tail_after_last_weighted(model))
    return sorted(ex)


def _tail_after_last_weighted(model) -> list[str]:
    nodes = list(model.graph.node)
    last = max((k for k, n in enumerate(nodes) if n.op_type in WEIGHTED_OPS), default=-1)
    return [n.name for n in nodes[last + 1:]]


def quantizable_units(model, placement: str, exclude: Sequence[str]) -> list[str]:
    """The units of the sensitivity search, in graph order: each weighted op and each Add that the
    placement quantizes (kept FP32, a unit computes in FP32 on its FP32 inputs)."""
    ex = set(exclude)
    ops = set(PLACEMENT_OPS[placement]) & set(PLACEMENT_OPS["trt"])
    return [n.name for n in model.graph.node if n.op_type in ops and n.name not in ex]


def _supports_range_cache() -> bool:
    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def quantize_qdq(prepped: Path, amax: dict[str, float], out: Path, placement: str = "trt",
                 exclude: Sequence[str] = (), only: Sequence[str] | None = None, work: Path | None = None) -> Path:
    """Write the Q/DQ INT8 model for ``prepped`` (pre-processed FP32) with the given activation ranges.

    ``exclude``: node names kept in FP32; ``only``: quantize just these nodes (sensitivity probes).
    """
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quantize_static)
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    if not _supports_range_cache():
        import onnxruntime

        raise UserError(f"onnxruntime {onnxruntime.__version__} cannot take precomputed ranges "
                        f"(quantize_static has no calibration_cache_path); pip install -U onnxruntime")
    work = Path(work or out.parent)
    cache = work / f".ranges-{uuid.uuid4().hex[:8]}.json"
    ranges = TensorsData(CalibrationMethod.MinMax, {
        t: TensorData(lowest=np.array(-a, np.float32), highest=np.array(a, np.float32)) for t, a in amax.items()})
    save_tensors_data(ranges, cache)
    try:
        if only is not None and not only:
            raise ValueError("nothing to quantize")
        with _quiet():
            quantize_static(str(prepped), str(out), calibration_data_reader=None, calibration_cache_path=str(cache),
                            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(PLACEMENT_OPS[placement]),
                            per_channel=True, reduce_range=False, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8, nodes_to_quantize=list(only) if only else None,
                            nodes_to_exclude=list(exclude), calibrate_method=CalibrationMethod.MinMax,
                            extra_options=_extra_options(placement))
    finally:
        cache.unlink(missing_ok=True)
    import onnx

    m = onnx.load(str(out))
    fp32 = set(exclude)
    if only:
        fp32 |= {n.name for n in m.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")} - set(only)
    changed = _restore_fp32_inputs(m, fp32)
    if placement == "trt":
        changed += _drop_main_branch_add_qdq(m)
    if changed:
        _prune_dead_qdq(m)
        onnx.save(m, str(out))
    return out


def _restore_fp32_inputs(model, names: set[str]) -> int:
    """quantize_static rewires *every* reader of a quantized activation to its DequantizeLinear,
    excluded nodes included. Give the nodes in ``names`` (kept FP32: the static pooling, the budget's
    FP32 nodes) their original FP32 input back. Returns how many inputs were restored."""
    prod = {o: n for n in model.graph.node for o in n.output}
    restored = 0
    for n in model.graph.node:
        if n.name not in names or n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for k, t in enumerate(n.input):
            dq = prod.get(t)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = prod.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":  # an activation pair, not an INT8 weight
                n.input[k] = q.input[0]
                restored += 1
    return restored


def _drop_main_branch_add_qdq(model) -> int:
    """TensorRT fuses ``Conv -> Add(residual) -> ReLU`` when the Conv's output reaches the Add
    unquantized and only the residual input carries Q/DQ. Remove the Q/DQ that quantize_static
    put on the main-branch input of each residual Add (the input produced by the later weighted
    op). Returns how many were removed."""
    nodes = list(model.graph.node)
    order = {n.name: k for k, n in enumerate(nodes)}
    prod = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    removed = 0
    for add in [n for n in nodes if n.op_type == "Add"]:
        srcs = []
        for k, t in enumerate(add.input):
            dq = prod.get(t)
            q = prod.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is None or q.op_type != "QuantizeLinear":
                srcs = []
                break
            p = prod.get(q.input[0])
            srcs.append((k, q.input[0], p))
        if len(srcs) != 2:
            continue
        weighted = [s for s in srcs if s[2] is not None and s[2].op_type in WEIGHTED_OPS]
        if not weighted:
            continue
        k, fp_tensor, _ = max(weighted, key=lambda s: order[s[2].name])
        add.input[k] = fp_tensor
        removed += 1
    return removed


def _prune_dead_qdq(model) -> None:
    """Delete Q/DQ nodes whose outputs nobody reads any more, and their unused initializers."""
    while True:
        used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        dead = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    used = {i for n in model.graph.node for i in n.input}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)


def _set_metadata(model, meta: dict) -> None:
    try:
        from .export import write_onnx_metadata
    except ImportError:
        write_onnx_metadata = None
    if write_onnx_metadata is not None:
        write_onnx_metadata(model, meta)
        return
    keep = [p for p in model.metadata_props if not (p.key.startswith("pspnet.") and p.key[7:] in meta)]
    del model.metadata_props[:]
    for p in keep:
        model.metadata_props.add(key=p.key, value=p.value)
    for k, v in meta.items():
        model.metadata_props.add(key=f"pspnet.{k}", value=json.dumps(v))


def _finish_model(qpath: Path, meta: dict) -> None:
    """Stamp the pspnet metadata onto a quantized file in place (and check the graph)."""
    import onnx

    m = onnx.load(str(qpath))
    del m.metadata_props[:]
    _set_metadata(m, meta)
    onnx.checker.check_model(m)
    onnx.save(m, str(qpath))


def qdq_summary(model) -> dict:
    """Counts that say what the Q/DQ model is: Q/DQ nodes, quantized weighted ops, FP32 ones."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    prod = {o: n for n in model.graph.node for o in n.output}
    q = sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
    dq = sum(n.op_type == "DequantizeLinear" for n in model.graph.node)
    int8_w, fp32_w = [], []
    for n in model.graph.node:
        if n.op_type in WEIGHTED_OPS and len(n.input) > 1:
            srcs = [prod.get(i) for i in n.input[:2]]
            if any(p is not None and p.op_type == "DequantizeLinear" for p in srcs):
                int8_w.append(n.name)
            else:
                fp32_w.append(n.name)
    zps = [numpy_helper.to_array(inits[n.input[2]]) for n in model.graph.node
           if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in inits]
    return {"quantize_linear": q, "dequantize_linear": dq, "int8_weighted_ops": len(int8_w),
            "fp32_weighted_ops": fp32_w, "all_zero_points_zero": all(int(np.abs(z).max(initial=0)) == 0 for z in zps)}


def _ranges_from_qdq(model) -> dict[str, float]:
    """Activation amax (= scale * 127) of each QuantizeLinear on an activation, read from a Q/DQ model."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits and n.input[1] in inits:
            sc = numpy_helper.to_array(inits[n.input[1]])
            if sc.size == 1:
                out[n.input[0]] = float(sc.reshape(())) * 127.0
    return out


def _parser_check(path: Path) -> dict | None:
    """TensorRT parser check of the export helper (pspnet_deploy.parser_check), when present."""
    try:
        from .parser_check import check_onnx_for_tensorrt, format_problems
    except ImportError:
        return None
    problems = list(check_onnx_for_tensorrt(str(path)))
    if problems:
        raise UserError(f"the INT8 model fails the TensorRT parser check ({format_problems(problems, 2)}); "
                        f"report this as a bug (nothing written)")
    return {"ok": True, "problems": 0}


# ---------------------------------------------------------------------------------------------
# evaluation helpers
# ---------------------------------------------------------------------------------------------


def _miou(path: Path, dataset, limit: int | None, threads: int | None, progress: bool, desc: str) -> float:
    from .evaluate import evaluate
    from .runners.ort_runner import OrtRunner

    runner = OrtRunner.from_file(str(path), threads=threads)
    return float(evaluate(runner, dataset, limit=limit, progress=progress, desc=desc)["miou"])


def _run_outputs(model_or_path, array: np.ndarray, input_name: str, batch: int | None, limit: int,
                 threads: int | None) -> np.ndarray:
    sess = _ort_session(model_or_path, threads)
    outs = []
    name = sess.get_outputs()[0].name
    for x, real in _batches(array, batch, limit):
        outs.append(sess.run([name], {input_name: x})[0][:real])
    return np.concatenate(outs).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# calibration table
# ---------------------------------------------------------------------------------------------


def table_path_for(output: Path) -> Path:
    return output.with_suffix(".calib.json")


def read_calibration_table(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: calibration table not found")
    try:
        t = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: calibration table is not valid JSON ({e}); recalibrate to rewrite it") from e
    if not isinstance(t, dict) or t.get("format") != TABLE_FORMAT or not isinstance(t.get("tensors"), dict):
        raise UserError(f"{path}: not a pspnet-deploy calibration table (no '{TABLE_FORMAT}' header)")
    return t


def _make_table(method: str, amax: dict, calib_info: dict, src: SourceModel, placement: str, percentile: float,
                fp32_nodes: list[str], pool_nodes: list[str]) -> dict:
    return {
        "format": TABLE_FORMAT, "version": TABLE_VERSION, "method": method,
        "percentile": percentile if method == "percentile" else None, "num_bins": NUM_BINS,
        "scale_rule": "scale = amax / 127, zero point 0 (symmetric INT8)",
        "images": calib_info, "source_onnx": src.path.name, "source_onnx_sha256": src.sha256,
        "preprocess": src.preprocess.to_dict(), "placement": placement, "fp32_nodes": list(fp32_nodes),
        "static_pool_nodes": list(pool_nodes),
        "tensors": {t: {"amax": a, "scale": a / 127.0} for t, a in sorted(amax.items())},
    }


# ---------------------------------------------------------------------------------------------
# the whole job
# ---------------------------------------------------------------------------------------------


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


def calibrate_onnx(fp32_onnx: str | Path, output: str | Path, data=None, split: str = "train",
                   num_images: int = DEFAULT_NUM_IMAGES, method: str = "entropy", max_miou_drop: float | None = None,
                   eval_split: str = "val", eval_limit: int | None = None, cache_dir: str | Path | None = None,
                   force: bool = False, progress: bool = True, *, eval_data=None,
                   percentile: float = DEFAULT_PERCENTILE, placement: str = "trt", backend: str = "ort",
                   table: str | Path | None = None, min_images: int = MIN_CALIB_IMAGES, sensitivity_images: int = 16,
                   max_fp32_nodes: int | None = None, threads: int | None = None,
                   parser_check: bool = True) -> dict:
    """Calibrate ``fp32_onnx`` and write the Q/DQ INT8 model to ``output`` (plus ``.calib.json``).

    ``data``: dataset folder, ``synthetic[:SEED]`` or a folder of images (no masks needed);
    ``num_images`` chosen evenly over it. ``method``: minmax, entropy, percentile or auto (each
    tried, the best mIoU on ``eval_split`` kept). ``max_miou_drop``: allowed INT8 - FP32 mIoU loss
    in *points* (0.5 = half a point); over it, the most sensitive nodes stay FP32 (sensitivity
    report beside the output) or, if ``max_fp32_nodes`` of them do not suffice, UserError and no
    model. ``table``: reuse the ranges of an earlier ``.calib.json`` instead of images.
    ``eval_data`` defaults to ``data``. Calibrating on ``eval_split`` of the evaluation data is
    refused unless ``force``. Returns a report dict (also the basis of the CLI's JSON).
    """
    t0 = time.time()
    output = Path(output)
    if output.suffix.lower() != ".onnx":
        raise UserError(f"{output}: output must be an .onnx file (e.g. model.int8.onnx)")
    if method not in METHODS + ("auto",):
        raise UserError(f"unknown calibration method {method!r}; choose from {', '.join(METHODS + ('auto',))}")
    if placement not in PLACEMENTS:
        raise UserError(f"unknown placement {placement!r}; choose from {', '.join(PLACEMENTS)}")
    if backend not in ("ort", "modelopt"):
        raise UserError(f"unknown backend {backend!r}; choose ort or modelopt")
    if max_miou_drop is not None and not (0 <= float(max_miou_drop) < 100):
        raise UserError(f"--max-miou-drop is in mIoU points (0.5 = half a point) and must be in [0, 100), "
                        f"got {max_miou_drop}")
    if not (0 < percentile <= 100):
        raise UserError(f"--percentile must be in (0, 100], got {percentile}")
    if eval_limit is not None and eval_limit <= 0:
        raise UserError(f"--eval-limit must be positive, got {eval_limit}")
    src = inspect_fp32_onnx(fp32_onnx)
    if output.resolve() == src.path.resolve():
        raise UserError(f"{output}: output would overwrite the FP32 input; choose another name (e.g. model.int8.onnx)")
    needs_eval = max_miou_drop is not None or method == "auto"
    eval_spec = eval_data if eval_data is not None else data
    reuse = read_calibration_table(table) if table is not None else None
    if reuse is not None:
        if method == "auto":
            raise UserError("--method auto calibrates with every method; it cannot reuse one --calib-table")
        if reuse.get("source_onnx_sha256") != src.sha256 and not force:
            raise UserError(f"{table}: calibration table was made for another model (sha256 "
                            f"{str(reuse.get('source_onnx_sha256'))[:12]}…, this one {src.sha256[:12]}…); "
                            f"recalibrate, or pass --force to apply it anyway")
        method = reuse["method"]
    elif data is None:
        raise UserError("no calibration data; pass --data DIR (dataset, folder of images or synthetic)")
    if needs_eval and eval_spec is None:
        raise UserError("--max-miou-drop and --method auto need an evaluation dataset; pass --eval-data DIR")
    if reuse is None and _same_data(data, eval_spec) and split == eval_split and not (
            _is_image_folder(Path(str(data)))):
        if not force:
            raise UserError(f"calibrating on the {split!r} split, which is the evaluation split, inflates the measured "
                            f"accuracy; calibrate on --split train (or pass --force)")
        _say(True, f"warning: calibrating on the evaluation split {split!r} (--force); INT8 accuracy measured on it "
                   f"will look better than it is")
    cache_dir = Path(cache_dir) if cache_dir is not None else output.parent / "calib-cache"
    eval_ds = None
    if needs_eval:
        from .data import open_dataset

        eval_ds = open_dataset(eval_spec, eval_split)
        if len(eval_ds) == 0:
            raise UserError(f"{eval_spec} [{eval_split}]: the evaluation split has no images")
        if eval_ds.info.num_classes != len(src.meta["classes"]):
            raise UserError(f"model predicts {len(src.meta['classes'])} classes but {eval_spec} has "
                            f"{eval_ds.info.num_classes}; evaluate on the dataset the model was trained for")
    if backend == "modelopt":
        _require_modelopt()

    report: dict = {"source_onnx": str(src.path), "source_onnx_sha256": src.sha256, "output": str(output),
                    "placement": placement, "backend": backend, "budget_points": max_miou_drop}
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".calib-", dir=output.parent) as work_s:
        work = Path(work_s)
        import onnx

        _say(progress, f"preparing {src.path.name} (shape inference, BatchNorm folding)")
        prepped = prepare_fp32(src.path, work / "fp32.pre.onnx")
        pm = onnx.load(str(prepped))
        pool_nodes = _static_pool_nodes(pm)
        exclude_base = default_exclusions(pm, placement, pool_nodes)
        units = quantizable_units(pm, placement, exclude_base)
        report["static_pool_nodes"] = pool_nodes
        report["units"] = len(units)

        calib = None
        if reuse is None:
            calib = load_calibration_set(data, split, num_images, src.preprocess, src.sha256, cache_dir, progress,
                                         min_images=min_images)
            calib_info = {"hash": calib.images_hash, "count": calib.num_images, "skipped": len(calib.skipped),
                          **calib.source}
            report["cache"] = {"path": str(calib.cache_path), "hit": calib.cache_hit}
            # every tensor either placement may quantize: one statistics pass (and one table) serves both
            tensors = _tensors_to_calibrate(pm, PLACEMENT_OPS["ort"], set(default_exclusions(pm, "trt", pool_nodes)))
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
            need = _tensors_to_calibrate(pm, PLACEMENT_OPS[placement], set(exclude_base), outputs=placement != "trt")
            missing = [t for t in need if t not in amax_by_method[method]]
            if missing:
                raise UserError(f"{table}: calibration table has no range for {len(missing)} tensor(s) this model needs "
                                f"(first: {missing[0]}); it was made for another model or version: recalibrate "
                                f"with --data")
        report["images"] = calib_info

        def meta_for(m: str, fp32_nodes: list[str]) -> dict:
            meta = dict(src.meta)
            meta.update({
                "precision": "int8", "calibration_method": m, "calibration_images_hash": calib_info.get("hash"),
                "source_onnx_sha256": src.sha256,
                "calibration": {"method": m, "percentile": percentile if m == "percentile" else None,
                                "images_hash": calib_info.get("hash"), "num_images": calib_info.get("count"),
                                "data": calib_info.get("data"), "split": calib_info.get("split"),
                                "placement": placement, "backend": backend, "fp32_nodes": list(fp32_nodes),
                                "static_pool_nodes_fp32": list(pool_nodes), "budget_points": max_miou_drop},
                "quantization": {"format": "QDQ", "activations": "int8 symmetric per-tensor",
                                 "weights": "int8 symmetric per-channel", "bias": "fp32", "zero_point": 0},
            })
            return meta

        def build(m: str, fp32_nodes: Sequence[str], name: str, only: Sequence[str] | None = None) -> Path:
            path = work / f"{name}.onnx"
            excl = sorted(set(exclude_base) | set(fp32_nodes))
            if backend == "modelopt":
                _quantize_modelopt(prepped, calib, m, excl, path)
            else:
                quantize_qdq(prepped, amax_by_method[m], path, placement, excl, only=only, work=work)
            if only is None:  # probes are only run, never kept
                _finish_model(path, meta_for(m, list(fp32_nodes)))
            return path

        candidates = {m: build(m, [], f"int8-{m}") for m in method_list}
        fp32_miou = None
        scores: dict[str, float] = {}
        if needs_eval:
            fp32_miou = _miou(src.path, eval_ds, eval_limit, threads, progress, "eval fp32")
            report["fp32_miou"] = fp32_miou
            for m, p in candidates.items():
                scores[m] = _miou(p, eval_ds, eval_limit, threads, progress, f"eval int8 {m}")
                _say(progress, f"  {m:<10} mIoU {100 * scores[m]:6.2f}  (FP32 {100 * fp32_miou:6.2f}, "
                               f"drop {100 * (fp32_miou - scores[m]):+.2f} points)")
            report["methods"] = {m: {"miou": s, "drop_points": 100 * (fp32_miou - s)} for m, s in scores.items()}
        chosen = (max(method_list, key=lambda m: (scores[m], -METHOD_PREFERENCE[m])) if method == "auto"
                  else method_list[0])
        report["method"] = chosen
        final = candidates[chosen]
        fp32_nodes: list[str] = []
        int8_miou = scores.get(chosen)
        if max_miou_drop is not None and 100 * (fp32_miou - int8_miou) > max_miou_drop:
            from .sensitivity import search_mixed_precision

            if calib is None:
                calib = load_calibration_set(data if data is not None else eval_spec, split, num_images,
                                             src.preprocess, src.sha256, cache_dir, progress, min_images=min_images)
            ref = _run_outputs(prepped, calib.array, src.input_name, src.batch, sensitivity_images, threads)

            def probe(unit: str) -> np.ndarray:
                p = build(chosen, [], "probe", only=[unit])
                return _run_outputs(p, calib.array, src.input_name, src.batch, sensitivity_images, threads)

            def trial(kept: list[str]) -> tuple[float, Path]:
                p = build(chosen, kept, f"plan-{len(kept)}")
                return _miou(p, eval_ds, eval_limit, threads, progress, f"eval int8, {len(kept)} fp32"), p

            limit = max_fp32_nodes if max_fp32_nodes is not None else max(1, len(units) // 4)
            search = search_mixed_precision(units, ref, probe, trial, fp32_miou, int8_miou, max_miou_drop, limit,
                                            progress=progress)
            base = output.with_suffix("")
            from .sensitivity import write_sensitivity_report

            files = write_sensitivity_report(search, base, title=f"{src.path.name}: INT8 sensitivity ({chosen})",
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
        if parser_check:
            report["parser_check"] = _parser_check(final)
        qm = onnx.load(str(final))
        report["qdq"] = qdq_summary(qm)
        ranges = amax_by_method[chosen] if backend == "ort" else _ranges_from_qdq(qm)  # what the file uses
        tbl = _make_table(chosen, ranges, calib_info, src, placement, percentile, fp32_nodes, pool_nodes)
        tpath = table_path_for(output)
        with atomic_path(output) as tmp:
            onnx.save(qm, str(tmp))
            atomic_write_json(tpath, tbl)
        report["table"] = str(tpath)
        report["output_sha256"] = sha256_file(output)
    report["seconds"] = round(time.time() - t0, 1)
    return report


# ---------------------------------------------------------------------------------------------
# optional backend: NVIDIA ModelOpt
# ---------------------------------------------------------------------------------------------


def _require_modelopt():
    try:
        import modelopt.onnx.quantization as moq  # noqa: F401
    except ImportError as e:
        raise UserError("backend modelopt needs NVIDIA ModelOpt (pip install 'nvidia-modelopt[onnx]', GPU machines); "
                        "or use --backend ort") from e
    return moq


def _quantize_modelopt(prepped: Path, calib: CalibrationSet | None, method: str, exclude: Sequence[str], out: Path):
    """INT8 Q/DQ by ModelOpt (TensorRT-aware placement). Untested here: ModelOpt is not installed."""
    moq = _require_modelopt()
    if calib is None:
        raise UserError("backend modelopt calibrates from images; it cannot reuse a --calib-table")
    cm = {"minmax": "max", "entropy": "entropy"}.get(method)
    if cm is None:
        raise UserError(f"backend modelopt supports methods minmax and entropy, not {method}")
    moq.quantize(onnx_path=str(prepped), quantize_mode="int8", calibration_data=np.asarray(calib.array),
                 calibration_method=cm, nodes_to_exclude=list(exclude), output_path=str(out),
                 calibration_eps=["cpu"], high_precision_dtype="fp32")
