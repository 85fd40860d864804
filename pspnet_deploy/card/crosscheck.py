"""Cross-checks: the one owner of "do these facts agree?" between a file's graph, its metadata, its
sidecar and (for a checkpoint) its weights. A file whose facts contradict each other was edited or
mixed up; it is refused with one line naming both sides, never trusted one over the other.

:func:`crosscheck_card` runs on every card :func:`~pspnet_deploy.card.read_card` returns (cheap:
the graph's declared IO and tensor types, no ONNX Runtime session); :func:`crosscheck_runtime_io`
is for a runner that opens a compiled model (an OpenVINO IR's own inputs and outputs vs its
sidecar); :func:`check_engine_source` is for any step that uses an engine or IR together with the
ONNX it names (its sidecar records the ONNX's sha256).

Fields checked: classes count vs output channels; input size vs the graph's input shape (static
models) or the declared size range (dynamic ones); precision vs the graph's tensor types (FP16
tensors, Q/DQ nodes); preprocessing (present and identical in a sidecar's model section and the
metadata it carries); output kind vs the output tensor (logits: C float channels; labels: an
integer N x H x W or N x 1 x H x W map); input kind vs the input tensor; ignore index (not the
index of a class, the same wherever it is recorded).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .names import PRECISIONS
from .schema import MODEL_KEYS, ONNX_PREFIX, ModelCard, fix_hint


def _label(card: ModelCard) -> str:
    return {"onnx": "metadata " + ONNX_PREFIX, "torch": "checkpoint metadata "}.get(card.kind, "sidecar model.")


def _contradiction(card: ModelCard, what: str) -> UserError:
    return UserError(f"{card.path}: {what}; the file was edited or mixed up: {fix_hint(card.kind)}")


def _dims(shape) -> list:
    """A recorded shape with every unknown dimension (symbolic name, -1, 0) as None."""
    return [d if isinstance(d, int) and not isinstance(d, bool) and d > 0 else None for d in shape]


def _dtype_class(dtype) -> str | None:
    """'float', 'int' or None (unknown) for a dtype name of ONNX, numpy, TensorRT or OpenVINO."""
    s = str(dtype).lower().replace("<type: '", "").strip("'>")
    if s.startswith(("float", "half", "bfloat", "bf16", "fp", "f16", "f32", "f64")):
        return "float"
    if s.startswith(("int", "uint", "i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64", "bool")):
        return "int"
    return None


def _shown(shape) -> str:
    return "x".join(str(d) if d is not None else "?" for d in _dims(shape))


# --------------------------------------------------------------------------------------------
# one file's facts against its own graph
# --------------------------------------------------------------------------------------------

def _check_output(card: ModelCard, outputs: list, where: str) -> None:
    """Output kind and classes count vs the output tensor ``outputs[0]``."""
    if not outputs:
        return
    out = outputs[0]
    shape, dclass = _dims(out.get("shape", [])), _dtype_class(out.get("dtype"))
    lab = _label(card)
    if card.output_kind == "logits":
        if dclass == "int":
            raise _contradiction(card, f"{where} {out.get('name')} is {out.get('dtype')} (a label map) but the "
                                       f"{lab}output_kind says logits")
        if len(shape) == 4 and shape[1] is not None and card.classes is not None and shape[1] != len(card.classes):
            raise _contradiction(card, f"{where} has {shape[1]} channels but the metadata names {len(card.classes)} "
                                       f"classes")
        if len(shape) not in (0, 4):
            raise _contradiction(card, f"{where} {out.get('name')} has shape {_shown(out['shape'])}, not the N x C x "
                                       f"H x W logits the {lab}output_kind says")
    else:  # labels
        if dclass == "float":
            raise _contradiction(card, f"{where} {out.get('name')} is {out.get('dtype')} (logits) but the "
                                       f"{lab}output_kind says labels")
        if not (len(shape) in (0, 3) or (len(shape) == 4 and shape[1] in (1, None))):
            raise _contradiction(card, f"{where} {out.get('name')} has shape {_shown(out['shape'])}, not the N x H x W "
                                       f"label map the {lab}output_kind says")


def _check_input(card: ModelCard, inputs: list, where: str) -> None:
    """Input kind vs the input tensor's type; input size vs its static H x W or the size range."""
    if not inputs:
        return
    inp = inputs[0]
    dtype = str(inp.get("dtype"))
    lab = _label(card)
    if card.kind == "onnx" and (card.input_kind == "uint8") != (dtype == "uint8"):
        raise _contradiction(card, f"input is {dtype} but the metadata says input_kind {card.input_kind}")
    shape = _dims(inp.get("shape", []))
    if len(shape) != 4:
        return
    hw = [shape[1], shape[2]] if card.input_kind == "uint8" else [shape[2], shape[3]]
    static = all(d is not None for d in hw)
    pre = card.preprocess.get("input_size") if isinstance(card.preprocess, dict) else None
    pre = [int(v) for v in pre] if isinstance(pre, (list, tuple)) and len(pre) == 2 else None
    stated = card.meta.get("input_size") if card.kind == "onnx" else None
    if card.size_range is not None:
        if static and card.kind == "onnx":
            raise _contradiction(card, f"{where} input {inp.get('name')} is fixed at {hw[0]}x{hw[1]} but the "
                                       f"{lab}export.dynamic_shape declares a size range")
        (lo_h, lo_w), _, (hi_h, hi_w) = card.size_range
        if pre is not None and not (lo_h <= pre[0] <= hi_h and lo_w <= pre[1] <= hi_w):
            raise _contradiction(card, f"{lab}preprocess.input_size {pre[0]}x{pre[1]} is outside the "
                                       f"{lab}export.dynamic_shape range {lo_h}x{lo_w} .. {hi_h}x{hi_w}")
        return
    if not static:
        if card.kind == "onnx" and any(d is None for d in hw):
            raise _contradiction(card, f"{where} input {inp.get('name')} has a dynamic size {_shown(inp['shape'])} "
                                       f"but the metadata declares no size range ({ONNX_PREFIX}export.dynamic_shape)")
        return
    if card.kind == "onnx":
        for name, val in (("preprocess.input_size", pre), ("input_size", stated)):
            if isinstance(val, (list, tuple)) and len(val) == 2 and [int(v) for v in val] != hw:
                raise _contradiction(card, f"{where} input {inp.get('name')} is {hw[0]}x{hw[1]} but the "
                                           f"{lab}{name} says {val[0]}x{val[1]}")


