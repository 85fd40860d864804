"""mmsegmentation PSPNet (``EncoderDecoder`` + ``ResNet``/``ResNetV1c``/``ResNeSt``/``MobileNetV2`` +
``PSPHead`` [+ ``FCNHead``]) -> this project's PSPNet: architecture from the config (every option
that changes the forward pass is reproduced or refused by name), key mapping, preprocessing, the
test-time procedure. ResNeSt and MobileNetV2 facts: ``pspnet_deploy/model/resnest.py``,
``mobilenet_v2.py``.

mmseg facts this relies on (mmseg 1.x ``models/backbones/resnet.py``, ``models/utils/res_layer.py``,
``models/decode_heads/psp_head.py``, ``fcn_head.py``, ``decode_head.py``; 0.x is the same):

- ``ResNetV1c`` is ``ResNet(deep_stem=True)``: three 3x3 convs ``stem_channels // 2``,
  ``stem_channels // 2``, ``stem_channels`` (keys ``backbone.stem.{0,1,3,4,6,7}``); plain ``ResNet``
  (the "b" configs) has a 7x7 ``conv1`` + ``bn1``;
- ``contract_dilation=True`` halves the dilation of a dilated stage's first block; BasicBlock's
  conv2 is never dilated; style ``pytorch`` strides the 3x3 conv;
- PSPHead: ``psp_modules.i`` = AdaptiveAvgPool2d + ConvModule(1x1, ``channels``), upsampled with
  the head's ``align_corners`` and concatenated after the input; ``bottleneck`` 3x3 ConvModule;
  Dropout2d; ``conv_seg``; the logits are resized to the input with the same ``align_corners``;
- FCNHead (aux, training only): ``convs.0`` 3x3 ConvModule on stage 3, Dropout2d, ``conv_seg``.
"""
from __future__ import annotations

import re

from ..errors import UserError
from .mmconfig import Unevaluable, get

__all__ = ["DEPTHS", "is_mmseg_state", "model_config_from_mmseg", "infer_model_config", "map_keys", "preprocess_from_mmseg"]

#: ResNet depth -> (block kind, blocks per stage), as in mmseg's ``ResNet.arch_settings``
DEPTHS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
          101: ("bottleneck", (3, 4, 23, 3)), 152: ("bottleneck", (3, 8, 36, 3))}
_BLOCKS_TO_DEPTH = {(kind, blocks): d for d, (kind, blocks) in DEPTHS.items()}


from ..card import is_mmseg_state  # noqa: E402 - the layout test is the contract's (its readers point here)


def _refuse(where: str, what: str):
    raise UserError(f"{where}: {what}")


def _tuple(v, n: int, name: str, where: str) -> list[int]:
    if isinstance(v, int):
        v = (v,) * n
    if not isinstance(v, (list, tuple)) or len(v) != n or not all(isinstance(x, int) for x in v):
        _refuse(where, f"{name} must be {n} integers, got {v!r}")
    return [int(x) for x in v]


def _norm_ok(cfg_norm, where: str, part: str) -> None:
    if cfg_norm is None:
        _refuse(where, f"{part} has no normalisation layers (norm_cfg=None); only BN/SyncBN PSPNets convert")
    t = cfg_norm.get("type") if isinstance(cfg_norm, dict) else None
    if t not in ("BN", "SyncBN", "BN2d", "MMSyncBN", None):
        _refuse(where, f"{part} uses norm {t!r}; only BN/SyncBN PSPNets convert")
    # eps changes the forward pass (this PSPNet's BatchNorm2d uses PyTorch's 1e-5); momentum and
    # requires_grad only change training
    extra = sorted(k for k in cfg_norm if k not in ("type", "requires_grad", "momentum"))
    if extra and not (extra == ["eps"] and float(cfg_norm["eps"]) == 1e-5):
        k = extra[0]
        _refuse(where, f"{part} norm_cfg option {k}={cfg_norm[k]!r} is not supported (BatchNorm eps 1e-5 only)")


