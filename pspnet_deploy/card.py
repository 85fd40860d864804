"""The model-file contract: what every model file says about itself, read by one function.

A model file's *card* is the set of facts every stage needs and no stage may re-derive: the
classes, palette and ignore index, the preprocessing, the PSPNet configuration, the output kind
(logits or labels), the precision, the IO tensors and batch range, and the provenance (hashes of
the files it came from, versions). It lives in three formats:

- a checkpoint (``.pt``): the JSON ``meta`` string of the payload (:func:`dump_checkpoint_meta`,
  written by :func:`pspnet_deploy.checkpoint.save_checkpoint`);
- an ONNX (``.onnx``): ``pspnet.<key>`` metadata_props with JSON values (:func:`write_onnx_metadata`,
  written by export, FP16 conversion and calibration);
- a compiled engine (``.engine``/``.plan``/``.trt``, or an OpenVINO IR ``.xml``): the JSON sidecar
  ``<file>.json`` (written by :mod:`pspnet_deploy.engine.sidecar`; :func:`read_sidecar_json` is the
  format's reader).

:func:`read_card` reads any of them, cheaply (a checkpoint's tensors are memory-mapped, never read;
an ONNX is parsed without its external data and without an ONNX Runtime session; an engine is not
opened, only its sidecar) and :func:`validate_card` is the one place that refuses malformed
metadata with one line. :data:`SUFFIX_KINDS` is the one suffix-to-kind table; a new backend adds
its suffixes there and its reader in :data:`READERS`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .data.preprocess import Preprocess
from .errors import UserError
from .utils import jsonable

#: the one suffix -> kind table (a new backend adds its suffixes here and a reader in READERS)
SUFFIX_KINDS = {".pt": "torch", ".pth": "torch", ".onnx": "onnx",
                ".engine": "tensorrt", ".plan": "tensorrt", ".trt": "tensorrt", ".xml": "openvino"}
#: bf16: an inference precision of an FP32 OpenVINO IR (recorded in its sidecar), no file format
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
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
#: the kinds whose files carry a sidecar, each with its own section named after it
SIDECAR_KINDS = ("tensorrt", "openvino")

ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16", 6: "int32", 7: "int64", 3: "int8",
               2: "uint8", 9: "bool"}


# --------------------------------------------------------------------------------------------
# paths and kinds
# --------------------------------------------------------------------------------------------

def model_kind(path: str | Path) -> str:
    """'torch', 'onnx', 'tensorrt' or 'openvino' from the file suffix; UserError for anything else."""
    p = Path(path)
    kind = SUFFIX_KINDS.get(p.suffix.lower())
    if kind is None:
        raise UserError(f"{p}: unknown model file type {p.suffix or '(none)'!r}; expected "
                        f"{', '.join(sorted(SUFFIX_KINDS))}")
    return kind


def strip_model_suffix(name: str) -> str:
    """``model.fp16.engine`` -> ``model.fp16`` (any suffix of :data:`SUFFIX_KINDS`)."""
    for suf in SUFFIX_KINDS:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def sidecar_path(model_path: str | Path) -> Path:
    """The sidecar of a compiled model file: ``model.fp16.engine`` -> ``model.fp16.engine.json``."""
    p = Path(model_path)
    return p.with_name(p.name + ".json")


# --------------------------------------------------------------------------------------------
# artefact names: every file name a stage derives from another lives here
# --------------------------------------------------------------------------------------------

def strip_precision(stem: str) -> str:
    """``model.fp16`` -> ``model`` (a trailing ``.<precision>`` of :data:`PRECISIONS`)."""
    for p in PRECISIONS:
        if stem.endswith("." + p):
            return stem[: -len(p) - 1]
    return stem


def variant_path(onnx_path: str | Path, precision: str) -> Path:
    """Where the ``precision`` variant of an ONNX goes: ``model.fp32.onnx`` -> ``model.int8.onnx``."""
    p = Path(onnx_path)
    return p.with_name(f"{strip_precision(p.stem)}.{precision}.onnx")


def default_engine_path(onnx_path: str | Path, precision: str, suffix: str = ".engine") -> Path:
    """``<name>.<precision><suffix>`` next to the ONNX (``.engine``; ``.xml`` for an OpenVINO IR)."""
    p = Path(onnx_path)
    return p.with_name(f"{strip_precision(p.stem)}.{precision}{suffix}")


def ir_weights_path(xml_path: str | Path) -> Path:
    """An OpenVINO IR's weights beside it: ``model.int8.xml`` -> ``model.int8.bin``."""
    return Path(xml_path).with_suffix(".bin")


