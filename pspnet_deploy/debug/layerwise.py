"""Layerwise comparison of a deployed model against its reference: where it diverges.

:func:`debug_models` runs REFERENCE and CANDIDATE on the same preprocessed images, captures every
tensor both expose (:mod:`.capture`), maps each to its PSPNet module (:mod:`.graph`) and reduces
each layer to running metrics, so no more than one chunk of layers is held at a time.

Per layer (network order): ``max_abs``, ``rel_l2`` (||c - r|| / ||r||), ``cosine``,
``outside_share`` (share of elements with ``|c - r| > atol + rtol * |r|``, numpy's ``isclose``
rule; a non-finite candidate value is always outside) and, for the output, ``argmax_agreement``.

**First divergence** (the rule, exactly):

- a layer *exceeds tolerance* when its ``outside_share`` is above ``max_outside`` (default 1 %);
- its *amplification* is its ``rel_l2`` divided by the largest ``rel_l2`` among its inputs (the
  nearest compared layers it reads, through Q/DQ and Cast nodes; the model input counts as exact),
  infinite when all inputs are exact; NaN when the inputs are already non-finite;
- a layer *originates* error when it exceeds tolerance and its amplification is above
  ``amplification`` (default 2: it at least doubles the relative error it was given);
- ``first_divergence`` is the first originating layer in network order. When layers exceed
  tolerance but none originates (error that grows gradually, each layer less than doubling it),
  it is the first exceeding layer with ``"amplified": false``. When no layer exceeds, it is None.

For a Q/DQ candidate the divergent layer's quantizers are described: per input, its scale (min /
max over channels), the range it represents (``qmax * scale``), the range the reference tensor
actually had, and the share of the candidate's values the quantizer clipped.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from ..errors import UserError
from .capture import OUTPUT, TorchSource, open_source
from .graph import GROUPS, Layer, group_of

#: default tolerances by candidate precision: (atol, rtol)
DEFAULT_TOLERANCES = {"fp32": (1e-4, 1e-3), "fp16": (1e-2, 1e-2), "bf16": (5e-2, 5e-2), "int8": (0.1, 0.1)}
DEFAULT_MAX_OUTSIDE = 0.01
DEFAULT_AMPLIFICATION = 2.0
DEFAULT_MAX_MEMORY_MB = 1024
RULE = ("a layer exceeds tolerance when more than max_outside of its elements have |c - r| > atol + rtol*|r| "
        "(non-finite candidate values always count); it originates error when it exceeds tolerance and its "
        "rel_l2 is more than `amplification` times the largest rel_l2 of its inputs (the nearest compared layers "
        "it reads; the model input is exact); first_divergence is the first originating layer in network order, "
        "else the first exceeding layer (amplified: false), else none")


class _Acc:
    """Running metrics of one layer over all images."""

    __slots__ = ("n", "sse", "ssr", "ssc", "dot", "max_abs", "outside", "nonfinite", "ref_absmax", "cand_absmax",
                 "agree", "pixels", "clipped", "clip_n")

    def __init__(self):
        self.n = 0
        self.sse = self.ssr = self.ssc = self.dot = 0.0
        self.max_abs = 0.0
        self.outside = self.nonfinite = 0
        self.ref_absmax = self.cand_absmax = 0.0
        self.agree = self.pixels = 0
        self.clipped = self.clip_n = 0

    def update(self, r: np.ndarray, c: np.ndarray, atol: float, rtol: float, argmax: bool = False) -> None:
        if r.shape != c.shape:
            raise UserError(f"reference and candidate disagree on a tensor's shape ({list(r.shape)} vs {list(c.shape)}); "
                            f"are they the same model at the same input size?")
        r64 = r.astype(np.float64, copy=False).ravel()
        c64 = c.astype(np.float64, copy=False).ravel()
        finite = np.isfinite(c64)
        bad = int(finite.size - np.count_nonzero(finite))
        self.n += r64.size
        self.nonfinite += bad
        d = np.abs(c64 - r64)
        with np.errstate(invalid="ignore", over="ignore"):
            self.outside += int(np.count_nonzero(~(d <= atol + rtol * np.abs(r64))))
            self.sse += float(np.dot(d, d)) if not bad else math.inf
            self.ssc += float(np.dot(c64, c64)) if not bad else math.inf
            self.dot += float(np.dot(r64, c64)) if not bad else math.nan
        self.ssr += float(np.dot(r64, r64))
        self.max_abs = max(self.max_abs, float(d.max()) if bad == 0 else math.inf) if d.size else self.max_abs
        if r64.size:
            self.ref_absmax = max(self.ref_absmax, float(np.abs(r64).max()))
            if finite.any():
                self.cand_absmax = max(self.cand_absmax, float(np.abs(c64[finite]).max()))
        if argmax and r.ndim == 4:
            self.agree += int(np.count_nonzero(r.argmax(1) == c.argmax(1)))
            self.pixels += r.shape[0] * r.shape[2] * r.shape[3]

    def result(self) -> dict:
        rel = (0.0 if self.sse == 0 else math.inf) if self.ssr == 0 else math.sqrt(self.sse / self.ssr)
        if self.ssr == 0 and self.ssc == 0:
            cos = 1.0
        elif self.ssr == 0 or self.ssc == 0 or not math.isfinite(self.ssc) or not math.isfinite(self.dot):
            cos = math.nan if self.nonfinite else 0.0
        else:
            cos = self.dot / math.sqrt(self.ssr * self.ssc)
        out = {"max_abs": self.max_abs, "rel_l2": rel, "cosine": cos,
               "outside_share": self.outside / self.n if self.n else 0.0, "nonfinite": self.nonfinite,
               "ref_absmax": self.ref_absmax, "cand_absmax": self.cand_absmax, "elements": self.n}
        if self.pixels:
            out["argmax_agreement"] = self.agree / self.pixels
        return out


# ------------------------------------------------------------------------------------------- Q/DQ


def quantizers(model) -> dict:
    """Q/DQ facts of an ONNX graph: ``by_consumer`` node name -> list of input quantizers, and
    ``activation`` pre-quantization tensor -> (scale array, zero point, qmin, qmax)."""
    from onnx import numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}

    def arr(name):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        p = producer.get(name)
        if p is not None and p.op_type == "Constant":
            for a in p.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    def qrange(zp) -> tuple[int, int]:
        if zp is not None and zp.dtype == np.uint8:
            return 0, 255
        return -128, 127

    act: dict[str, dict] = {}
    by_consumer: dict[str, list] = {}
    for n in g.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear", "Cast", "Identity", "Constant"):
            continue
        for i in n.input:
            dq = producer.get(i)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            scale = arr(dq.input[1])
            zp = arr(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
            if scale is None:
                continue
            qmin, qmax = qrange(zp)
            q = producer.get(dq.input[0])
            entry = {"dequantize": dq.name, "scale_min": float(np.min(scale)), "scale_max": float(np.max(scale)),
                     "per_channel": bool(np.size(scale) > 1), "qmin": qmin, "qmax": qmax,
                     "range": float(qmax * np.max(scale))}
            if q is not None and q.op_type == "QuantizeLinear":
                entry.update(kind="activation", tensor=q.input[0], quantize=q.name)
                act[q.input[0]] = {"scale": np.asarray(scale, dtype=np.float64),
                                   "zero_point": 0 if zp is None else np.asarray(zp, dtype=np.float64),
                                   "qmin": qmin, "qmax": qmax}
            else:
                entry.update(kind="weight", tensor=dq.input[0])
            by_consumer.setdefault(n.name, []).append(entry)
    return {"by_consumer": by_consumer, "activation": act}


def _clipped(x: np.ndarray, q: dict) -> tuple[int, int]:
    scale, zp = q["scale"], q["zero_point"]
    if np.size(scale) > 1:  # per-channel activations are not produced here; use the largest scale
        scale = float(np.max(scale))
    v = x.astype(np.float64, copy=False) / float(scale) + float(np.max(zp) if np.size(zp) else 0)
    with np.errstate(invalid="ignore"):
        n = int(np.count_nonzero((v > q["qmax"] + 0.5) | (v < q["qmin"] - 0.5)))
    return n, int(v.size)


# ------------------------------------------------------------------------------------------- plan


def _comparable(ref, cand, x: np.ndarray) -> list[Layer]:
    """The plan both sides expose, in network order, ending with the model output (key OUTPUT)."""
    plan = cand.plan() or ref.plan()
    if plan is None:  # PyTorch against PyTorch
        plan = ref.own_plan(x)
        cand.pairing = dict(ref.pairing)
        out_layer = Layer("output", OUTPUT, "Output", "upsample", "", [plan[-1].tensor] if plan else [])
        return plan + [out_layer]
    for side in (ref, cand):
        if isinstance(side, TorchSource):
            side.use_plan(plan, x)
    have = []
    for side in (ref, cand):
        if isinstance(side, TorchSource):
            have.append(set(side.pairing.values()))
        else:
            have.append({layer.tensor for layer in side.plan()})
    keep = {layer.tensor for layer in plan if all(layer.tensor in h for h in have)}
    # the model output: the last layer of the plan that produces a graph output
    last = plan[-1]
    layers = []
    for layer in plan:
        if layer is last:
            continue
        if layer.tensor in keep:
            layers.append(layer)
    kept = {layer.tensor for layer in layers}

    def nearest(tensors, seen=None):
        """Inputs that are not compared are replaced by their own inputs (through the plan)."""
        seen = seen or set()
        by = {layer.tensor: layer for layer in plan}
        out = []
        for t in tensors:
            if t in kept:
                out.append(t)
            elif t in by and t not in seen:
                seen.add(t)
                out += nearest(by[t].inputs, seen)
        return list(dict.fromkeys(out))

    for layer in layers:
        layer.inputs = nearest(layer.inputs)
    out_layer = Layer(last.node, OUTPUT, last.op, "upsample" if last.op in ("Resize", "Interpolate") else last.module, last.scope,
                      nearest(last.inputs), last.shape)
    return layers + [out_layer]


def _chunks(layers: list[Layer], budget_bytes: int) -> tuple[list[list[Layer]], int]:
    """Consecutive layers whose tensors (both sides, float32, one image) fit ``budget_bytes``."""
    chunks: list[list[Layer]] = [[]]
    size = 0
    total = 0
    for layer in layers:
        b = 2 * 4 * int(np.prod(layer.shape)) if layer.shape and all(layer.shape) else 0
        total += b
        if chunks[-1] and size + b > budget_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(layer)
        size += b
    return chunks, total


# ------------------------------------------------------------------------------------------- run


def first_divergence(rows: list[dict], max_outside: float, amplification: float) -> dict | None:
    """Apply the rule of the module docstring to per-layer rows (in network order); fills each
    row's ``amplification``, ``exceeds`` and ``originates``."""
    by_tensor = {r["tensor"]: r for r in rows}
    first_exceeding = None
    found = None
    for r in rows:
        ins = [by_tensor[t]["rel_l2"] for t in r["inputs"] if t in by_tensor]
        worst_in = max(ins) if ins else 0.0
        if not math.isfinite(worst_in):
            amp = math.nan
        elif worst_in == 0:
            amp = math.inf if r["rel_l2"] > 0 else 1.0
        else:
            amp = r["rel_l2"] / worst_in
        r["amplification"] = amp
        r["exceeds"] = bool(r["outside_share"] > max_outside)
        r["originates"] = bool(r["exceeds"] and amp > amplification)
        if r["exceeds"] and first_exceeding is None:
            first_exceeding = r
        if r["originates"] and found is None:
            found = r
    pick = found or first_exceeding
    if pick is None:
        return None
    keys = ("index", "node", "module", "group", "tensor", "op", "rel_l2", "max_abs", "cosine", "outside_share",
            "nonfinite", "amplification", "inputs")
    fd = {k: pick[k] for k in keys if k in pick}
    fd["amplified"] = pick is found
    return fd


