"""hszhao/semseg PSPNet (the paper author's PyTorch code) -> this project's PSPNet.

semseg's ``model/pspnet.py`` (read from the source, see ``shared/interop/semseg/README.md``):
``layer0`` deep stem of three 3x3 convs 64-64-128 (indices 0,1,3,4,6,7), ``layer1..4`` torchvision
Bottlenecks with every block of layer3 dilated 2 and of layer4 dilated 4 (no contraction), stride 1;
``ppm.features.i`` = AdaptiveAvgPool2d, 1x1 conv (no bias), BN, ReLU, upsampled with
align_corners=True; ``cls`` = 3x3 conv, BN, ReLU, Dropout2d, 1x1 conv; ``aux`` the same on layer3
(1024 -> 256); the logits are resized with align_corners=True. Preprocessing: RGB, ImageNet
mean/std times 255. Checkpoints: ``{'epoch', 'state_dict' ('module.' keys), 'optimizer'}``.
"""
from __future__ import annotations

import re

from ..data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from ..errors import UserError

__all__ = ["is_semseg_state", "model_config_from_semseg", "map_keys", "preprocess_from_semseg", "read_semseg_yaml"]

_LAYERS = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}


from ..card import is_semseg_state  # noqa: E402 - the layout test is the contract's (its readers point here)


def model_config_from_semseg(state: dict, where: str, options: dict | None = None) -> tuple[dict, list[str]]:
    """Architecture from the weights (depth, classes, widths) and semseg's fixed design; ``options``
    (from semseg's YAML config: ``layers``, ``classes``, ``zoom_factor``) are checked against them."""
    options = options or {}
    if "ppm.features.0.1.weight" not in state:
        raise UserError(f"{where}: semseg weights without a pyramid pooling module (use_ppm=False) are not a PSPNet")
    blocks = []
    for layer in (1, 2, 3, 4):
        idx = {int(m.group(1)) for k in state for m in [re.match(rf"layer{layer}\.(\d+)\.", k)] if m}
        blocks.append(max(idx) + 1 if idx else 0)
    depth = _LAYERS.get(tuple(blocks))
    if depth is None or "layer1.0.conv3.weight" not in state:
        raise UserError(f"{where}: semseg ResNet with blocks {blocks} is not layers=50/101/152")
    if options.get("layers") not in (None, depth):
        raise UserError(f"{where}: config says layers={options['layers']} but the weights are ResNet-{depth}")
    n_cls = int(state["cls.4.weight"].shape[0])
    if options.get("classes") not in (None, n_cls):
        raise UserError(f"{where}: config says classes={options['classes']} but the weights predict {n_cls}")
    if int(options.get("zoom_factor", 8)) != 8:
        raise UserError(f"{where}: zoom_factor {options['zoom_factor']} is not supported (8: output at input size)")
    n_bins = len({m.group(1) for k in state for m in [re.match(r"ppm\.features\.(\d+)\.", k)] if m})
    bins = options.get("bins") or ([1, 2, 3, 6] if n_bins == 4 else None)
    assumed = []
    if not options.get("bins"):
        if bins is None:
            raise UserError(f"{where}: {n_bins} pyramid branches; semseg's default bins are 1-2-3-6 (4 branches)")
        assumed.append("bins 1-2-3-6 (semseg's default; bin sizes are not in the weights)")
    stem = [int(state[f"layer0.{i}.weight"].shape[0]) for i in (0, 3, 6)]
    conf = dict(num_classes=n_cls, backbone=f"resnet{depth}", deep_stem=True, bins=[int(b) for b in bins],
                head_channels=int(state["cls.0.weight"].shape[0]), dropout=0.1, stem_channels=stem,
                strides=[1, 2, 1, 1], dilations=[1, 1, 2, 4], contract_dilation=False, basic_conv2_dilated=True,
                ppm_channels=int(state["ppm.features.0.1.weight"].shape[0]), align_corners=True, ppm_align_corners=True)
    if "aux.0.weight" in state:
        conf["aux_channels"] = int(state["aux.0.weight"].shape[0])
    return conf, assumed


