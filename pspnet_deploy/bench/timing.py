"""Measuring: the per-call latency loop (warm-up, then a count of calls or a duration), the
end-to-end call (files to label maps), the images it reads, and the load sweep's levels (N
requests in flight, one thread each), with their summaries (latency percentiles, throughput)."""
from __future__ import annotations

import gc
import math
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from ..errors import UserError

SCOPES = ("model", "end2end")
PERCENTILES = (50, 90, 95, 99)


def latency_stats(samples_ms: Sequence[float]) -> dict:
    """Summary of per-call latencies in milliseconds.

    ``mean``, ``std`` (sample standard deviation, ddof=1; 0 for a single sample), ``min``, ``max``
    and the percentiles ``p50``/``p90``/``p95``/``p99`` (linear interpolation between closest
    ranks, numpy's default), plus ``count``.
    """
    x = np.asarray(list(samples_ms), dtype=np.float64)
    if x.size == 0:
        raise UserError("no latency samples to summarise; run at least one iteration")
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        raise ValueError("latency samples must be finite and non-negative")
    out = {"mean": float(x.mean()), "std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
           "min": float(x.min()), "max": float(x.max())}
    for p, v in zip(PERCENTILES, np.percentile(x, PERCENTILES)):
        out[f"p{p}"] = float(v)
    out["count"] = int(x.size)
    return out


def throughput_ips(batch: int, mean_ms: float) -> float:
    """Images per second for calls of ``batch`` images taking ``mean_ms`` on average."""
    return float(batch) * 1000.0 / mean_ms if mean_ms > 0 else float("inf")


def collect(call: Callable[[], float], warmup: int, iterations: int | None, duration: float | None,
            progress: bool, desc: str) -> list[float]:
    """``warmup`` untimed calls, then the milliseconds of ``iterations`` calls or of the calls made in
    ``duration`` seconds (a tqdm bar each, unless ``progress`` is False)."""
    for _ in tqdm(range(warmup), desc=f"{desc} warm-up", disable=not progress or warmup == 0, leave=False,
                  dynamic_ncols=True):
        call()
    gc.collect()
    samples: list[float] = []
    if duration is not None:
        with tqdm(total=round(duration, 1), desc=desc, unit="s", disable=not progress, leave=False,
                  dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s [{postfix}]") as bar:
            t0 = time.perf_counter()
            while True:
                samples.append(call())
                el = time.perf_counter() - t0
                bar.n = min(el, duration)
                bar.set_postfix_str(f"{len(samples)} calls", refresh=False)
                bar.refresh()
                if el >= duration:
                    break
    else:
        for _ in tqdm(range(iterations), desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
            samples.append(call())
    return samples


def collect_interleaved(calls: dict[str, Callable[[], float]], warmup: int, iterations: int | None,
                        duration: float | None, progress: bool, desc: str) -> dict[str, list[float]]:
    """:func:`collect` for several scopes of one model, call by call in turn (A B A B ...), so that
    what the machine does meanwhile (a noisy neighbour, a frequency change) weighs on every scope
    alike and their ratio is fair; ``duration`` is shared by all of them. Returns the milliseconds
    per scope."""
    samples: dict[str, list[float]] = {n: [] for n in calls}

    def one_round() -> float:  # every scope once
        t = time.perf_counter()
        for n, call in calls.items():
            samples[n].append(call())
        return (time.perf_counter() - t) * 1e3

    collect(one_round, warmup, iterations, duration, progress, desc)
    return {n: v[warmup:] for n, v in samples.items()}  # the warm-up rounds' samples dropped


def _wall(fn: Callable[[], object]) -> Callable[[], float]:
    def call() -> float:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    return call


def end2end_call(runner, paths: Sequence[Path], batch: int) -> Callable[[], float]:
    """One call = read ``batch`` images (cycling through ``paths``), preprocess, infer, label maps at
    the original sizes. Returns milliseconds (wall clock)."""
    from ..data.io import read_image
    from ..evaluate import labels_at

    state = {"i": 0}

    def work():
        i = state["i"]
        chosen = [paths[(i + k) % len(paths)] for k in range(batch)]
        state["i"] = (i + batch) % len(paths)
        images = [read_image(p) for p in chosen]
        x = np.stack([runner.prepare(im) for im in images])
        out = runner.infer(x)
        return [labels_at(o, im.shape[:2]) for o, im in zip(out, images)]

    return _wall(work)


def synthetic_images(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """``count`` generated scene-like images (:func:`pspnet_deploy.data.samples.generated_images`) as PNG files."""
    from ..data.io import write_png_atomic
    from ..data.samples import generated_images

    out = []
    for i, img in enumerate(generated_images(size[0], size[1], count, seed)):
        p = folder / f"bench_{i:03d}.png"
        write_png_atomic(p, img)
        out.append(p)
    return out


def dataset_images(ds, folder: Path, count: int) -> list[Path]:
    n = min(count, len(ds))
    paths = list(getattr(ds, "image_paths", []) or [])[:n]
    if len(paths) == n and all(Path(p).is_file() for p in paths):
        return [Path(p) for p in paths]
    import cv2

    out = []
    for i in range(n):  # in-memory dataset (e.g. synthetic): write its images once
        img = ds.load(i)[0]
        p = folder / f"data_{i:03d}.png"
        cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        out.append(p)
    return out


def end2end_images(folder: Path, dataset, count: int, limit: int | None, size: tuple[int, int]) -> list[Path]:
    """The image files the end-to-end scope reads: the dataset's first images (``count``, at most
    ``limit``), or ``count`` generated PNGs of ``size`` without a dataset."""
    if dataset is not None:
        return dataset_images(dataset, folder, min(count, limit or count))
    return synthetic_images(folder, count, tuple(size))


def load_level(workers: Sequence[Callable[[], object]], warmup: int, iterations: int | None,
               duration: float | None) -> tuple[list[float], float]:
    """Run ``workers`` (one per thread, all at once) after ``warmup`` untimed calls each:
    ``iterations`` requests in all (split over the threads) or for ``duration`` seconds. Returns
    (per-request milliseconds, wall seconds from the common start to the last request's end); the
    first error of any thread is raised."""
    n = len(workers)
    per = None if iterations is None else max(1, math.ceil(iterations / n))
    lat: list[list[float]] = [[] for _ in range(n)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(n + 1)
    stop_at = [math.inf]

    def work(i: int) -> None:
        try:
            for _ in range(warmup):
                workers[i]()
        except BaseException as e:  # noqa: BLE001 - raised in the caller
            errors.append(e)
        barrier.wait()
        if errors:
            return
        try:
            while (per is None or len(lat[i]) < per) and time.perf_counter() < stop_at[0]:
                t = time.perf_counter()
                workers[i]()
                lat[i].append((time.perf_counter() - t) * 1e3)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    if duration is not None:
        stop_at[0] = time.perf_counter() + duration
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return [v for x in lat for v in x], wall


def check_concurrency(levels) -> list[int]:
    levels = [int(v) for v in levels]
    if not levels or any(v < 1 for v in levels):
        raise UserError(f"--concurrency levels must be at least 1, got {levels}")
    if any(v > 64 for v in levels):
        raise UserError(f"--concurrency levels above 64 are not useful on one machine, got {max(levels)}")
    return sorted(dict.fromkeys(levels))


def measure_peak(device: str, size: int) -> dict:
    """The device's measured FP32 peak (a ``size`` x ``size`` matmul, :func:`pspnet_deploy.flops.measure_fp32_peak`)."""
    from ..flops import measure_fp32_peak

    return measure_fp32_peak(device, size=size, repeats=10)