def debug_models(reference, candidate, out_dir, data=None, split: str = "val", limit: int | None = None,
                 images: int | None = None, atol: float | None = None, rtol: float | None = None,
                 max_outside: float = DEFAULT_MAX_OUTSIDE, amplification: float = DEFAULT_AMPLIFICATION,
                 device: str = "cpu", threads: int | None = None, max_memory_mb: float = DEFAULT_MAX_MEMORY_MB,
                 profile: bool = False, progress: bool = True) -> dict:
    """Compare CANDIDATE against REFERENCE layer by layer; write report.json, report.md and plots
    into ``out_dir``; return the report."""
    from ..data.samples import verification_images
    from ..utils import output_dir

    ref, cand, pre = _open_pair(reference, candidate, device, threads)
    size = tuple(pre.input_size)
    n_img = int(limit or 4) if data is not None else int(images or 2)
    x, src = verification_images(pre, data, split, n_img)
    precision = cand.precision if cand.precision in DEFAULT_TOLERANCES else "fp32"
    d_atol, d_rtol = DEFAULT_TOLERANCES[precision]
    atol = d_atol if atol is None else float(atol)
    rtol = d_rtol if rtol is None else float(rtol)

    layers = _comparable(ref, cand, x[:1])
    if len(layers) <= 1:
        raise UserError(f"{reference} and {candidate} expose no common intermediate tensors; are they the same model?")
    chunks, memory = _memory_plan(layers, x, max_memory_mb)
    qinfo = quantizers(cand.model) if cand.kind in ("onnx", "tensorrt") else {"by_consumer": {}, "activation": {}}
    try:
        accs, clip = _capture(ref, cand, x, layers, chunks, qinfo, atol, rtol, progress)
    finally:
        ref.close()
    rows = _layer_rows(layers, accs, clip)
    fd = first_divergence(rows, max_outside, amplification)
    if fd is not None:
        qs = _divergent_quantizers(fd, qinfo, clip, rows, x)
        if qs:
            fd["quantizers"] = qs
    out = {"format": "pspnet-deploy/debug", "version": 1,
           "reference": {"path": str(reference), "kind": ref.kind, "precision": ref.precision},
           "candidate": {"path": str(candidate), "kind": cand.kind, "precision": cand.precision},
           "images": src | {"count": int(x.shape[0]), "input_size": list(size)},
           "tolerance": {"atol": atol, "rtol": rtol, "max_outside": max_outside, "amplification": amplification,
                         "rule": RULE},
           "memory": memory, "first_divergence": fd, "layers": rows,
           "groups": group_summary(rows)}
    if profile:
        from .profile import profile_candidate

        out["profile"], out["profile_info"] = profile_candidate(
            cand, x, device=device, threads=threads, progress=progress,
            reference_onnx=Path(reference) if ref.kind == "onnx" else None)
    cand.close()
    from .report import write_debug_report

    with output_dir(out_dir) as d:
        out["files"] = write_debug_report(out, d)
    return out


