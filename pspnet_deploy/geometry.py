"""Input/feature-map size arithmetic of the dilated ResNet (no torch: the CLIs check sizes before
importing it)."""
from __future__ import annotations

from typing import Sequence


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def feature_size(size: int, output_stride: int = 8) -> int:
    """Spatial size of the backbone output for an input side of ``size`` pixels.

    Every stride-2 stage of the ResNet (stem conv, max pool, and the strided stages) rounds up,
    so the result is ceil-of-ceil, not size / output_stride: 713 -> 90, 473 -> 60, 360 -> 45.
    """
    s = _conv_out(size, 3, 2, 1)  # stem conv (7x7/2 pad 3 and 3x3/2 pad 1 give the same size)
    s = _conv_out(s, 3, 2, 1)  # max pool
    for _ in range({8: 1, 16: 2, 32: 3}[output_stride]):
        s = _conv_out(s, 3, 2, 1)  # stride-2 stage (layer2, layer3, layer4)
    return s


def min_input_size(bins: Sequence[int], output_stride: int = 8) -> int:
    """Smallest input side whose feature map is at least as large as the deepest bin."""
    need = max(bins)
    s = 1
    while feature_size(s, output_stride) < need:
        s += 1
    return s
