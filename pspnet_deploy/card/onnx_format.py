"""The ONNX format (``.onnx``): ``pspnet.<key>`` metadata_props with JSON values, read from the graph
without its external data and without an ONNX Runtime session, and written."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from ..utils import jsonable
from .names import PRECISIONS
from .schema import ONNX_DTYPES, ONNX_PREFIX, ModelCard, _card_from_meta, _check_before_write

def onnx_meta_from_proto(model) -> dict:
    """The ``pspnet.*`` metadata_props of a loaded ``onnx.ModelProto``, JSON-decoded (a value that
    is not JSON is kept as its string, and :func:`validate_card` refuses it where it matters)."""
    meta = {}
    for p in model.metadata_props:
        if p.key.startswith(ONNX_PREFIX):
            try:
                meta[p.key[len(ONNX_PREFIX):]] = json.loads(p.value)
            except json.JSONDecodeError:
                meta[p.key[len(ONNX_PREFIX):]] = p.value
    return meta


def _onnx_dim(d) -> int | str:
    if d.HasField("dim_value"):
        return int(d.dim_value)
    return d.dim_param or "?"


def onnx_graph_precision(model) -> str:
    """fp32 / fp16 / int8 read from a graph: Q/DQ nodes -> int8; FP16 initialisers or casts -> fp16."""
    import onnx

    ops = {n.op_type for n in model.graph.node}
    if {"QuantizeLinear", "DequantizeLinear"} & ops:
        return "int8"
    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer):
        return "fp16"
    for n in model.graph.node:
        if n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in n.attribute):
            return "fp16"
    return "fp32"


def load_onnx_proto(path: str | Path):
    """The ONNX ModelProto without its external data; one UserError for a file that is not ONNX
    (unparsable, or empty / foreign bytes that parse as a ModelProto without a graph)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - onnx raises several types for bad files
        raise UserError(f"{path}: cannot read ONNX model ({type(e).__name__}); is it a valid .onnx file?") from e
    if not model.graph.node or not model.graph.input or not model.graph.output:
        # an empty or foreign file parses as an empty ModelProto: say so, not "no metadata"
        raise UserError(f"{path}: not an ONNX model ({Path(path).stat().st_size} bytes, no graph); pass an .onnx "
                        f"written by pspnet-export")
    return model


def card_from_onnx_proto(model, path: str | Path) -> ModelCard:
    """The card of an already loaded ONNX ModelProto (``path``: where it lives, for messages and
    external data)."""
    import onnx

    path = Path(path)
    meta = onnx_meta_from_proto(model)
    inits = {i.name for i in model.graph.initializer}

    def desc(v):
        t = v.type.tensor_type
        return {"name": v.name, "dtype": ONNX_DTYPES.get(t.elem_type, f"onnx:{t.elem_type}"),
                "shape": [_onnx_dim(d) for d in t.shape.dim]}

    inputs = [desc(v) for v in model.graph.input if v.name not in inits]
    outputs = [desc(v) for v in model.graph.output]
    fixed = None
    if inputs and inputs[0]["shape"] and isinstance(inputs[0]["shape"][0], int) and inputs[0]["shape"][0] > 0:
        fixed = inputs[0]["shape"][0]
    rng = None
    exp = meta.get("export")
    if fixed is None and isinstance(exp, dict) and exp.get("dynamic_batch") is not None:
        rng = exp["dynamic_batch"]
    files = {path.resolve()}
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            for kv in t.external_data:
                if kv.key == "location":
                    files.add((path.parent / kv.value).resolve())
    graph_precision = onnx_graph_precision(model)
    stated = str(meta.get("precision", "")).lower()  # the metadata's word, else the graph's
    card = _card_from_meta(path, "onnx", meta, precision=stated if stated in PRECISIONS else graph_precision,
                           inputs=inputs, outputs=outputs, fixed_batch=fixed, batch_range=rng,
                           files=sorted(map(str, files)))
    card.graph = {"precision": graph_precision, "has_precision_metadata": "precision" in meta}
    return card


def _read_onnx(path: Path) -> ModelCard:
    model = load_onnx_proto(path)
    check_finite_initializers(model, path)
    return card_from_onnx_proto(model, path)


#: ONNX float element types -> numpy dtype of their stored bytes (bfloat16 read as its uint16 bits)
_FLOAT_TYPES = {1: "<f4", 10: "<f2", 11: "<f8", 16: "<u2"}
_FINITE_CACHE: dict = {}


