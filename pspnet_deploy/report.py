"""Benchmark reports: report.json, report.md, report.csv and PNG plots, all written atomically.

``report.json`` schema (``format: pspnet-deploy/bench``, ``version: 1``)::

    {"environment": {cpu, logical_cpus, physical_cores, usable_cpus, torch_threads, onnxruntime_threads,
                     device, gpu, versions, fp32_peak: {device: {gflops, method, ...}}, memory_method,
                     load_average_at_start, load_average_at_end, ...},
     "settings": {scopes, batches, warmup, iterations, duration_s, threads, data, reference, ...},
     "scope_definitions": {"model": "...", "end2end": "..."},
     "models": [{model, path, backend, precision, file_size_mb, gflops_per_image, miou, pixel_accuracy,
                 per_class_iou, pixel_agreement, peak_rss_load_mb, ...}],
     "results": [{model, backend, precision, device, batch, scope, timer, iterations,
                  latency_ms: {mean, std, p50, p90, p95, p99, min, max}, throughput_ips, speedup_vs_ref,
                  miou, pixel_accuracy, pixel_agreement, peak_rss_mb, file_size_mb, gflops_per_image,
                  achieved_gflops, fraction_of_fp32_peak, samples_ms}],
     "files": [...]}

Non-finite numbers are written as ``null``. The JSON is written last, so its presence means the
other files of the run are complete.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from .utils import atomic_write_bytes, atomic_write_text

SCOPE_DEFINITIONS = {
    "model": "inputs already preprocessed at the model size and staged in the runner's memory (a uint8 model: "
             "the resized pixels, its preprocessing runs in the graph); one call = "
             "runner.infer(batch) (the network plus the runner's input/output handling)",
    "end2end": "one call = decode the image files from disk (page cache), preprocess, infer, and postprocess "
               "each output to a label map at the original image size",
}

CSV_COLUMNS = ["model", "path", "backend", "precision", "precision_used", "device", "batch", "scope", "timer", "warmup", "iterations",
               "mean_ms", "std_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "min_ms", "max_ms", "throughput_ips",
               "speedup_vs_ref", "miou", "pixel_accuracy", "pixel_agreement", "peak_rss_mb", "gpu_torch_peak_mb",
               "gpu_device_used_mb", "file_size_mb", "gflops_per_image", "achieved_gflops", "fraction_of_fp32_peak"]

PLOT_PARETO = "latency_vs_miou.png"
PLOT_DISTRIBUTION = "latency_distribution.png"
#: every file a report folder gets (declared to the run's file plan before a benchmark starts)
REPORT_FILES = ("report.json", "report.md", "report.csv", PLOT_PARETO, PLOT_DISTRIBUTION)
PLOT_LOAD = "latency_vs_throughput.png"


def _png_bytes(fig) -> bytes:
    """A finished matplotlib figure as PNG bytes (the caller closes it)."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def clean(obj):
    """Recursively replace NaN/inf by None (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def _fmt(v, digits: int = 2, pct: bool = False, suffix: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if pct:
        return f"{100 * v:.{digits}f}"
    return f"{v:.{digits}f}{suffix}"


def render_csv(report: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in report["results"]:
        lat = r["latency_ms"]
        flat = dict(r)
        for k in ("mean", "std", "p50", "p90", "p95", "p99", "min", "max"):
            flat[f"{k}_ms"] = lat[k]
        row = []
        for c in CSV_COLUMNS:
            v = flat.get(c)
            if isinstance(v, float):
                v = "" if not math.isfinite(v) else f"{v:.6g}"
            row.append("" if v is None else v)
        w.writerow(row)
    return buf.getvalue()


def _table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> list[str]:
    align = align or ["l"] + ["r"] * (len(header) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def _environment_rows(env: dict) -> list[list[str]]:
    """The report's environment table: the machine record (CPU, ISA, threads, GPU, versions, load)."""
    v = env.get("versions", {})
    gpu = env.get("gpu")
    ident = " ".join(f"{k} {env[f'cpu_{k}']}" for k in ("vendor", "family", "model", "stepping")
                     if env.get(f"cpu_{k}") is not None)
    erows = [["CPU", env.get("cpu", "-") + (f" ({ident})" if ident else "")],
             ["CPUs (logical / physical cores / usable)", f"{env.get('logical_cpus')} / {env.get('physical_cores')} / "
                                                           f"{env.get('usable_cpus')}"],
             ["ISA (the instruction sets that matter to OpenVINO / oneDNN / ONNX Runtime)",
              ", ".join(env.get("isa") or []) or "-"],
             ["torch threads", str(env.get("torch_threads"))],
             ["onnxruntime threads", str(env.get("onnxruntime_threads"))],
             ["device", str(env.get("device"))],
             ["GPU", "none" if not gpu else f"{gpu['name']} ({gpu['memory_gb']} GB, CUDA {gpu.get('cuda')})"],
             ["versions", ", ".join(f"{k} {val}" for k, val in v.items())],
             ["load average (start / end)", f"{env.get('load_average_at_start')} / {env.get('load_average_at_end')}"]]
    for dev, pk in (env.get("fp32_peak") or {}).items():
        erows.append([f"measured FP32 peak ({dev})", f"{pk['gflops']:.1f} GFLOP/s: {pk['method']}"])
    erows.append(["memory", env.get("memory_method", "-")])
    return erows


