"""pspnet-bench: statistics on known timings, agreement, FLOPs, memory probe, a real run with a tiny
.pt and its ONNX on generated CamVid-layout data, and bad inputs through the real CLI."""
from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import THREADS, TINY_SIZE, make_tiny_model, run_cli, tiny_meta
from pspnet_deploy.bench import (latency_stats, parse_model_arg, pixel_agreement, run_bench,
                                 throughput_ips)
from pspnet_deploy.errors import UserError
from pspnet_deploy.memory import MemoryProbe
from pspnet_deploy.report import CSV_COLUMNS

BINS = (1, 2, 4)  # divide the 8x12 feature map: the static pooling is plain AveragePool (no FLOPs of its own)
REPORT_FILES = ("report.json", "report.md", "report.csv", "latency_distribution.png", "latency_vs_miou.png")


# ----------------------------------------------------------------------------- fixtures

def _camvid_meta(classes=None) -> dict:
    from pspnet_deploy.data.camvid import CAMVID_CLASSES, CAMVID_PALETTE

    meta = tiny_meta()
    meta["classes"] = list(classes or CAMVID_CLASSES)
    meta["palette"] = [list(c) for c in CAMVID_PALETTE][: len(meta["classes"])]
    return meta


def _export(ckpt: Path, path: Path, **kw) -> Path:
    """A test ONNX written by pspnet-export's exporter (no parity run)."""
    from pspnet_deploy.export import export_onnx

    export_onnx(str(ckpt), str(path), input_size=TINY_SIZE, verify=False, progress=False, threads=THREADS, **kw)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    from pspnet_deploy.checkpoint import save_checkpoint

    d = tmp_path_factory.mktemp("bench_models")
    model = make_tiny_model(num_classes=11, bins=BINS)
    meta = _camvid_meta()
    ckpt = save_checkpoint(d / "tiny.pt", model, meta)
    out = {"pt": ckpt,
           "onnx": _export(ckpt, d / "tiny.onnx", dynamic_batch=(1, 2, 4)),
           "onnx_b1": _export(ckpt, d / "tiny_b1.onnx", batch=1),
           "other_classes": save_checkpoint(d / "other.pt", model,
                                            _camvid_meta([f"c{i}" for i in range(11)]))}
    (d / "model.bin").write_bytes(b"not a model")
    out["unknown"] = d / "model.bin"
    return out


@pytest.fixture(scope="module")
def camvid_dir(tmp_path_factory) -> Path:
    """Four 72x100 image/mask pairs in the CamVid (SegNet) layout: 11 classes, 11 = void."""
    root = tmp_path_factory.mktemp("camvid")
    rng = np.random.default_rng(1)
    for split in ("val",):
        (root / split).mkdir()
        (root / f"{split}annot").mkdir()
        for i in range(4):
            small = rng.integers(0, 256, size=(9, 12, 3), dtype=np.uint8)
            img = cv2.resize(small, (100, 72), interpolation=cv2.INTER_CUBIC)
            mask = cv2.resize(rng.integers(0, 12, size=(6, 8), dtype=np.uint8), (100, 72),
                              interpolation=cv2.INTER_NEAREST)
            cv2.imwrite(str(root / split / f"f{i}.png"), img)
            cv2.imwrite(str(root / f"{split}annot" / f"f{i}.png"), mask)
    return root


def _cli(*args, timeout=240) -> subprocess.CompletedProcess:
    return run_cli("pspnet_deploy.cli.bench", *args, timeout=timeout)


# ----------------------------------------------------------------------------- pure functions

def test_latency_stats_on_known_timings():
    s = latency_stats([float(v) for v in range(1, 101)])  # 1, 2, ..., 100 ms
    assert s["mean"] == pytest.approx(50.5)
    assert s["std"] == pytest.approx(29.011491975882016)  # sample std (ddof=1) of 1..100
    assert (s["min"], s["max"], s["count"]) == (1.0, 100.0, 100)
    # linear interpolation between closest ranks: p = 1 + q * 99
    assert s["p50"] == pytest.approx(50.5)
    assert s["p90"] == pytest.approx(90.1)
    assert s["p95"] == pytest.approx(95.05)
    assert s["p99"] == pytest.approx(99.01)


