"""Accuracy-driven mixed precision for INT8: which nodes to keep in FP32, and the report that says why.

1. Rank: each quantization unit (a weighted op or a residual Add, see
   :func:`pspnet_deploy.precision.qdq.quantizable_units`) is quantized *alone* and the model run on a
   few calibration images; its sensitivity is the noise it adds to the FP32 logits,
   ``mean((int8 - fp32)^2) / mean(fp32^2)`` (also reported: cosine, argmax disagreement).
2. Search: keep the top-k of the ranking in FP32 for k = 1, 2, 4, ... (at most ``limit``), measuring
   mIoU on the evaluation split each time, then bisect down to the smallest k that meets the
   budget. Every plan tried is recorded.
3. Report: ``<base>.sensitivity.json`` (ranking and plans), ``.md`` (the same as tables) and
   ``.png`` (bar chart of the ranking, kept nodes highlighted).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..utils import atomic_path, atomic_write_json, atomic_write_text, jsonable

__all__ = ["noise_metrics", "rank_units", "search_mixed_precision", "write_sensitivity_report"]


def noise_metrics(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Relative noise energy, cosine and argmax disagreement of candidate logits vs reference."""
    r = reference.astype(np.float64)
    c = candidate.astype(np.float64)
    if not np.isfinite(c).all():
        return {"noise": float("inf"), "cosine": float("nan"), "argmax_disagreement": 1.0}
    noise = float(np.mean((c - r) ** 2) / max(float(np.mean(r ** 2)), 1e-30))
    try:
        from ..compare import compare_outputs

        m = compare_outputs(reference, candidate)
        cos, agree = float(m["cosine"]), float(m["argmax_agreement"])
    except ImportError:  # pragma: no cover - compare.py is part of the package
        cos = float(np.dot(r.ravel(), c.ravel()) / max(np.linalg.norm(r) * np.linalg.norm(c), 1e-30))
        agree = float((r.argmax(1) == c.argmax(1)).mean())
    return {"noise": noise, "cosine": cos, "argmax_disagreement": 1.0 - agree}


def rank_units(units: Sequence[str], reference: np.ndarray, probe: Callable[[str], np.ndarray],
               progress: bool = True) -> list[dict]:
    """``probe(unit)`` -> logits with only ``unit`` quantized. Most sensitive first."""
    from tqdm import tqdm

    rows = []
    for u in tqdm(list(units), desc="sensitivity", disable=not progress, leave=False, dynamic_ncols=True):
        rows.append({"node": u, **noise_metrics(reference, probe(u))})
    rows.sort(key=lambda r: (-r["noise"] if np.isfinite(r["noise"]) else -np.inf, r["node"]))
    for k, r in enumerate(rows, 1):
        r["rank"] = k
    return rows


def search_mixed_precision(units: Sequence[str], reference: np.ndarray, probe: Callable[[str], np.ndarray],
                           trial: Callable[[list[str]], tuple[float, object]], fp32_miou: float, int8_miou: float,
                           budget_points: float, limit: int, progress: bool = True) -> dict:
    """Rank ``units`` and find the fewest FP32 nodes (<= ``limit``) whose INT8 model meets the budget.

    ``trial(fp32_nodes) -> (miou, artefact)`` builds and evaluates one plan. Returns ``ranking``,
    ``plans`` (each: fp32_nodes, miou, drop_points, met, path), ``best`` (the smallest plan that
    meets the budget, else the one with the least drop) and ``met``.
    """
    ranking = rank_units(units, reference, probe, progress)
    order = [r["node"] for r in ranking]
    plans: dict[int, dict] = {0: {"k": 0, "fp32_nodes": [], "miou": int8_miou,
                                  "drop_points": 100 * (fp32_miou - int8_miou),
                                  "met": 100 * (fp32_miou - int8_miou) <= budget_points, "path": None}}
    limit = max(0, min(int(limit), len(order)))

    def run(k: int) -> dict:
        if k not in plans:
            miou, path = trial(order[:k])
            drop = 100 * (fp32_miou - miou)
            plans[k] = {"k": k, "fp32_nodes": order[:k], "miou": miou, "drop_points": drop,
                        "met": drop <= budget_points, "path": path}
            if progress:
                import sys

                print(f"  keep {k:>3} node(s) FP32: mIoU {100 * miou:6.2f}, drop {drop:+.2f} points "
                      f"({'within' if plans[k]['met'] else 'over'} budget {budget_points:g})", file=sys.stderr)
        return plans[k]

    lo, hi = 0, None  # lo: largest k known to fail; hi: smallest k known to pass
    k = 1
    while k <= limit:
        if run(k)["met"]:
            hi = k
            break
        lo = k
        if k == limit:
            break
        k = min(2 * k, limit)
    if hi is not None:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if run(mid)["met"]:
                hi = mid
            else:
                lo = mid
    met_plans = [p for p in plans.values() if p["met"] and p["k"] > 0]
    if met_plans:
        best = min(met_plans, key=lambda p: (p["k"], p["drop_points"]))
    else:
        best = min(plans.values(), key=lambda p: (p["drop_points"], p["k"]))
    return {"ranking": ranking, "plans": [plans[k] for k in sorted(plans)], "best": best,
            "met": bool(met_plans), "limit": limit, "budget_points": budget_points, "fp32_miou": fp32_miou,
            "int8_miou": int8_miou, "kept": best["fp32_nodes"] if met_plans else []}


