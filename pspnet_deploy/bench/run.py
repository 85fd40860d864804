""":func:`run_bench`, as the named steps a reader can follow: check the arguments, read the
models' cards (pre-flight), open the dataset, record the machine, then per model: load, time each
batch and scope, sweep the load levels, measure accuracy; then compare with the reference,
recommend, assemble and write the report."""
from __future__ import annotations

import gc
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from ..errors import UserError
from ..machine import environment
from ..memory import GpuMemoryProbe, MemoryProbe
from ..utils import jsonable
from .accuracy import measure_accuracy
from .models import (ModelSpec, check_batches, load_model_runner, model_device, parse_model_arg, peek_model,
                     short_classes)
from .recommend import recommendation
from .timing import (SCOPES, check_concurrency, collect, collect_interleaved, end2end_call, end2end_images, latency_stats, load_level,
                     measure_peak, throughput_ips)

DEFAULT_IMAGE_SIZE = (360, 480)


@dataclass
class Plan:
    """The checked settings of one benchmark run (what every step reads)."""

    scopes: list
    batches: list
    warmup: int
    iterations: int | None
    duration: float | None
    levels: list
    threads: int | None
    input_size: tuple | None
    cuda_graph: bool
    keep_samples: bool
    progress: bool
    limit: int | None


@dataclass
class Probes:
    """What is measured beside time: process memory, GPU memory, the devices' FP32 peaks."""

    memory: MemoryProbe
    gpu_memory: GpuMemoryProbe
    peaks: dict