def _open_pair(reference, candidate, device: str, threads: int | None):
    """The two capture sources, checked to be comparable, and the preprocessing at the size both run at."""
    ref = open_source(reference, device=device, threads=threads)
    if ref.kind not in ("torch", "onnx"):
        raise UserError(f"{reference}: the reference must be a checkpoint (.pt) or an FP32 ONNX, got a {ref.kind} file")
    if ref.kind == "onnx" and ref.precision != "fp32":
        raise UserError(f"{reference}: the reference ONNX is {ref.precision}; pass the FP32 ONNX (or the checkpoint)")
    cand = open_source(candidate, device=device, threads=threads)
    size = tuple(cand.card.preprocessing().input_size) if cand.kind != "torch" else \
        tuple(ref.card.preprocessing().input_size)
    if ref.kind != "torch" and tuple(ref.card.preprocessing().input_size) != size:
        raise UserError(f"{candidate}: input size {size[0]}x{size[1]} differs from the reference's "
                        f"{'x'.join(map(str, ref.card.preprocessing().input_size))}; compare files of the same export")
    if list(ref.card.classes) != list(cand.card.classes):
        raise UserError(f"{candidate}: its classes differ from the reference's; compare files of the same model")
    pre = ref.card.preprocessing()
    if tuple(pre.input_size) != size:
        from dataclasses import replace

        pre = replace(pre, input_size=size)
    return ref, cand, pre