def _act_conv_ok(part_cfg: dict, where: str, part: str) -> None:
    """act_cfg ReLU only, conv_cfg plain Conv2d only: anything else is refused by name."""
    act = part_cfg.get("act_cfg", {"type": "ReLU"})
    t = act.get("type") if isinstance(act, dict) else act
    if t != "ReLU" or (isinstance(act, dict) and any(k not in ("type", "inplace") for k in act)):
        _refuse(where, f"{part} act_cfg {act!r} is not supported (this PSPNet uses ReLU; {t} would change the output)")
    conv = part_cfg.get("conv_cfg")
    if conv is not None and not (isinstance(conv, dict) and conv.get("type") in ("Conv", "Conv2d") and len(conv) == 1):
        _refuse(where, f"{part} conv_cfg {conv!r} is not supported (plain Conv2d only)")


def _known_keys(part_cfg: dict, known: set, where: str, part: str) -> None:
    """An option this converter does not know could change the forward pass: refused by name."""
    unknown = sorted(k for k in part_cfg if k not in known)
    if unknown:
        _refuse(where, f"{part} option {unknown[0]}={part_cfg[unknown[0]]!r} is not known to this converter "
                       f"(it may change the output); remove it from the config if it does not")


_MODEL_KEYS = {"type", "data_preprocessor", "pretrained", "backbone", "neck", "decode_head", "auxiliary_head",
               "train_cfg", "test_cfg", "init_cfg"}
_RESNET_KEYS = {"type", "depth", "in_channels", "stem_channels", "base_channels", "num_stages", "strides", "dilations",
                "out_indices", "style", "deep_stem", "avg_down", "frozen_stages", "conv_cfg", "norm_cfg", "norm_eval",
                "dcn", "stage_with_dcn", "plugins", "multi_grid", "contract_dilation", "with_cp", "zero_init_residual",
                "pretrained", "init_cfg"}
_HEAD_KEYS = {"type", "in_channels", "channels", "num_classes", "out_channels", "threshold", "dropout_ratio", "conv_cfg",
              "norm_cfg", "act_cfg", "in_index", "input_transform", "loss_decode", "ignore_index", "sampler",
              "align_corners", "init_cfg"}
_RESNEST_KEYS = _RESNET_KEYS | {"groups", "base_width", "radix", "reduction_factor", "avg_down_stride"}
_RESNEST_DEPTHS = (50, 101, 152, 200)
_PSP_KEYS = _HEAD_KEYS | {"pool_scales"}
_FCN_KEYS = _HEAD_KEYS | {"num_convs", "kernel_size", "concat_input", "dilation"}


