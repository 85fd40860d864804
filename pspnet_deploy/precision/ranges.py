"""Activation ranges for INT8: per-tensor ``|x|`` histograms and the methods that turn them into ``amax``.

One statistics pass (:func:`collect_statistics`, through the shared observer) keeps a histogram of
``|x|`` per tensor (2048 bins, the range doubling as needed) plus the exact maximum; each method
reads the same histogram: ``minmax`` (the maximum), ``percentile`` (the given percentile of
``|x|``), ``entropy`` (TensorRT's KL-divergence threshold over 128 quantized bins) or ``mse`` (the
threshold with the least expected squared error of symmetric INT8 fake quantization, clipping plus
rounding, over the histogram). So
``method="auto"`` costs one collection plus one evaluation per method. ``scale = amax / 127``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import UserError
from ..utils import atomic_path
from .calib_data import CACHE_VERSION, CalibrationSet, cache_key
from .mixed_sizes import MixedSizeSet, calibration_batches, num_batches
from .observer import observe

__all__ = ["METHODS", "DEFAULT_METHOD", "METHOD_PREFERENCE", "DEFAULT_PERCENTILE", "NUM_BINS", "AbsHistogram", "entropy_amax",
           "percentile_amax", "mse_amax", "amax_from_stats", "collect_statistics"]

METHODS = ("minmax", "entropy", "percentile", "mse")
METHOD_PREFERENCE = {"mse": 0, "percentile": 1, "entropy": 2, "minmax": 3}  # tie-break for "auto"
DEFAULT_PERCENTILE = 99.99
#: the default method, chosen by measurement on frames calibration never saw (calibration/README.md)
DEFAULT_METHOD = "mse"
NUM_BINS = 2048
ENTROPY_QUANT_BINS = 128


class AbsHistogram:
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


def entropy_amax(hist: np.ndarray, width: float, amax: float, quant_bins: int = ENTROPY_QUANT_BINS) -> float:
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


def percentile_amax(hist: np.ndarray, width: float, amax: float, percentile: float) -> float:
    total = hist.sum()
    if total == 0 or width <= 0:
        return float(amax)
    cdf = np.cumsum(hist) / total
    idx = int(np.searchsorted(cdf, percentile / 100.0))
    return float(min((idx + 1) * width, amax))


def mse_amax(hist: np.ndarray, width: float, amax: float, levels: int = 127, candidates: int = 512) -> float:
    """The ``|x|`` threshold T minimising the expected squared error of symmetric INT8 quantization
    (scale T / ``levels``, round to nearest, clip at T), each histogram bin represented by its centre.

    Candidates: ``candidates`` thresholds spread evenly up to the last non-empty bin (plus ``amax``
    itself); exact error per candidate (not the uniform-noise approximation), all at once.
    """
    h = hist.astype(np.float64)
    if width <= 0 or h.sum() == 0 or amax <= 0:
        return float(amax)
    last = int(np.nonzero(h)[0].max()) + 1
    nz = np.nonzero(h[:last])[0]
    c = (nz + 0.5) * width
    c[-1] = min(c[-1], amax)
    w = h[nz]
    top = min(last * width, amax)
    t = np.unique(np.concatenate([np.linspace(top / candidates, top, candidates), [amax]]))[:, None]  # (K, 1)
    s = t / levels
    q = np.minimum(np.round(c[None, :] / s), levels) * s
    err = ((c[None, :] - q) ** 2 * w[None, :]).sum(1)
    return float(t[int(np.argmin(err)), 0])


def amax_from_stats(stats: dict, method: str, percentile: float = DEFAULT_PERCENTILE) -> dict[str, float]:
    """Per-tensor ``amax`` (scale = amax / 127) from :func:`collect_statistics` output."""
    out = {}
    for name, (hist, width, amax) in stats.items():
        if method == "minmax":
            a = amax
        elif method == "percentile":
            a = percentile_amax(hist, width, amax, percentile)
        elif method == "entropy":
            a = entropy_amax(hist, width, amax)
        elif method == "mse":
            a = mse_amax(hist, width, amax)
        else:
            raise UserError(f"unknown calibration method {method!r}; choose from {', '.join(METHODS)}")
        out[name] = float(a)
    return out


def collect_statistics(model, tensors: Sequence[str], calib: CalibrationSet | MixedSizeSet, input_name: str, batch: int | None,
                       cache_dir: str | Path | None = None, progress: bool = True, threads: int | None = None,
                       model_key: str = "") -> tuple[dict, bool]:
    """Run the FP32 model over the calibration images (one tensor, or images of mixed sizes for a
    dynamic-shape model) and histogram ``|x|`` of every tensor.

    Returns ``({tensor: (hist, bin_width, amax)}, from_cache)``. Cached as ``.npz`` beside the
    image tensor, keyed by the model, the images and the tensor list.
    """
    tensors = list(tensors)
    path = None
    if cache_dir is not None:
        key = cache_key(CACHE_VERSION, model_key, calib.images_hash, calib.num_images, sorted(tensors), NUM_BINS)
        path = Path(cache_dir) / f"stats-{key}.npz"
        if path.is_file():
            try:
                with np.load(path) as z:
                    stats = {t: (z[f"h{k}"], float(z["width"][k]), float(z["amax"][k])) for k, t in enumerate(tensors)}
                return stats, True
            except (OSError, KeyError, ValueError):
                pass
    hists = {t: AbsHistogram() for t in tensors}
    observe(model, tensors, calibration_batches(calib, batch), lambda t, v: hists[t].update(v), threads=threads,
            optimize=True, input_name=input_name, progress=progress, desc="calibration statistics",
            total=num_batches(calib, batch))
    stats = {t: hists[t].to_arrays() for t in tensors}
    if path is not None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, width=np.array([stats[t][1] for t in tensors]), amax=np.array([stats[t][2] for t in tensors]),
                         **{f"h{k}": stats[t][0] for k, t in enumerate(tensors)})
    return stats, False

