"""The schema: the :class:`ModelCard` dataclass (the contract's fields), the constants its fields
take, and :func:`validate_card`, the one place malformed metadata is refused."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..data.preprocess import Preprocess
from ..errors import UserError
from . import bounds
from .names import PRECISIONS

OUTPUT_KINDS = ("logits", "labels")
#: what the image input takes: float (N x 3 x H x W, preprocessed) or uint8 (N x H x W x 3 pixels in
#: ``input_channel_order``, preprocessing in the graph: pspnet-export --input-kind uint8)
INPUT_KINDS = ("float", "uint8")
CHANNEL_ORDERS = ("RGB", "BGR")
#: the model facts a sidecar's ``model`` section carries (and what a runner needs from any file)
MODEL_KEYS = ("classes", "palette", "ignore_index", "preprocess", "output_kind")
ONNX_PREFIX = "pspnet."

CHECKPOINT_FORMAT = "pspnet-deploy/checkpoint"
CHECKPOINT_VERSION = 1

SIDECAR_FORMAT = "pspnet-deploy/engine-sidecar"
SIDECAR_VERSION = 1
#: sections every sidecar has, whatever the backend (a backend adds its own section, e.g. "tensorrt")
SIDECAR_SECTIONS = ("engine", "io", "model")

ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16", 6: "int32", 7: "int64", 3: "int8",
               2: "uint8", 9: "bool"}




@dataclass
class ModelCard:
    """What a model file says about itself (see the module docstring). ``meta`` is everything the
    file stores, as stored (export options, calibration report, ...); the fields are the contract."""

    path: str
    kind: str
    classes: list | None = None
    palette: list | None = None
    ignore_index: int = 255
    preprocess: dict | None = None
    model: dict | None = None
    output_kind: str = "logits"
    input_kind: str = "float"  # float or uint8 (INPUT_KINDS); a uint8 model's channel order: input_channel_order
    precision: str = "fp32"
    inputs: list = field(default_factory=list)  # [{"name", "dtype", "shape"}]; shape dims int or symbolic str
    outputs: list = field(default_factory=list)
    fixed_batch: int | None = None
    batch_range: tuple | None = None  # (min, opt, max) recorded for a dynamic batch, else None
    #: ((min H, min W), (opt H, opt W), (max H, max W)) of a dynamic spatial input, else None
    size_range: tuple | None = None
    provenance: dict = field(default_factory=dict)
    files: list = field(default_factory=list)  # every file the model consists of (ONNX external data)
    meta: dict = field(default_factory=dict)
    sidecar: dict | None = None
    #: facts read from the graph itself, not from its metadata (an ONNX's ``precision`` from its tensor
    #: types and Q/DQ nodes), for :func:`pspnet_deploy.card.crosscheck.crosscheck_card`
    graph: dict = field(default_factory=dict)

    def require(self, *keys: str, hint: str = "export it with pspnet-export") -> "ModelCard":
        """UserError naming the first missing fact among ``keys``; returns self."""
        for k in keys:
            if getattr(self, k, None) is None:
                where = {"onnx": f"ONNX has no {ONNX_PREFIX}{k} metadata", "torch": f"checkpoint metadata has no {k!r}",
                         }.get(self.kind, f"sidecar has no model.{k}")
                raise UserError(f"{self.path}: {where}; {hint}")
        return self

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(H, W) the model takes: the IO's static spatial dims, the size a dynamic-shape model is
        optimised for, else the preprocessing's size."""
        if self.size_range is not None:
            return tuple(self.size_range[1])
        if self.inputs:
            shape = self._nchw(self.inputs[0]["shape"])
            if len(shape) == 4 and all(isinstance(d, int) and d > 0 for d in shape[2:]):
                return int(shape[2]), int(shape[3])
        if self.preprocess is not None:
            return tuple(int(v) for v in self.preprocess["input_size"])
        return None

    @property
    def static_size(self) -> bool:
        """True when the file fixes the spatial input size (ONNX / engines, not checkpoints)."""
        return bool(self.inputs) and len(self.inputs[0]["shape"]) == 4 and \
            all(isinstance(d, int) and d > 0 for d in self._nchw(self.inputs[0]["shape"])[2:])

    def _nchw(self, shape: list) -> list:
        """An input shape in N, C, H, W order (a uint8 model's is N, H, W, C)."""
        if self.input_kind == "uint8" and len(shape) == 4:
            return [shape[0], shape[3], shape[1], shape[2]]
        return list(shape)

    @property
    def input_channel_order(self) -> str:
        """RGB or BGR: the channel order a uint8 model's pixels come in (``pspnet.input_channel_order``)."""
        return str(self.meta.get("input_channel_order", "RGB")).upper()

    @property
    def min_side(self) -> int | None:
        """The smallest input side this model takes (:func:`pspnet_deploy.card.bounds.model_min_side`),
        None when the file has no model config."""
        return bounds.model_min_side(self.model)

    def check_size(self, size=None, what: str = "--input-size", batch: int = 1, training: bool = False
                   ) -> tuple[int, int]:
        """The (H, W) a run of this model uses (:func:`pspnet_deploy.card.bounds.check_size`: ``size``
        or the file's own, within the minimum and maximum side, the memory rule times ``batch``, and a
        dynamic-shape model's range through :meth:`check_bounds`)."""
        return bounds.check_size(self, size, what, batch=batch, training=training)

    def check_bounds(self, h: int, w: int) -> None:
        """UserError (one line) when an H x W input is outside a dynamic-shape model's declared
        bounds (:func:`pspnet_deploy.card.bounds.check_bounds`); no-op for other models."""
        bounds.check_bounds(self, h, w)

    def preprocessing(self) -> Preprocess:
        """The :class:`Preprocess` of this file at its input size."""
        self.require("preprocess")
        pre = Preprocess.from_dict(self.preprocess)
        size = self.input_size
        return pre.with_size(*size) if size else pre

    def model_facts(self) -> dict:
        """The :data:`MODEL_KEYS` facts as a dict (what a sidecar's ``model`` section holds)."""
        out = {k: getattr(self, k) for k in MODEL_KEYS if getattr(self, k) is not None}
        return out

    @property
    def file_bytes(self) -> int:
        return sum(Path(f).stat().st_size for f in self.files if Path(f).is_file())