def render_markdown(report: dict) -> str:
    env = report["environment"]
    st = report["settings"]
    ref = st.get("reference")
    lines = [f"# pspnet-bench report", "", f"Created {report.get('created', '')}. Reference model (speed-ups, "
             f"agreement): **{ref}**.", ""]
    erows = _environment_rows(env)
    lines += ["## Environment", ""] + _table(["", ""], erows, ["l", "l"]) + [""]
    it = (f"{st['iterations']} timed calls" if st.get("iterations") else f"{st.get('duration_s')} s of calls")
    lines += [f"Settings: per measurement {it} after {st.get('warmup')} warm-up call(s); batches {st.get('batches')}; "
              f"end-to-end images: {st.get('end2end_images') or '-'}.", ""]

    # latency tables per scope
    for scope in st.get("scopes", []):
        rows = [r for r in report["results"] if r["scope"] == scope]
        if not rows:
            continue
        lines += [f"## Latency, scope `{scope}`", "", f"_{report['scope_definitions'][scope]}._", ""]
        trs = []
        for r in rows:
            lat = r["latency_ms"]
            sp = r.get("speedup_vs_ref")
            trs.append([r["model"], r["backend"], r["precision"], r.get("precision_used") or r["precision"],
                        str(r["batch"]), _fmt(lat["mean"]), _fmt(lat["std"]),
                        _fmt(lat["p50"]), _fmt(lat["p90"]), _fmt(lat["p95"]), _fmt(lat["p99"]),
                        _fmt(lat["min"]), _fmt(lat["max"]), _fmt(r["throughput_ips"], 1),
                        "ref" if r["model"] == ref else _fmt(sp, 2, suffix="x"), _fmt(r.get("peak_rss_mb"), 0),
                        "-" if r.get("fraction_of_fp32_peak") is None else f"{100 * r['fraction_of_fp32_peak']:.1f} %"])
        lines += _table(["model", "backend", "precision", "runs as", "batch", "mean ms", "std", "p50", "p90", "p95", "p99", "min",
                         "max", "images/s", "speed-up", "peak RSS MB", "of FP32 peak"],
                        trs, ["l", "l", "l", "l"] + ["r"] * 13)
        timers = sorted({r["timer"] for r in rows})
        lines += ["", "Timers: " + "; ".join(timers) + ".", ""]

    # models: size, FLOPs, accuracy
    models = report.get("models", [])
    if models:
        has_acc = any(m.get("miou") is not None for m in models)
        hdr = ["model", "backend", "precision", "device", "file MB", "GFLOPs/image", "load s", "peak RSS at load MB"]
        if has_acc:
            hdr += ["mIoU %", "pixel acc %", "agreement with ref %"]
        mrs = []
        for m in models:
            row = [m["model"], m["backend"], m["precision"], m.get("device", "-"), _fmt(m.get("file_size_mb")),
                   _fmt(m.get("gflops_per_image"), 3), _fmt(m.get("load_s")), _fmt(m.get("peak_rss_load_mb"), 0)]
            if has_acc:
                row += [_fmt(m.get("miou"), pct=True), _fmt(m.get("pixel_accuracy"), pct=True),
                        "ref" if m["model"] == ref else _fmt(m.get("pixel_agreement"), 3, pct=True)]
            mrs.append(row)
        lines += ["## Models", ""] + _table(hdr, mrs, ["l", "l", "l", "l"] + ["r"] * (len(hdr) - 4)) + [""]
        notes = [(m["model"], m["precision_note"]) for m in models if m.get("precision_note")]
        if notes:
            lines += ["**Precision notes** (\"runs as\" is read back from the compiled model, not assumed):", ""]
            lines += [f"- {name}: {note}." for name, note in notes] + [""]
        methods = sorted({m["flops_method"] for m in models if m.get("flops_method")})
        if methods:
            lines += ["FLOPs: " + "; ".join(methods) + ". The fraction of FP32 peak is achieved FLOP/s "
                      "(FLOPs per image x images/s) over the measured peak of the device; above 100 % means that "
                      "measurement underestimates the machine (contention while it ran, or backend kernels faster "
                      "than torch.mm at that size).", ""]
        if has_acc:
            d = st.get("data") or {}
            n = next((m.get("num_images") for m in models if m.get("num_images")), None)
            lines += [f"Accuracy on {d.get('spec')} [{d.get('split')}], {n} images, whole-image inference as "
                      f"pspnet-eval. Agreement: share of pixels whose label equals the reference model's.", ""]
            classes = list(next((m["per_class_iou"] for m in models if m.get("per_class_iou")), {}).keys())
            if classes:
                crs = [[c] + [_fmt((m.get("per_class_iou") or {}).get(c), pct=True) for m in models] for c in classes]
                lines += ["### Per-class IoU (%)", ""] + _table(["class"] + [m["model"] for m in models], crs) + [""]

    load = report.get("load") or []
    if load:
        hdr = ["model", "backend", "precision", "in flight", "requests", "p50 ms", "p99 ms", "img/s", "how"]
        lrs = [[r["model"], r["backend"], r["precision"], str(r["concurrency"]), str(r["requests"]),
                _fmt(r["latency_ms"]["p50"]), _fmt(r["latency_ms"]["p99"]), _fmt(r["throughput_ips"], 1), r["how"]]
               for r in load]
        lines += ["## Load sweep", "", "Requests of one image kept in flight together; latency per request, "
                  "throughput = images completed / wall time of the level.", ""]
        lines += _table(hdr, lrs, ["l", "l", "l"] + ["r"] * 5 + ["l"]) + [""]
    rec = report.get("recommendation")
    if rec:
        lines += ["## Recommendation", ""]
        if rec.get("model") is not None:
            lines += [f"**{rec['model']}** at {rec['concurrency']} in flight: {_fmt(rec['throughput_ips'], 1)} img/s, "
                      f"p50 {_fmt(rec['p50_ms'])} ms, mIoU {_fmt(rec['miou'], pct=True)} %. {rec['reason']} "
                      f"(points: {rec.get('points')}).", ""]
        else:
            lines += [rec["reason"] + ".", ""]
        if rec.get("rejected"):
            lines += _table(["rejected", "in flight", "img/s", "p50 ms", "why"],
                            [[r["model"], str(r["concurrency"]), _fmt(r["throughput_ips"], 1), _fmt(r["p50_ms"]),
                              r["why"]] for r in rec["rejected"]], ["l", "r", "r", "r", "l"]) + [""]
    plots = [p for p in report.get("plots", []) if p]
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)


