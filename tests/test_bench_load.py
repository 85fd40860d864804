"""pspnet-bench --concurrency (load sweep) and the recommendation: report fields, plot, choices and
refusals. Tiny model, a few requests per level: the numbers are not checked, the bookkeeping is."""
from __future__ import annotations

import json

import pytest

from conftest import TINY_SIZE, run_cli

THREADS = 2


@pytest.fixture(scope="module")
def syn_models(tmp_path_factory, synthetic_checkpoint):
    from pspnet_deploy.export import export_onnx

    d = tmp_path_factory.mktemp("load")
    out = {}
    for key, kind, okind in (("float", "float", "logits"), ("u8", "uint8", "labels")):
        out[key] = d / f"{key}.onnx"
        export_onnx(str(synthetic_checkpoint), str(out[key]), input_size=TINY_SIZE, output_kind=okind, input_kind=kind,
                    verify=False, progress=False, threads=THREADS)
    r = run_cli("pspnet_deploy.cli.build_engine", str(out["u8"]), "--backend", "openvino", "--engine",
                str(d / "u8.fp32.xml"))
    assert r.returncode == 0, r.stderr
    out["ov"] = d / "u8.fp32.xml"
    return out


def test_sweep_rows_plot_and_recommendation(syn_models, tmp_path):
    from pspnet_deploy.bench import run_bench

    rep = run_bench([f"{syn_models['float']}:ref", f"{syn_models['ov']}:ov"], tmp_path / "b", scope="model",
                    iterations=4, warmup=1, concurrency=[2, 1], data="synthetic", limit=2, max_miou_drop=100 - 1e-6,
                    peak=False, progress=False, threads=THREADS)
    load = rep["load"]
    assert [(r["model"], r["concurrency"]) for r in load] == [("ref", 1), ("ref", 2), ("ov", 1), ("ov", 2)]
    for r in load:
        assert r["requests"] >= 4 and r["throughput_ips"] > 0 and r["scope"] == "load"
        assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
        assert r["miou"] is not None
    assert "infer requests" in load[3]["how"] and "threads" in load[1]["how"]
    assert all(r["concurrency"] == 1 for r in rep["results"])
    rec = rep["recommendation"]
    assert set(rec) >= {"model", "concurrency", "miou", "p50_ms", "throughput_ips", "reason", "rejected"}
    best = max(load, key=lambda r: r["throughput_ips"])
    assert (rec["model"], rec["concurrency"]) == (best["model"], best["concurrency"]) and rec["rejected"] == []
    on_disk = json.loads((tmp_path / "b" / "report.json").read_text())
    assert on_disk["recommendation"]["model"] == rec["model"] and len(on_disk["load"]) == 4
    assert (tmp_path / "b" / "latency_vs_throughput.png").stat().st_size > 1000
    md = (tmp_path / "b" / "report.md").read_text()
    assert "## Load sweep" in md and "## Recommendation" in md


def test_recommend_rejects_faster_candidates_with_reasons():
    from pspnet_deploy.bench import recommend

    models = [{"model": "fp32", "miou": 0.70}, {"model": "int8", "miou": 0.68}, {"model": "fp16", "miou": 0.699}]

    def pt(m, n, ips, p50):
        return {"model": m, "concurrency": n, "throughput_ips": ips, "latency_ms": {"p50": p50}}

    points = [pt("fp32", 1, 10, 100), pt("int8", 4, 40, 90), pt("fp16", 4, 30, 120), pt("fp16", 1, 20, 50)]
    rec = recommend(models, points, max_miou_drop=1.0, max_latency_ms=100)
    assert (rec["model"], rec["concurrency"]) == ("fp16", 1) and rec["miou"] == 0.699
    assert [(r["model"], r["concurrency"]) for r in rec["rejected"]] == [("int8", 4), ("fp16", 4)]
    assert "2.00 points below" in rec["rejected"][0]["why"] and "over the 100 ms limit" in rec["rejected"][1]["why"]
    none = recommend(models, points, max_miou_drop=0.0, max_latency_ms=1)
    assert none["model"] is None and len(none["rejected"]) == 4


def test_bad_requests(syn_models, tmp_path):
    base = ["--model", str(syn_models["float"]), "--out", str(tmp_path / "o"), "--no-peak"]
    r = run_cli("pspnet_deploy.cli.bench", *base, "--max-latency-ms", "5")
    assert r.returncode == 2 and "pass --max-miou-drop as well" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("pspnet_deploy.cli.bench", *base, "--max-miou-drop", "1")
    assert r.returncode == 2 and "pass --data" in r.stderr
    r = run_cli("pspnet_deploy.cli.bench", *base, "--concurrency", "0")
    assert r.returncode == 2 and "--concurrency levels must be at least 1" in r.stderr
    assert not (tmp_path / "o").exists()