# --------------------------------------------------------------------------------------------
# validation: the one place malformed metadata is refused
# --------------------------------------------------------------------------------------------

def fix_hint(kind: str) -> str:
    """What the user does about a file of ``kind`` whose facts are wrong: make it again."""
    return {"torch": "the checkpoint's metadata is damaged; re-save it with pspnet-train",
            "onnx": "re-export the ONNX with pspnet-export",
            "openvino": "rebuild the IR with pspnet-build-engine --backend openvino"}.get(
        kind, "rebuild the engine with pspnet-build-engine")


def _bad(path, what: str, got, fix: str) -> UserError:
    shown = repr(got)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return UserError(f"{path}: {what} is malformed ({shown}); {fix}")


def validate_card(card: ModelCard) -> ModelCard:
    """Refuse metadata of the wrong type or inconsistent with itself, one line naming the field.

    Checked: classes (a list of names), palette (one [R, G, B] of 0-255 per class), ignore index
    (an int), preprocess (a dict :class:`Preprocess` reads), model (a dict), output kind, precision,
    IO (lists of name/dtype/shape), batch range (MIN <= OPT <= MAX, all >= 1). Whether the facts
    agree with the graph and with each other is :func:`pspnet_deploy.card.crosscheck.crosscheck_card`'s.
    """
    p = card.path
    fix = fix_hint(card.kind)
    label = {"onnx": ONNX_PREFIX}.get(card.kind, "")
    if card.classes is not None:
        if not isinstance(card.classes, list) or not card.classes or \
                not all(isinstance(c, str) and c for c in card.classes):
            raise _bad(p, f"{label}classes (a JSON list of class names)", card.classes, fix)
    if card.palette is not None:
        if not isinstance(card.palette, list) or not all(
                isinstance(c, (list, tuple)) and len(c) == 3 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                     and 0 <= v <= 255 for v in c)
                for c in card.palette):
            raise _bad(p, f"{label}palette (a JSON list of [R, G, B] colours, 0-255)", card.palette, fix)
        if card.classes is not None and len(card.palette) != len(card.classes):
            raise UserError(f"{p}: {label}palette has {len(card.palette)} colours for {len(card.classes)} classes; "
                            f"{fix}")
    if not isinstance(card.ignore_index, int) or isinstance(card.ignore_index, bool):
        raise _bad(p, f"{label}ignore_index (an integer)", card.ignore_index, fix)
    if card.preprocess is not None:
        try:
            if not isinstance(card.preprocess, dict):
                raise TypeError
            pre = Preprocess.from_dict(card.preprocess)
            if len(pre.input_size) != 2 or min(pre.input_size) <= 0 or len(pre.mean) != 3 or len(pre.std) != 3 \
                    or not all(math.isfinite(s) and s > 0 for s in pre.std):
                raise ValueError
        except (TypeError, ValueError, KeyError):
            raise _bad(p, f"{label}preprocess (input_size, mean, std)", card.preprocess, fix) from None
    if card.model is not None and not isinstance(card.model, dict):
        raise _bad(p, f"{label}model (the PSPNet configuration)", card.model, fix)
    if card.output_kind not in OUTPUT_KINDS:
        raise _bad(p, f"{label}output_kind (logits or labels)", card.output_kind, fix)
    if card.input_kind not in INPUT_KINDS:
        raise _bad(p, f"{label}input_kind (float or uint8)", card.input_kind, fix)
    if str(card.meta.get("input_channel_order", "RGB")).upper() not in CHANNEL_ORDERS:
        raise _bad(p, f"{label}input_channel_order (RGB or BGR)", card.meta.get("input_channel_order"), fix)
    if card.precision not in PRECISIONS:
        raise _bad(p, f"{label}precision ({', '.join(PRECISIONS)})", card.precision, fix)
    for section in ("inputs", "outputs"):
        tensors = getattr(card, section)
        if not isinstance(tensors, list) or not all(
                isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("dtype"), str)
                and isinstance(t.get("shape"), list) and all(isinstance(d, (int, str)) for d in t["shape"])
                for t in tensors):
            raise _bad(p, f"io.{section} (name, dtype, shape of each tensor)", tensors, fix)
    tt = card.meta.get("test_time") if isinstance(card.meta, dict) else None
    if tt is not None:  # the source's test-time procedure (pspnet-convert; pspnet-eval --test-time source)
        def _ints(v, n):
            return isinstance(v, list) and len(v) == n and all(isinstance(x, int) and x > 0 for x in v)
        rs = tt.get("resize") if isinstance(tt, dict) else None
        ok = isinstance(tt, dict) and tt.get("mode") in ("whole", "slide") and isinstance(tt.get("flip"), bool) \
            and isinstance(tt.get("scales"), list) and tt["scales"] and \
            all(isinstance(x, (int, float)) and x > 0 for x in tt["scales"]) \
            and (tt["mode"] == "whole" or (_ints(tt.get("crop"), 2) and _ints(tt.get("stride"), 2))) \
            and (rs is None or (isinstance(rs, dict) and (_ints([rs.get("long")], 1) or _ints(rs.get("size"), 2))))
        if not ok:
            raise _bad(p, f"{label}test_time (mode, flip, scales, crop/stride of slide, resize)", tt, fix)
    if card.batch_range is not None:
        try:
            lo, opt, hi = (int(v) for v in card.batch_range)
            if not 1 <= lo <= opt <= hi:
                raise ValueError
        except (TypeError, ValueError):
            raise _bad(p, "batch range (MIN <= OPT <= MAX)", card.batch_range, fix) from None
        card.batch_range = (lo, opt, hi)
    if card.size_range is not None:
        try:
            lo, opt, hi = (tuple(int(v) for v in s) for s in card.size_range)
            if not (len(lo) == len(opt) == len(hi) == 2 and all(1 <= a <= b <= c for a, b, c in zip(lo, opt, hi))):
                raise ValueError
        except (TypeError, ValueError):
            raise _bad(p, f"{label}export.dynamic_shape (min <= opt <= max, H W each)", card.size_range, fix) from None
        card.size_range = (lo, opt, hi)
    return card