def parity_report_path(onnx_path: str | Path) -> Path:
    """``model.fp32.onnx`` -> ``model.fp32.parity.json`` (beside the model)."""
    return Path(onnx_path).with_suffix(".parity.json")


def failed_report_path(onnx_path: str | Path) -> Path:
    """``model.fp32.onnx`` -> ``model.fp32.parity-failed.json``: the figures of a failed parity gate
    (no model is written then, and a report named like a good one's would contradict the old model)."""
    return Path(onnx_path).with_suffix(".parity-failed.json")


def table_path_for(output: str | Path) -> Path:
    """The calibration table of an INT8 ONNX: ``model.int8.onnx`` -> ``model.int8.calib.json``."""
    return Path(output).with_suffix(".calib.json")


def sensitivity_report_paths(output: str | Path) -> dict[str, Path]:
    """The accuracy-budget report of an INT8 ONNX: ``m.int8.onnx`` -> ``m.int8.sensitivity.{json,md,png}``."""
    base = Path(output).with_suffix("")
    return {k: base.with_name(f"{base.name}.sensitivity.{k}") for k in ("json", "md", "png")}


def qat_state_path(output: str | Path) -> Path:
    """pspnet-qat's resumable state beside its output: ``m.int8.onnx`` -> ``m.int8.qat-state.pt``."""
    return Path(output).with_suffix(".qat-state.pt")


def model_files(path: str | Path) -> list[Path]:
    """Every file a model consists of, the model file first: an ONNX's external data, a compiled
    model's sidecar and the weights file it names (an IR's ``.bin``). Best effort and cheap (no
    validation: a file that cannot be read is just itself here; its reader says what is wrong)."""
    p = Path(path)
    out = [p]
    kind = SUFFIX_KINDS.get(p.suffix.lower())
    if kind == "onnx" and p.is_file():
        try:
            import onnx

            m = onnx.load(str(p), load_external_data=False)
            for t in m.graph.initializer:
                if t.data_location == onnx.TensorProto.EXTERNAL:
                    for kv in t.external_data:
                        if kv.key == "location" and (p.parent / kv.value) not in out:
                            out.append(p.parent / kv.value)
        except Exception:  # noqa: BLE001 - not readable: the model's reader will say so
            pass
    elif kind in SIDECAR_KINDS:
        out.append(sidecar_path(p))
        if kind == "openvino":
            out.append(ir_weights_path(p))
    return out


# --------------------------------------------------------------------------------------------
# the card
# --------------------------------------------------------------------------------------------

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
        """The smallest input side this model takes (its feature map must hold the largest pyramid
        bin; :func:`pspnet_deploy.geometry.min_input_size`), None when the file has no model config."""
        if not isinstance(self.model, dict) or not self.model:
            return None
        from .geometry import min_input_size

        return min_input_size(self.model.get("bins", (1, 2, 3, 6)), self.model.get("output_stride", 8))

    def check_size(self, size=None, what: str = "--input-size", batch: int = 1, training: bool = False
                   ) -> tuple[int, int]:
        """The (H, W) a run of this model uses: ``size`` when given, else the file's own, within the
        one set of bounds (:func:`pspnet_deploy.utils.check_input_size`: the model's minimum side,
        the maximum side and the memory rule, times ``batch``)."""
        from .utils import check_input_size

        eff = size if size is not None else self.input_size
        if eff is None:
            raise UserError(f"{self.path}: the file records no input size; pass --input-size H W")
        return check_input_size(eff, what if size is not None else f"{self.path}: stored input size", batch=batch,
                                training=training, min_side=self.min_side)

    def check_bounds(self, h: int, w: int) -> None:
        """UserError (one line) when an H x W input is outside a dynamic-shape model's declared
        bounds (the one check every runner makes); no-op for other models."""
        if self.size_range is None:
            return
        (lo_h, lo_w), _, (hi_h, hi_w) = self.size_range
        if not (lo_h <= h <= hi_h and lo_w <= w <= hi_w):
            raise UserError(f"{self.path}: input {h}x{w} is outside the model's size range {lo_h}x{lo_w} .. "
                            f"{hi_h}x{hi_w}; resize the image or re-export with wider --min-size/--max-size")

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

def _bad(path, what: str, got, fix: str) -> UserError:
    shown = repr(got)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return UserError(f"{path}: {what} is malformed ({shown}); {fix}")


