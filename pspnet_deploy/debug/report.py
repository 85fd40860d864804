"""pspnet-debug's files: report.json (written last), report.md, error_per_layer.png and, with a
profile, time_per_group.png. Every file is written atomically."""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..report import _png_bytes, clean
from ..utils import atomic_write_bytes, atomic_write_text
from .graph import GROUPS

PLOT_ERRORS = "error_per_layer.png"
PLOT_TIME = "time_per_group.png"
FLOOR = 1e-12  # exact layers drawn at this value on the log axis


def _f(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}" if abs(v) < 1 else f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return str(v)


def plot_errors(report: dict) -> bytes | None:
    rows = report["layers"]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["index"] for r in rows]

    def val(v):
        return 1e6 if v is None or not math.isfinite(v) else max(v, FLOOR)

    fig, ax = plt.subplots(figsize=(max(8.0, min(24.0, len(rows) * 0.08)), 4.5))
    ax.plot(xs, [val(r["rel_l2"]) for r in rows], ".-", lw=1, ms=3, label="relative L2 error")
    outside = [(r["index"], r["outside_share"]) for r in rows if r["outside_share"] > 0]
    if outside:
        ax.plot(*zip(*outside), ".", ms=3, alpha=0.7, label="share of elements outside atol/rtol (when > 0)")
    ax.axhline(report["tolerance"]["max_outside"], color="tab:orange", lw=0.8, ls=":",
               label=f"max_outside {report['tolerance']['max_outside']:g}")
    ax.set_yscale("log")
    finite = [v for r in rows for v in (r["rel_l2"], r["outside_share"]) if v and math.isfinite(v) and v > 0]
    if finite:
        ax.set_ylim(bottom=min(finite) / 10)
    prev = None
    for r in rows:  # module-group boundaries
        if r["group"] != prev:
            ax.axvline(r["index"] - 0.5, color="0.7", lw=0.8)
            ax.text(r["index"], 1.02, r["group"], transform=ax.get_xaxis_transform(), fontsize=7, rotation=0)
            prev = r["group"]
    fd = report.get("first_divergence")
    if fd:
        ax.axvline(fd["index"], color="red", lw=1.2, ls="--")
        ax.annotate(f"first divergence: {fd['node']}", (fd["index"], val(fd["rel_l2"])), color="red", fontsize=8,
                    xytext=(5, 5), textcoords="offset points")
    ax.set_xlabel("layer (network order)")
    ax.set_ylabel("error (log)")
    ref, cand = Path(report["reference"]["path"]).name, Path(report["candidate"]["path"]).name
    ax.set_title(f"{cand} vs {ref}: error per layer", fontsize=9, pad=16)
    ax.legend(fontsize=7, loc="lower right")
    try:
        return _png_bytes(fig)
    finally:
        plt.close(fig)