def _card_from_meta(path: Path, kind: str, meta: dict, precision: str | None = None, **io) -> ModelCard:
    """The contract fields from a stored metadata dict (checkpoint meta, ONNX pspnet.* props,
    sidecar model section), before validation. ``precision``: what the file says when its
    metadata does not (an ONNX graph's Q/DQ or FP16 tensors)."""
    prov = {k: meta[k] for k in ("checkpoint_sha256", "checkpoint", "source_onnx", "released_from", "toolkit_version",
                                 "versions", "dataset", "sha256") if k in meta}
    exp = meta.get("export")
    dyn = exp.get("dynamic_shape") if isinstance(exp, dict) else None
    if dyn is not None:  # a dynamic spatial input: {"min": [H, W], "opt": [H, W], "max": [H, W]}
        dyn = tuple(dyn.get(k) for k in ("min", "opt", "max")) if isinstance(dyn, dict) else dyn
    return ModelCard(path=str(path), kind=kind, classes=meta.get("classes"), palette=meta.get("palette"),
                     ignore_index=meta.get("ignore_index", 255), preprocess=meta.get("preprocess"),
                     model=meta.get("model"), output_kind=meta.get("output_kind", "logits"),
                     input_kind=meta.get("input_kind", "float"),
                     precision=precision or meta.get("precision") or "fp32",
                     provenance=prov, meta=meta, size_range=dyn, **io)


def card_from_meta(meta: dict, path: str | Path = "<in memory>", kind: str = "torch") -> ModelCard:
    """The validated card of a metadata dict in hand (a model being trained, a checkpoint's meta)."""
    return validate_card(_card_from_meta(Path(path), kind, meta))



def _check_before_write(meta: dict, where: str, kind: str) -> None:
    validate_card(_card_from_meta(Path(where), kind, meta))
