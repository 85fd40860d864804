"""PSPNet (Zhao et al., CVPR 2017): dilated ResNet + pyramid pooling module + auxiliary head."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..geometry import feature_size, min_input_size  # noqa: F401 - re-exported
from .mobilenet_v2 import mobilenet_v2
from .resnest import resnest as resnest_backbone
from .resnet import resnet

__all__ = ["PyramidPooling", "PSPNet", "feature_size", "build_model"]


class PyramidPooling(nn.Module):
    """Pool to each bin, 1x1 conv to C/len(bins) (or ``reduction_channels``), BN, ReLU, bilinear
    upsample (``align_corners``: True here and in semseg, False in mmseg's default configs), concat.

    ``self.pools`` holds one pooling module per bin; export swaps them for exact static
    equivalents (see :mod:`pspnet_deploy.model.static_pool`).
    """

    def __init__(self, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6), reduction_channels: int | None = None,
                 align_corners: bool = True):
        super().__init__()
        self.bins = tuple(int(b) for b in bins)
        self.align_corners = bool(align_corners)
        red = reduction_channels or in_channels // len(self.bins)
        self.pools = nn.ModuleList(nn.AdaptiveAvgPool2d(b) for b in self.bins)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels, red, 1, bias=False), nn.BatchNorm2d(red), nn.ReLU(inplace=True))
            for _ in self.bins
        )
        self.out_channels = in_channels + red * len(self.bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        outs = [x]
        for pool, stage in zip(self.pools, self.stages):
            y = stage(pool(x))
            outs.append(F.interpolate(y, size=(h, w), mode="bilinear", align_corners=self.align_corners))
        return torch.cat(outs, 1)


def _head(in_channels: int, mid: int, num_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, mid, 3, padding=1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.Dropout2d(dropout),
        nn.Conv2d(mid, num_classes, 1),
    )


class PSPNet(nn.Module):
    """PSPNet. In training mode ``forward`` returns ``(logits, aux_logits)``; in eval mode logits.

    Both are upsampled bilinearly to the input size. ``aux=False`` builds the deploy form with no
    auxiliary head (a checkpoint with one still loads with ``strict=False`` semantics handled by
    :func:`pspnet_deploy.checkpoint.load_model`).

    Architecture options beyond the paper's defaults (all recorded in ``self.config``, so a
    checkpoint rebuilds exactly; the defaults are what this project's own checkpoints use):
    ``stem_channels``, ``strides``, ``dilations``, ``contract_dilation``, ``basic_conv2_dilated``
    (backbone, see :mod:`pspnet_deploy.model.resnet`); ``ppm_channels`` (width of each pyramid
    branch, default in_channels / len(bins)); ``align_corners`` of the final resize and the aux
    head's, ``ppm_align_corners`` of the pyramid upsampling (default: ``align_corners``).
    """

    def __init__(self, num_classes: int, backbone: str = "resnet50", output_stride: int = 8,
                 deep_stem: bool = False, bins: Sequence[int] = (1, 2, 3, 6), head_channels: int = 512,
                 aux: bool = True, aux_channels: int = 256, dropout: float = 0.1, stem_channels=None,
                 strides=None, dilations=None, contract_dilation: bool = True, basic_conv2_dilated: bool = True,
                 ppm_channels: int | None = None, align_corners: bool = True, ppm_align_corners: bool | None = None,
                 widen_factor: float | None = None, resnest: dict | None = None):
        super().__init__()
        if backbone.startswith("resnest"):  # mmseg's layout (model/resnest.py); its own options in ``resnest``
            opts = dict(resnest or {})
            self.backbone = resnest_backbone(backbone, stem_channels=(stem_channels or [64, 64, 128])[-1],
                                             strides=strides or (1, 2, 1, 1), dilations=dilations or (1, 1, 2, 4),
                                             contract_dilation=contract_dilation, **opts)
            bb = self.backbone
            bb_conf = dict(deep_stem=True, stem_channels=[bb.stem_channels // 2, bb.stem_channels // 2, bb.stem_channels],
                           strides=list(bb.strides), dilations=list(bb.dilations), contract_dilation=bb.contract_dilation,
                           resnest=dict(base_channels=bb.base_channels, radix=bb.radix,
                                        reduction_factor=bb.reduction_factor, avg_down_stride=bb.avg_down_stride))
        elif backbone == "mobilenet_v2":  # mmseg's layout (model/mobilenet_v2.py); widen_factor, 7 strides/dilations
            self.backbone = mobilenet_v2(widen_factor=1.0 if widen_factor is None else widen_factor,
                                         strides=strides, dilations=dilations)
            bb = self.backbone
            bb_conf = dict(widen_factor=bb.widen_factor, strides=list(bb.strides), dilations=list(bb.dilations))
        else:
            if widen_factor is not None:
                raise ValueError(f"widen_factor is a MobileNetV2 option, not one of {backbone}")
            self.backbone = resnet(backbone, output_stride=output_stride, deep_stem=deep_stem,
                                   stem_channels=stem_channels, strides=strides, dilations=dilations,
                                   contract_dilation=contract_dilation, basic_conv2_dilated=basic_conv2_dilated)
            bb = self.backbone
            bb_conf = dict(deep_stem=bool(bb.deep_stem), stem_channels=list(bb.stem_channels), strides=list(bb.strides),
                           dilations=list(bb.dilations), contract_dilation=bb.contract_dilation,
                           basic_conv2_dilated=bb.basic_conv2_dilated)
        self.align_corners = bool(align_corners)
        ppm_ac = self.align_corners if ppm_align_corners is None else bool(ppm_align_corners)
        self.ppm = PyramidPooling(bb.out_channels, bins, ppm_channels, align_corners=ppm_ac)
        red = self.ppm.stages[0][0].out_channels
        self.config = dict(num_classes=int(num_classes), backbone=backbone, output_stride=int(bb.output_stride),
                           bins=[int(b) for b in bins], head_channels=int(head_channels),
                           aux_channels=int(aux_channels), dropout=float(dropout), **bb_conf, ppm_channels=int(red),
                           align_corners=self.align_corners, ppm_align_corners=ppm_ac)
        self.head = _head(self.ppm.out_channels, head_channels, num_classes, dropout)
        self.aux_head = _head(self.backbone.aux_channels, aux_channels, num_classes, dropout) if aux else None

    @property
    def new_modules(self) -> list[nn.Module]:
        """Modules that are not the backbone (get the 10x learning rate of the paper)."""
        mods: list[nn.Module] = [self.ppm, self.head]
        if self.aux_head is not None:
            mods.append(self.aux_head)
        return mods

    def forward(self, x: torch.Tensor):
        size = x.shape[-2:]
        c3, c4 = self.backbone(x)
        ac = self.align_corners
        out = F.interpolate(self.head(self.ppm(c4)), size=size, mode="bilinear", align_corners=ac)
        if self.training and self.aux_head is not None:
            aux = F.interpolate(self.aux_head(c3), size=size, mode="bilinear", align_corners=ac)
            return out, aux
        return out


def build_model(config: dict, aux: bool = True) -> PSPNet:
    """Build a PSPNet from the ``config`` dict stored in checkpoints (``PSPNet.config``).

    Configs written before the architecture options existed lack them and get the defaults,
    which are what those checkpoints were trained with."""
    cfg = dict(config)
    cfg.pop("aux", None)
    return PSPNet(aux=aux, **cfg)


def _check_math() -> None:  # pragma: no cover - documentation of the formula
    assert feature_size(713) == 90 and feature_size(473) == 60 and feature_size(360) == 45
    assert feature_size(512) == 64 and math.ceil(1024 / 8) == feature_size(1024)
