"""Dilated MobileNetV2 backbone, in mmsegmentation's layout (``mmseg/models/backbones/mobilenet_v2.py``,
``models/utils/inverted_residual.py``), so mmseg's PSPNet-MobileNetV2 weights load by name.

Facts of mmseg's design that change the numbers and that this module reproduces:

- seven stages ``[expand ratio, width, blocks]`` = [1,16,1] [6,24,2] [6,32,3] [6,64,4] [6,96,3]
  [6,160,3] [6,320,1], widths ``make_divisible(width x widen_factor, 8)``, stem 3x3/2 conv of
  ``make_divisible(32 x widen_factor, 8)``; ReLU6 after every conv but the projection;
- ``strides`` / ``dilations`` per stage; the stride **and the dilation apply to the first block of
  a stage only** (the others use dilation 1): mmseg's d8 configs (strides 1-2-2-1-1-1-1,
  dilations 1-1-1-2-2-4-4) thus dilate only the first block of stages 4-7;
- a block's hidden width is ``round(in x expand)``; the residual is used where stride is 1 and the
  widths match;
- PSPNet reads stage 7 (index 6, 320 x widen channels) and its auxiliary head stage 5 (index 4).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["MobileNetV2", "mobilenet_v2", "make_divisible", "ARCH"]

#: (expand ratio, width, blocks) of the seven stages
ARCH = ((1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1))
#: d8: what mmseg's mobilenet-v2-d8 configs use
D8 = ((1, 2, 2, 1, 1, 1, 1), (1, 1, 1, 2, 2, 4, 4))


def make_divisible(value: float, divisor: int = 8, min_ratio: float = 0.9) -> int:
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < min_ratio * value:
        new += divisor
    return new


class ConvBNAct(nn.Module):
    """conv -> BN -> (ReLU6): the attribute names of mmcv's ConvModule (``conv``, ``bn``)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1, groups: int = 1,
                 act: bool = True):
        super().__init__()
        pad = dilation if k == 3 else 0
        self.conv = nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int, dilation: int = 1):
        super().__init__()
        hidden = int(round(cin * expand))
        self.use_res = stride == 1 and cin == cout
        layers = [ConvBNAct(cin, hidden, 1)] if expand != 1 else []
        layers += [ConvBNAct(hidden, hidden, 3, stride, dilation, groups=hidden), ConvBNAct(hidden, cout, 1, act=False)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """Returns ``(stage 5, stage 7)`` features (the auxiliary head's and the pyramid's)."""

    def __init__(self, widen_factor: float = 1.0, strides=None, dilations=None):
        super().__init__()
        strides = tuple(int(s) for s in (strides if strides is not None else D8[0]))
        dilations = tuple(int(d) for d in (dilations if dilations is not None else D8[1]))
        if len(strides) != 7 or len(dilations) != 7 or any(s not in (1, 2) for s in strides) or min(dilations) < 1:
            raise ValueError(f"MobileNetV2 needs 7 strides (1 or 2) and 7 dilations, got {list(strides)} / {list(dilations)}")
        self.widen_factor = float(widen_factor)
        self.strides, self.dilations = strides, dilations
        self.output_stride = 2
        for s in strides:
            self.output_stride *= s
        cin = make_divisible(32 * widen_factor, 8)
        self.conv1 = ConvBNAct(3, cin, 3, stride=2)
        widths = []
        for i, (expand, width, blocks) in enumerate(ARCH):
            cout = make_divisible(width * widen_factor, 8)
            layer = [InvertedResidual(cin if b == 0 else cout, cout, strides[i] if b == 0 else 1, expand,
                                      dilations[i] if b == 0 else 1) for b in range(blocks)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
            widths.append(cout)
            cin = cout
        self.out_channels = widths[6]
        self.aux_channels = widths[4]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv1(x)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        c5 = self.layer5(x)
        return c5, self.layer7(self.layer6(c5))


def mobilenet_v2(widen_factor: float = 1.0, strides=None, dilations=None) -> MobileNetV2:
    return MobileNetV2(widen_factor=widen_factor, strides=strides, dilations=dilations)
