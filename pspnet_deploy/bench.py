"""Benchmark model files (.pt, .onnx, .engine): latency, throughput, accuracy, memory, FLOPs.

:func:`run_bench` is the entry point (``pspnet-bench`` is a thin front end). For every model x
batch size x scope it times ``iterations`` calls (or calls for ``duration`` seconds) after
``warmup`` calls, and reports :func:`latency_stats` of the per-call times and the throughput.

Scopes, always labelled in the report:

- ``model``: the input batch is already preprocessed, at the model size, in the runner's memory
  (a numpy array; for a PyTorch model on CUDA a tensor already on the GPU). One call is
  ``runner.infer(batch)``: the network plus the runner's own input/output handling.
- ``end2end``: one call decodes ``batch`` image files from disk (page cache warm after warm-up),
  preprocesses them, infers and postprocesses each output to a label map at the image's original
  size (bilinear logits resize + argmax, exactly as pspnet-eval does).

Timers: in ``model`` scope each runner times itself (:meth:`Runner.model_timer
<pspnet_deploy.runners.base.Runner.model_timer>`): PyTorch on CUDA uses CUDA events around the
call (input staged on the GPU, the output stays there); a backend without a device clock of its
own is timed by wall clock (``time.perf_counter``) around a call that takes and returns host
arrays, so it includes the copies and the device synchronisation. Each row names its timer.

Load sweep (``concurrency``, like Triton's perf_analyzer): per model and level N, N requests of one
image are kept in flight by N threads (:meth:`Runner.request_workers
<pspnet_deploy.runners.base.Runner.request_workers>`: ONNX Runtime and PyTorch share one model
between the threads, OpenVINO gets N infer requests on N streams, TensorRT N execution contexts on N
CUDA streams); each request's wall time is a
latency sample and the throughput is the images completed over the wall time of the level.
``report["load"]`` holds one row per model and level (``concurrency``, ``throughput_ips``,
p50/p99), plotted as a latency-throughput curve.

Recommendation (:func:`recommend`): with accuracy measured and ``max_miou_drop`` (points against
the reference, the first model), the fastest (model, concurrency) within the budget and the
optional ``max_latency_ms`` on p50, and why each faster candidate was rejected.

Memory: :mod:`pspnet_deploy.memory` (process RSS high-water mark, CUDA memory), reset before each
measurement; the report names the method.
"""
from __future__ import annotations

import gc
import math
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from tqdm import tqdm

from .card import SUFFIX_KINDS, model_kind, read_card, strip_model_suffix
from .errors import UserError
from .machine import environment
from .memory import GpuMemoryProbe, MemoryProbe
from .utils import jsonable

SCOPES = ("model", "end2end")
PERCENTILES = (50, 90, 95, 99)


# ----------------------------------------------------------------------------- pure functions

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


def pixel_agreement(reference: np.ndarray, candidate: np.ndarray) -> tuple[int, int]:
    """(pixels with the same label, total pixels) of two label maps of the same shape."""
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    if reference.shape != candidate.shape:
        raise ValueError(f"label maps differ in shape: {reference.shape} vs {candidate.shape}")
    return int(np.count_nonzero(reference.astype(np.int64) == candidate.astype(np.int64))), int(reference.size)


# ----------------------------------------------------------------------------- model specs

@dataclass
class ModelSpec:
    path: Path
    label: str
    explicit_label: bool = True

    @property
    def kind(self) -> str:
        return SUFFIX_KINDS.get(self.path.suffix.lower(), "?")


def parse_model_arg(spec, label: str | None = None) -> ModelSpec:
    """``path`` or ``path:label`` (or a ``(path, label)`` pair / a ModelSpec) -> ModelSpec.

    An existing file whose name contains ``:`` is taken whole.
    """
    if isinstance(spec, ModelSpec):
        return spec if label is None else ModelSpec(spec.path, label)
    if isinstance(spec, (tuple, list)):
        path, lab = spec
        return parse_model_arg(path, label or str(lab))
    s = str(spec)
    path, lab = s, None
    if not Path(s).exists() and ":" in s:
        head, tail = s.rsplit(":", 1)
        if head and tail and "/" not in tail:
            path, lab = head, tail
    p = Path(path)
    try:
        model_kind(p)
    except UserError as e:
        raise UserError(f"{e} (use PATH:LABEL to name a model)") from None
    if not p.is_file():
        raise UserError(f"{p}: model file not found")
    return ModelSpec(p, label or lab or _default_label(p), explicit_label=bool(label or lab))