def _check_precision(card: ModelCard) -> None:
    """An ONNX's stated precision vs its graph's tensor types and Q/DQ nodes."""
    graph = card.graph.get("precision")
    if card.kind != "onnx" or not card.graph.get("has_precision_metadata") or graph is None:
        return
    if card.precision != graph:
        why = {"int8": "has QuantizeLinear/DequantizeLinear nodes", "fp16": "holds FP16 tensors",
               "fp32": "has no FP16 tensors and no Q/DQ nodes"}[graph]
        raise _contradiction(card, f"the graph {why} ({graph}) but the metadata {ONNX_PREFIX}precision says "
                                   f"{card.precision}")


def _check_ignore_index(card: ModelCard) -> None:
    ii = card.ignore_index
    if card.classes is not None and isinstance(ii, int) and 0 <= ii < len(card.classes):
        raise _contradiction(card, f"{_label(card)}ignore_index {ii} is the index of class {card.classes[ii]!r} "
                                   f"(the ignore label must not be a class)")


def _check_sidecar(card: ModelCard) -> None:
    """A sidecar's ``model`` section vs the model metadata it carries (``pspnet_metadata``), and its
    precision vs the precision of the ONNX it records."""
    sc = card.sidecar or {}
    model = sc.get("model") if isinstance(sc.get("model"), dict) else {}
    meta = sc.get("pspnet_metadata") if isinstance(sc.get("pspnet_metadata"), dict) else {}
    for key in MODEL_KEYS + ("input_kind", "input_channel_order"):
        if key in model and key in meta and model[key] != meta[key]:
            raise _contradiction(card, f"sidecar model.{key} ({_brief(model[key])}) differs from its "
                                       f"pspnet_metadata.{key} ({_brief(meta[key])})")
    if meta and ("preprocess" in model) != ("preprocess" in meta):  # present on both sides or neither
        has, lacks = ("pspnet_metadata", "model") if "preprocess" in meta else ("model", "pspnet_metadata")
        raise _contradiction(card, f"sidecar {has}.preprocess is recorded but its {lacks} section has none")
    onnx = sc.get("onnx") if isinstance(sc.get("onnx"), dict) else {}
    built, stated = onnx.get("precision"), meta.get("precision")
    if card.precision != "bf16" and built in PRECISIONS and built != card.precision:
        raise _contradiction(card, f"sidecar precision {card.precision} but it records a {built} ONNX "
                                   f"(onnx.precision)")
    if built in PRECISIONS and stated in PRECISIONS and built != stated:
        raise _contradiction(card, f"sidecar onnx.precision {built} but its pspnet_metadata.precision says {stated}")


def _brief(v) -> str:
    s = repr(v)
    return s if len(s) <= 50 else s[:47] + "..."


def _check_checkpoint(card: ModelCard) -> None:
    """A checkpoint's classes count vs its classifier's output channels (read from the weights'
    shapes, recorded by the reader as ``graph['classifier_channels']``)."""
    n = card.graph.get("classifier_channels")
    if card.kind == "torch" and n is not None and card.classes is not None and n != len(card.classes):
        raise _contradiction(card, f"the classifier {card.graph.get('classifier')} has {n} output channels but "
                                   f"the checkpoint metadata names {len(card.classes)} classes")