def _plot_row(report: dict) -> tuple[int | None, str | None]:
    """Batch and scope used for the one-point-per-model plots: the first batch, model scope if run."""
    st = report["settings"]
    scopes = st.get("scopes") or []
    scope = "model" if "model" in scopes else (scopes[0] if scopes else None)
    batch = (st.get("batches") or [None])[0]
    return batch, scope


def plot_pareto(report: dict) -> bytes | None:
    """Latency (p50) vs mIoU, one point per model, with the Pareto front. None without accuracy."""
    batch, scope = _plot_row(report)
    pts = []
    for m in report.get("models", []):
        r = next((r for r in report["results"] if r["model"] == m["model"] and r["batch"] == batch
                  and r["scope"] == scope), None)
        if r is None or m.get("miou") is None or not math.isfinite(m["miou"]):
            continue
        pts.append((r["latency_ms"]["p50"], 100 * m["miou"], f"{m['model']} ({m['precision']})"))
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    try:
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], zorder=3)
        for x, y, name in pts:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        front, best = [], -math.inf
        for x, y, _ in sorted(pts, key=lambda p: (p[0], -p[1])):
            if y > best:
                front.append((x, y))
                best = y
        if len(front) > 1:
            ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="tab:orange", label="Pareto front", zorder=2)
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xlabel(f"p50 latency (ms), batch {batch}, scope {scope}")
        ax.set_ylabel("mIoU (%)")
        ax.set_title("Latency vs accuracy")
        ax.grid(True, alpha=0.3)
        return _png_bytes(fig)
    finally:
        plt.close(fig)


