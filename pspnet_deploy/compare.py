"""Parity metrics between a reference output and a candidate (after polygraphy's comparator).

Comparison is separate from execution: runners produce arrays, :func:`compare_outputs` turns a
(reference, candidate) pair into numbers, :func:`check` holds the numbers against explicit
tolerances. Every tolerance is a named, overridable value (:data:`DEFAULT_TOLERANCES`).

Metrics (keys of the dict :func:`compare_outputs` returns):

- ``max_abs``, ``mean_abs``: absolute logit error (None when the candidate is a label map);
- ``logit_range``: ``max - min`` of the reference logits; ``max_abs_rel`` and ``mean_abs_rel``
  are the errors divided by it (so "1e-4 of the logit range" is ``max_abs_rel <= 1e-4``);
- ``cosine``: cosine similarity of the flattened logits (float64), ``cosine_min_image`` the
  lowest per-image value;
- ``argmax_agreement``: fraction of pixels whose predicted class agrees (``argmax_disagree``
  pixels differ, out of ``num_pixels``);
- ``nonfinite``: NaN/Inf count in the candidate (``nonfinite_reference`` in the reference).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from .card import failed_report_path, parity_report_path  # the artefact names' owner

__all__ = ["DEFAULT_TOLERANCES", "TOLERANCE_KEYS", "Comparison", "check", "compare_outputs", "parse_tolerances",
           "tolerances_for", "format_metrics", "parity_report_path", "write_parity_report"]

#: tolerance key -> (metric key, "max" | "min"): "max" means metric <= value, "min" metric >= value
TOLERANCE_KEYS: dict[str, tuple[str, str]] = {
    "max_abs": ("max_abs", "max"),
    "mean_abs": ("mean_abs", "max"),
    "max_abs_rel": ("max_abs_rel", "max"),
    "mean_abs_rel": ("mean_abs_rel", "max"),
    "cosine": ("cosine", "min"),
    "argmax_agreement": ("argmax_agreement", "min"),
    "nonfinite": ("nonfinite", "max"),
}

#: Defaults per precision. FP32: 1e-4 of the logit range, 99.99% of pixels. FP16: 99.9% of
#: pixels, cosine 0.999, no NaN/Inf. INT8 is provisional (calibration may override it).
DEFAULT_TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"max_abs_rel": 1e-4, "argmax_agreement": 0.9999, "nonfinite": 0},
    "fp16": {"argmax_agreement": 0.999, "cosine": 0.999, "nonfinite": 0},
    "int8": {"argmax_agreement": 0.98, "cosine": 0.98, "nonfinite": 0},
}


def tolerances_for(precision: str, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """The default tolerances of ``precision`` updated with ``overrides`` (validated keys)."""
    tol = dict(DEFAULT_TOLERANCES.get(precision, DEFAULT_TOLERANCES["fp32"]))
    for k, v in (overrides or {}).items():
        if k not in TOLERANCE_KEYS:
            from .errors import UserError

            raise UserError(f"unknown tolerance {k!r}; choose from {', '.join(TOLERANCE_KEYS)}")
        if v is None:
            tol.pop(k, None)
        else:
            tol[k] = float(v)
    return tol


def parse_tolerances(items) -> dict[str, float | None]:
    """``["max_abs_rel=1e-5", "cosine=none"]`` -> dict (``none`` drops a default check)."""
    from .errors import UserError

    out: dict[str, float | None] = {}
    for item in items or []:
        key, sep, val = str(item).partition("=")
        key = key.strip()
        if not sep or key not in TOLERANCE_KEYS:
            raise UserError(f"bad tolerance {item!r}; write KEY=VALUE with KEY one of {', '.join(TOLERANCE_KEYS)}")
        if val.strip().lower() in ("none", "off", ""):
            out[key] = None
            continue
        try:
            out[key] = float(val)
        except ValueError:
            raise UserError(f"bad tolerance {item!r}: {val!r} is not a number") from None
    return out


class Comparison:
    """Streaming form of :func:`compare_outputs`: ``update`` batch by batch, ``result`` at the end.

    Memory stays one batch however many images are compared; the result equals
    :func:`compare_outputs` on the concatenated arrays (up to float summation order).
    """

    def __init__(self, any_size: bool = False):
        #: accept batches of different H x W (a dynamic-shape model); channels and kind must agree
        self.any_size = bool(any_size)
        self.shape = None
        self.kind = None
        self.n_images = 0
        self.n_values = 0
        self.nonfinite = 0
        self.nonfinite_ref = 0
        self.ref_min, self.ref_max = math.inf, -math.inf
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.dot = self.nr2 = self.nc2 = 0.0
        self.cos_min = math.inf
        self.agree = 0
        self.pixels = 0

    def update(self, reference: np.ndarray, candidate: np.ndarray, labels_ref: np.ndarray | None = None,
               labels_candidate: np.ndarray | None = None, valid_mask: np.ndarray | None = None) -> "Comparison":
        ref = np.asarray(reference)
        cand = np.asarray(candidate)
        if ref.ndim != 4:
            raise ValueError(f"reference must be logits (N, C, H, W), got shape {ref.shape}")
        n, c, h, w = ref.shape
        kind = "labels" if cand.ndim == 3 else "logits"
        if kind == "labels":
            if cand.shape != (n, h, w):
                raise ValueError(f"candidate label map {cand.shape} does not match reference logits {ref.shape}")
        elif cand.shape != ref.shape:
            raise ValueError(f"candidate shape {cand.shape} differs from reference shape {ref.shape}")
        seen = self.shape[:1] if self.any_size and self.shape is not None else self.shape
        if self.shape is not None and (tuple(ref.shape[1:1 + len(seen)]) != seen or kind != self.kind):
            raise ValueError(f"batch of shape {ref.shape} ({kind}) does not match earlier batches {self.shape} ({self.kind})")
        self.shape, self.kind = tuple(ref.shape[1:]), kind
        self.n_images += n
        ref64 = ref.astype(np.float64)
        ref_ok = np.isfinite(ref64)
        self.nonfinite_ref += int(ref64.size - ref_ok.sum())
        if ref_ok.any():
            vals = ref64[ref_ok]
            self.ref_min, self.ref_max = min(self.ref_min, float(vals.min())), max(self.ref_max, float(vals.max()))
        if kind == "labels":
            lab_c = cand.astype(np.int64) if labels_candidate is None else np.asarray(labels_candidate)
        else:
            c64 = cand.astype(np.float64)
            cand_ok = np.isfinite(c64)
            self.nonfinite += int(c64.size - cand_ok.sum())
            self.n_values += c64.size
            if cand_ok.all() and ref_ok.all():
                diff = np.abs(c64 - ref64)
                self.max_abs = max(self.max_abs, float(diff.max()))
                self.sum_abs += float(diff.sum())
                self.dot += float(np.dot(ref64.ravel(), c64.ravel()))
                self.nr2 += float(np.dot(ref64.ravel(), ref64.ravel()))
                self.nc2 += float(np.dot(c64.ravel(), c64.ravel()))
                for i in range(n):
                    self.cos_min = min(self.cos_min, _cosine(ref64[i].ravel(), c64[i].ravel()))
            else:
                self.max_abs = self.sum_abs = math.inf
                self.cos_min = math.nan
            lab_c = (np.where(cand_ok, c64, -np.inf).argmax(1) if labels_candidate is None
                     else np.asarray(labels_candidate))
        lab_r = ref64.argmax(1) if labels_ref is None else np.asarray(labels_ref)
        agree = lab_r == lab_c
        if valid_mask is not None:
            agree = agree[np.asarray(valid_mask, bool)]
        self.agree += int(agree.sum())
        self.pixels += int(agree.size)
        return self

    def result(self) -> dict:
        if self.shape is None:
            raise ValueError("nothing compared")
        rng = self.ref_max - self.ref_min if self.ref_max >= self.ref_min else 0.0
        out: dict = {"shape": [self.n_images, *self.shape], "candidate_kind": self.kind,
                     "nonfinite_reference": self.nonfinite_ref, "logit_range": float(rng)}
        if self.kind == "labels":
            out.update(max_abs=None, mean_abs=None, max_abs_rel=None, mean_abs_rel=None, cosine=None,
                       cosine_min_image=None, nonfinite=0)
        else:
            bad = self.nonfinite or self.nonfinite_ref
            max_abs = math.inf if bad else self.max_abs
            mean_abs = math.inf if bad else self.sum_abs / max(self.n_values, 1)
            out["nonfinite"] = self.nonfinite
            out["max_abs"], out["mean_abs"] = max_abs, mean_abs
            out["max_abs_rel"] = max_abs / rng if rng > 0 else (0.0 if max_abs == 0 else math.inf)
            out["mean_abs_rel"] = mean_abs / rng if rng > 0 else (0.0 if mean_abs == 0 else math.inf)
            if bad:
                out["cosine"] = out["cosine_min_image"] = math.nan
            else:
                na, nc = math.sqrt(self.nr2), math.sqrt(self.nc2)
                out["cosine"] = (1.0 if na == nc else 0.0) if na == 0 or nc == 0 else self.dot / (na * nc)
                out["cosine_min_image"] = self.cos_min
        out["num_pixels"] = self.pixels
        out["argmax_disagree"] = self.pixels - self.agree
        out["argmax_agreement"] = self.agree / self.pixels if self.pixels else 1.0
        return out


def compare_outputs(reference: np.ndarray, candidate: np.ndarray, labels_ref: np.ndarray | None = None,
                    labels_candidate: np.ndarray | None = None, valid_mask: np.ndarray | None = None) -> dict:
    """Compare reference logits (N, C, H, W) with a candidate: logits of the same shape, or a label
    map (N, H, W) (then only the label metrics are computed and the logit ones are None).

    ``labels_ref`` / ``labels_candidate`` override the argmax of either side (precomputed labels);
    ``valid_mask`` (N, H, W bool) restricts the label metrics to those pixels (e.g. not void).
    For many batches use :class:`Comparison` (same result, one batch in memory).
    """
    return Comparison().update(reference, candidate, labels_ref, labels_candidate, valid_mask).result()


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def check(report: Mapping, tolerances: Mapping[str, float]) -> list[str]:
    """Failures of ``report`` (from :func:`compare_outputs`) against ``tolerances``; [] = pass.

    A metric that is None (logit metrics of a label-map candidate) is skipped; NaN fails.
    """
    failures = []
    for key, limit in tolerances.items():
        if limit is None:
            continue
        if key not in TOLERANCE_KEYS:
            raise ValueError(f"unknown tolerance {key!r}; choose from {', '.join(TOLERANCE_KEYS)}")
        metric, kind = TOLERANCE_KEYS[key]
        value = report.get(metric)
        if value is None:
            continue
        value = float(value)
        bad = math.isnan(value) or (value > limit if kind == "max" else value < limit)
        if bad:
            op = ">" if kind == "max" else "<"
            failures.append(f"{metric} {_fmt(value)} {op} {_fmt(limit)}")
    return failures


def _fmt(v: float) -> str:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return str(v)
    if v == int(v) and abs(v) < 1e9:
        return str(int(v))
    if abs(v) >= 0.99 and abs(v) < 1:
        return f"{v:.6f}"
    return f"{v:.3g}"


def format_metrics(m: Mapping) -> str:
    """One line: the main metrics."""
    parts = []
    if m.get("max_abs") is not None:
        parts.append(f"max_abs {_fmt(m['max_abs'])} ({_fmt(m['max_abs_rel'])} of range {_fmt(m['logit_range'])})")
        parts.append(f"mean_abs {_fmt(m['mean_abs'])}")
        parts.append(f"cosine {m['cosine']:.6f}")
    parts.append(f"argmax agreement {100 * m['argmax_agreement']:.4f}% ({m['argmax_disagree']} of {m['num_pixels']} px differ)")
    parts.append(f"non-finite {m['nonfinite']}")
    return ", ".join(parts)


def write_parity_report(report: dict, out_path: str | Path, t0: float) -> None:
    """Add the written model's hash, size and the elapsed time to ``report``; write it beside the model."""
    from .utils import atomic_write_json, jsonable, sha256_file

    out_path = Path(out_path)
    report["sha256"] = sha256_file(out_path)
    report["size_bytes"] = out_path.stat().st_size
    report["time_s"] = round(time.time() - t0, 2)
    atomic_write_json(parity_report_path(out_path), jsonable(report))
    failed_report_path(out_path).unlink(missing_ok=True)


def parity_failure(report: dict, out_path: str | Path, t0: float, message: str):
    """Write a failed gate's report beside where the model would have gone; returns the UserError to raise."""
    from .errors import UserError
    from .utils import atomic_write_json, jsonable

    report.update(written=False, time_s=round(time.time() - t0, 2))
    path = failed_report_path(out_path)
    atomic_write_json(path, jsonable(report))
    return UserError(f"{message}; figures in {path}")