def validate_card(card: ModelCard) -> ModelCard:
    """Refuse metadata of the wrong type or inconsistent with itself, one line naming the field.

    Checked: classes (a list of names), palette (one [R, G, B] of 0-255 per class), ignore index
    (an int), preprocess (a dict :class:`Preprocess` reads), model (a dict), output kind, precision,
    IO (lists of name/dtype/shape), batch range (MIN <= OPT <= MAX, all >= 1), and a logits output
    with one channel per class (a file whose metadata and graph disagree was edited or mixed up).
    """
    p = card.path
    fix = {"torch": "the checkpoint's metadata is damaged; re-save it with pspnet-train",
           "onnx": "re-export the ONNX with pspnet-export",
           "openvino": "rebuild the IR with pspnet-build-engine --backend openvino"}.get(
        card.kind, "rebuild the engine with pspnet-build-engine")
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
    if card.inputs and card.kind == "onnx":  # the graph and its metadata must agree on the input's type
        dtype = card.inputs[0]["dtype"]
        if (card.input_kind == "uint8") != (dtype == "uint8"):
            raise UserError(f"{p}: input is {dtype} but the metadata says input_kind {card.input_kind}; the file was "
                            f"edited or mixed up, {fix}")
    if card.precision not in PRECISIONS:
        raise _bad(p, f"{label}precision ({', '.join(PRECISIONS)})", card.precision, fix)
    for section in ("inputs", "outputs"):
        tensors = getattr(card, section)
        if not isinstance(tensors, list) or not all(
                isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("dtype"), str)
                and isinstance(t.get("shape"), list) and all(isinstance(d, (int, str)) for d in t["shape"])
                for t in tensors):
            raise _bad(p, f"io.{section} (name, dtype, shape of each tensor)", tensors, fix)
    if card.classes is not None and card.output_kind == "logits" and card.outputs:
        shape = card.outputs[0]["shape"]
        if len(shape) == 4 and isinstance(shape[1], int) and shape[1] > 0 and shape[1] != len(card.classes):
            raise UserError(f"{p}: output has {shape[1]} channels but the metadata names {len(card.classes)} classes; "
                            f"the file was edited or mixed up, {fix}")
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


# --------------------------------------------------------------------------------------------
# readers, one per format
# --------------------------------------------------------------------------------------------

def safe_torch_load(path: str | Path, what: str = "checkpoint", hint: str = "pass a .pt written by pspnet-train or "
                    "pspnet-convert", map_location="cpu", mmap: bool = False):
    """``torch.load`` restricted to tensors and plain data (never running code from the file), with
    one-line refusals: missing, not the zip archive ``torch.save`` writes, holding Python objects,
    corrupt. PyTorch's own refusal advises ``weights_only=False``; these messages never do."""
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: cannot read {what}: not a PyTorch file ({path.stat().st_size} bytes, not the "
                        f"zip archive torch.save writes); {hint}")
    try:
        if mmap:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"{path}: refused: the file holds Python objects a {what} never contains (loading them "
                        f"could run code from the file); {hint}") from e
    except Exception as e:  # noqa: BLE001 - any failure to parse a foreign file is bad input, not a bug
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path}: cannot read {what} (corrupt, truncated or not a PyTorch file: "
                        f"{type(e).__name__}: {msg[:160]})") from e


def read_checkpoint_payload(path: str | Path, map_location="cpu", mmap: bool = False) -> dict:
    """A checkpoint's payload (``meta`` JSON-decoded), never running code from the file.

    ``torch.load`` is restricted to tensors and plain data; PyTorch's own refusal text advises
    ``weights_only=False``, which would run code from the file, so the messages here say what the
    file is instead. Refused with one line: a file that is not the zip archive ``torch.save``
    writes, a pickle holding Python objects, a foreign or newer header, a version that is not a
    number, missing or corrupt metadata, no state_dict of named tensors, a training state that is
    not a mapping. ``mmap=True`` maps the tensors instead of reading them (what :func:`read_card` uses).
    """
    import torch

    FORMAT, VERSION = CHECKPOINT_FORMAT, CHECKPOINT_VERSION
    path = Path(path)
    payload = safe_torch_load(path, map_location=map_location, mmap=mmap)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path}: not a pspnet-deploy checkpoint (no '{FORMAT}' header); train one with pspnet-train "
                        f"or convert one with pspnet-convert")
    version = payload.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise UserError(f"{path}: checkpoint version {version!r} is not a number; the file is corrupt or not ours")
    if version > VERSION:
        raise UserError(f"{path}: checkpoint version {version} is newer than this toolkit reads ({VERSION}); "
                        f"upgrade pspnet-deploy")
    try:
        meta = json.loads(payload["meta"])
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: checkpoint metadata is missing or corrupt") from e
    if not isinstance(meta, dict):
        raise UserError(f"{path}: checkpoint metadata is not a JSON object; the file is corrupt")
    payload["meta"] = meta
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                             for k, v in state.items()):
        raise UserError(f"{path}: checkpoint has no weights (no state_dict of named tensors); the file is corrupt "
                        f"or not a model checkpoint")
    ts = payload.get("train_state")
    if ts is not None and not isinstance(ts, dict):
        raise UserError(f"{path}: checkpoint's training state is corrupt; resume from another last.pt")
    if not mmap:  # the weights are in memory: a broken model is refused here, never scored
        check_finite_weights(state, path)
    return payload


