"""Dilated ResNeSt backbone (split-attention ResNet), in mmsegmentation's layout
(``mmseg/models/backbones/resnest.py``, ``models/utils/res_layer.py``) so mmseg's
PSPNet-ResNeSt weights (configs/resnest/resnest_s101-d8_pspnet_*) load by name.

Facts of mmseg's design reproduced here:

- ResNeSt is a ResNetV1d: deep stem of three 3x3 convs (``stem_channels // 2``, ``// 2``,
  ``stem_channels``; keys ``stem.{0,1,3,4,6,7}``), and ``avg_down``: a downsample with stride is
  ``AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)`` then a 1x1 conv and BN
  (keys ``downsample.1/.2``; the pool is there at stride 1 too, as an identity);
- stage widths ``base_channels x 2**i`` (x4 out), stride on the 3x3 of the first block; with
  ``avg_down_stride`` that 3x3 runs at stride 1 and is followed by ``AvgPool2d(3, stride, 1)``;
- the 3x3 is a split-attention conv (``conv2``): a grouped conv to ``width x radix`` channels, BN
  (``bn0``), ReLU; the radix splits are summed, globally pooled, ``fc1`` (1x1 with bias) to
  ``max(width x radix // reduction, 32)``, BN (``bn1``), ReLU, ``fc2`` (1x1 with bias) back to
  ``width x radix``, a softmax across the radix (sigmoid for radix 1), and the splits weighted
  and summed;
- dilations per stage with ``contract_dilation`` halving the first block's (as in mmseg's ResNet).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import first_block_dilation, projection_shortcut, three_conv_stem

__all__ = ["ResNeSt", "resnest", "RESNEST_LAYERS"]

RESNEST_LAYERS = {"resnest50": (3, 4, 6, 3), "resnest101": (3, 4, 23, 3), "resnest152": (3, 8, 36, 3),
                  "resnest200": (3, 24, 36, 3)}


class SplitAttentionConv2d(nn.Module):
    def __init__(self, cin: int, channels: int, stride: int, dilation: int, radix: int = 2, reduction: int = 4):
        super().__init__()
        inter = max(cin * radix // reduction, 32)
        self.radix = radix
        self.conv = nn.Conv2d(cin, channels * radix, 3, stride, dilation, dilation=dilation, groups=radix, bias=False)
        self.bn0 = nn.BatchNorm2d(channels * radix)
        self.relu = nn.ReLU(inplace=True)
        self.fc1 = nn.Conv2d(channels, inter, 1)
        self.bn1 = nn.BatchNorm2d(inter)
        self.fc2 = nn.Conv2d(inter, channels * radix, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn0(self.conv(x)))
        b = x.shape[0]
        if self.radix > 1:
            splits = x.view(b, self.radix, -1, *x.shape[2:])
            gap = splits.sum(dim=1)
        else:
            gap = x
        gap = self.relu(self.bn1(self.fc1(F.adaptive_avg_pool2d(gap, 1))))
        att = self.fc2(gap)
        if self.radix > 1:
            att = F.softmax(att.view(b, 1, self.radix, -1).transpose(1, 2), dim=1).reshape(b, -1)
            return (att.view(b, self.radix, -1, 1, 1) * splits).sum(dim=1)
        return torch.sigmoid(att).view(b, -1, 1, 1) * x


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, dilation: int, downsample: nn.Module | None,
                 radix: int, reduction: int, avg_down_stride: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.avd = avg_down_stride and stride > 1
        self.conv2 = SplitAttentionConv2d(planes, planes, 1 if self.avd else stride, dilation, radix, reduction)
        self.avd_layer = nn.AvgPool2d(3, stride, padding=1) if self.avd else None
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv2(self.relu(self.bn1(self.conv1(x))))
        if self.avd_layer is not None:
            out = self.avd_layer(out)
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNeSt(nn.Module):
    """Returns ``(stage 3, stage 4)`` features (the auxiliary head's and the pyramid's)."""

    def __init__(self, layers, stem_channels: int = 128, base_channels: int = 64, strides=(1, 2, 1, 1),
                 dilations=(1, 1, 2, 4), contract_dilation: bool = True, radix: int = 2, reduction_factor: int = 4,
                 avg_down_stride: bool = True):
        super().__init__()
        strides, dilations = tuple(int(s) for s in strides), tuple(int(d) for d in dilations)
        if len(strides) != 4 or len(dilations) != 4 or strides[0] != 1 or any(s not in (1, 2) for s in strides):
            raise ValueError(f"unsupported ResNeSt strides {list(strides)} / dilations {list(dilations)}")
        self.strides, self.dilations = strides, dilations
        self.stem_channels, self.base_channels = int(stem_channels), int(base_channels)
        self.contract_dilation = bool(contract_dilation)
        self.radix, self.reduction_factor, self.avg_down_stride = int(radix), int(reduction_factor), bool(avg_down_stride)
        self.output_stride = 4
        for s in strides:
            self.output_stride *= s
        a = self.stem_channels // 2
        self.stem = three_conv_stem(a, a, self.stem_channels)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = self.stem_channels
        for i, blocks in enumerate(layers):
            planes = self.base_channels * 2 ** i
            stride, dil = strides[i], dilations[i]
            down = None
            if stride != 1 or inplanes != planes * 4:
                down = projection_shortcut(inplanes, planes * 4, stride, avg_down=True)
            first = first_block_dilation(dil, self.contract_dilation)
            mods = [Bottleneck(inplanes, planes, stride, first, down, self.radix, self.reduction_factor,
                               self.avg_down_stride)]
            inplanes = planes * 4
            mods += [Bottleneck(inplanes, planes, 1, dil, None, self.radix, self.reduction_factor, self.avg_down_stride)
                     for _ in range(1, blocks)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*mods))
        self.out_channels = self.base_channels * 8 * 4
        self.aux_channels = self.base_channels * 4 * 4

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.layer2(self.layer1(self.maxpool(self.stem(x))))
        c3 = self.layer3(x)
        return c3, self.layer4(c3)


def resnest(name: str, **options) -> ResNeSt:
    if name not in RESNEST_LAYERS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(RESNEST_LAYERS)}")
    return ResNeSt(RESNEST_LAYERS[name], **options)