def _default_label(p: Path) -> str:
    return strip_model_suffix(p.name) or str(p)


def peek_model(spec: ModelSpec, input_size: tuple[int, int] | None = None) -> dict:
    """What can be known about a model file without loading it into a runner (its card): classes,
    fixed batch, input size, file size, FLOPs per image (None where unknown). Bad files raise UserError."""
    from . import flops as fl

    card = read_card(spec.path)
    info: dict = {"classes": card.classes, "fixed_batch": card.fixed_batch, "input_size": card.input_size,
                  "static_size": card.static_size, "file_bytes": card.file_bytes, "flops": None,
                  "flops_method": None}
    if card.kind == "torch":
        card.require("preprocess", hint="train it with pspnet-train")
        info["input_size"] = tuple(input_size or card.input_size)
        try:
            info["flops"] = fl.torch_flops(card.model, info["input_size"])
            info["flops_method"] = "torch FlopCounterMode on the meta device (2 x MACs of conv/matmul), per image"
        except Exception as e:  # noqa: BLE001 - FLOPs are informative; a failure must not stop the benchmark
            info["flops_error"] = f"{type(e).__name__}: {e}"
        return info
    src = Path(spec.path) if card.kind == "onnx" else fl.engine_source_onnx(card)
    if src is None:
        return info
    try:
        f = fl.onnx_flops(src, info["input_size"] if card.kind == "onnx" else None)
        info["flops"] = f["flops"] if f["counted_nodes"] else None
        if card.kind == "onnx":
            info["flops_method"] = f["method"] + (f" (lower bound: {len(f['uncounted_nodes'])} nodes without shapes)"
                                                  if f["uncounted_nodes"] else "")
        else:
            info["flops_method"] = f"from the source ONNX {src.name} (2 x MACs, shape inference), per image"
    except Exception as e:  # noqa: BLE001 - FLOPs are informative, but a bad ONNX given to bench is bad input
        if card.kind == "onnx" and isinstance(e, UserError):
            raise
        info["flops_error"] = f"{type(e).__name__}: {e}"
    return info


def check_batches(label: str, path, batches: Iterable[int], fixed_batch: int | None,
                  batch_range: tuple[int, int] | None = None) -> None:
    for b in batches:
        if fixed_batch is not None and b != fixed_batch:
            raise UserError(f"{path}: model {label!r} has a fixed batch of {fixed_batch}, cannot run --batch {b}; "
                            f"re-export it with --dynamic-batch or bench it with --batch {fixed_batch}")
        if batch_range is not None and not (batch_range[0] <= b <= batch_range[1]):
            raise UserError(f"{path}: model {label!r} accepts batches {batch_range[0]}..{batch_range[1]}, cannot run "
                            f"--batch {b}; rebuild the engine with a wider batch range")


# ----------------------------------------------------------------------------- timing

def _collect(call: Callable[[], float], warmup: int, iterations: int | None, duration: float | None,
             progress: bool, desc: str) -> list[float]:
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


def _wall(fn: Callable[[], object]) -> Callable[[], float]:
    def call() -> float:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    return call


def end2end_call(runner, paths: Sequence[Path], batch: int) -> Callable[[], float]:
    """One call = read ``batch`` images (cycling through ``paths``), preprocess, infer, label maps at
    the original sizes. Returns milliseconds (wall clock)."""
    from .data.io import read_image
    from .evaluate import labels_at

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