def plot_time(report: dict) -> bytes | None:
    prof = report.get("profile")
    if not prof:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in prof if g.get("ms") is not None]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.bar([g["module"] for g in groups], [g["ms"] for g in groups], color="tab:blue")
    for i, g in enumerate(groups):
        if g.get("gflops"):
            ax.text(i, g["ms"], f"{g['gflops']:.2g} GF", ha="center", va="bottom", fontsize=7)
    ax.set_ylabel("ms per image (sum of layer times)")
    ax.set_title(f"{Path(report['candidate']['path']).name}: time per module group "
                 f"({report.get('profile_info', {}).get('source', '')})", fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    try:
        return _png_bytes(fig)
    finally:
        plt.close(fig)


def render_markdown(report: dict) -> str:
    ref, cand = report["reference"], report["candidate"]
    tol = report["tolerance"]
    mem = report["memory"]
    img = report["images"]
    lines = [f"# pspnet-debug: {Path(cand['path']).name} ({cand['kind']}, {cand['precision']}) vs "
             f"{Path(ref['path']).name} ({ref['kind']}, {ref['precision']})", ""]
    src = img.get("path") or img.get("kind")
    lines += [f"{img['count']} image(s) at {img['input_size'][0]}x{img['input_size'][1]} from {src}"
              + (f" [{img['split']}]" if img.get("split") else "")
              + f"; {len(report['layers'])} tensors compared; atol {tol['atol']:g}, rtol {tol['rtol']:g}, "
                f"max outside {tol['max_outside']:g}, amplification {tol['amplification']:g}.", "",
              f"Rule: {tol['rule']}.", "",
              f"Memory: {mem['bytes_per_image_all_tensors'] / 2**20:.1f} MiB of tensors per image (both sides), "
              f"{mem['chunks']} chunk(s).", ""]
    out = next((r for r in report["layers"] if r["tensor"] == "output"), None)
    if out is not None:
        lines += [f"Output: rel L2 {_f(out['rel_l2'])}, max abs {_f(out['max_abs'])}, cosine {_f(out['cosine'], 6)}, "
                  f"argmax agreement {_f(100 * out.get('argmax_agreement', float('nan')), 5)} %.", ""]
    fd = report.get("first_divergence")
    lines += ["## First divergence", ""]
    if fd is None:
        lines += ["None: no layer exceeds the tolerance.", ""]
    else:
        how = (f"amplifies its inputs' error {_f(fd['amplification'])}x" if fd["amplified"]
               else "exceeds the tolerance, but no layer amplifies the error it receives past the limit "
                    "(error accumulated gradually)")
        lines += [f"**`{fd['node']}`** (module `{fd['module']}`, group {fd['group']}, layer {fd['index']}): "
                  f"rel L2 {_f(fd['rel_l2'])}, max abs {_f(fd['max_abs'])}, {_f(100 * fd['outside_share'])} % outside "
                  f"tolerance, non-finite {fd['nonfinite']}; {how}.", ""]
        if fd.get("quantizers"):
            rows = [[q["kind"], f"`{q['tensor']}`", _f(q["scale_min"]), _f(q["scale_max"]),
                     "yes" if q["per_channel"] else "no", _f(q["range"]), _f(q.get("reference_absmax")),
                     _f(100 * q["clipped_share"]) + " %" if q.get("clipped_share") is not None else "-"]
                    for q in fd["quantizers"]]
            lines += ["Its quantizers:", "", "| input | tensor | scale min | scale max | per channel | range (qmax x scale) "
                      "| reference abs max | clipped |", "|---|---|---:|---:|---|---:|---:|---:|"]
            lines += ["| " + " | ".join(r) + " |" for r in rows]
            lines.append("")
    lines += ["## Per module group", "", "| group | layers | worst rel L2 | at | rel L2 at its end |", "|---|---:|---:|---|---:|"]
    for g in report["groups"]:
        lines.append(f"| {g['group']} | {g['layers']} | {_f(g['max_rel_l2'])} | `{g['worst_node']}` | {_f(g['last_rel_l2'])} |")
    lines.append("")
    if report.get("profile"):
        info = report.get("profile_info", {})
        lines += ["## Time per module group", "", f"Source: {info.get('source', '?')}; {info.get('note', '')}", "",
                  "| group | ms | share | GFLOPs | GFLOP/s | bound | precision (share of its time) |",
                  "|---|---:|---:|---:|---:|---|---|"]
        total = sum(g["ms"] for g in report["profile"] if g.get("ms")) or 1.0
        for g in report["profile"]:
            lines.append(f"| {g['module']} | {_f(g['ms'])} | {_f(100 * g['ms'] / total)} % | {_f(g.get('gflops'))} | "
                         f"{_f(g.get('gflops_per_s'))} | {g.get('bound') or '-'} | {g.get('precision') or '-'} |")
        lines += ["", f"![time per group]({PLOT_TIME})", ""]
    lines += [f"![error per layer]({PLOT_ERRORS})", "", "## Layers", "",
              "| # | node | module | rel L2 | max abs | cosine | outside | amplification |",
              "|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in report["layers"]:
        mark = " **<-**" if fd is not None and r["index"] == fd["index"] else ""
        lines.append(f"| {r['index']} | `{r['node']}`{mark} | `{r['module']}` | {_f(r['rel_l2'])} | {_f(r['max_abs'])} | "
                     f"{_f(r['cosine'], 6)} | {_f(100 * r['outside_share'])} % | {_f(r.get('amplification'))} |")
    return "\n".join(lines) + "\n"


def write_debug_report(report: dict, out_dir: str | Path) -> list[str]:
    d = Path(out_dir)
    files = []
    png = plot_errors(report)
    if png:
        atomic_write_bytes(d / PLOT_ERRORS, png)
        files.append(PLOT_ERRORS)
    png = plot_time(report)
    if png:
        atomic_write_bytes(d / PLOT_TIME, png)
        files.append(PLOT_TIME)
    atomic_write_text(d / "report.md", render_markdown(report))
    files += ["report.md", "report.json"]
    report["files"] = files
    atomic_write_text(d / "report.json", json.dumps(clean(report), indent=1) + "\n")
    return files


__all__ = ["GROUPS", "PLOT_ERRORS", "PLOT_TIME", "render_markdown", "write_debug_report"]