def check_finite_weights(state: dict, path) -> None:
    """UserError naming the first floating tensor of ``state`` that holds NaN or Inf (a diverged
    training run, a damaged file): such a model would export, evaluate and deploy as garbage."""
    import torch

    for name, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise UserError(f"{path}: weight {name} holds {bad} NaN/Inf value{'s' if bad != 1 else ''} of {t.numel()}; "
                            f"the model is broken (diverged training or a damaged file): use an earlier checkpoint "
                            f"or retrain")


def _read_torch(path: Path) -> ModelCard:
    meta = read_checkpoint_payload(path, mmap=True)["meta"]
    card = _card_from_meta(path, "torch", meta, files=[str(path.resolve())])
    card.provenance.setdefault("storage_dtype", meta.get("storage_dtype"))
    return card


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
    stated = str(meta.get("precision", "")).lower()  # the metadata's word, else the graph's
    return _card_from_meta(path, "onnx", meta, precision=stated if stated in PRECISIONS else onnx_graph_precision(model),
                           inputs=inputs, outputs=outputs, fixed_batch=fixed, batch_range=rng,
                           files=sorted(map(str, files)))


def _read_onnx(path: Path) -> ModelCard:
    return card_from_onnx_proto(load_onnx_proto(path), path)


def read_sidecar_json(model_path: str | Path, rebuild_hint: str | None = None) -> dict:
    """The sidecar of a compiled model file, with its format, version and sections checked.

    UserError (one line) for a missing model file, a missing, unreadable or foreign sidecar, or a
    section of the wrong type. Backend-specific checks (TensorRT version, GPU) are the backend's.
    """
    model_path = Path(model_path)
    sc = sidecar_path(model_path)
    flags = " --backend openvino" if SUFFIX_KINDS.get(model_path.suffix.lower()) == "openvino" else ""
    hint = rebuild_hint or f"rebuild it with pspnet-build-engine MODEL.onnx{flags} --engine {model_path}"
    if not model_path.is_file():
        raise UserError(f"{model_path}: engine file not found")
    if not sc.is_file():
        raise UserError(f"{model_path}: no sidecar {sc.name} next to it, so the runtime version, device and model "
                        f"metadata it was built for are unknown; {hint}")
    try:
        data = json.loads(sc.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{sc}: sidecar is not valid JSON ({type(e).__name__}); {hint}") from e
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise UserError(f"{sc}: not a pspnet-deploy engine sidecar; {hint}")
    version = data.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise UserError(f"{sc}: sidecar version {version!r} is not a number; {hint}")
    if version > SIDECAR_VERSION:
        raise UserError(f"{sc}: sidecar version {version} is newer than this toolkit reads ({SIDECAR_VERSION}); "
                        f"upgrade pspnet-deploy")
    backend = SUFFIX_KINDS.get(model_path.suffix.lower())
    for key in SIDECAR_SECTIONS + ((backend,) if backend in data or backend in SIDECAR_KINDS else ()):
        if not isinstance(data.get(key), dict):
            raise UserError(f"{sc}: sidecar has no {key!r} section; {hint}")
    io = data["io"]
    for key in ("inputs", "outputs"):
        if not isinstance(io.get(key, []), list):
            raise UserError(f"{sc}: sidecar io.{key} is malformed ({type(io.get(key)).__name__}, expected a list); "
                            f"{hint}")
    prof = io.get("profile")
    if prof is not None and not (isinstance(prof, dict) and all(
            isinstance(prof.get(k), list) and prof[k] and all(isinstance(v, int) for v in prof[k])
            for k in ("min", "opt", "max"))):
        raise UserError(f"{sc}: sidecar io.profile is malformed (expected min/opt/max shapes); {hint}")
    eng = data["engine"]
    size = eng.get("size")
    if "size" in eng and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise UserError(f"{sc}: sidecar engine.size is malformed ({size!r}); {hint}")
    if "sha256" in eng and not isinstance(eng["sha256"], str):
        raise UserError(f"{sc}: sidecar engine.sha256 is malformed ({eng['sha256']!r}); {hint}")
    return data


def _read_sidecar_card(path: Path) -> ModelCard:
    sc = read_sidecar_json(path)
    meta = dict(sc.get("pspnet_metadata") or {})
    meta.update(sc["model"])
    io = sc["io"]
    inputs, outputs = list(io.get("inputs", [])), list(io.get("outputs", []))
    files = [str(path.resolve())]
    weights = sc["engine"].get("weights")  # a file the engine needs next to it (an OpenVINO IR's .bin)
    if isinstance(weights, dict) and isinstance(weights.get("file"), str):
        files.append(str(path.resolve().with_name(Path(weights["file"]).name)))
    fixed = rng = None
    prof = io.get("profile")
    if prof:
        rng = (prof["min"][0], prof["opt"][0], prof["max"][0])
    elif inputs and inputs[0].get("shape") and isinstance(inputs[0]["shape"][0], int) and inputs[0]["shape"][0] > 0:
        fixed = inputs[0]["shape"][0]
    card = _card_from_meta(path, SUFFIX_KINDS[path.suffix.lower()], meta, precision=sc.get("precision"), inputs=inputs, outputs=outputs,
                           fixed_batch=fixed, batch_range=rng, files=files, sidecar=sc)
    if card.static_size:  # built at one fixed size from a dynamic-shape ONNX (--static-size): static
        card.size_range = None
    onnx = sc.get("onnx") if isinstance(sc.get("onnx"), dict) else {}
    card.provenance.update({"engine_sha256": sc["engine"].get("sha256"), "onnx_path": onnx.get("path"),
                            "onnx_sha256": onnx.get("sha256"), "source_onnx_sha256": onnx.get("source_sha256")})
    return card


#: kind -> reader; a compiled backend that writes the same sidecar contract reuses _read_sidecar_card
READERS = {"torch": _read_torch, "onnx": _read_onnx, "tensorrt": _read_sidecar_card,
           "openvino": _read_sidecar_card}


def read_card(path: str | Path, kind: str | None = None) -> ModelCard:
    """The :class:`ModelCard` of any model file, validated (see :func:`validate_card`). ``kind``
    overrides the suffix (a temporary file being written, for instance)."""
    p = Path(path)
    kind = kind or model_kind(p)
    if not p.is_file():
        raise UserError(f"{p}: model file not found")
    return validate_card(READERS[kind](p))


# --------------------------------------------------------------------------------------------
# writers, one per format (the sidecar's is in pspnet_deploy.engine.sidecar)
# --------------------------------------------------------------------------------------------

def _check_before_write(meta: dict, where: str, kind: str) -> None:
    validate_card(_card_from_meta(Path(where), kind, meta))


def dump_checkpoint_meta(meta: dict, where: str | Path = "checkpoint") -> str:
    """The checkpoint format's ``meta`` string (validated, JSON)."""
    _check_before_write(meta, str(where), "torch")
    return json.dumps(jsonable(meta))


def write_onnx_metadata(model_proto, meta: dict) -> None:
    """Set ``pspnet.<key>`` metadata_props (JSON values) on ``model_proto``, replacing same keys
    and keeping other props. Keys may be given with or without the ``pspnet.`` prefix."""
    entries = {}
    for k, v in meta.items():
        key = k if k.startswith(ONNX_PREFIX) else f"{ONNX_PREFIX}{k}"
        entries[key] = json.dumps(jsonable(v), sort_keys=False, allow_nan=False)
    _check_before_write({k[len(ONNX_PREFIX):]: json.loads(v) for k, v in entries.items()}, "ONNX metadata", "onnx")
    keep = [(p.key, p.value) for p in model_proto.metadata_props if p.key not in entries]
    del model_proto.metadata_props[:]
    for k, v in keep + sorted(entries.items()):
        e = model_proto.metadata_props.add()
        e.key, e.value = k, v


__all__ = ["INPUT_KINDS", "CHANNEL_ORDERS", "MODEL_KEYS", "ModelCard", "PRECISIONS", "READERS", "SIDECAR_FORMAT", "SIDECAR_VERSION", "SUFFIX_KINDS",
           "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "card_from_meta", "card_from_onnx_proto", "dump_checkpoint_meta", "load_onnx_proto", "model_kind",
           "onnx_graph_precision", "onnx_meta_from_proto", "read_card", "read_checkpoint_payload",
           "read_sidecar_json", "sidecar_path", "strip_model_suffix", "validate_card", "write_onnx_metadata"]