def test_latency_stats_order_free_single_and_outlier():
    assert latency_stats([3.0, 1.0, 2.0]) == latency_stats([1.0, 2.0, 3.0])
    one = latency_stats([7.25])
    assert one["std"] == 0.0 and all(one[k] == 7.25 for k in ("mean", "p50", "p99", "min", "max"))
    s = latency_stats([10.0] * 99 + [1000.0])  # one stall: the tail shows it, the median does not
    assert s["p50"] == 10.0 and s["p95"] == 10.0 and s["max"] == 1000.0
    assert s["p99"] == pytest.approx(10.0 + 0.01 * 990.0)
    assert s["mean"] == pytest.approx(19.9)
    with pytest.raises(UserError):
        latency_stats([])
    assert throughput_ips(4, 20.0) == pytest.approx(200.0)


def test_pixel_agreement():
    ref = np.array([[0, 1, 2], [3, 4, 5]])
    cand = np.array([[0, 1, 9], [3, 9, 5]], dtype=np.uint8)
    assert pixel_agreement(ref, cand) == (4, 6)
    assert pixel_agreement(ref, ref) == (6, 6)
    with pytest.raises(ValueError):
        pixel_agreement(ref, ref[:1])


def test_parse_model_arg(models):
    spec = parse_model_arg(f"{models['pt']}:fp32-torch")
    assert spec.path == models["pt"] and spec.label == "fp32-torch" and spec.kind == "torch"
    assert parse_model_arg(str(models["onnx"])).label == "tiny"
    assert parse_model_arg((models["onnx"], "ort")).label == "ort"
    with pytest.raises(UserError, match="unknown model file type"):
        parse_model_arg(models["unknown"])
    with pytest.raises(UserError, match="not found"):
        parse_model_arg(models["pt"].with_name("missing.pt"))


def test_flops_torch_and_onnx_agree(models, tmp_path):
    from pspnet_deploy.checkpoint import load_checkpoint
    from pspnet_deploy.flops import onnx_flops, torch_flops

    cfg = load_checkpoint(models["pt"])["meta"]["model"]
    ft = torch_flops(cfg, TINY_SIZE)
    fo = onnx_flops(models["onnx"])
    assert fo["uncounted_nodes"] == [] and fo["counted_nodes"] > 20
    assert fo["flops"] == ft  # same convention (2 x conv MACs), batch pinned to 1
    # by hand: the 1x1 classifier alone is 2 * 8*12 positions * 32 in * 11 out
    assert ft > 2 * 8 * 12 * 32 * 11
    assert onnx_flops(models["onnx_b1"])["flops"] == ft
    # symbolic H and W: a lower bound until the input size is given
    import onnx

    g = onnx.load(str(models["onnx_b1"]))
    del g.graph.value_info[:]
    for d, name in zip(g.graph.input[0].type.tensor_type.shape.dim[2:], ("H", "W")):
        d.dim_param = name
    dyn = tmp_path / "dynamic_hw.onnx"
    onnx.save(g, str(dyn))
    lower = onnx_flops(dyn)  # the backbone is unknown; only what follows the static pooling's fixed sizes counts
    assert len(lower["uncounted_nodes"]) > 20 and lower["flops"] < ft / 20
    assert onnx_flops(dyn, TINY_SIZE)["flops"] == ft
    assert torch_flops(cfg, (128, 192)) > 3.5 * ft  # ~4x the pixels


def test_memory_probe_resets_and_sees_a_peak():
    probe = MemoryProbe()
    if not probe.resettable:
        pytest.skip("this kernel does not allow resetting VmHWM (/proc/self/clear_refs)")
    import mmap

    probe.reset()
    base = probe.peak_mb()
    # 64 MiB straight from the kernel, every page touched, then unmapped: not through malloc, whose
    # caching of freed blocks depends on what ran before (with a numpy array, this test failed
    # whenever tests/test_qat.py ran first: the freed block stayed resident)
    block = mmap.mmap(-1, 64 * 2 ** 20)
    for off in range(0, len(block), mmap.PAGESIZE):
        block[off] = 1
    high = probe.peak_mb()
    block.close()
    probe.reset()
    assert high - base > 50
    assert probe.peak_mb() < high - 50


def test_dataset_images_from_in_memory_dataset(tmp_path):
    pytest.importorskip("pspnet_deploy.data.synthetic")
    from pspnet_deploy.bench import _dataset_images
    from pspnet_deploy.data import open_dataset

    ds = open_dataset("synthetic", "val")
    paths = _dataset_images(ds, tmp_path, 3)  # its image_paths are names, not files: written once
    assert len(paths) == 3
    img = cv2.imread(str(paths[0]))
    assert img is not None and img.shape[:2] == ds.load(0)[0].shape[:2]


# ----------------------------------------------------------------------------- a real run