_MAP = [
    (re.compile(r"^layer0\.(\d+)\."), r"backbone.stem.\1."),
    (re.compile(r"^(layer[1-4]\.\d+\.(conv[1-3]|bn[1-3]|downsample\.[01]))\."), r"backbone.\1."),
    (re.compile(r"^ppm\.features\.(\d+)\.1\."), r"ppm.stages.\1.0."),
    (re.compile(r"^ppm\.features\.(\d+)\.2\."), r"ppm.stages.\1.1."),
    (re.compile(r"^cls\.([014])\."), r"head.\1."),
    (re.compile(r"^aux\.([014])\."), r"aux_head.\1."),
]


def map_keys(state: dict, where: str) -> dict:
    out, unknown = {}, []
    for k, v in state.items():
        for pat, rep in _MAP:
            if pat.match(k):
                out[pat.sub(rep, k)] = v
                break
        else:
            unknown.append(k)
    if unknown:
        raise UserError(f"{where}: {len(unknown)} weights have no place in semseg's PSPNet (e.g. {unknown[0]!r})")
    return out


def preprocess_from_semseg(options: dict | None = None) -> tuple[dict, list[str]]:
    options = options or {}
    h, w = options.get("test_h") or options.get("train_h"), options.get("test_w") or options.get("train_w")
    assumed = []
    if not (isinstance(h, int) and isinstance(w, int)):
        h = w = 473
        assumed.append("input size 473x473 (semseg's ADE20K/VOC crop; choose with --input-size)")
    return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "channel_order": "RGB", "input_size": [h, w]}, assumed


def read_semseg_yaml(path) -> dict:
    """The model facts of a semseg YAML config (``config/<dataset>/<dataset>_pspnet<N>.yaml``):
    every section flattened, as semseg's own ``config.load_cfg_from_cfg_file`` does; safe_load only."""
    try:
        import yaml
    except ImportError as e:
        raise UserError("reading a semseg YAML config needs PyYAML (pip install 'pspnet-deploy[interop]')") from e
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{path}: cannot read YAML config ({str(e).splitlines()[0]})") from e
    if not isinstance(doc, dict):
        raise UserError(f"{path}: not a semseg config (expected sections of key: value)")
    flat = {}
    for sec in doc.values():
        if isinstance(sec, dict):
            flat.update(sec)
    return {k: flat[k] for k in ("layers", "classes", "zoom_factor", "train_h", "train_w", "test_h", "test_w",
                                 "ignore_label", "base_size", "scales", "data_root")
            if k in flat}


def test_time_from_semseg(options: dict) -> dict | None:
    """semseg's ``tool/test.py`` procedure from its YAML: the image resized so its long side is
    ``base_size`` x scale (keep ratio), sliding ``test_h x test_w`` windows with stride
    ceil(2/3 of the window), each window averaged with its mirror image (``net_process``'s
    flip=True), over ``scales``. None when the YAML does not give base_size and the test size."""
    import math

    base, h, w = options.get("base_size"), options.get("test_h"), options.get("test_w")
    if not all(isinstance(v, int) for v in (base, h, w)):
        return None
    scales = options.get("scales") or [1.0]
    return {"source": "semseg tool/test.py", "mode": "slide", "resize": {"long": int(base), "short": None,
                                                                            "keep_ratio": True},
            "crop": [int(h), int(w)], "stride": [math.ceil(h * 2 / 3), math.ceil(w * 2 / 3)],
            "scales": [float(s) for s in scales], "flip": True}


#: semseg's three datasets (``data_root: dataset/<name>``) -> mmseg's dataset class of the same
#: classes in the same order (semseg's ``data/<name>/<name>_names.txt``)
SEMSEG_DATASETS = {"ade20k": "ADE20KDataset", "voc2012": "PascalVOCDataset", "cityscapes": "CityscapesDataset"}


def dataset_type_from_semseg(options: dict) -> str | None:
    root = options.get("data_root")
    if not isinstance(root, str) or not root.strip("/"):
        return None
    return SEMSEG_DATASETS.get(root.rstrip("/").split("/")[-1].lower())
