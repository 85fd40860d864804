"""Dilated ResNet backbones (torchvision layout, optional deep stem).

Output stride 8 dilates layer3 by 2 and layer4 by 4; output stride 16 dilates layer4 by 2.
Only plain nn.Modules: the constructor arguments say what the network is.

The options that tell the ResNet variants of other code bases apart (mmsegmentation's ResNetV1c
and ResNet, hszhao/semseg's ResNet) are constructor arguments, each with the default that this
project's own checkpoints were trained with:

- ``stem_channels``: ``(64,)`` a 7x7/2 conv (torchvision, mmseg "b" variants); three widths
  ``(a, b, c)`` the deep stem of three 3x3 convs (mmseg ResNetV1c: 32-32-64; semseg: 64-64-128);
- ``strides`` / ``dilations`` of the four stages (d8: ``(1, 2, 1, 1)`` / ``(1, 1, 2, 4)``; mmseg's
  d32 configs keep the dilations with strides ``(1, 2, 2, 2)``);
- ``contract_dilation``: the first block of a dilated stage uses half the dilation (mmseg's
  ``contract_dilation=True``, this project's default); semseg dilates every block fully;
- ``basic_conv2_dilated``: whether a BasicBlock's second 3x3 conv is dilated too (this project:
  yes; mmseg's BasicBlock leaves it undilated, ``padding=1``).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet", "RESNET_LAYERS", "stage_layout"]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None, conv2_dilated: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        d2 = dilation if conv2_dilated else 1
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=d2, dilation=d2, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None, conv2_dilated: bool = True):
        super().__init__()  # conv2_dilated: accepted for a uniform block signature (the 3x3 is always dilated)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


RESNET_LAYERS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
    "resnet152": (Bottleneck, (3, 8, 36, 3)),
}

#: stage strides and dilations of the three output strides (the defaults when none are given)
OUTPUT_STRIDE_LAYOUT = {8: ((1, 2, 1, 1), (1, 1, 2, 4)), 16: ((1, 2, 2, 1), (1, 1, 1, 2)),
                        32: ((1, 2, 2, 2), (1, 1, 1, 1))}


def stage_layout(output_stride: int = 8, strides=None, dilations=None) -> tuple[tuple, tuple, int]:
    """Resolve ``(strides, dilations, output_stride)`` of the four stages.

    Without explicit ``strides``/``dilations`` they follow ``output_stride``; with them, the output
    stride is 4 (stem conv and max pool) times the product of the stage strides.
    """
    if strides is None and dilations is None:
        if output_stride not in OUTPUT_STRIDE_LAYOUT:
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        st, dl = OUTPUT_STRIDE_LAYOUT[output_stride]
        return st, dl, int(output_stride)
    base_st, base_dl = OUTPUT_STRIDE_LAYOUT.get(output_stride, OUTPUT_STRIDE_LAYOUT[8])
    st = tuple(int(v) for v in (strides if strides is not None else base_st))
    dl = tuple(int(v) for v in (dilations if dilations is not None else base_dl))
    if len(st) != 4 or len(dl) != 4:
        raise ValueError(f"strides and dilations need one value per stage (4), got {list(st)} and {list(dl)}")
    if st[0] != 1 or any(s not in (1, 2) for s in st) or any(d < 1 for d in dl):
        raise ValueError(f"unsupported stage strides {list(st)} / dilations {list(dl)} (strides 1 or 2, the first 1)")
    os_ = 4
    for s_ in st:
        os_ *= s_
    return st, dl, os_


def three_conv_stem(a: int, b: int, c: int) -> nn.Sequential:
    """Three 3x3 conv-BN-ReLU, the first with stride 2 (keys ``stem.{0,1,3,4,6,7}``): the PSPNet
    author's stem and mmseg's ResNetV1c/V1d/ResNeSt stem."""
    return nn.Sequential(
        nn.Conv2d(3, a, 3, 2, 1, bias=False), nn.BatchNorm2d(a), nn.ReLU(inplace=True),
        nn.Conv2d(a, b, 3, 1, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True),
        nn.Conv2d(b, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
    )


def projection_shortcut(inplanes: int, outplanes: int, stride: int, avg_down: bool = False) -> nn.Sequential:
    """The downsample branch of a stage's first block: a 1x1 conv with the stride and BN (keys
    ``downsample.0/.1``); with ``avg_down`` (mmseg's ResNetV1d / ResNeSt) an
    ``AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)`` does the striding (an
    identity at stride 1) and the conv runs at stride 1 (keys ``downsample.1/.2``)."""
    if avg_down:
        return nn.Sequential(nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False),
                             nn.Conv2d(inplanes, outplanes, 1, bias=False), nn.BatchNorm2d(outplanes))
    return nn.Sequential(nn.Conv2d(inplanes, outplanes, 1, stride, bias=False), nn.BatchNorm2d(outplanes))


def first_block_dilation(dilation: int, contract_dilation: bool) -> int:
    """contract_dilation: the first block of a dilated stage uses half the dilation (mmseg's
    contract_dilation=True); without it every block gets the full dilation (semseg)."""
    return dilation // 2 if (dilation > 1 and contract_dilation) else dilation


class ResNet(nn.Module):
    """ResNet trunk returning (layer3, layer4) features.

    output_stride: 8 (layer3 dilation 2, layer4 dilation 4), 16 (layer4 dilation 2) or 32 (none),
    unless ``strides``/``dilations`` give the four stages explicitly.
    deep_stem: three 3x3 convs (64/2, 64, 128) instead of one 7x7, as in the PSPNet author's code;
    ``stem_channels`` gives other widths (see the module docstring for the remaining options).
    """

    def __init__(self, block: type[nn.Module], layers: tuple[int, int, int, int],
                 output_stride: int = 8, deep_stem: bool = False, stem_channels=None, strides=None,
                 dilations=None, contract_dilation: bool = True, basic_conv2_dilated: bool = True):
        super().__init__()
        strides, dilations, output_stride = stage_layout(output_stride, strides, dilations)
        if stem_channels is None:
            stem_channels = (64, 64, 128) if deep_stem else (64,)
        stem_channels = tuple(int(c) for c in stem_channels)
        if len(stem_channels) not in (1, 3) or min(stem_channels) < 1:
            raise ValueError(f"stem_channels must be one width (7x7 stem) or three (deep stem), got {list(stem_channels)}")
        self.deep_stem = len(stem_channels) == 3
        self.stem_channels = stem_channels
        self.strides, self.dilations, self.output_stride = strides, dilations, output_stride
        self.contract_dilation = bool(contract_dilation)
        self.basic_conv2_dilated = bool(basic_conv2_dilated)
        if self.deep_stem:
            self.stem = three_conv_stem(*stem_channels)
        else:
            (c,) = stem_channels
            self.stem = nn.Sequential(
                nn.Conv2d(3, c, 7, 2, 3, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
            )
        self.inplanes = stem_channels[-1]
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, 64, layers[0], strides[0], dilations[0])
        self.layer2 = self._make_layer(block, 128, layers[1], strides[1], dilations[1])
        self.layer3 = self._make_layer(block, 256, layers[2], strides[2], dilations[2])
        self.layer4 = self._make_layer(block, 512, layers[3], strides[3], dilations[3])
        self.out_channels = 512 * block.expansion
        self.aux_channels = 256 * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # zero-init the last BN of each residual branch: trains better from scratch
        for m in self.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = projection_shortcut(self.inplanes, planes * block.expansion, stride)
        first_dilation = first_block_dilation(dilation, self.contract_dilation)
        c2 = self.basic_conv2_dilated
        layers = [block(self.inplanes, planes, stride, first_dilation, downsample, conv2_dilated=c2)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, dilation, conv2_dilated=c2) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.stem(x))
        x = self.layer2(self.layer1(x))
        c3 = self.layer3(x)
        c4 = self.layer4(c3)
        return c3, c4


def resnet(name: str, output_stride: int = 8, deep_stem: bool = False, **options) -> ResNet:
    """``options``: ``stem_channels``, ``strides``, ``dilations``, ``contract_dilation``,
    ``basic_conv2_dilated`` (see :class:`ResNet`)."""
    if name not in RESNET_LAYERS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(RESNET_LAYERS)}")
    block, layers = RESNET_LAYERS[name]
    return ResNet(block, layers, output_stride=output_stride, deep_stem=deep_stem, **options)