def _memory_plan(layers: list[Layer], x: np.ndarray, max_memory_mb: float) -> tuple[list[list[Layer]], dict]:
    """The chunks of layers captured together within the memory budget, and the memory record;
    says on stderr what it needs before the work starts (also with progress off)."""
    budget = int(max_memory_mb * 2 ** 20)
    chunks, total = _chunks(layers, budget)
    memory = {"tensors": len(layers), "bytes_per_image_all_tensors": total, "chunks": len(chunks),
              "budget_bytes": budget, "peak_tensor_bytes_estimate": min(total, budget) if len(chunks) == 1 else budget,
              "images": int(x.shape[0]), "images_bytes": int(x.nbytes)}
    print(f"pspnet-debug: {len(layers)} tensors on both sides, {total / 2**20:.1f} MiB per image for "
          f"reference + candidate; {len(chunks)} chunk(s) within {max_memory_mb:g} MiB, "
          f"{x.shape[0]} image(s) ({x.nbytes / 2**20:.1f} MiB), plus the two models", file=sys.stderr)
    return chunks, memory


def _add_clipped(clip: dict[str, list[int]], key: str, values: np.ndarray, q: dict) -> None:
    c, n = _clipped(values, q)
    tot = clip.setdefault(key, [0, 0])
    tot[0] += c
    tot[1] += n


