"""Convert an mmsegmentation or hszhao/semseg PSPNet checkpoint into this project's checkpoint.

:func:`convert_checkpoint` reads the file with the safe unpickler (no code from it runs), finds
the weights (``{'state_dict': ...}`` wrappers, ``module.`` prefixes), works out the architecture
(mmseg: the embedded config ``meta['cfg']`` / ``meta['config']`` or ``--config``, read without
executing it, the two checked against each other; without a config only on an explicit
``assume_defaults``: the weights' shapes plus the peer's defaults, each assumption recorded),
builds the matching :class:`~pspnet_deploy.model.PSPNet`, loads every weight strictly, and writes
a :func:`~pspnet_deploy.checkpoint.save_checkpoint` file with classes, palette (the checkpoint's,
else the config's dataset from :mod:`.datasets`), preprocessing and the test-time procedure.
Anything that is not a PSPNet of a supported layout fails with one line and writes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import FORMAT, save_checkpoint
from ..data.base import IGNORE_INDEX, default_palette
from ..data.preprocess import Preprocess
from ..errors import UserError
from ..model import PSPNet
from ..utils import sha256_file, versions
from . import mmseg as mm
from . import semseg as ss
from .mmconfig import get, read_config_file, read_config_text
from .safe_pickle import Inert, safe_load

__all__ = ["convert_checkpoint", "extract_state", "detect_source", "SOURCES"]

SOURCES = ("mmseg", "semseg")
_DETECTOR = ("rpn_head.", "roi_head.", "bbox_head.", "neck.", "mask_head.", "query_head.")
_CLASSIFIER = ("fc.weight", "head.fc.weight", "classifier.weight", "head.weight", "classifier.1.weight")


def extract_state(payload, where: str) -> tuple[dict, dict]:
    """``(state_dict, meta)`` from a loaded checkpoint: mmengine/mmcv ``{'meta', 'state_dict', ...}``,
    semseg ``{'epoch', 'state_dict', 'optimizer'}``, ``{'model': ...}`` or a bare state dict;
    ``module.`` prefixes removed."""
    if not isinstance(payload, dict):
        raise UserError(f"{where}: not a checkpoint (the file holds a {type(payload).__name__}, not a dict of weights)")
    if payload.get("format") == FORMAT:
        raise UserError(f"{where}: already a pspnet-deploy checkpoint; use it directly (no conversion needed)")
    meta = payload.get("meta") if isinstance(payload.get("meta"), dict) else {}
    state = None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(payload.get(key), dict):
            state = payload[key]
            break
    if state is None:
        state = payload
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise UserError(f"{where}: no weights found (no 'state_dict' of tensors): not a model checkpoint")
    odd = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if odd and len(odd) * 10 > len(state):
        what = type(state[odd[0]]).__name__ if not isinstance(state[odd[0]], Inert) else repr(state[odd[0]])
        raise UserError(f"{where}: the state dict holds non-tensors ({odd[0]!r}: {what}): not a model checkpoint")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors, meta


def _describe_other(state: dict) -> str:
    keys = list(state)
    if any(k.startswith(_DETECTOR) for k in keys):
        hits = sorted({k.split(".")[0] for k in keys if k.startswith(_DETECTOR)})
        return f"looks like an object detector ({', '.join(hits)} weights), not a PSPNet segmentation model"
    if any(k in _CLASSIFIER for k in keys):
        k = next(k for k in keys if k in _CLASSIFIER)
        return f"looks like an image classifier ({k} of shape {tuple(state[k].shape)}), not a PSPNet segmentation model"
    if any(k.startswith("decode_head.") for k in keys):
        sub = sorted({".".join(k.split(".")[:2]) for k in keys if k.startswith("decode_head.")})
        return f"an mmseg model whose decode head is not PSPHead ({', '.join(sub[:3])}), not a PSPNet"
    return f"not a PSPNet checkpoint of mmseg (backbone.*, decode_head.psp_modules.*) or semseg (layer0.*, ppm.features.*) layout (first key {keys[0]!r})"


def detect_source(state: dict, where: str, wanted: str | None = None) -> str:
    found = None
    if mm.is_mmseg_state(state) and any(k.startswith("decode_head.psp_modules.") for k in state):
        found = "mmseg"
    elif ss.is_semseg_state(state):
        found = "semseg"
    if found is None:
        raise UserError(f"{where}: {_describe_other(state)}")
    if wanted is not None and wanted != found:
        raise UserError(f"{where}: --from {wanted} given, but the weights are in {found}'s layout; "
                        f"use --from {found} or omit --from")
    return found


def _embedded_config(meta: dict, where: str):
    for key in ("cfg", "config"):  # mmengine (1.x) / mmcv (0.x)
        text = meta.get(key)
        if isinstance(text, str) and text.strip():
            return read_config_text(text, f"{where} meta['{key}']"), f"embedded meta['{key}']"
    return None, None


#: what each ``--assume-defaults`` value assumes (recorded in the checkpoint with the notes)
ASSUME_DEFAULTS = {
    "mmseg-d8": ("mmseg", "mmsegmentation's PSPNet defaults (configs/_base_/models/pspnet_r50-d8.py): output stride 8, "
                          "contract_dilation, bins 1-2-3-6, align_corners False, ImageNet mean/std on RGB"),
    "semseg": ("semseg", "hszhao/semseg's fixed PSPNet design: bins 1-2-3-6, zoom_factor 8, align_corners True, "
                         "ImageNet mean/std x 255 on RGB"),
}

#: PSPNet options compared between ``--config`` and the checkpoint's own config, in this order
_FORWARD_KEYS = ("backbone", "num_classes", "stem_channels", "deep_stem", "strides", "dilations", "contract_dilation",
                 "basic_conv2_dilated", "bins", "ppm_channels", "head_channels", "aux_channels", "align_corners",
                 "ppm_align_corners")


def _first_disagreement(a: tuple[dict, dict], b: tuple[dict, dict]) -> str | None:
    """The first forward-pass option on which two ``(PSPNet config, preprocessing)`` pairs differ."""
    (ca, pa), (cb, pb) = a, b
    keys = list(_FORWARD_KEYS) + sorted((set(ca) | set(cb)) - set(_FORWARD_KEYS) - {"dropout"})
    for k in keys:
        if ca.get(k) != cb.get(k):
            return f"{k} is {cb.get(k)!r} there, {ca.get(k)!r} in the checkpoint"
    for k in ("mean", "std", "channel_order"):
        va, vb = (pa[k], pb[k]) if k == "channel_order" else ([float(x) for x in pa[k]], [float(x) for x in pb[k]])
        if va != vb:
            return f"preprocessing {k} is {pb[k]!r} there, {pa[k]!r} in the checkpoint"
    return None


def _dataset_table(dataset_type) -> dict | None:
    from .datasets import MMSEG_DATASETS

    return MMSEG_DATASETS.get(dataset_type) if isinstance(dataset_type, str) else None


def _classes_palette(meta: dict, n: int, notes: list[str], dataset_type: str | None = None
                     ) -> tuple[list[str], list[list[int]]]:
    """Class names and palette: the checkpoint's own (mmengine ``dataset_meta``, mmcv ``CLASSES`` /
    ``PALETTE``), else those of the dataset its config names (mmseg's ``METAINFO``, from
    :mod:`.datasets`), else generic ones (noted)."""
    dm = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), dict) else {}
    classes = dm.get("classes", meta.get("CLASSES"))
    palette = dm.get("palette", meta.get("PALETTE"))
    table = _dataset_table(dataset_type)
    if table is not None and len(table["classes"]) != n:
        notes.append(f"the config's dataset {dataset_type} has {len(table['classes'])} classes, the weights predict {n}; "
                     f"its names are not used")
        table = None
    if classes is None and table is not None:
        classes = table["classes"]
        if palette is None:
            palette = table["palette"]
    if isinstance(classes, (list, tuple)) and len(classes) == n and all(isinstance(c, str) for c in classes):
        classes = [str(c) for c in classes]
    else:
        if classes is not None:
            notes.append(f"class names in the checkpoint ({len(classes) if hasattr(classes, '__len__') else '?'}) "
                         f"do not match its {n} outputs; generic names used")
        else:
            notes.append("no class names in the checkpoint; generic names class_0.. used")
        classes = [f"class_{i}" for i in range(n)]
    ok = isinstance(palette, (list, tuple)) and len(palette) == n and all(
        isinstance(c, (list, tuple)) and len(c) == 3 and all(isinstance(x, int) and 0 <= x <= 255 for x in c)
        for c in palette)
    palette = [[int(x) for x in c] for c in palette] if ok else default_palette(n)
    return classes, palette


def _load_strict(model: PSPNet, state: dict, where: str, what: str) -> None:
    own = model.state_dict()
    # old checkpoints may lack BN's num_batches_tracked (unused at inference): take the model's
    for k, v in own.items():
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = v
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or bad:
        detail = []
        if bad:
            detail.append(f"shape of {bad[0]} is {tuple(state[bad[0]].shape)}, the model needs {tuple(own[bad[0]].shape)}")
        if missing:
            detail.append(f"missing {missing[:2]}")
        if unexpected:
            detail.append(f"unexpected {unexpected[:2]}")
        raise UserError(f"{where}: weights do not fit the {what}: {'; '.join(detail)}")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)


def _no_config(where: str, found: str, assume: str | None) -> None:
    """A checkpoint without a config converts only on an explicit ``--assume-defaults`` of its family."""
    want = "mmseg-d8" if found == "mmseg" else "semseg"
    if assume is None:
        what = "mmseg config (--config FILE, or a shipped config's name)" if found == "mmseg" \
            else "semseg YAML config (--config config/<dataset>/<dataset>_pspnet<N>.yaml)"
        raise UserError(f"{where}: no config in the checkpoint, and its weights do not say the output stride, bins, "
                        f"align_corners or preprocessing: pass its {what}, or --assume-defaults {want} to take "
                        f"{ASSUME_DEFAULTS[want][1]}")
    if ASSUME_DEFAULTS[assume][0] != found:
        raise UserError(f"{where}: --assume-defaults {assume} is for {ASSUME_DEFAULTS[assume][0]} checkpoints, these "
                        f"weights are in {found}'s layout; use --assume-defaults {want}")


@dataclass
class _Source:
    """What a source checkpoint (and its config) says: the PSPNet options, the renamed weights, the
    preprocessing, where the description came from, and the dataset facts it gives."""
    conf: dict
    mapped: dict
    pre: dict
    cfg_from: str
    ignore_index: int = IGNORE_INDEX
    dataset_type: str | None = None
    test_time: dict | None = None


def _read_mmseg(src: Path, state: dict, meta: dict, config, assume_defaults, info: dict, notes: list[str]) -> _Source:
    where = str(src)
    embedded, emb_from = _embedded_config(meta, where)
    if embedded is not None and assume_defaults is not None:
        raise UserError(f"{where}: --assume-defaults given, but the checkpoint carries its config "
                        f"({emb_from}); omit --assume-defaults")
    cfg, cfg_from = (read_config_file(config), str(config)) if config else (embedded, emb_from)
    ignore_index, dataset_type, test_time = IGNORE_INDEX, None, None
    if cfg is not None:
        conf, facts = mm.model_config_from_mmseg(cfg, cfg_from)
        if config and embedded is not None:
            own, _ = mm.model_config_from_mmseg(embedded, f"{where} {emb_from}")
            diff = _first_disagreement((own, mm.preprocess_from_mmseg(embedded)[0]),
                                       (conf, mm.preprocess_from_mmseg(cfg)[0]))
            if diff:
                raise UserError(f"{config}: disagrees with the config embedded in {src.name}: {diff}; omit "
                                f"--config (the embedded config describes these weights) or give the right one")
            cfg_from = f"{config} (agrees with the embedded config)"
        info["mmseg_test_cfg"] = facts.get("test_cfg")
        test_time, tt_notes = mm.test_time_from_mmseg(cfg)
        notes += tt_notes
        ignore_index = int(get(cfg, "model.decode_head.ignore_index", IGNORE_INDEX))
        dataset_type = get(cfg, "dataset_type") if isinstance(get(cfg, "dataset_type"), str) else None
    else:
        _no_config(where, "mmseg", assume_defaults)
        conf, assumed = mm.infer_model_config(state, where)
        notes += [f"assumed {a} (--assume-defaults {assume_defaults})" for a in assumed]
        cfg_from = f"the weights' shapes and --assume-defaults {assume_defaults}"
        info["assumed_defaults"] = {"name": assume_defaults, "what": ASSUME_DEFAULTS[assume_defaults][1]}
    mapped = mm.map_keys(state, where)
    pre, assumed = mm.preprocess_from_mmseg(cfg)
    notes += [f"assumed {a}" for a in assumed]
    info["mmseg_version"] = meta.get("mmseg_version") or meta.get("mmengine_version") or meta.get("mmcv_version")
    return _Source(conf, mapped, pre, cfg_from, ignore_index, dataset_type, test_time)


def _read_semseg(src: Path, state: dict, found: str, config, assume_defaults, info: dict, notes: list[str]) -> _Source:
    where = str(src)
    if not config:
        _no_config(where, found, assume_defaults)
        info["assumed_defaults"] = {"name": assume_defaults, "what": ASSUME_DEFAULTS[assume_defaults][1]}
    opts = ss.read_semseg_yaml(config) if config else {}
    cfg_from = str(config) if config else "the weights' shapes and --assume-defaults semseg (semseg's fixed design)"
    conf, assumed = ss.model_config_from_semseg(state, where, opts)
    notes += [f"assumed {a}" for a in assumed]
    mapped = ss.map_keys(state, where)
    pre, assumed = ss.preprocess_from_semseg(opts)
    notes += [f"assumed {a}" for a in assumed]
    test_time = ss.test_time_from_semseg(opts)
    if test_time is None:
        notes.append("no test-time procedure recorded (the semseg YAML gives no base_size / test_h / test_w)")
    return _Source(conf, mapped, pre, cfg_from, int(opts.get("ignore_label", IGNORE_INDEX)),
                   ss.dataset_type_from_semseg(opts), test_time)


def convert_checkpoint(src: str | Path, out: str | Path, source: str | None = None, config: str | Path | None = None,
                       input_size: tuple[int, int] | None = None, assume_defaults: str | None = None) -> dict:
    """Convert ``src`` to a pspnet-deploy checkpoint at ``out``; returns a summary dict.

    A checkpoint without a config needs ``config`` or ``assume_defaults`` (a key of
    :data:`ASSUME_DEFAULTS`); a ``config`` that disagrees with the checkpoint's embedded config on
    any option of the forward pass is refused, naming the first disagreement."""
    src, out = Path(src), Path(out)
    where = str(src)
    if source is not None and source not in SOURCES:
        raise UserError(f"--from must be one of {', '.join(SOURCES)}, got {source!r}")
    if assume_defaults is not None and assume_defaults not in ASSUME_DEFAULTS:
        raise UserError(f"--assume-defaults must be one of {', '.join(ASSUME_DEFAULTS)}, got {assume_defaults!r}")
    if assume_defaults is not None and config is not None:
        raise UserError("--assume-defaults and --config exclude each other: the config says what the defaults would guess")
    if out.exists() and src.exists() and out.resolve() == src.resolve():
        raise UserError(f"{out}: output would overwrite the source checkpoint; choose another path")
    payload = safe_load(src)
    state, meta = extract_state(payload, where)
    found = detect_source(state, where, source)
    notes: list[str] = []
    info: dict = {"source": found, "file": src.name, "sha256": sha256_file(src)}
    if found == "mmseg":
        s = _read_mmseg(src, state, meta, config, assume_defaults, info, notes)
    else:
        s = _read_semseg(src, state, found, config, assume_defaults, info, notes)
    conf, pre = s.conf, s.pre
    has_aux = any(k.startswith("aux_head.") for k in s.mapped)
    if not has_aux:
        conf.pop("aux_channels", None)
    try:
        model = PSPNet(aux=has_aux, **conf)
    except (ValueError, TypeError) as e:
        raise UserError(f"{where}: architecture not supported ({e})") from e
    _load_strict(model, s.mapped, where, f"PSPNet described by {s.cfg_from}")
    model.eval()
    if input_size is not None:
        pre["input_size"] = [int(input_size[0]), int(input_size[1])]
    from ..model import min_input_size

    need = min_input_size(conf["bins"], model.config["output_stride"])
    if min(pre["input_size"]) < need:
        raise UserError(f"input size {pre['input_size'][0]}x{pre['input_size'][1]} is too small for bins "
                        f"{conf['bins']} at output stride {model.config['output_stride']}: at least {need} per side")
    preprocess = Preprocess(input_size=tuple(pre["input_size"]), mean=tuple(pre["mean"]), std=tuple(pre["std"]),
                            channel_order=pre["channel_order"])
    classes, palette = _classes_palette(meta, conf["num_classes"], notes, s.dataset_type)
    info.update(config=s.cfg_from, notes=notes)
    out_meta = {"classes": classes, "palette": palette, "ignore_index": s.ignore_index,
                "preprocess": preprocess.to_dict(),
                "dataset": {"name": s.dataset_type or f"{found} (converted)", "path": None},
                "converted_from": info, "versions": versions()}
    if s.test_time is not None:
        out_meta["test_time"] = s.test_time
    save_checkpoint(out, model, out_meta)
    return {"path": str(out), "source": found, "config": s.cfg_from, "model": model.config,
            "num_classes": conf["num_classes"], "input_size": pre["input_size"], "channel_order": pre["channel_order"],
            "aux_head": has_aux, "notes": notes}
