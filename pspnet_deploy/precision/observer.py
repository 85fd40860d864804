"""The one activation observer: run an ONNX model with ONNX Runtime and hand the values of chosen
intermediate tensors to a per-tensor statistic.

Each tensor to observe is made a graph output (the original outputs stay), so ONNX Runtime
materialises it in its own type; the graph input is observed from the feed. Export's FP16 ranges
(:func:`activation_ranges`, max ``|x|``, inf where NaN/Inf occur) and INT8 calibration
(:func:`pspnet_deploy.precision.ranges.collect_statistics`, ``|x|`` histograms) both go through
:func:`observe`; only the statistic differs.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Iterable, Sequence

import numpy as np

from ..ort_session import make_session

__all__ = ["observe", "MaxAbs", "activation_ranges", "graph_input_name"]

Batches = Iterable[tuple[np.ndarray, int]]


def graph_input_name(model) -> str:
    """Name of the (single) image input: the first graph input that is not an initializer."""
    inits = {i.name for i in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in inits)


def _chunks(names: list[str], infos: dict, rows: int, chunk_bytes: int | None) -> list[list[str]]:
    """Split ``names`` so one run fetches about ``chunk_bytes`` (float32 sized, unknown dims as 1)."""
    if not chunk_bytes:
        return [names]

    def nbytes(name: str) -> int:
        n = 4 * rows
        v = infos.get(name)
        for d in (v.type.tensor_type.shape.dim if v is not None else ()):
            n *= d.dim_value if d.HasField("dim_value") else 1
        return n

    chunks, cur, cur_b = [], [], 0
    for name in names:
        b = nbytes(name)
        if cur and cur_b + b > chunk_bytes:
            chunks.append(cur)
            cur, cur_b = [], 0
        cur.append(name)
        cur_b += b
    if cur:
        chunks.append(cur)
    return chunks


def observe(model, tensors: Sequence[str], batches: Batches | Callable[[], Batches],
            update: Callable[[str, np.ndarray], None], *, threads: int | None = None, optimize: bool = True,
            chunk_bytes: int | None = None, rows: int = 1, progress: bool = False, desc: str = "observing",
            total: int | None = None, input_name: str | None = None) -> None:
    """Run ``model`` (``onnx.ModelProto``) over ``batches`` and call ``update(tensor, values)`` with
    the first ``real`` rows of every tensor in ``tensors``, batch after batch.

    ``batches``: ``(array, real)`` pairs, or a callable giving them afresh (needed when
    ``chunk_bytes`` splits the tensors over several runs, each about ``chunk_bytes`` for ``rows``
    images). ``optimize`` False runs the graph as written (no fusions), so every fetched tensor has
    exactly the type it has in the file. ``input_name`` defaults to the graph's image input.
    """
    from onnx import TensorProto, helper
    from tqdm import tqdm

    tensors = list(dict.fromkeys(tensors))
    input_name = input_name or graph_input_name(model)
    infos = {v.name: v for v in list(model.graph.value_info) + list(model.graph.output)}
    fetched = [t for t in tensors if t != input_name]
    chunks = _chunks(fetched, infos, rows, chunk_bytes) if fetched else []
    watch_input = input_name in tensors
    for k, chunk in enumerate(chunks or [[]]):
        if not chunk and not watch_input:
            break
        sess = None
        if chunk:
            aug = copy.deepcopy(model)
            have = {o.name for o in aug.graph.output}
            for t in chunk:
                if t not in have:
                    aug.graph.output.append(infos[t] if t in infos
                                            else helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
            sess = make_session(aug, threads, optimization="all" if optimize else "none", quiet=True)
        feed = batches() if callable(batches) else batches
        for x, real in tqdm(feed, total=total, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
            if k == 0 and watch_input:
                update(input_name, x[:real])
            if sess is not None:
                for t, v in zip(chunk, sess.run(chunk, {input_name: x})):
                    update(t, v[:real])
        del sess


class MaxAbs:
    """Largest ``|x|`` per tensor; ``inf`` once a NaN or Inf was seen. ``ranges``: name -> value."""

    def __init__(self):
        self.ranges: dict[str, float] = {}

    def __call__(self, name: str, values: np.ndarray) -> None:
        a = np.abs(np.asarray(values).astype(np.float32))
        mx = float(a.max()) if a.size else 0.0
        if not np.isfinite(a).all():
            mx = math.inf
        self.ranges[name] = max(self.ranges.get(name, 0.0), mx)


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
    names: list[str] = []
    for v in list(g.output) + list(g.value_info):
        if v.type.tensor_type.elem_type in tuple(elem_types) and v.name in produced and v.name not in names:
            names.append(v.name)
    inp = g.input[0]
    if inp.type.tensor_type.elem_type in tuple(elem_types):
        names.insert(0, inp.name)
    stat = MaxAbs()
    observe(model, names, lambda: ((b, len(b)) for b in batches), stat, threads=threads, optimize=False,
            chunk_bytes=chunk_bytes, rows=max(len(b) for b in batches))
    return stat.ranges
