"""The recommendation: the fastest (model, concurrency) within an accuracy budget against the
reference and an optional p50 limit, with why each faster candidate was rejected."""
from __future__ import annotations

from typing import Sequence

from ..errors import UserError


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


def recommendation(model_rows: Sequence[dict], results: Sequence[dict], load_rows: Sequence[dict],
                   max_miou_drop: float, max_latency_ms: float | None, reference: str) -> dict:
    """:func:`recommend` over the load sweep's points, or (without a sweep) the model scope's at
    batch 1, one request at a time; ``points`` in the answer says which."""
    points = list(load_rows) or [r for r in results if r["scope"] == "model" and r["batch"] == 1]
    rec = recommend(model_rows, points, float(max_miou_drop), max_latency_ms, reference)
    rec["points"] = "load sweep" if load_rows else "model scope, batch 1, one request at a time"
    return rec
