"""Exact static replacement of ``nn.AdaptiveAvgPool2d`` for one known input size.

PyTorch's adaptive average pool over an input side of ``n`` into ``b`` bins averages window
``i`` over ``[floor(i*n/b), ceil((i+1)*n/b))``. Windows overlap and differ in length when ``b``
does not divide ``n``, so a single AvgPool (what mmdeploy emits) is wrong there. For a fixed
input size the pool is a linear map that separates over height and width:

    y = P_h @ x @ P_w^T,   P[i, j] = 1 / len(window i)  if j in window i, else 0

which is two MatMuls with constant (b x n) matrices: a graph whose node count does not depend on
the input size, with no Gather, no loops and no shape arithmetic. Where ``b`` divides ``n`` on
both axes the windows are disjoint and equal, and a plain ``AvgPool`` (kernel = stride = n/b) is
used instead. Both equal ``nn.AdaptiveAvgPool2d`` to float rounding.

:func:`make_static` swaps every pool of a PSPNet's pyramid pooling module (``model.ppm.pools``)
for the exact equivalent at the feature size an ``H x W`` input gives (see
:func:`pspnet_deploy.model.feature_size`; it is not always ``H / 8``).
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from ..errors import UserError
from .pspnet import feature_size

__all__ = ["StaticAdaptiveAvgPool2d", "adaptive_windows", "pooling_matrix", "make_static", "pool_mode"]


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return int(v), int(v)
    a, b = v
    return int(a), int(b)


def adaptive_windows(n: int, b: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling windows ``[start, end)`` for ``n`` inputs into ``b`` bins."""
    return [((i * n) // b, -((-(i + 1) * n) // b)) for i in range(b)]


def pooling_matrix(n: int, b: int, dtype=torch.float32) -> torch.Tensor:
    """``(b, n)`` matrix whose row ``i`` averages PyTorch's adaptive window ``i``."""
    if n < 1 or b < 1:
        raise ValueError(f"pooling sizes must be positive, got input {n}, bins {b}")
    p = torch.zeros(b, n, dtype=torch.float64)
    for i, (s, e) in enumerate(adaptive_windows(n, b)):
        p[i, s:e] = 1.0 / (e - s)
    return p.to(dtype)


def pool_mode(in_size, out_size) -> str:
    """``"avgpool"`` where the bins divide the input on both axes, else ``"matmul"``."""
    (h, w), (bh, bw) = _pair(in_size), _pair(out_size)
    return "avgpool" if h % bh == 0 and w % bw == 0 else "matmul"


class StaticAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d(out_size)`` for inputs of exactly ``in_size`` (H, W), export-friendly.

    ``mode`` is ``"avgpool"`` (bins divide the input: AvgPool, kernel = stride = size / bins) or
    ``"matmul"`` (``ph @ x @ pwt`` with constant averaging matrices ``ph`` (bh x H) and ``pwt``
    (W x bw)). Bins larger than the input are refused, as in the model (every bin must see at
    least one feature).
    """

    def __init__(self, in_size, out_size):
        super().__init__()
        self.in_size = _pair(in_size)
        self.out_size = _pair(out_size)
        (h, w), (bh, bw) = self.in_size, self.out_size
        if min(h, w, bh, bw) < 1:
            raise ValueError(f"sizes must be positive, got input {h}x{w}, bins {bh}x{bw}")
        self.mode = pool_mode(self.in_size, self.out_size)
        if self.mode == "avgpool":
            k = (h // bh, w // bw)
            self.pool = nn.AvgPool2d(kernel_size=k, stride=k)
        else:
            self.pool = None
            self.register_buffer("ph", pooling_matrix(h, bh), persistent=False)
            self.register_buffer("pwt", pooling_matrix(w, bw).t().contiguous(), persistent=False)

    def extra_repr(self) -> str:
        return f"in_size={self.in_size}, out_size={self.out_size}, mode={self.mode}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.in_size:
            raise ValueError(f"StaticAdaptiveAvgPool2d built for {self.in_size[0]}x{self.in_size[1]} inputs, "
                             f"got {x.shape[-2]}x{x.shape[-1]}")
        if self.pool is not None:
            return self.pool(x)
        return torch.matmul(torch.matmul(self.ph.to(x.dtype), x), self.pwt.to(x.dtype))


def make_static(model: nn.Module, input_size: Sequence[int], inplace: bool = False) -> nn.Module:
    """A deployed copy of a PSPNet with its pyramid pools made static for ``input_size`` (H, W).

    Deploy form: eval mode (dropout is the identity), no auxiliary head, every
    ``nn.AdaptiveAvgPool2d`` in ``model.ppm.pools`` replaced by :class:`StaticAdaptiveAvgPool2d`
    for the backbone's feature size at ``input_size``. Raises :class:`UserError` if the feature
    map is smaller than the deepest bin.
    """
    h, w = _pair(input_size)
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    if getattr(model, "aux_head", None) is not None:
        model.aux_head = None
    for name, mod in list(model.named_modules()):  # dropout has no effect in eval; drop it from the graph
        for child_name, child in list(mod.named_children()):
            if isinstance(child, (nn.Dropout, nn.Dropout2d, nn.Dropout3d)):
                setattr(mod, child_name, nn.Identity())
    cfg = getattr(model, "config", {}) or {}
    os_ = int(cfg.get("output_stride", 8))
    fh, fw = feature_size(h, os_), feature_size(w, os_)
    ppm = model.ppm
    bins = list(ppm.bins)
    if min(fh, fw) < max(bins):
        from .pspnet import min_input_size

        need = min_input_size(bins, os_)
        raise UserError(f"input size {h}x{w} gives a {fh}x{fw} feature map, smaller than the deepest pyramid bin "
                        f"{max(bins)}; use an input of at least {need}x{need}")
    new_pools = []
    for pool, b in zip(ppm.pools, bins):
        if isinstance(pool, StaticAdaptiveAvgPool2d):
            if pool.in_size != (fh, fw):
                raise ValueError(f"pool already static for {pool.in_size}, asked for {(fh, fw)}")
            new_pools.append(pool)
            continue
        if not isinstance(pool, nn.AdaptiveAvgPool2d):
            raise TypeError(f"expected nn.AdaptiveAvgPool2d in ppm.pools, got {type(pool).__name__}")
        os_pair = pool.output_size if isinstance(pool.output_size, (tuple, list)) else (pool.output_size,) * 2
        out = (fh if os_pair[0] is None else int(os_pair[0]), fw if os_pair[1] is None else int(os_pair[1]))
        new_pools.append(StaticAdaptiveAvgPool2d((fh, fw), out))
    ppm.pools = nn.ModuleList(new_pools)
    model.static_input_size = (h, w)
    model.static_feature_size = (fh, fw)
    return model