def model_config_from_mmseg(cfg: dict, where: str) -> tuple[dict, dict]:
    """``(PSPNet config, facts)`` from an evaluated mmseg config dict; refuses what this PSPNet
    cannot reproduce exactly with one line."""
    model = get(cfg, "model", required=True)
    if isinstance(model, Unevaluable) or not isinstance(model, dict):
        _refuse(where, "config has no evaluable 'model'")
    mtype = model.get("type", "EncoderDecoder")
    if mtype != "EncoderDecoder":
        _refuse(where, f"model type {mtype!r} is not a single-stage EncoderDecoder PSPNet")
    if model.get("neck"):
        _refuse(where, "config has a neck; PSPNet has none (not a PSPNet model)")
    _known_keys(model, _MODEL_KEYS, where, "model")
    bb = get(cfg, "model.backbone", required=True)
    dh = get(cfg, "model.decode_head", required=True)
    ah = get(cfg, "model.auxiliary_head")
    if not isinstance(dh, dict) or dh.get("type") != "PSPHead":
        t = dh.get("type") if isinstance(dh, dict) else dh
        _refuse(where, f"decode head is {t!r}, not PSPHead: not a PSPNet model")
    btype = bb.get("type")
    if btype == "MobileNetV2":
        return _mobilenet_v2_config(model, bb, dh, ah, where)
    if btype not in ("ResNet", "ResNetV1c", "ResNeSt"):
        _refuse(where, f"backbone {btype!r} is not supported (ResNet, ResNetV1c, ResNeSt, MobileNetV2)")
    is_st = btype == "ResNeSt"
    depth = int(bb.get("depth", 50))
    if depth not in (_RESNEST_DEPTHS if is_st else DEPTHS):
        _refuse(where, f"{btype} depth {depth} is not supported ({sorted(_RESNEST_DEPTHS if is_st else DEPTHS)})")
    # ResNeSt is a ResNetV1d: deep stem and avg_down always (ResNetV1d sets them itself)
    deep_stem = True if btype in ("ResNetV1c", "ResNeSt") else bool(bb.get("deep_stem", False))
    _known_keys(bb, _RESNEST_KEYS if is_st else _RESNET_KEYS, where, "backbone")
    st_opts = None
    if is_st:
        if int(bb.get("groups", 1)) != 1:
            _refuse(where, f"ResNeSt groups={bb.get('groups')} is not supported (groups 1, as mmseg's configs)")
        st_opts = dict(base_channels=int(bb.get("base_channels", 64)), radix=int(bb.get("radix", 2)),
                       reduction_factor=int(bb.get("reduction_factor", 4)),
                       avg_down_stride=bool(bb.get("avg_down_stride", True)))
        bb = {k: v for k, v in bb.items() if k not in ("avg_down", "deep_stem", "base_channels")}
    _known_keys(dh, _PSP_KEYS, where, "decode head")
    if tuple(bb.get("out_indices", (0, 1, 2, 3))) != (0, 1, 2, 3):
        _refuse(where, f"backbone out_indices {bb.get('out_indices')!r} are not supported (0, 1, 2, 3)")
    if bb.get("conv_cfg") is not None:
        _act_conv_ok({"conv_cfg": bb["conv_cfg"]}, where, "backbone")
    if any(bb.get("stage_with_dcn", ())):
        _refuse(where, f"backbone stage_with_dcn {bb['stage_with_dcn']!r} is not supported (no deformable convs)")
    _act_conv_ok(dh, where, "decode head")
    for key, ok in (("avg_down", False), ("dcn", None), ("plugins", None), ("multi_grid", None),
                    ("base_channels", 64), ("num_stages", 4), ("in_channels", 3)):
        if bb.get(key, ok) != ok:
            _refuse(where, f"backbone option {key}={bb.get(key)!r} is not supported (expected {ok!r})")
    if bb.get("style", "pytorch") != "pytorch":
        _refuse(where, f"backbone style {bb.get('style')!r} is not supported (only 'pytorch': stride on the 3x3 conv)")
    _norm_ok(bb.get("norm_cfg", {"type": "BN"}), where, "backbone")
    stem = int(bb.get("stem_channels", 64))
    stem_channels = [stem // 2, stem // 2, stem] if deep_stem else [stem]
    strides = _tuple(bb.get("strides", (1, 2, 2, 2)), 4, "backbone strides", where)
    dilations = _tuple(bb.get("dilations", (1, 1, 1, 1)), 4, "backbone dilations", where)
    if strides[0] != 1 or any(s not in (1, 2) for s in strides):
        _refuse(where, f"backbone strides {strides} are not supported")
    if dh.get("in_index", -1) not in (3, -1) or dh.get("input_transform") is not None:
        _refuse(where, "decode head does not read the last backbone stage alone")
    _norm_ok(dh.get("norm_cfg", None), where, "decode head")
    blocks_kind = "bottleneck" if is_st else DEPTHS[depth][0]
    expansion = 4 if blocks_kind == "bottleneck" else 1
    top = (st_opts["base_channels"] * 8 if is_st else 512) * expansion
    if int(dh.get("in_channels", top)) != top:
        _refuse(where, f"decode head in_channels {dh.get('in_channels')} does not match {btype}-{depth} ({top})")
    channels = int(dh["channels"])
    ac = bool(dh.get("align_corners", False))
    conf = dict(num_classes=int(dh["num_classes"]), backbone=f"resnet{depth}", deep_stem=deep_stem,
                bins=[int(b) for b in dh.get("pool_scales", (1, 2, 3, 6))], head_channels=channels,
                dropout=float(dh.get("dropout_ratio", 0.1)), stem_channels=stem_channels, strides=strides,
                dilations=dilations, contract_dilation=bool(bb.get("contract_dilation", False)),
                basic_conv2_dilated=False, ppm_channels=channels, align_corners=ac, ppm_align_corners=ac)
    if is_st:
        conf.update(backbone=f"resnest{depth}", resnest=st_opts)
        conf.pop("basic_conv2_dilated")
    return _heads(model, dh, ah, conf, where)


def _heads(model: dict, dh: dict, ah, conf: dict, where: str) -> tuple[dict, dict]:
    """The decode head's remaining checks, the auxiliary head, and the facts (shared by the backbones)."""
    if dh.get("out_channels") not in (None, conf["num_classes"]) or dh.get("threshold") is not None:
        _refuse(where, "decode head uses a sigmoid/binary output (out_channels != num_classes); not supported")
    facts = {"aux": False}
    if isinstance(ah, list):
        _refuse(where, "config has several auxiliary heads; a PSPNet has one")
    if isinstance(ah, dict):
        if ah.get("type") != "FCNHead" or int(ah.get("num_convs", 2)) != 1 or ah.get("concat_input", True) \
                or int(ah.get("kernel_size", 3)) != 3 or int(ah.get("dilation", 1)) != 1 or ah.get("in_index") not in (2, -2):
            _refuse(where, "auxiliary head is not PSPNet's (FCNHead on stage 3, one 3x3 conv, no concat_input)")
        if int(ah.get("num_classes", conf["num_classes"])) != conf["num_classes"]:
            _refuse(where, "auxiliary head predicts a different number of classes than the decode head")
        _norm_ok(ah.get("norm_cfg", None), where, "auxiliary head")
        _known_keys(ah, _FCN_KEYS, where, "auxiliary head")
        _act_conv_ok(ah, where, "auxiliary head")
        conf["aux_channels"] = int(ah["channels"])
        facts["aux"] = True
        facts["aux_align_corners"] = bool(ah.get("align_corners", False))
    test_cfg = model.get("test_cfg") or {}
    facts["test_cfg"] = test_cfg if isinstance(test_cfg, dict) else {}
    return conf, facts


_MOBILENET_KEYS = {"type", "widen_factor", "strides", "dilations", "out_indices", "frozen_stages", "conv_cfg", "norm_cfg",
                   "act_cfg", "norm_eval", "with_cp", "pretrained", "init_cfg"}


def _mobilenet_v2_config(model: dict, bb: dict, dh: dict, ah, where: str) -> tuple[dict, dict]:
    """mmseg's ``MobileNetV2`` backbone (configs/mobilenet_v2/mobilenet-v2-d8_pspnet_*)."""
    from ..model.mobilenet_v2 import make_divisible

    _known_keys(bb, _MOBILENET_KEYS, where, "backbone")
    _known_keys(dh, _PSP_KEYS, where, "decode head")
    act = bb.get("act_cfg", {"type": "ReLU6"})
    if not isinstance(act, dict) or act.get("type") != "ReLU6" or any(k not in ("type", "inplace") for k in act):
        _refuse(where, f"backbone act_cfg {act!r} is not supported (MobileNetV2 with ReLU6 only)")
    if bb.get("conv_cfg") is not None:
        _act_conv_ok({"conv_cfg": bb["conv_cfg"]}, where, "backbone")
    _norm_ok(bb.get("norm_cfg", {"type": "BN"}), where, "backbone")
    _act_conv_ok(dh, where, "decode head")
    _norm_ok(dh.get("norm_cfg", None), where, "decode head")
    if tuple(bb.get("out_indices", (1, 2, 4, 6))) != (1, 2, 4, 6):
        _refuse(where, f"backbone out_indices {bb.get('out_indices')!r} are not supported (1, 2, 4, 6)")
    if dh.get("in_index", -1) not in (3, -1) or dh.get("input_transform") is not None:
        _refuse(where, "decode head does not read the last backbone stage alone")
    wf = float(bb.get("widen_factor", 1.0))
    strides = _tuple(bb.get("strides", (1, 2, 2, 2, 1, 2, 1)), 7, "backbone strides", where)
    dilations = _tuple(bb.get("dilations", (1, 1, 1, 1, 1, 1, 1)), 7, "backbone dilations", where)
    if any(s_ not in (1, 2) for s_ in strides) or min(dilations) < 1:
        _refuse(where, f"backbone strides {strides} / dilations {dilations} are not supported")
    need = make_divisible(320 * wf, 8)
    if int(dh.get("in_channels", need)) != need:
        _refuse(where, f"decode head in_channels {dh.get('in_channels')} does not match MobileNetV2 x{wf:g} ({need})")
    channels = int(dh["channels"])
    ac = bool(dh.get("align_corners", False))
    conf = dict(num_classes=int(dh["num_classes"]), backbone="mobilenet_v2", widen_factor=wf,
                bins=[int(b) for b in dh.get("pool_scales", (1, 2, 3, 6))], head_channels=channels,
                dropout=float(dh.get("dropout_ratio", 0.1)), strides=strides, dilations=dilations,
                ppm_channels=channels, align_corners=ac, ppm_align_corners=ac)
    return _heads(model, dh, ah, conf, where)


def infer_model_config(state: dict, where: str) -> tuple[dict, list[str]]:
    """What the weights' shapes say when there is no config; returns the config and the facts
    that were assumed (mmseg's PSPNet defaults: d8, contract_dilation, align_corners False, bins 1-2-3-6)."""
    if "backbone.stem.0.weight" in state:
        deep_stem = True
        stem_channels = [int(state[f"backbone.stem.{i}.weight"].shape[0]) for i in (0, 3, 6)]
    elif "backbone.conv1.weight" in state:
        deep_stem = False
        w = state["backbone.conv1.weight"]
        if tuple(w.shape[-2:]) != (7, 7):
            _refuse(where, f"backbone.conv1 is {tuple(w.shape)}, not a 7x7 ResNet stem")
        stem_channels = [int(w.shape[0])]
    else:
        _refuse(where, "no ResNet stem (backbone.stem.* or backbone.conv1) in the weights: not a ResNet PSPNet")
    blocks = []
    for layer in (1, 2, 3, 4):
        idx = {int(m.group(1)) for k in state for m in [re.match(rf"backbone\.layer{layer}\.(\d+)\.", k)] if m}
        if not idx:
            _refuse(where, f"no backbone.layer{layer} weights: not a 4-stage ResNet")
        blocks.append(max(idx) + 1)
    kind = "bottleneck" if "backbone.layer1.0.conv3.weight" in state else "basic"
    depth = _BLOCKS_TO_DEPTH.get((kind, tuple(blocks)))
    if depth is None:
        _refuse(where, f"ResNet with {kind} blocks {blocks} is not a known depth")
    if "decode_head.conv_seg.weight" not in state or "decode_head.bottleneck.conv.weight" not in state:
        _refuse(where, "no PSPHead weights (decode_head.bottleneck / conv_seg): not a PSPNet model")
    n_bins = len({m.group(1) for k in state for m in [re.match(r"decode_head\.psp_modules\.(\d+)\.", k)] if m})
    bins = [1, 2, 3, 6] if n_bins == 4 else None
    if bins is None:
        _refuse(where, f"{n_bins} pyramid branches and no config to give their bin sizes; pass --config")
    conf = dict(num_classes=int(state["decode_head.conv_seg.weight"].shape[0]), backbone=f"resnet{depth}",
                deep_stem=deep_stem, bins=bins, head_channels=int(state["decode_head.bottleneck.conv.weight"].shape[0]),
                dropout=0.1, stem_channels=stem_channels, strides=[1, 2, 1, 1], dilations=[1, 1, 2, 4],
                contract_dilation=True, basic_conv2_dilated=False,
                ppm_channels=int(state["decode_head.psp_modules.0.1.conv.weight"].shape[0]),
                align_corners=False, ppm_align_corners=False)
    if "auxiliary_head.convs.0.conv.weight" in state:
        conf["aux_channels"] = int(state["auxiliary_head.convs.0.conv.weight"].shape[0])
    assumed = ["output stride 8 (strides 1-2-1-1, dilations 1-1-2-4, contract_dilation)", "bins 1-2-3-6",
               "align_corners False", "dropout 0.1"]
    return conf, assumed


_STEM_7X7 = {"backbone.conv1.": "backbone.stem.0.", "backbone.bn1.": "backbone.stem.1."}
_HEAD = [
    (re.compile(r"^decode_head\.psp_modules\.(\d+)\.1\.conv\."), r"ppm.stages.\1.0."),
    (re.compile(r"^decode_head\.psp_modules\.(\d+)\.1\.bn\."), r"ppm.stages.\1.1."),
    (re.compile(r"^decode_head\.bottleneck\.conv\."), "head.0."),
    (re.compile(r"^decode_head\.bottleneck\.bn\."), "head.1."),
    (re.compile(r"^decode_head\.conv_seg\."), "head.4."),
    (re.compile(r"^auxiliary_head\.convs\.0\.conv\."), "aux_head.0."),
    (re.compile(r"^auxiliary_head\.convs\.0\.bn\."), "aux_head.1."),
    (re.compile(r"^auxiliary_head\.conv_seg\."), "aux_head.4."),
]
_BACKBONE = re.compile(r"^backbone\.(stem\.[0-9]+|layer[1-4]\.\d+\.(conv[1-3]|bn[1-3]|downsample\.[01]))\.")
#: MobileNetV2 (model/mobilenet_v2.py keeps mmseg's names: conv1.{conv,bn}, layerN.M.conv.K.{conv,bn})
#: ResNeSt: the split-attention conv2 and the avg_down downsample (AvgPool, conv, BN: keys .1 and .2)
_RESNEST = re.compile(r"^backbone\.layer[1-4]\.\d+\.(conv2\.(conv|bn0|fc1|bn1|fc2)|downsample\.[0-2])\.")
_MOBILENET = re.compile(r"^backbone\.(conv1|layer[1-7]\.\d+\.conv\.\d)\.(conv|bn)\.")


def map_keys(state: dict, where: str) -> dict:
    """mmseg state-dict keys -> this project's; any key with no counterpart is refused."""
    out, unknown = {}, []
    for k, v in state.items():
        new = k if (_BACKBONE.match(k) or _MOBILENET.match(k) or _RESNEST.match(k)) else None
        for a, b in _STEM_7X7.items():
            if new is None and k.startswith(a):
                new = b + k[len(a):]
        if new is None:
            for pat, rep in _HEAD:
                if pat.match(k):
                    new = pat.sub(rep, k)
                    break
        if new is None:
            unknown.append(k)
            continue
        out[new] = v
    if unknown:
        _refuse(where, f"{len(unknown)} weights have no place in a PSPNet (e.g. {unknown[0]!r}): not an mmseg "
                       f"PSPNet with a ResNet backbone")
    return out


def preprocess_from_mmseg(cfg: dict | None) -> tuple[dict, list[str]]:
    """``(mean, std, channel_order, input_size)`` from ``data_preprocessor`` (1.x) or
    ``img_norm_cfg`` (0.x); the defaults of mmseg's configs otherwise (noted as assumed)."""
    assumed = []
    dp = (get(cfg, "model.data_preprocessor") or get(cfg, "data_preprocessor")) if cfg else None
    norm = get(cfg, "img_norm_cfg") if cfg else None
    if isinstance(dp, dict) and dp.get("test_cfg"):
        raise UserError(f"data_preprocessor test_cfg {dp['test_cfg']!r} (padding of test images) is not supported")
    if isinstance(dp, dict) and "mean" in dp:
        if dp.get("std") is None:
            raise UserError("data_preprocessor has a mean but no std; mmseg refuses that config too")
        mean, std = dp["mean"], dp["std"]
        # mmcv decodes images as BGR; SegDataPreProcessor swaps the channels when bgr_to_rgb OR
        # rgb_to_bgr is set (self.channel_conversion = rgb_to_bgr or bgr_to_rgb): either feeds RGB
        if dp.get("bgr_to_rgb") and dp.get("rgb_to_bgr"):
            raise UserError("data_preprocessor sets both bgr_to_rgb and rgb_to_bgr; mmseg refuses that config too")
        rgb = bool(dp.get("bgr_to_rgb", False)) or bool(dp.get("rgb_to_bgr", False))
    elif isinstance(dp, dict) and dp.get("type") and not isinstance(norm, dict):
        raise UserError("data_preprocessor has no mean/std (the model sees raw 0-255 values); not supported")
    elif isinstance(norm, dict) and "mean" in norm:
        mean, std, rgb = norm["mean"], norm.get("std", (1.0, 1.0, 1.0)), bool(norm.get("to_rgb", True))
    else:
        mean, std, rgb = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375], True
        assumed.append("ImageNet mean/std on RGB (mmseg's default; the config does not say)")
    size = None
    for key in ("model.data_preprocessor.size", "data_preprocessor.size", "crop_size", "model.test_cfg.crop_size"):
        v = get(cfg, key) if cfg else None
        if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) for x in v):
            size = [int(v[0]), int(v[1])]
            break
    if size is None:
        size = [512, 512]
        assumed.append("input size 512x512 (no crop size in the config; choose with --input-size)")
    return {"mean": [float(x) for x in mean], "std": [float(x) for x in std], "channel_order": "RGB" if rgb else "BGR",
            "input_size": size}, assumed