def plot_latency_distribution(report: dict) -> bytes | None:
    """Box plots of the per-call latencies, one box per model, one panel per scope (first batch)."""
    batch = (report["settings"].get("batches") or [None])[0]
    scopes = [s for s in report["settings"].get("scopes", [])
              if any(r["scope"] == s and r.get("samples_ms") for r in report["results"])]
    if not scopes:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(scopes), figsize=(6 * len(scopes), 4.5), dpi=110, squeeze=False)
    try:
        for ax, scope in zip(axes[0], scopes):
            rows = [r for r in report["results"] if r["scope"] == scope and r["batch"] == batch and r.get("samples_ms")]
            ax.boxplot([r["samples_ms"] for r in rows], showfliers=True, whis=(1, 99))
            ax.set_xticks(range(1, len(rows) + 1), [f"{r['model']}\n{r['precision']}" for r in rows], fontsize=8)
            ax.set_ylabel("latency per call (ms)")
            ax.set_title(f"scope {scope}, batch {batch} (whiskers p1-p99)")
            ax.grid(True, axis="y", alpha=0.3)
        return _png_bytes(fig)
    finally:
        plt.close(fig)


def plot_load(report: dict) -> bytes | None:
    """Latency-throughput curve per model (p50 solid, p99 dashed), points labelled with the number in
    flight, like perf_analyzer's. None without a load sweep."""
    load = report.get("load") or []
    if not load:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    try:
        for model in dict.fromkeys(r["model"] for r in load):
            rows = sorted((r for r in load if r["model"] == model), key=lambda r: r["concurrency"])
            x = [r["throughput_ips"] for r in rows]
            line, = ax.plot(x, [r["latency_ms"]["p50"] for r in rows], "o-", label=f"{model} p50")
            ax.plot(x, [r["latency_ms"]["p99"] for r in rows], "x--", color=line.get_color(), alpha=0.6,
                    label=f"{model} p99")
            for r in rows:
                ax.annotate(str(r["concurrency"]), (r["throughput_ips"], r["latency_ms"]["p50"]),
                            textcoords="offset points", xytext=(4, 4), fontsize=8)
        rec = report.get("recommendation") or {}
        if rec.get("model") is not None:
            ax.scatter([rec["throughput_ips"]], [rec["p50_ms"]], s=160, facecolors="none", edgecolors="red",
                       zorder=4, label="recommended")
        ax.set_xlabel("throughput (images/s)")
        ax.set_ylabel("latency per request (ms)")
        ax.set_title("Latency vs throughput (labels: requests in flight)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        return _png_bytes(fig)
    finally:
        plt.close(fig)


def write_reports(report: dict, out_dir: str | Path) -> list[str]:
    """Render everything in memory, then write each file atomically; report.json last."""
    out_dir = Path(out_dir)
    pngs = {PLOT_PARETO: plot_pareto(report), PLOT_DISTRIBUTION: plot_latency_distribution(report),
            PLOT_LOAD: plot_load(report)}
    report["plots"] = [name for name, data in pngs.items() if data is not None]
    files = list(report["plots"]) + ["report.csv", "report.md", "report.json"]
    report["files"] = files
    md = render_markdown(report)
    csv_text = render_csv(report)
    js = json.dumps(clean(report), indent=2, allow_nan=False) + "\n"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        from .errors import UserError

        raise UserError(f"{out_dir}: cannot create the output folder ({e.strerror}); choose another --out") from e
    for name, data in pngs.items():
        if data is not None:
            atomic_write_bytes(out_dir / name, data)
    atomic_write_text(out_dir / "report.csv", csv_text)
    atomic_write_text(out_dir / "report.md", md)
    atomic_write_text(out_dir / "report.json", js)
    return files