def test_cli_real_run_pt_and_onnx_with_data(models, camvid_dir, tmp_path):
    out = tmp_path / "bench"
    r = _cli("--model", f"{models['pt']}:torch-fp32", "--model", f"{models['onnx']}:ort-fp32",
             "--data", camvid_dir, "--split", "val", "--limit", "3", "--batch", "1", "2",
             "--iterations", "3", "--warmup", "1", "--threads", "1", "--peak-size", "256", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    for name in REPORT_FILES:
        assert (out / name).is_file(), name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left

    rep = json.loads((out / "report.json").read_text())
    env = rep["environment"]
    for key in ("cpu", "logical_cpus", "usable_cpus", "torch_threads", "onnxruntime_threads", "versions",
                "fp32_peak", "memory_method", "load_average_at_start"):
        assert key in env, key
    assert env["torch_threads"] == 1 and env["onnxruntime_threads"] == 1
    assert env["fp32_peak"]["cpu"]["gflops"] > 0 and "torch.mm" in env["fp32_peak"]["cpu"]["method"]
    assert {"torch", "onnxruntime", "onnx", "numpy"} <= set(env["versions"])
    from pspnet_deploy.machine import cpu_info

    here = cpu_info()  # the machine record names the CPU: vendor, family, model, stepping, instruction sets
    for key in ("cpu_vendor", "cpu_family", "cpu_model", "cpu_stepping", "cpu_source", "isa"):
        assert env[key] == here[key], key

    res = rep["results"]
    assert rep["settings"]["scopes_interleaved"] is True
    assert len(res) == 2 * 2 * 2  # models x batches x scopes
    assert {(x["model"], x["batch"], x["scope"]) for x in res} == {
        (m, b, s) for m in ("torch-fp32", "ort-fp32") for b in (1, 2) for s in ("model", "end2end")}
    for x in res:
        lat = x["latency_ms"]
        assert set(lat) == {"mean", "std", "p50", "p90", "p95", "p99", "min", "max"}
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert lat["min"] <= lat["mean"] <= lat["max"]
        assert len(x["samples_ms"]) == x["iterations"] == 3
        # both scopes were timed call by call in turn (their ratio comes from the same moments)
        assert x["interleaved_with"] == [{"model": "end2end", "end2end": "model"}[x["scope"]]]
        assert latency_stats(x["samples_ms"])["p90"] == pytest.approx(lat["p90"], rel=1e-5)
        assert x["throughput_ips"] == pytest.approx(x["batch"] * 1000 / lat["mean"])
        assert x["backend"] == ("torch" if x["model"] == "torch-fp32" else "onnxruntime")
        assert x["precision"] == "fp32" and x["peak_rss_mb"] > 50
        assert x["gflops_per_image"] > 0 and x["fraction_of_fp32_peak"] > 0
        assert x["achieved_gflops"] == pytest.approx(x["gflops_per_image"] * x["throughput_ips"], rel=1e-6)
        if x["model"] == "torch-fp32":
            assert x["speedup_vs_ref"] == pytest.approx(1.0)
        else:
            ref = next(y for y in res if y["model"] == "torch-fp32" and (y["batch"], y["scope"]) ==
                       (x["batch"], x["scope"]))
            assert x["speedup_vs_ref"] == pytest.approx(ref["latency_ms"]["mean"] / lat["mean"])

    # accuracy: same numbers as pspnet-eval's evaluate() on the same runner; ONNX agrees with torch
    from pspnet_deploy.data import open_dataset
    from pspnet_deploy.evaluate import evaluate
    from pspnet_deploy.runners import load_runner

    direct = evaluate(load_runner(models["pt"]), open_dataset(camvid_dir, "val"), limit=3, progress=False)
    m = {x["model"]: x for x in rep["models"]}
    assert m["torch-fp32"]["miou"] == pytest.approx(direct["miou"])
    assert m["torch-fp32"]["pixel_accuracy"] == pytest.approx(direct["pixel_accuracy"])
    got = m["torch-fp32"]["per_class_iou"]
    assert list(got) == list(direct["per_class_iou"])
    for name, v in direct["per_class_iou"].items():
        assert (got[name] is None) if v is None else got[name] == pytest.approx(v)
    assert m["torch-fp32"]["pixel_agreement"] == 1.0
    assert m["ort-fp32"]["pixel_agreement"] > 0.99  # same weights, FP32 both: argmax flips only on near-ties
    assert m["ort-fp32"]["miou"] == pytest.approx(direct["miou"], abs=0.02)
    assert m["torch-fp32"]["gflops_per_image"] == pytest.approx(m["ort-fp32"]["gflops_per_image"])
    assert m["torch-fp32"]["num_images"] == 3 and m["torch-fp32"]["file_size_mb"] > 1

    rows = list(csv.DictReader(io.StringIO((out / "report.csv").read_text())))
    assert list(rows[0].keys()) == CSV_COLUMNS and len(rows) == len(res)
    assert float(rows[0]["p99_ms"]) == pytest.approx(res[0]["latency_ms"]["p99"], rel=1e-4)
    assert rows[0]["scope"] in ("model", "end2end") and rows[0]["miou"] != ""

    md = (out / "report.md").read_text()
    for heading in ("## Environment", "## Latency, scope `model`", "## Latency, scope `end2end`", "## Models",
                    "### Per-class IoU (%)"):
        assert heading in md
    assert "| model | backend | precision | runs as | batch | mean ms |" in md and "| ref |" in md
    assert md.count("| torch-fp32 | torch | fp32 | fp32 |") == 2 * 2  # batches x scopes
    assert md.count("| torch-fp32 | torch | fp32 |") == 2 * 2 + 1  # + the models table
    assert "| torch-fp32 | torch | fp32 | cpu |" in md
    assert "![latency_vs_miou.png](latency_vs_miou.png)" in md

    for name in ("latency_distribution.png", "latency_vs_miou.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape[0] > 200 and img.shape[1] > 300 and img.std() > 5


def test_library_run_without_data_model_scope_duration(models, tmp_path):
    rep = run_bench([models["onnx_b1"], models["onnx_b1"]], tmp_path / "b", scope="model", duration=0.2, warmup=0,
                    threads=1, peak=False, progress=False)
    row, again = rep["results"]
    assert (row["model"], again["model"]) == ("tiny_b1", "tiny_b1#2")  # repeated default labels are numbered
    assert again["speedup_vs_ref"] == pytest.approx(row["latency_ms"]["mean"] / again["latency_ms"]["mean"])
    assert row["scope"] == "model" and row["iterations"] >= 1 and row["fraction_of_fp32_peak"] is None
    assert rep["settings"]["cuda_graph"] is False
    assert rep["models"][0].get("miou") is None
    assert (tmp_path / "b" / "report.json").is_file() and (tmp_path / "b" / "latency_distribution.png").is_file()
    assert not (tmp_path / "b" / "latency_vs_miou.png").exists()  # no accuracy: no Pareto picture


# ----------------------------------------------------------------------------- bad input via the CLI

@pytest.mark.parametrize("case", ["unknown_kind", "class_mismatch", "batch_too_large", "zero_iterations",
                                  "cuda_graph_without_engine"])
def test_cli_bad_input_one_line_nonzero_nothing_written(models, tmp_path, case):
    out = tmp_path / "out"
    args = {
        "unknown_kind": ["--model", models["pt"], "--model", models["unknown"]],
        "class_mismatch": ["--model", models["pt"], "--model", models["other_classes"]],
        "batch_too_large": ["--model", models["onnx_b1"], "--batch", "1", "4"],
        "zero_iterations": ["--model", models["pt"], "--iterations", "0"],
        "cuda_graph_without_engine": ["--model", models["pt"], "--model", models["onnx_b1"], "--cuda-graph"],
    }[case]
    expect = {"unknown_kind": "unknown model file type", "class_mismatch": "classes",
              "batch_too_large": "fixed batch of 1", "zero_iterations": "--iterations must be at least 1",
              "cuda_graph_without_engine": "--cuda-graph applies to TensorRT engines (.engine) only"}[case]
    r = _cli(*args, "--out", out, "--iterations" if case != "zero_iterations" else "--warmup", "2", "--no-peak",
             timeout=120)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("pspnet-bench: error:") and expect in lines[0]
    assert "Traceback" not in r.stderr
    assert not out.exists() or not any(out.iterdir())


def test_collect_interleaved_alternates_calls():
    """The scopes of one model are called A B A B ... after the warm-up, each sample its own call's time."""
    from pspnet_deploy.bench.timing import collect_interleaved

    order = []

    def make(name, ms):
        def call():
            order.append(name)
            return ms
        return call

    got = collect_interleaved({"model": make("model", 1.0), "end2end": make("end2end", 2.0)}, warmup=1,
                              iterations=3, duration=None, progress=False, desc="t")
    assert order == ["model", "end2end"] * 4  # 1 warm-up round + 3 timed rounds
    assert got == {"model": [1.0] * 3, "end2end": [2.0] * 3}