def _tensor_values(t, folder: Path):
    """The stored values of a float TensorProto as a numpy array (memory-mapped from its external
    data file: nothing is copied), or None for a tensor of another type or without data."""
    import numpy as np
    import onnx

    dt = _FLOAT_TYPES.get(t.data_type)
    if dt is None:
        return None
    if t.data_location == onnx.TensorProto.EXTERNAL:
        ext = {kv.key: kv.value for kv in t.external_data}
        f = folder / ext.get("location", "")
        if not f.is_file():
            return None  # a missing data file: ONNX Runtime's loader says so
        offset, size = int(ext.get("offset") or 0), ext.get("length")
        n = (int(size) if size else f.stat().st_size - offset) // np.dtype(dt).itemsize
        return np.memmap(f, dtype=dt, mode="r", offset=offset, shape=(n,)) if n else None
    if t.raw_data:
        return np.frombuffer(t.raw_data, dtype=dt)
    if t.data_type == 1 and t.float_data:
        return np.asarray(t.float_data, dtype=np.float32)
    if t.data_type == 11 and t.double_data:
        return np.asarray(t.double_data, dtype=np.float64)
    if t.data_type in (10, 16) and t.int32_data:
        return np.asarray(t.int32_data, dtype=np.uint16)
    return None


def _nonfinite(values, bf16: bool, fp16_bits: bool = False) -> int:
    import numpy as np

    if bf16:  # bfloat16 bits: exponent all ones is Inf or NaN
        return int(((np.asarray(values) & 0x7F80) == 0x7F80).sum())
    if fp16_bits:
        return int(((np.asarray(values) & 0x7C00) == 0x7C00).sum())
    return int((~np.isfinite(values)).sum())


def check_finite_initializers(model, path: str | Path) -> None:
    """UserError naming the first float initializer (or Constant tensor) of an ONNX that holds NaN or
    Inf: such a model would evaluate and deploy as garbage. External data is memory-mapped, chunk by
    chunk, never loaded whole; the verdict is cached per file state (path, size, mtime of every file)."""
    import onnx

    path = Path(path)
    folder = path.parent
    files = [path] + sorted({folder / kv.value for t in model.graph.initializer
                             if t.data_location == onnx.TensorProto.EXTERNAL
                             for kv in t.external_data if kv.key == "location"})
    try:
        key = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    except OSError:
        key = None
    if key is not None and key in _FINITE_CACHE:
        return
    tensors = list(model.graph.initializer) + [a.t for n in model.graph.node if n.op_type == "Constant"
                                               for a in n.attribute if a.name == "value" and a.HasField("t")]
    for t in tensors:
        values = _tensor_values(t, folder)
        if values is None or not values.size:
            continue
        step = 1 << 22
        bad = 0
        for i in range(0, values.size, step):
            bad += _nonfinite(values[i:i + step], bf16=t.data_type == 16,
                              fp16_bits=t.data_type == 10 and values.dtype.kind == "u")
        if bad:
            raise UserError(f"{path}: initializer {t.name or '(unnamed constant)'} holds {bad} NaN/Inf "
                            f"value{'s' if bad != 1 else ''} of {values.size}; the model is broken (exported from "
                            f"a diverged or damaged checkpoint, or the file was damaged): re-export it from a good "
                            f"checkpoint")
    if key is not None:
        _FINITE_CACHE[key] = True


def write_onnx_metadata(model_proto, meta: dict, replace: bool = False) -> None:
    """Set ``pspnet.<key>`` metadata_props (JSON values) on ``model_proto``, replacing same keys
    and keeping other props (``replace=True``: dropping every other prop first). Keys may be given
    with or without the ``pspnet.`` prefix."""
    entries = {}
    for k, v in meta.items():
        key = k if k.startswith(ONNX_PREFIX) else f"{ONNX_PREFIX}{k}"
        entries[key] = json.dumps(jsonable(v), sort_keys=False, allow_nan=False)
    _check_before_write({k[len(ONNX_PREFIX):]: json.loads(v) for k, v in entries.items()}, "ONNX metadata", "onnx")
    keep = [] if replace else [(p.key, p.value) for p in model_proto.metadata_props if p.key not in entries]
    del model_proto.metadata_props[:]
    for k, v in keep + sorted(entries.items()):
        e = model_proto.metadata_props.add()
        e.key, e.value = k, v