def crosscheck_card(card: ModelCard) -> ModelCard:
    """Refuse a card whose facts contradict each other (see the module docstring); returns it. A
    sidecar's two records of the model are compared first (the card's fields come from one of them)."""
    if card.sidecar is not None:
        _check_sidecar(card)
    _check_checkpoint(card)
    _check_output(card, card.outputs, "output" if card.kind == "onnx" else "recorded output")
    _check_input(card, card.inputs, "the graph's" if card.kind == "onnx" else "the recorded")
    _check_precision(card)
    _check_ignore_index(card)
    return card


# --------------------------------------------------------------------------------------------
# a compiled model's own IO vs its sidecar (a runner that opens it)
# --------------------------------------------------------------------------------------------

def crosscheck_runtime_io(card: ModelCard, inputs: list, outputs: list, what: str = "the model") -> None:
    """The IO a runtime reports for a compiled model (``inputs``/``outputs``: ``{name, shape,
    dtype}``, unknown dims as -1) vs what its sidecar records and the card's facts: the same count,
    rank, static dims and kind of type. UserError naming both files otherwise."""
    side = Path(card.path).name + ".json"
    for section, real, rec in (("input", inputs, card.inputs), ("output", outputs, card.outputs)):
        if len(real) != len(rec):
            raise _contradiction(card, f"{what} has {len(real)} {section}(s) but its sidecar {side} records "
                                       f"{len(rec)}")
        for r, s in zip(real, rec):
            a, b = _dims(r.get("shape", [])), _dims(s.get("shape", []))
            if len(a) != len(b) or any(x is not None and y is not None and x != y for x, y in zip(a, b)):
                raise _contradiction(card, f"{what}'s {section} {r.get('name')} is {_shown(r.get('shape', []))} but "
                                           f"its sidecar {side} records {_shown(s.get('shape', []))}")
            ca, cb = _dtype_class(r.get("dtype")), _dtype_class(s.get("dtype"))
            if ca and cb and ca != cb:
                raise _contradiction(card, f"{what}'s {section} {r.get('name')} is {r.get('dtype')} but its sidecar "
                                           f"{side} records {s.get('dtype')}")
    _check_output(card, outputs, f"{what}'s output")


# --------------------------------------------------------------------------------------------
# an engine or IR together with its ONNX
# --------------------------------------------------------------------------------------------

def engine_source_mismatch(sidecar: dict, onnx_path: str | Path, onnx_sha256: str | None = None) -> str | None:
    """None when the ONNX at ``onnx_path`` is the one a sidecar records (``onnx.sha256`` of the
    ONNX it was built from, or ``onnx.source_sha256`` of the ONNX the build started from), else one
    phrase saying what changed. ``onnx_sha256``: the file's hash when the caller has it."""
    from ..utils import sha256_file

    rec = sidecar.get("onnx") if isinstance(sidecar.get("onnx"), dict) else {}
    known = {v for v in (rec.get("sha256"), rec.get("source_sha256")) if isinstance(v, str) and v}
    if not known or not Path(onnx_path).is_file():
        return None
    have = onnx_sha256 or sha256_file(onnx_path)
    if have in known:
        return None
    want = rec.get("source_sha256") or rec.get("sha256")
    return f"{Path(onnx_path)} has sha256 {have[:12]}… but the sidecar records {str(want)[:12]}…"


def check_engine_source(engine_path: str | Path, onnx_path: str | Path, sidecar: dict | None = None,
                        onnx_sha256: str | None = None) -> None:
    """UserError when an engine or IR is used together with an ONNX other than the one its sidecar
    records: the ONNX changed after the build (rebuild from the changed ONNX) or the files were
    mixed up."""
    from .sidecar import read_sidecar_json

    sc = sidecar if sidecar is not None else read_sidecar_json(engine_path)
    diff = engine_source_mismatch(sc, onnx_path, onnx_sha256)
    if diff:
        raise UserError(f"{engine_path} was not built from this ONNX: {diff}; rebuild from the changed ONNX "
                        f"(pspnet-build-engine {onnx_path} --engine {engine_path}) or pass the ONNX it was built from")


def rebuild_note(model_path: str | Path, onnx_path: str | Path) -> str | None:
    """What a build that writes ``model_path`` (an engine or IR) from ``onnx_path`` should say when
    the existing file there was built from another ONNX (its sidecar records another sha256): a
    rebuild from a changed ONNX. None when there is no readable existing sidecar or it matches."""
    from .sidecar import read_sidecar_json

    try:
        sc = read_sidecar_json(model_path)
    except UserError:
        return None  # nothing (usable) there yet: a first build
    diff = engine_source_mismatch(sc, onnx_path)
    if diff is None:
        return None
    return f"note: {model_path} exists and was built from another ONNX ({diff}); rebuilding from the changed ONNX"
