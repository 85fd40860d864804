"""Exact adaptive average pooling of the whole pyramid at a size known only at run time.

PyTorch's ``nn.AdaptiveAvgPool2d`` over an input side of ``n`` into ``b`` bins averages window
``i`` over ``[floor(i*n/b), ceil((i+1)*n/b))`` (see :mod:`pspnet_deploy.model.static_pool`, the
exact replacement for one known size). For a symbolic ``n`` the averaging matrices are built in
the graph from the feature map's own shape, once for all bins of the pyramid:

    rows r = 0..sum(bins)-1 stacked bin after bin (bin b contributes its b windows),
    P[r, j] = [floor(i_r*n/b_r) <= j < ceil((i_r+1)*n/b_r)] / window length
            = [b_r*(j+1) > i_r*n  and  b_r*j < (i_r+1)*n] / row sum      (integers: exact)

and ``Y = P_h @ x @ P_w^T`` (rows, then columns: the pooling is separable) holds every bin's
result as a diagonal block, which each pyramid branch slices out. That is one Range, a handful
of integer multiplications and two comparisons per axis, two MatMuls and one Slice per bin, whatever the size:
the graph stays small and computes the same windows as PyTorch at every size (no
``kernel = stride = floor(n / b)`` approximation).

:func:`make_dynamic` turns a PSPNet into its deploy form with this pooling (the pyramid module's
``forward`` is replaced; the stage weights keep their names).
"""
from __future__ import annotations

import copy
import types

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DynamicPyramidPool", "make_dynamic", "pyramid_rows"]


def pyramid_rows(bins) -> tuple[list[int], list[int], list[int]]:
    """(window index i, bin count b, block offset) of each stacked row for ``bins``."""
    idx, cnt, offs, off = [], [], [], 0
    for b in bins:
        idx += list(range(b))
        cnt += [b] * b
        offs.append(off)
        off += b
    return idx, cnt, offs


class DynamicPyramidPool(nn.Module):
    """Every bin of ``bins`` pooled exactly from the input's run-time size; returns one tensor per bin."""

    def __init__(self, bins):
        super().__init__()
        self.bins = tuple(int(b) for b in bins)
        idx, cnt, self.offsets = pyramid_rows(self.bins)
        self.register_buffer("win_index", torch.tensor(idx, dtype=torch.int64).unsqueeze(1), persistent=False)
        self.register_buffer("win_bins", torch.tensor(cnt, dtype=torch.int64).unsqueeze(1), persistent=False)

    def _matrix(self, n, dtype) -> torch.Tensor:
        """(sum(bins), n) averaging matrix of every window over an axis of ``n`` (symbolic or int).

        ``floor(i*n/b) <= j < ceil((i+1)*n/b)`` for an integer ``j`` is ``b*(j+1) > i*n`` and
        ``b*j < (i+1)*n``: no division, no rounding; each row is then divided by its length."""
        bj = self.win_bins * torch.arange(n, device=self.win_bins.device).unsqueeze(0)
        i_n = self.win_index * n
        inside = (bj + self.win_bins > i_n) & (bj < i_n + n)
        m = inside.to(dtype)
        return m / m.sum(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, w = x.shape[-2], x.shape[-1]
        ph = self._matrix(h, x.dtype)
        pwt = self._matrix(w, x.dtype).transpose(0, 1)
        y = torch.matmul(torch.matmul(ph, x), pwt)
        return [y[..., o:o + b, o:o + b] for o, b in zip(self.offsets, self.bins)]


def _ppm_forward(self, x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    outs = [x]
    for pooled, stage in zip(self.dynamic_pool(x), self.stages):
        outs.append(F.interpolate(stage(pooled), size=(h, w), mode="bilinear", align_corners=self.align_corners))
    return torch.cat(outs, 1)


def make_dynamic(model: nn.Module, inplace: bool = False) -> nn.Module:
    """A deployed copy of a PSPNet whose pyramid pooling is exact at any input size.

    Deploy form as :func:`pspnet_deploy.model.static_pool.make_static` (eval, no auxiliary head,
    no dropout); the pyramid module pools with :class:`DynamicPyramidPool` (square bins only, as
    ``nn.AdaptiveAvgPool2d(b)`` in :class:`pspnet_deploy.model.PyramidPooling`)."""
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    if getattr(model, "aux_head", None) is not None:
        model.aux_head = None
    for mod in list(model.modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, (nn.Dropout, nn.Dropout2d, nn.Dropout3d)):
                setattr(mod, child_name, nn.Identity())
    ppm = model.ppm
    for pool, b in zip(ppm.pools, ppm.bins):
        if not isinstance(pool, nn.AdaptiveAvgPool2d) or pool.output_size not in (b, (b, b)):
            raise TypeError(f"expected nn.AdaptiveAvgPool2d({b}) in ppm.pools, got {pool!r}")
    ppm.dynamic_pool = DynamicPyramidPool(ppm.bins)
    ppm.forward = types.MethodType(_ppm_forward, ppm)
    model.dynamic_input_size = True
    return model