def _find_steps(pipeline, types: tuple[str, ...]) -> list[dict]:
    out = []
    for step in pipeline if isinstance(pipeline, (list, tuple)) else []:
        if isinstance(step, dict):
            if step.get("type") in types:
                out.append(step)
            out += _find_steps(step.get("transforms"), types)  # 0.x MultiScaleFlipAug
    return out


def test_time_from_mmseg(cfg: dict) -> tuple[dict | None, list[str]]:
    """mmseg's test-time procedure (``model.test_cfg`` and the test dataloader's pipeline) as this
    project's ``test_time`` record (see :func:`pspnet_deploy.sliding.test_time_options`), and what
    could not be read. mmseg 1.x: ``Resize(scale=(long, short), keep_ratio=True)`` then whole or
    slide; its ``tta_pipeline`` only runs with ``--tta`` and is not the published procedure.
    0.x: ``MultiScaleFlipAug(img_scale, img_ratios, flip)``."""
    notes = []
    tc = get(cfg, "model.test_cfg") or {}
    mode = tc.get("mode", "whole") if isinstance(tc, dict) else "whole"
    if mode not in ("whole", "slide"):
        return None, [f"test_cfg mode {mode!r} is not whole or slide; no test-time procedure recorded"]
    rec: dict = {"source": "mmseg test_cfg + test pipeline", "mode": mode, "resize": None, "crop": None,
                 "stride": None, "scales": [1.0], "flip": False}
    if mode == "slide":
        crop, stride = tc.get("crop_size"), tc.get("stride")
        if not (isinstance(crop, (list, tuple)) and isinstance(stride, (list, tuple))):
            return None, ["test_cfg mode slide without crop_size/stride; no test-time procedure recorded"]
        rec["crop"], rec["stride"] = [int(v) for v in crop], [int(v) for v in stride]
    pipeline = None
    for key in ("test_dataloader.dataset.pipeline", "test_pipeline", "data.test.pipeline"):
        try:
            pipeline = get(cfg, key)
        except UserError:
            pipeline = None
        if isinstance(pipeline, (list, tuple)):
            break
    aug = _find_steps(pipeline, ("MultiScaleFlipAug",))
    resize = _find_steps(pipeline, ("Resize",))
    scale = aug[0].get("img_scale") if aug else (resize[0].get("scale") if resize else None)
    keep = bool(resize[0].get("keep_ratio", True)) if resize else True
    if aug:
        rec["flip"] = bool(aug[0].get("flip", False))
        ratios = aug[0].get("img_ratios")
        if isinstance(ratios, (list, tuple)) and ratios:
            rec["scales"] = [float(r) for r in ratios]
    if isinstance(scale, (list, tuple)) and len(scale) == 2 and all(isinstance(v, int) for v in scale):
        # mmcv: scale is (w, h); keep_ratio rescales to fit long <= max(scale), short <= min(scale)
        rec["resize"] = ({"long": max(scale), "short": min(scale), "keep_ratio": True} if keep
                         else {"size": [int(scale[1]), int(scale[0])], "keep_ratio": False})
    elif resize or aug:
        notes.append(f"test pipeline resize {scale!r} not read; the test-time record has no resize")
    return rec, notes