def _synthetic_images(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """``count`` generated scene-like images (:func:`pspnet_deploy.data.samples.generated_images`) as PNG files."""
    from .data.io import write_png_atomic
    from .data.samples import generated_images

    out = []
    for i, img in enumerate(generated_images(size[0], size[1], count, seed)):
        p = folder / f"bench_{i:03d}.png"
        write_png_atomic(p, img)
        out.append(p)
    return out


def _dataset_images(ds, folder: Path, count: int) -> list[Path]:
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


# ----------------------------------------------------------------------------- load sweep

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


def recommend(models: Sequence[dict], points: Sequence[dict], max_miou_drop: float,
              max_latency_ms: float | None = None, reference: str | None = None) -> dict:
    """The fastest (model, concurrency) whose mIoU is within ``max_miou_drop`` points of the
    reference's (``reference``, default the first model) and whose p50 is at most ``max_latency_ms``.

    ``models``: rows with ``model`` and ``miou``; ``points``: rows with ``model``, ``concurrency``,
    ``throughput_ips`` and ``latency_ms.p50`` (the load sweep, or the model scope at concurrency
    1). Returns ``{model, concurrency, miou, p50_ms, throughput_ips, reason, rejected: [...]}``;
    ``model`` is None when nothing meets the budget (every candidate is then in ``rejected``).
    """
    acc = {m["model"]: m.get("miou") for m in models}
    ref = reference or (models[0]["model"] if models else None)
    ref_miou = acc.get(ref)
    if ref_miou is None:
        raise UserError("a recommendation needs the reference model's mIoU: pass --data")
    cands = sorted(points, key=lambda p: -p["throughput_ips"])
    rejected = []
    chosen = None
    for p in cands:
        miou = acc.get(p["model"])
        p50 = p["latency_ms"]["p50"]
        why = []
        if miou is None:
            why.append("no mIoU measured")
        elif 100 * (ref_miou - miou) > max_miou_drop + 1e-9:
            why.append(f"mIoU {100 * miou:.2f} % is {100 * (ref_miou - miou):.2f} points below the reference "
                       f"{ref} ({100 * ref_miou:.2f} %), budget {max_miou_drop:g}")
        if max_latency_ms is not None and p50 > max_latency_ms:
            why.append(f"p50 {p50:.2f} ms over the {max_latency_ms:g} ms limit")
        entry = {"model": p["model"], "concurrency": p["concurrency"], "miou": miou, "p50_ms": p50,
                 "throughput_ips": p["throughput_ips"]}
        if why:
            rejected.append({**entry, "why": "; ".join(why)})
            continue
        chosen = entry
        break
    budget = f"mIoU within {max_miou_drop:g} points of {ref} ({100 * ref_miou:.2f} %)" + (
        f" and p50 <= {max_latency_ms:g} ms" if max_latency_ms is not None else "")
    if chosen is None:
        return {"model": None, "concurrency": None, "miou": None, "p50_ms": None, "throughput_ips": None,
                "reason": f"no candidate meets the budget ({budget})", "rejected": rejected,
                "reference": ref, "max_miou_drop": max_miou_drop, "max_latency_ms": max_latency_ms}
    chosen["reason"] = (f"highest throughput ({chosen['throughput_ips']:.1f} img/s at {chosen['concurrency']} in "
                        f"flight, p50 {chosen['p50_ms']:.2f} ms) among {len(cands)} candidates with {budget}; "
                        f"{len(rejected)} faster candidate(s) rejected")
    chosen.update({"rejected": rejected, "reference": ref, "max_miou_drop": max_miou_drop,
                   "max_latency_ms": max_latency_ms})
    return chosen


# ----------------------------------------------------------------------------- accuracy

class _Capture:
    """``predict`` for :func:`pspnet_deploy.evaluate.evaluate`: whole-image inference (as eval does),
    recording pixel agreement with the reference model's labels stored in ``folder``."""

    def __init__(self, folder: Path, is_reference: bool):
        self.folder = folder
        self.is_reference = is_reference
        self.i = 0
        self.same = 0
        self.total = 0

    def __call__(self, runner, image: np.ndarray) -> np.ndarray:
        import cv2

        from .evaluate import labels_at

        labels = labels_at(runner.infer_items([runner.prepare(image)], batch=1)[0], image.shape[:2])
        lab16 = labels.astype(np.uint16)
        path = self.folder / f"{self.i:06d}.png"
        if self.is_reference:
            cv2.imwrite(str(path), lab16)
        else:
            ref = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if ref is not None:
                s, t = pixel_agreement(ref, lab16)
                self.same += s
                self.total += t
        self.i += 1
        return labels


# ----------------------------------------------------------------------------- the benchmark

def run_bench(models: Sequence, out_dir: str | Path | None = None, *, labels: Sequence[str] | None = None,
              input_size: tuple[int, int] | None = None, batches: Sequence[int] = (1,), warmup: int = 5,
              iterations: int | None = 50, duration: float | None = None, threads: int | None = None,
              scope: str = "both", data=None, split: str = "val", limit: int | None = None, device: str = "cpu",
              image_size: tuple[int, int] | None = None, peak: bool = True, peak_size: int = 2048,
              keep_samples: bool = True, progress: bool = True, write: bool = True, cuda_graph: bool = False,
              concurrency: Sequence[int] | None = None, max_miou_drop: float | None = None,
              max_latency_ms: float | None = None) -> dict:
    """Benchmark ``models`` and (unless ``write`` is False) write the reports into ``out_dir``.

    ``models``: paths, ``"path:label"`` strings, ``(path, label)`` pairs or :class:`ModelSpec`; the
    first is the reference for speed-ups and pixel agreement. ``data``: a dataset folder, a spec
    such as ``"synthetic"``, or a dataset object; with it, mIoU / pixel accuracy / per-class IoU and
    agreement with the reference are measured on the first ``limit`` images of ``split``.
    ``image_size`` (H, W): size of the generated end-to-end images when there is no ``data``
    (default: the reference model's input size). ``cuda_graph``: TensorRT engines replay each input
    shape as a CUDA graph (the runners' option; other backends ignore it). ``concurrency``: levels of
    the load sweep (requests of one image in flight). ``max_miou_drop`` (points; needs ``data``) and
    ``max_latency_ms``: the recommendation (:func:`recommend`) over the sweep's points, or the model
    scope's at batch 1. Returns the report dict (see :mod:`.report`).
    """
    from . import report as rep

    # ---- validate arguments (before any work)
    if not models:
        raise UserError("no models given; pass --model PATH at least once")
    if labels is not None and len(labels) not in (0, len(models)):
        raise UserError(f"{len(labels)} labels for {len(models)} models; give one --label per --model or none")
    if scope not in ("model", "end2end", "both"):
        raise UserError(f"scope must be model, end2end or both, got {scope!r}")
    scopes = list(SCOPES) if scope == "both" else [scope]
    batches = [int(b) for b in batches]
    if not batches or any(b <= 0 for b in batches):
        raise UserError(f"batch sizes must be positive, got {batches}")
    batches = list(dict.fromkeys(batches))
    if warmup < 0:
        raise UserError(f"--warmup must be 0 or more, got {warmup}")
    if duration is not None:
        if not duration > 0 or not math.isfinite(duration):
            raise UserError(f"--duration must be a positive number of seconds, got {duration}")
        iterations = None
    elif iterations is None or iterations <= 0:
        raise UserError(f"--iterations must be at least 1, got {iterations}; measure at least one call")
    if limit is not None and limit <= 0:
        raise UserError(f"--limit must be positive, got {limit}")
    if threads is not None and threads <= 0:
        raise UserError(f"--threads must be positive, got {threads}")
    levels = check_concurrency(concurrency) if concurrency else []
    if max_miou_drop is not None:
        if data is None:
            raise UserError("--max-miou-drop compares mIoU: pass --data DIR (or synthetic) as well")
        if not (0 <= float(max_miou_drop) < 100):
            raise UserError(f"--max-miou-drop is in mIoU points and must be in [0, 100), got {max_miou_drop}")
        if not levels and 1 not in batches:
            raise UserError("the recommendation compares batch-1 requests: add --batch 1 or --concurrency")
        if not levels and "model" not in scopes:
            raise UserError("the recommendation compares model-scope timings: use --scope model or both, or "
                            "--concurrency")
    if max_latency_ms is not None:
        if max_miou_drop is None:
            raise UserError("--max-latency-ms is a limit of the recommendation: pass --max-miou-drop as well")
        if not (max_latency_ms > 0 and math.isfinite(max_latency_ms)):
            raise UserError(f"--max-latency-ms must be a positive number, got {max_latency_ms}")
    if input_size is not None and (len(input_size) != 2 or min(input_size) <= 0):
        raise UserError(f"input size must be two positive numbers H W, got {input_size}")
    if image_size is not None and (len(image_size) != 2 or min(image_size) <= 0):
        raise UserError(f"image size must be two positive numbers H W, got {image_size}")
    if write:
        if out_dir is None:
            raise UserError("no output folder; pass --out DIR")
        out_dir = Path(out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise UserError(f"{out_dir}: exists and is not a folder; choose another --out")

    specs = [parse_model_arg(m, labels[i] if labels else None) for i, m in enumerate(models)]
    seen: set[str] = set()
    for i, s in enumerate(specs):
        if s.label in seen:
            if s.explicit_label:
                raise UserError(f"two models are labelled {s.label!r}; give each a distinct label (PATH:LABEL)")
            s.label = f"{s.label}#{i + 1}"  # a default label (the file name) repeated: number it
        seen.add(s.label)

    import torch

    if threads:
        torch.set_num_threads(int(threads))

    # ---- pre-flight: every model file is readable, classes agree, batches fit
    peeks = []
    for s in specs:
        info = peek_model(s, input_size if s.kind == "torch" else None)
        if s.kind != "torch" and input_size is not None and info.get("static_size") and info["input_size"] is not None \
                and tuple(info["input_size"]) != tuple(input_size):
            raise UserError(f"{s.path}: model {s.label!r} has a fixed input of {info['input_size'][0]}x"
                            f"{info['input_size'][1]} but --input-size asks {input_size[0]}x{input_size[1]}; "
                            f"re-export at that size or drop --input-size")
        check_batches(s.label, s.path, batches, info["fixed_batch"])
        peeks.append(info)
    ref_classes = next((p["classes"] for p in peeks if p["classes"]), None)
    for s, p in zip(specs, peeks):
        if p["classes"] is not None and ref_classes is not None and list(p["classes"]) != list(ref_classes):
            raise UserError(f"{s.path}: model {s.label!r} has classes {_short(p['classes'])} but {specs[0].label!r} has "
                            f"{_short(ref_classes)}; benchmark models of one dataset together")

    dataset = None
    if data is not None:
        from .data import open_dataset

        dataset = open_dataset(data, split) if isinstance(data, (str, Path)) else data
        if len(dataset) == 0:
            raise UserError(f"{data}: split {split!r} has no images")
        if ref_classes is not None and dataset.info.num_classes != len(ref_classes):
            raise UserError(f"the models predict {len(ref_classes)} classes but {data} [{split}] has "
                            f"{dataset.info.num_classes}; benchmark on the dataset the models were trained for")

    devices = [model_device(s, device) for s in specs]
    cuda_dev = next((d for d in devices if d.startswith("cuda")), None)
    env = environment(threads, device)
    memory = MemoryProbe()
    gpu_mem = GpuMemoryProbe(cuda_dev or "cpu")
    peaks = {}
    if peak:
        for dev in dict.fromkeys(devices):
            if progress:
                tqdm.write(f"measuring the {dev} FP32 peak ({peak_size}x{peak_size} matmul) ...")
            if dev.startswith("cuda") and not torch.cuda.is_available():
                env.setdefault("fp32_peak_errors", {})[dev] = "PyTorch here has no CUDA: GPU peak not measured"
                continue
            peaks[dev] = measure_peak(dev, peak_size)
    env["fp32_peak"] = peaks
    env["memory_method"] = memory.method

    results: list[dict] = []
    model_rows: list[dict] = []
    load_rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="pspnet-bench-") as tmp:
        tmp = Path(tmp)
        (tmp / "ref").mkdir()
        pool = max(8, max(batches))
        if "end2end" in scopes:
            if dataset is not None:
                images = _dataset_images(dataset, tmp, min(pool, limit or pool))
            else:
                size = image_size or peeks[0]["input_size"] or (360, 480)
                images = _synthetic_images(tmp, pool, tuple(size))
        else:
            images = []

        for mi, (s, info) in enumerate(zip(specs, peeks)):
            if progress:
                tqdm.write(f"[{mi + 1}/{len(specs)}] {s.label}: {s.path}")
            memory.reset()
            rss_before = memory.rss_mb()
            t_load = time.perf_counter()
            runner = _load(s, devices[mi], threads, input_size, cuda_graph)
            load_s = time.perf_counter() - t_load
            load_peak = memory.peak_mb()
            try:
                if ref_classes is not None and list(runner.classes) != list(ref_classes):
                    raise UserError(f"{s.path}: model {s.label!r} has classes {_short(runner.classes)} but the "
                                    f"others have {_short(ref_classes)}; benchmark models of one dataset together")
                ref_classes = ref_classes or list(runner.classes)
                check_batches(s.label, s.path, batches, runner.fixed_batch, runner.batch_range)
                desc = runner.describe()
                mrow = {"model": s.label, "path": str(s.path), "backend": runner.backend, "precision": runner.precision,
                        "device": str(runner.device()), "input_size": list(runner.input_size),
                        "output_kind": runner.output_kind, "sha256": desc.get("sha256"),
                        "file_size_mb": info["file_bytes"] / 2 ** 20, "flops_per_image": info["flops"],
                        "gflops_per_image": None if info["flops"] is None else info["flops"] / 1e9,
                        "flops_method": info.get("flops_method"), "load_s": load_s, "rss_before_load_mb": rss_before,
                        "peak_rss_load_mb": load_peak, "describe": jsonable(desc),
                        # what the backend really ran (OpenVINO reads it back from the compiled model)
                        "precision_used": desc.get("precision_used") or runner.precision,
                        "precision_note": desc.get("precision_note")}
                if "flops_error" in info:
                    mrow["flops_error"] = info["flops_error"]
                if dataset is not None:
                    pool_imgs = [dataset.load(i)[0] for i in range(min(pool, len(dataset)))]
                else:
                    from .data.io import read_image

                    from .data.samples import generated_images

                    pool_imgs = [read_image(p) for p in images] if images else \
                        generated_images(*runner.input_size, max(batches))
                for b in batches:
                    staged = np.stack([runner.prepare(pool_imgs[k % len(pool_imgs)]) for k in range(b)])
                    for sc in scopes:
                        memory.reset()
                        gpu_mem.reset()
                        if sc == "model":
                            call, timer = runner.model_timer(staged)
                        else:
                            call, timer = end2end_call(runner, images, b), "wall clock (time.perf_counter)"
                        samples = _collect(call, warmup, iterations, duration, progress,
                                           f"{s.label} b{b} {sc}")
                        stats = latency_stats(samples)
                        row = {"model": s.label, "path": str(s.path), "backend": runner.backend,
                               "precision": runner.precision, "precision_used": mrow["precision_used"],
                               "device": str(runner.device()), "batch": b, "scope": sc,
                               "input_size": list(runner.input_size), "timer": timer, "warmup": warmup,
                               "concurrency": 1,
                               "iterations": len(samples), "latency_ms": {k: stats[k] for k in
                                                                          ("mean", "std", "p50", "p90", "p95", "p99",
                                                                           "min", "max")},
                               "throughput_ips": throughput_ips(b, stats["mean"]),
                               "peak_rss_mb": memory.peak_mb(), **gpu_mem.read(),
                               "file_size_mb": mrow["file_size_mb"], "gflops_per_image": mrow["gflops_per_image"]}
                        pk = peaks.get(devices[mi])
                        if mrow["flops_per_image"] and pk:
                            achieved = mrow["flops_per_image"] * row["throughput_ips"] / 1e9
                            row["achieved_gflops"] = achieved
                            row["fraction_of_fp32_peak"] = achieved / pk["gflops"] if pk["gflops"] else None
                        else:
                            row["achieved_gflops"] = row["fraction_of_fp32_peak"] = None
                        if keep_samples:
                            row["samples_ms"] = [round(v, 6) for v in samples]
                        results.append(row)
                if levels:
                    one = np.stack([runner.prepare(pool_imgs[0])])
                    for n in levels:
                        workers, how = runner.request_workers(one, n)
                        if progress:
                            tqdm.write(f"{s.label}: {n} in flight ({how})")
                        samples, wall = load_level(workers, warmup, iterations, duration)
                        del workers
                        stats = latency_stats(samples)
                        load_rows.append({
                            "model": s.label, "path": str(s.path), "backend": runner.backend,
                            "precision": runner.precision, "precision_used": mrow["precision_used"],
                            "device": str(runner.device()), "batch": 1, "scope": "load", "concurrency": n,
                            "requests": len(samples), "wall_s": wall, "how": how,
                            "timer": "wall clock per request (time.perf_counter), all requests of a level started together",
                            "latency_ms": {k: stats[k] for k in ("mean", "p50", "p90", "p99", "min", "max")},
                            "throughput_ips": len(samples) / wall if wall > 0 else None})
                if dataset is not None:
                    from .evaluate import evaluate

                    cap = _Capture(tmp / "ref", is_reference=(mi == 0))
                    acc = evaluate(runner, dataset, limit=limit, batch_size=1, progress=progress, predict=cap,
                                   desc=f"{s.label} accuracy")
                    mrow["miou"] = acc["miou"]
                    mrow["pixel_accuracy"] = acc["pixel_accuracy"]
                    mrow["per_class_iou"] = acc["per_class_iou"]
                    mrow["num_images"] = acc["num_images"]
                    mrow["pixel_agreement"] = 1.0 if mi == 0 else (cap.same / cap.total if cap.total else None)
                model_rows.append(mrow)
            finally:
                runner.close()
                del runner
                gc.collect()

    # ---- per-row comparisons with the reference (first model)
    ref = specs[0].label
    by_key = {(r["model"], r["batch"], r["scope"]): r for r in results}
    accuracy = {m["model"]: m for m in model_rows}
    for r in results:
        base = by_key.get((ref, r["batch"], r["scope"]))
        r["speedup_vs_ref"] = (base["latency_ms"]["mean"] / r["latency_ms"]["mean"]
                               if base and r["latency_ms"]["mean"] > 0 else None)
        m = accuracy[r["model"]]
        for k in ("miou", "pixel_accuracy", "pixel_agreement"):
            r[k] = m.get(k)
    for r in load_rows:
        r["miou"] = accuracy[r["model"]].get("miou")
    recommendation = None
    if max_miou_drop is not None:
        points = load_rows or [r for r in results if r["scope"] == "model" and r["batch"] == 1]
        recommendation = recommend(model_rows, points, float(max_miou_drop), max_latency_ms, ref)
        recommendation["points"] = "load sweep" if load_rows else "model scope, batch 1, one request at a time"
    try:
        env["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        pass
    report = {"format": "pspnet-deploy/bench", "version": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "environment": env,
              "settings": {"scopes": scopes, "batches": batches, "warmup": warmup, "iterations": iterations,
                           "duration_s": duration, "threads": threads, "device": device, "cuda_graph": bool(cuda_graph),
                           "input_size": list(input_size) if input_size else None,
                           "data": None if data is None else {"spec": str(data) if isinstance(data, (str, Path))
                                                              else type(data).__name__,
                                                              "split": split, "limit": limit,
                                                              "num_classes": dataset.info.num_classes},
                           "end2end_images": (f"{len(images)} images from the dataset" if dataset is not None else
                                              f"{len(images)} generated PNGs of "
                                              f"{'x'.join(map(str, image_size or peeks[0]['input_size'] or (360, 480)))}")
                           if images else None,
                           "reference": ref, "concurrency": levels or None,
                           "max_miou_drop": max_miou_drop, "max_latency_ms": max_latency_ms},
              "scope_definitions": rep.SCOPE_DEFINITIONS,
              "models": model_rows, "results": results}
    if load_rows:
        report["load"] = load_rows
    if recommendation is not None:
        report["recommendation"] = recommendation
    if write:
        report["files"] = rep.write_reports(report, out_dir)
    return report


def measure_peak(device: str, size: int) -> dict:
    from .flops import measure_fp32_peak

    return measure_fp32_peak(device, size=size, repeats=10)


def model_device(spec: ModelSpec, device: str) -> str:
    """The device a model runs on: ``device``, except that TensorRT engines always run on CUDA
    (``cuda`` when ``device`` is the CPU), so a CPU model and an engine can be compared in one run."""
    device = str(device)
    if spec.kind == "tensorrt" and not device.startswith("cuda"):
        return "cuda"
    return device


def _load(spec: ModelSpec, device: str, threads: int | None, input_size, cuda_graph: bool = False):
    from .runners import RunnerOptions, load_runner

    cpu = not str(device).startswith("cuda")
    return load_runner(spec.path, RunnerOptions(device=device, threads=threads or None,
                                                input_size=tuple(input_size) if input_size else None,
                                                providers=["CPUExecutionProvider"] if cpu else None,
                                                cuda_graph=bool(cuda_graph)))


def _short(classes) -> str:
    classes = list(classes)
    return f"[{', '.join(classes[:4])}{', ...' if len(classes) > 4 else ''}] ({len(classes)})"