def run_bench(models: Sequence, out_dir: str | Path | None = None, *, labels: Sequence[str] | None = None,
              input_size: tuple[int, int] | None = None, batches: Sequence[int] = (1,), warmup: int = 5,
              iterations: int | None = 50, duration: float | None = None, threads: int | None = None,
              scope: str = "both", data=None, split: str = "val", limit: int | None = None, device: str = "cpu",
              image_size: tuple[int, int] | None = None, peak: bool = True, peak_size: int = 2048,
              keep_samples: bool = True, progress: bool = True, write: bool = True, cuda_graph: bool = False,
              concurrency: Sequence[int] | None = None, max_miou_drop: float | None = None,
              max_latency_ms: float | None = None) -> dict:
    """Benchmark ``models`` and (unless ``write`` is False) write the reports into ``out_dir``.

    ``models``: paths, ``"path:label"`` strings, ``(path, label)`` pairs or :class:`ModelSpec`
    (a spec carrying its card is not read again); the first is the reference for speed-ups and
    pixel agreement. ``data``: a dataset folder, a spec such as ``"synthetic"``, or a dataset
    object; with it, mIoU / pixel accuracy / per-class IoU and agreement with the reference are
    measured on the first ``limit`` images of ``split``. ``image_size`` (H, W): size of the
    generated end-to-end images when there is no ``data`` (default: the reference model's input
    size). ``cuda_graph``: TensorRT engines replay each input shape as a CUDA graph (the runners'
    option; other backends ignore it). ``concurrency``: levels of the load sweep (requests of one
    image in flight). ``max_miou_drop`` (points; needs ``data``) and ``max_latency_ms``: the
    recommendation (:func:`recommend`) over the sweep's points, or the model scope's at batch 1.
    Returns the report dict (see :mod:`pspnet_deploy.report`).
    """
    from .. import report as rep

    plan = check_arguments(models, labels, scope, batches, warmup, iterations, duration, threads, limit, concurrency,
                           data, max_miou_drop, max_latency_ms, input_size, image_size, cuda_graph, keep_samples,
                           progress)
    if write:
        out_dir = check_out_dir(out_dir)
    specs = model_specs(models, labels)

    import torch

    if threads:
        torch.set_num_threads(int(threads))
    peeks, ref_classes = preflight(specs, plan)
    dataset = open_data(data, split, ref_classes)
    devices = [model_device(s, device) for s in specs]
    env, probes = record_machine(devices, threads, device, peak, peak_size, progress)

    results: list[dict] = []
    model_rows: list[dict] = []
    load_rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="pspnet-bench-") as tmp:
        tmp = Path(tmp)
        (tmp / "ref").mkdir()
        pool = max(8, max(plan.batches))
        end2end_size = tuple(image_size or peeks[0]["input_size"] or DEFAULT_IMAGE_SIZE)
        images = end2end_images(tmp, dataset, pool, limit, end2end_size) if "end2end" in plan.scopes else []
        for mi, (s, info) in enumerate(zip(specs, peeks)):
            if progress:
                tqdm.write(f"[{mi + 1}/{len(specs)}] {s.label}: {s.path}")
            mrow, rows, lrows, ref_classes = bench_model(s, info, devices[mi], plan, probes, dataset, images, pool,
                                                         tmp / "ref", mi == 0, ref_classes)
            model_rows.append(mrow)
            results += rows
            load_rows += lrows

    ref = specs[0].label
    compare_with_reference(results, load_rows, model_rows, ref)
    rec = None if max_miou_drop is None else recommendation(model_rows, results, load_rows, max_miou_drop,
                                                            max_latency_ms, ref)
    try:
        env["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        pass
    settings = {"scopes": plan.scopes, "scopes_interleaved": len(plan.scopes) > 1, "batches": plan.batches, "warmup": warmup, "iterations": plan.iterations,
                "duration_s": duration, "threads": threads, "device": device, "cuda_graph": bool(cuda_graph),
                "input_size": list(input_size) if input_size else None,
                "data": None if data is None else {"spec": str(data) if isinstance(data, (str, Path))
                                                   else type(data).__name__,
                                                   "split": split, "limit": limit,
                                                   "num_classes": dataset.info.num_classes},
                "end2end_images": (f"{len(images)} images from the dataset" if dataset is not None else
                                   f"{len(images)} generated PNGs of {'x'.join(map(str, end2end_size))}")
                if images else None,
                "reference": ref, "concurrency": plan.levels or None,
                "max_miou_drop": max_miou_drop, "max_latency_ms": max_latency_ms}
    report = {"format": "pspnet-deploy/bench", "version": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "environment": env, "settings": settings, "scope_definitions": rep.SCOPE_DEFINITIONS,
              "models": model_rows, "results": results}
    if load_rows:
        report["load"] = load_rows
    if rec is not None:
        report["recommendation"] = rec
    if write:
        report["files"] = rep.write_reports(report, out_dir)
    return report


# ----------------------------------------------------------------------------- before any work

def check_arguments(models, labels, scope, batches, warmup, iterations, duration, threads, limit, concurrency, data,
                    max_miou_drop, max_latency_ms, input_size, image_size, cuda_graph, keep_samples,
                    progress) -> Plan:
    """Every argument checked (UserError on the first bad one) before anything is loaded."""
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
    check_recommendation_args(data, max_miou_drop, max_latency_ms, levels, batches, scopes)
    if input_size is not None and (len(input_size) != 2 or min(input_size) <= 0):
        raise UserError(f"input size must be two positive numbers H W, got {input_size}")
    if image_size is not None and (len(image_size) != 2 or min(image_size) <= 0):
        raise UserError(f"image size must be two positive numbers H W, got {image_size}")
    return Plan(scopes=scopes, batches=batches, warmup=warmup, iterations=iterations, duration=duration,
                levels=levels, threads=threads, input_size=tuple(input_size) if input_size else None,
                cuda_graph=bool(cuda_graph), keep_samples=keep_samples, progress=progress, limit=limit)


def check_recommendation_args(data, max_miou_drop, max_latency_ms, levels, batches, scopes) -> None:
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


def check_out_dir(out_dir) -> Path:
    if out_dir is None:
        raise UserError("no output folder; pass --out DIR")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a folder; choose another --out")
    return out_dir


def model_specs(models, labels) -> list[ModelSpec]:
    """One spec per model, labels distinct (a repeated default label, the file name, is numbered)."""
    specs = [parse_model_arg(m, labels[i] if labels else None) for i, m in enumerate(models)]
    seen: set[str] = set()
    for i, s in enumerate(specs):
        if s.label in seen:
            if s.explicit_label:
                raise UserError(f"two models are labelled {s.label!r}; give each a distinct label (PATH:LABEL)")
            s.label = f"{s.label}#{i + 1}"
        seen.add(s.label)
    return specs


def preflight(specs: Sequence[ModelSpec], plan: Plan) -> tuple[list[dict], list | None]:
    """Every model's card read (once): the sizes and batches asked fit, the classes agree. Returns
    the per-model facts (:func:`peek_model`) and the classes."""
    peeks = []
    input_size = plan.input_size
    for s in specs:
        info = peek_model(s, input_size if s.kind == "torch" else None)
        if s.kind != "torch" and input_size is not None and info.get("static_size") and info["input_size"] is not None \
                and tuple(info["input_size"]) != tuple(input_size):
            raise UserError(f"{s.path}: model {s.label!r} has a fixed input of {info['input_size'][0]}x"
                            f"{info['input_size'][1]} but --input-size asks {input_size[0]}x{input_size[1]}; "
                            f"re-export at that size or drop --input-size")
        check_batches(s.label, s.path, plan.batches, info["fixed_batch"])
        peeks.append(info)
    ref_classes = next((p["classes"] for p in peeks if p["classes"]), None)
    for s, p in zip(specs, peeks):
        if p["classes"] is not None and ref_classes is not None and list(p["classes"]) != list(ref_classes):
            raise UserError(f"{s.path}: model {s.label!r} has classes {short_classes(p['classes'])} but "
                            f"{specs[0].label!r} has {short_classes(ref_classes)}; benchmark models of one dataset "
                            f"together")
    return peeks, ref_classes


def open_data(data, split: str, ref_classes):
    """The accuracy dataset (None without ``data``), checked against the models' classes."""
    if data is None:
        return None
    from ..data import open_dataset

    dataset = open_dataset(data, split) if isinstance(data, (str, Path)) else data
    if len(dataset) == 0:
        raise UserError(f"{data}: split {split!r} has no images")
    if ref_classes is not None and dataset.info.num_classes != len(ref_classes):
        raise UserError(f"the models predict {len(ref_classes)} classes but {data} [{split}] has "
                        f"{dataset.info.num_classes}; benchmark on the dataset the models were trained for")
    return dataset


def record_machine(devices: Sequence[str], threads, device: str, peak: bool, peak_size: int,
                   progress: bool) -> tuple[dict, Probes]:
    """The environment record (:func:`pspnet_deploy.machine.environment`), the memory probes and
    each device's measured FP32 peak (unless ``peak`` is False)."""
    import torch

    cuda_dev = next((d for d in devices if d.startswith("cuda")), None)
    env = environment(threads, device)
    probes = Probes(MemoryProbe(), GpuMemoryProbe(cuda_dev or "cpu"), {})
    if peak:
        for dev in dict.fromkeys(devices):
            if progress:
                tqdm.write(f"measuring the {dev} FP32 peak ({peak_size}x{peak_size} matmul) ...")
            if dev.startswith("cuda") and not torch.cuda.is_available():
                env.setdefault("fp32_peak_errors", {})[dev] = "PyTorch here has no CUDA: GPU peak not measured"
                continue
            probes.peaks[dev] = measure_peak(dev, peak_size)
    env["fp32_peak"] = probes.peaks
    env["memory_method"] = probes.memory.method
    return env, probes


# ----------------------------------------------------------------------------- one model

def bench_model(s: ModelSpec, info: dict, device: str, plan: Plan, probes: Probes, dataset, images: list[Path],
                pool: int, ref_folder: Path, is_reference: bool, ref_classes):
    """Load one model, time it (every batch and scope), sweep the load levels and measure its
    accuracy. Returns (model row, result rows, load rows, the classes)."""
    probes.memory.reset()
    rss_before = probes.memory.rss_mb()
    t_load = time.perf_counter()
    runner = load_model_runner(s, device, plan.threads, plan.input_size, plan.cuda_graph)
    load_s = time.perf_counter() - t_load
    load_peak = probes.memory.peak_mb()
    try:
        if ref_classes is not None and list(runner.classes) != list(ref_classes):
            raise UserError(f"{s.path}: model {s.label!r} has classes {short_classes(runner.classes)} but the "
                            f"others have {short_classes(ref_classes)}; benchmark models of one dataset together")
        ref_classes = ref_classes or list(runner.classes)
        check_batches(s.label, s.path, plan.batches, runner.fixed_batch, runner.batch_range)
        mrow = model_row(s, runner, info, load_s, rss_before, load_peak)
        pool_imgs = timing_images(runner, dataset, images, pool, plan.batches)
        rows = time_batches(s, runner, mrow, pool_imgs, images, plan, probes, probes.peaks.get(device))
        lrows = sweep_load(s, runner, mrow, pool_imgs[0], plan)
        if dataset is not None:
            mrow.update(measure_accuracy(runner, dataset, ref_folder, is_reference, plan.limit, plan.progress,
                                         f"{s.label} accuracy"))
    finally:
        runner.close()
        del runner
        gc.collect()
    return mrow, rows, lrows, ref_classes


def model_row(s: ModelSpec, runner, info: dict, load_s: float, rss_before, load_peak) -> dict:
    """The report's row of one model: what it is, its size, FLOPs, load time and memory."""
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
    return mrow


def timing_images(runner, dataset, images: list[Path], pool: int, batches: Sequence[int]) -> list[np.ndarray]:
    """The decoded images the model scope stages: the dataset's, the end-to-end files', or generated ones."""
    if dataset is not None:
        return [dataset.load(i)[0] for i in range(min(pool, len(dataset)))]
    if images:
        from ..data.io import read_image

        return [read_image(p) for p in images]
    from ..data.samples import generated_images

    return generated_images(*runner.input_size, max(batches))


def time_batches(s: ModelSpec, runner, mrow: dict, pool_imgs, images: list[Path], plan: Plan, probes: Probes,
                 peak: dict | None) -> list[dict]:
    """One result row per batch size and scope (latency statistics, throughput, memory, FLOP rate)."""
    rows = []
    for b in plan.batches:
        staged = np.stack([runner.prepare(pool_imgs[k % len(pool_imgs)]) for k in range(b)])
        calls, timers = {}, {}
        for sc in plan.scopes:
            if sc == "model":
                calls[sc], timers[sc] = runner.model_timer(staged)
            else:
                calls[sc], timers[sc] = end2end_call(runner, images, b), "wall clock (time.perf_counter)"
        probes.memory.reset()
        probes.gpu_memory.reset()
        if len(calls) > 1:  # both scopes: call by call in turn, so their ratio is from the same moments
            by_scope = collect_interleaved(calls, plan.warmup, plan.iterations, plan.duration, plan.progress,
                                           f"{s.label} b{b} {'+'.join(calls)}")
            rows += [dict(result_row(s, runner, mrow, b, sc, timers[sc], by_scope[sc], plan, probes, peak),
                          interleaved_with=[o for o in calls if o != sc]) for sc in calls]
            continue
        for sc, call in calls.items():
            samples = collect(call, plan.warmup, plan.iterations, plan.duration, plan.progress, f"{s.label} b{b} {sc}")
            rows.append(result_row(s, runner, mrow, b, sc, timers[sc], samples, plan, probes, peak))
    return rows


def result_row(s: ModelSpec, runner, mrow: dict, batch: int, scope: str, timer: str, samples: list[float],
               plan: Plan, probes: Probes, peak: dict | None) -> dict:
    stats = latency_stats(samples)
    row = {"model": s.label, "path": str(s.path), "backend": runner.backend,
           "precision": runner.precision, "precision_used": mrow["precision_used"],
           "device": str(runner.device()), "batch": batch, "scope": scope,
           "input_size": list(runner.input_size), "timer": timer, "warmup": plan.warmup,
           "concurrency": 1, "iterations": len(samples),
           "latency_ms": {k: stats[k] for k in ("mean", "std", "p50", "p90", "p95", "p99", "min", "max")},
           "throughput_ips": throughput_ips(batch, stats["mean"]),
           "peak_rss_mb": probes.memory.peak_mb(), **probes.gpu_memory.read(),
           "file_size_mb": mrow["file_size_mb"], "gflops_per_image": mrow["gflops_per_image"]}
    if mrow["flops_per_image"] and peak:
        achieved = mrow["flops_per_image"] * row["throughput_ips"] / 1e9
        row["achieved_gflops"] = achieved
        row["fraction_of_fp32_peak"] = achieved / peak["gflops"] if peak["gflops"] else None
    else:
        row["achieved_gflops"] = row["fraction_of_fp32_peak"] = None
    if plan.keep_samples:
        row["samples_ms"] = [round(v, 6) for v in samples]
    return row


def sweep_load(s: ModelSpec, runner, mrow: dict, image: np.ndarray, plan: Plan) -> list[dict]:
    """One load row per level of the sweep: N requests of one image in flight (:func:`load_level`)."""
    rows = []
    if not plan.levels:
        return rows
    one = np.stack([runner.prepare(image)])
    for n in plan.levels:
        workers, how = runner.request_workers(one, n)
        if plan.progress:
            tqdm.write(f"{s.label}: {n} in flight ({how})")
        samples, wall = load_level(workers, plan.warmup, plan.iterations, plan.duration)
        del workers
        stats = latency_stats(samples)
        rows.append({
            "model": s.label, "path": str(s.path), "backend": runner.backend,
            "precision": runner.precision, "precision_used": mrow["precision_used"],
            "device": str(runner.device()), "batch": 1, "scope": "load", "concurrency": n,
            "requests": len(samples), "wall_s": wall, "how": how,
            "timer": "wall clock per request (time.perf_counter), all requests of a level started together",
            "latency_ms": {k: stats[k] for k in ("mean", "p50", "p90", "p99", "min", "max")},
            "throughput_ips": len(samples) / wall if wall > 0 else None})
    return rows


# ----------------------------------------------------------------------------- after all models

def compare_with_reference(results: list[dict], load_rows: list[dict], model_rows: list[dict], ref: str) -> None:
    """Each result row gets its speed-up over the reference's row of the same batch and scope and
    its model's accuracy; each load row its model's mIoU."""
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