def _jsonable_plan(p: dict) -> dict:
    return {k: v for k, v in p.items() if k != "path"}


def write_sensitivity_report(search: dict, output: str | Path, title: str, budget_points: float,
                             fp32_miou: float) -> dict:
    """Write the report of the INT8 file ``output`` (:func:`pspnet_deploy.card.sensitivity_report_paths`:
    ``.sensitivity.json``, ``.md`` and ``.png``); returns their paths."""
    from ..card import sensitivity_report_paths

    files = {k: str(v) for k, v in sensitivity_report_paths(output).items()}
    kept = set(search["best"]["fp32_nodes"]) if search["met"] else set()
    doc = {"title": title, "budget_points": budget_points, "fp32_miou": fp32_miou, "int8_miou": search["int8_miou"],
           "met": search["met"], "limit": search["limit"], "kept_fp32": sorted(kept),
           "best": _jsonable_plan(search["best"]), "plans": [_jsonable_plan(p) for p in search["plans"]],
           "ranking": search["ranking"],
           "metric": "noise = mean((int8 - fp32)^2) / mean(fp32^2) of the logits with only that node quantized"}
    atomic_write_json(files["json"], jsonable(doc))
    lines = [f"# {title}", "",
             f"Budget: INT8 may lose at most {budget_points:g} mIoU points. FP32 mIoU {100 * fp32_miou:.2f}, "
             f"all-INT8 mIoU {100 * search['int8_miou']:.2f} "
             f"(drop {100 * (fp32_miou - search['int8_miou']):.2f} points).", ""]
    if search["met"]:
        b = search["best"]
        lines.append(f"**Met** by keeping {len(b['fp32_nodes'])} node(s) in FP32: mIoU {100 * b['miou']:.2f}, "
                     f"drop {b['drop_points']:.2f} points. Kept: {', '.join(f'`{n}`' for n in b['fp32_nodes'])}.")
    else:
        b = search["best"]
        lines.append(f"**Not met** within {search['limit']} FP32 node(s). Best plan: {len(b['fp32_nodes'])} node(s) "
                     f"in FP32, mIoU {100 * b['miou']:.2f}, drop {b['drop_points']:.2f} points. No model written.")
    lines += ["", "## Plans tried", "", "| FP32 nodes | mIoU (%) | drop (points) | within budget |", "|---:|---:|---:|:---:|"]
    for p in search["plans"]:
        lines.append(f"| {p['k']} | {100 * p['miou']:.2f} | {p['drop_points']:.2f} | {'yes' if p['met'] else 'no'} |")
    lines += ["", "## Sensitivity ranking (only this node quantized, on calibration images)", "",
              "| rank | node | noise (rel. MSE) | cosine | argmax disagreement (%) | kept FP32 |",
              "|---:|---|---:|---:|---:|:---:|"]
    for r in search["ranking"]:
        lines.append(f"| {r['rank']} | `{r['node']}` | {r['noise']:.3e} | {r['cosine']:.6f} | "
                     f"{100 * r['argmax_disagreement']:.3f} | {'yes' if r['node'] in kept else ''} |")
    atomic_write_text(files["md"], "\n".join(lines) + "\n")
    _plot(search["ranking"], kept, files["png"], title)
    return files


def _plot(ranking: list[dict], kept: set, path: str, title: str, top: int = 40) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = ranking[:top]
    n = max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(9, 1.5 + 0.28 * n))
    vals = [max(r["noise"], 1e-12) if np.isfinite(r["noise"]) else 1e3 for r in rows]
    colours = ["#d62728" if r["node"] in kept else "#1f77b4" for r in rows]
    labels = [r["node"] if len(r["node"]) <= 48 else "…" + r["node"][-47:] for r in rows]
    y = np.arange(len(rows))[::-1]
    ax.barh(y, vals, color=colours)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("logit noise with only this node in INT8 (relative MSE, log scale)")
    ax.set_title(title + ("\nred: kept in FP32" if kept else ""), fontsize=9)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
