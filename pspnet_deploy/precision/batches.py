"""Batches a model accepts, cut from an array of preprocessed images (the one batch fitting of
export and the precision steps).

A fixed batch size is filled by cycling back to the first images; ``real`` says how many rows of
each batch are new images (statistics use only those; parity checks compare every row). A dynamic
batch range (``dynamic=(min, opt, max)``) gets its smallest batch and, when more images are
there, one as large as fits, so both ends of the range are exercised.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

__all__ = ["batch_indices", "iter_batches", "fitted_batches"]


def batch_indices(n: int, batch: int | None = None, dynamic: Sequence[int] | None = None,
                  limit: int | None = None) -> list[tuple[list[int], int]]:
    """``[(row indices, real rows), ...]`` over ``n`` images (the first ``limit`` only, if given).

    ``batch`` None with no ``dynamic`` range: one image per batch.
    """
    n = n if limit is None else min(int(limit), n)
    if n <= 0:
        return []
    if dynamic is not None:
        lo, _opt, hi = (int(v) for v in dynamic)
        sizes = [lo]
        big = min(hi, max(n, lo))
        if big > lo:
            sizes.append(big)
        out, start = [], 0
        for size in sizes:
            out.append(([(start + k) % n for k in range(size)], max(0, min(size, n - start))))
            start += size
        return out
    b = int(batch or 1)
    return [([(s + k) % n for k in range(b)], min(b, n - s)) for s in range(0, n, b)]


def iter_batches(array: np.ndarray, batch: int | None = None, dynamic: Sequence[int] | None = None,
                 limit: int | None = None) -> Iterator[tuple[np.ndarray, int]]:
    """Yield ``(float32 contiguous batch, real rows)`` per :func:`batch_indices` (``array`` may be a memmap)."""
    for idx, real in batch_indices(int(array.shape[0]), batch, dynamic, limit):
        yield np.ascontiguousarray(array[idx], dtype=np.float32), real


def fitted_batches(images: np.ndarray, batch: int | None = None, dynamic: Sequence[int] | None = None) -> list[np.ndarray]:
    """Every batch of :func:`iter_batches` as a list (all rows used, wrapped ones included)."""
    return [x for x, _ in iter_batches(images, batch, dynamic)]