def _capture(ref, cand, x: np.ndarray, layers: list[Layer], chunks: list[list[Layer]], qinfo: dict, atol: float, rtol: float,
             progress: bool) -> tuple[dict[str, _Acc], dict[str, list[int]]]:
    """Run both sides chunk by chunk, image by image, folding each captured tensor into its layer's
    running metrics (and, for a Q/DQ candidate, counting what each activation quantizer clips);
    only one chunk's tensors of one image are held at a time."""
    from tqdm import tqdm

    accs = {layer.tensor: _Acc() for layer in layers}
    clip: dict[str, list[int]] = {}
    bar = tqdm(total=len(chunks) * x.shape[0], desc="layers x images", disable=not progress, unit="run")
    try:
        for chunk in chunks:
            keys = [layer.tensor for layer in chunk if layer.tensor != OUTPUT]
            for i in range(x.shape[0]):
                xi = x[i:i + 1]
                r_out = ref.run(xi, keys)
                c_out = cand.run(xi, keys)
                for layer in chunk:
                    t = layer.tensor
                    if t not in r_out or t not in c_out:
                        continue
                    accs[t].update(r_out[t], c_out[t], atol, rtol, argmax=(t == OUTPUT))
                    if t in qinfo["activation"]:
                        _add_clipped(clip, t, c_out[t], qinfo["activation"][t])
                if chunk is chunks[0] and "input" in qinfo["activation"]:
                    _add_clipped(clip, "input", xi, qinfo["activation"]["input"])
                del r_out, c_out
                bar.update(1)
    finally:
        bar.close()
    return accs, clip


def _layer_rows(layers: list[Layer], accs: dict[str, _Acc], clip: dict[str, list[int]]) -> list[dict]:
    """One report row per compared layer, in network order (layers with nothing compared left out)."""
    rows = []
    for layer in layers:
        res = accs[layer.tensor].result()
        if res["elements"] == 0:
            continue
        row = {"index": len(rows), "node": layer.node, "module": layer.module, "group": group_of(layer.module),
               "tensor": layer.tensor if layer.tensor != OUTPUT else "output", "op": layer.op,
               "inputs": ["output" if t == OUTPUT else t for t in layer.inputs]}
        row.update(res)
        if layer.tensor in clip and clip[layer.tensor][1]:
            row["clipped_share"] = clip[layer.tensor][0] / clip[layer.tensor][1]
        rows.append(row)
    return rows


def _divergent_quantizers(fd: dict, qinfo: dict, clip: dict[str, list[int]], rows: list[dict],
                          x: np.ndarray) -> list[dict]:
    """The quantizers feeding the divergent layer, each with the share it clipped and the range the
    reference tensor really had."""
    qs = []
    ref_max = {r["tensor"]: r["ref_absmax"] for r in rows}
    for q in qinfo["by_consumer"].get(fd["node"], []):
        q = dict(q)
        if q["kind"] == "activation":
            t = q["tensor"]
            if t in clip and clip[t][1]:
                q["clipped_share"] = clip[t][0] / clip[t][1]
            if t in ref_max:
                q["reference_absmax"] = ref_max[t]
            elif t == "input":
                q["reference_absmax"] = float(np.abs(x).max())
        qs.append(q)
    return qs


def group_summary(rows: list[dict]) -> list[dict]:
    out = []
    for g in GROUPS + ("other",):
        rs = [r for r in rows if r["group"] == g]
        if not rs:
            continue
        worst = max(rs, key=lambda r: (r["rel_l2"] if math.isfinite(r["rel_l2"]) else 1e300))
        out.append({"group": g, "layers": len(rs), "max_rel_l2": worst["rel_l2"], "worst_node": worst["node"],
                    "last_rel_l2": rs[-1]["rel_l2"]})
    return out
