"""OpenVINO backend on the real OpenVINO runtime (CPU): build, sidecar, runner, bench, predict,
eval, Triton, and the refusals (corrupt .xml, missing .bin, sidecar from another version or CPU).

What this cannot check here: BF16 and VNNI kernels themselves. This machine's CPU has AVX2 only,
so a BF16 IR must resolve to FP32 *and say so*; on a CPU with avx512_bf16 / AMX the same test
asserts that it resolves to BF16 (the expectation follows the CPU, read from /proc/cpuinfo and
OpenVINO's OPTIMIZATION_CAPABILITIES, never hard-coded).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, TINY_SIZE

ov = pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def irs(tmp_path_factory, onnx_b1):
    """The tiny model as ONNX FP32 and INT8 (Q/DQ) and as FP32, BF16 and INT8 IRs."""
    from pspnet_deploy.cli.build_engine import make_variant
    from pspnet_deploy.engine.openvino import OVBuildOptions, build_openvino, plan_openvino_build

    d = tmp_path_factory.mktemp("ov")
    src = onnx_b1
    fp32 = d / "tiny.fp32.onnx"
    fp32.write_bytes(src.read_bytes())
    quiet = lambda m: None  # noqa: E731
    out = {"onnx": fp32, "dir": d}
    out["sc_fp32"] = build_openvino(fp32, log=quiet)
    out["sc_bf16"] = build_openvino(fp32, opts=OVBuildOptions(precision="bf16"), log=quiet)
    # --int8 --calib-data on the FP32 ONNX: the command layer calibrates (the project's calibration code) first
    opts = OVBuildOptions(precision="int8", calib_data="synthetic", calib_images=10, calib_method="minmax")
    plan = plan_openvino_build(fp32, opts)
    make_variant(plan, opts, quiet)
    out["sc_int8"] = build_openvino(plan, opts=opts, log=quiet)
    for p in ("fp32", "bf16", "int8"):
        out[p] = d / f"tiny.{p}.xml"
    out["int8_onnx"] = d / "tiny.int8.onnx"
    return out


def _batch(n=2, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, *TINY_SIZE)).astype(np.float32)


def _ort(path, x):
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def _cos(a, b) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _expect_bf16_native() -> bool:
    from pspnet_deploy.engine.openvino import cpu_environment

    return cpu_environment()["native"]["bf16"]


# ------------------------------------------------------------------------------------------ build

def test_build_writes_ir_bin_and_sidecar(irs):
    for p in ("fp32", "bf16", "int8"):
        xml = irs[p]
        assert xml.is_file() and xml.with_suffix(".bin").is_file()
        sc = json.loads(xml.with_name(xml.name + ".json").read_text())
        assert sc == irs[f"sc_{p}"]
        assert sc["backend"] == "openvino" and sc["precision"] == p
        assert sc["openvino"]["version"] == ov.__version__.split("-")[0]
        assert set(sc["cpu"]["isa"]) >= {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile"}
        assert sc["engine"]["weights"]["size"] == xml.with_suffix(".bin").stat().st_size
        assert sc["model"]["classes"] == ["background", "road", "car", "boat"]
        assert sc["model"]["preprocess"]["input_size"] == list(TINY_SIZE)
        assert sc["io"]["inputs"][0]["shape"] == [1, 3, *TINY_SIZE]
        assert "--backend openvino" in sc["build"]["command"]
    # FP32 and BF16 come from the same FP32 ONNX and are the same network; only the hint differs
    assert irs["sc_fp32"]["onnx"]["sha256"] == irs["sc_bf16"]["onnx"]["sha256"]
    assert irs["sc_fp32"]["engine"]["weights"]["sha256"] == irs["sc_bf16"]["engine"]["weights"]["sha256"]
    assert irs["sc_fp32"]["openvino"]["inference_precision_hint"] == "f32"
    assert irs["sc_bf16"]["openvino"]["inference_precision_hint"] == "bf16"
    # INT8: calibrated first, the Q/DQ ONNX recorded as what was converted, the FP32 ONNX as the source
    i8 = irs["sc_int8"]["onnx"]
    assert i8["converted"] == "int8" and Path(i8["path"]) == irs["int8_onnx"].resolve()
    assert i8["source_sha256"] == irs["sc_fp32"]["onnx"]["sha256"] != i8["sha256"]
    # the weights are INT8: the .bin is well under half the FP32 one
    assert irs["sc_int8"]["engine"]["weights"]["size"] < 0.5 * irs["sc_fp32"]["engine"]["weights"]["size"]


def test_an_ir_has_a_card_like_an_engine(irs):
    """card.read_card reads an IR's sidecar with the engines' reader: kind, precision (bf16 too),
    model facts, the .bin among its files, the ONNX it came from."""
    from pspnet_deploy.card import read_card
    from pspnet_deploy.engine import BuildOptions
    from pspnet_deploy.errors import UserError

    xml = irs["bf16"]
    c = read_card(xml)
    assert c.kind == "openvino" and c.precision == "bf16" and c.sidecar["backend"] == "openvino"
    assert c.classes == ["background", "road", "car", "boat"] and c.input_size == TINY_SIZE
    assert sorted(Path(f).name for f in c.files) == ["tiny.bf16.bin", "tiny.bf16.xml"]
    assert c.file_bytes == xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
    assert c.provenance["onnx_path"] == str(irs["onnx"].resolve())
    with pytest.raises(UserError, match="precision must be one of fp32, fp16, int8"):  # bf16 is no TensorRT engine
        BuildOptions(precision="bf16").validate()


def test_bf16_resolves_as_the_cpu_allows_and_says_so(irs):
    oi = irs["sc_bf16"]["openvino"]
    if _expect_bf16_native():
        assert oi["resolved"]["inference_precision"] == "bf16" and oi["precision_note"] is None
    else:  # this machine: AVX2 only. OpenVINO takes the hint and runs FP32; we must not call it BF16
        assert oi["resolved"]["inference_precision"] == "f32"
        assert oi["runs_as"] == "fp32 (bf16 asked)"
        assert "no BF16 instructions" in oi["precision_note"]
    assert irs["sc_fp32"]["openvino"]["resolved"]["inference_precision"] == "f32"
    assert irs["sc_fp32"]["openvino"]["precision_note"] is None


def test_int8_ir_runs_int8_convolutions(irs):
    res = irs["sc_int8"]["openvino"]["resolved"]
    convs = res["conv_precisions"]
    assert sum(v for k, v in convs.items() if k in ("u8", "i8")) >= 0.9 * sum(convs.values()) > 0
    vnni = irs["sc_int8"]["cpu"]["native"]["int8_vnni"]
    assert (irs["sc_int8"]["openvino"]["precision_note"] is None) == vnni


def test_qdq_onnx_is_built_as_it_is(irs, tmp_path):
    from pspnet_deploy.engine.openvino import OVBuildOptions, build_openvino, plan_openvino_build

    q = tmp_path / "m.int8.onnx"
    q.write_bytes(irs["int8_onnx"].read_bytes())
    plan = plan_openvino_build(q, OVBuildOptions())
    assert (plan.precision, plan.convert, plan.xml_path.name) == ("int8", None, "m.int8.xml")
    sc = build_openvino(q, log=lambda m: None)
    assert sc["onnx"]["converted"] is None and sc["onnx"]["sha256"] == sc["onnx"]["source_sha256"]
    # the same Q/DQ ONNX gives the same INT8 weights as the IR built by calibrating first
    assert sc["engine"]["weights"]["sha256"] == irs["sc_int8"]["engine"]["weights"]["sha256"]


@pytest.mark.parametrize("args, msg", [
    (["--bf16"], "INT8 ONNX; --bf16 is an inference precision of the FP32 IR"),
    (["--fp16"], "--fp16 is a TensorRT precision"),
    (["--workspace", "2"], "--workspace: TensorRT option"),
])
def test_build_cli_refuses_what_openvino_cannot_build(irs, tmp_path, capsys, args, msg):
    from pspnet_deploy.cli.build_engine import PROG, main
    from pspnet_deploy.cli.common import run

    q = tmp_path / "m.int8.onnx"
    q.write_bytes(irs["int8_onnx"].read_bytes())
    assert run(PROG, main, [str(q), "--backend", "openvino", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and msg in err
    assert not list(tmp_path.glob("*.xml")) and not list(tmp_path.glob("*.bin"))


def test_build_int8_on_fp32_needs_calibration_data(irs, tmp_path):
    from pspnet_deploy.errors import UserError
    from pspnet_deploy.engine.openvino import OVBuildOptions, plan_openvino_build

    with pytest.raises(UserError, match="needs calibration images: add --calib-data"):
        plan_openvino_build(irs["onnx"], OVBuildOptions(precision="int8"))
    with pytest.raises(UserError, match="end in .xml"):
        plan_openvino_build(irs["onnx"], OVBuildOptions(), tmp_path / "x.engine")


def test_build_cli_in_a_subprocess(irs, tmp_path):
    src = tmp_path / "net.fp32.onnx"
    src.write_bytes(irs["onnx"].read_bytes())
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-m", "pspnet_deploy.cli.build_engine", str(src), "--backend", "openvino",
                        "--bf16"], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "net.bf16.xml (bf16, runs as " in p.stdout
    assert sorted(f.name for f in tmp_path.iterdir()) == ["net.bf16.bin", "net.bf16.xml", "net.bf16.xml.json",
                                                          "net.fp32.onnx"]  # no temporary files left


# ------------------------------------------------------------------------------------------ runner

def test_runner_matches_onnxruntime_per_precision(irs):
    from pspnet_deploy.runners import load_runner

    x = _batch(3)
    ref = _ort(irs["onnx"], x)
    with_int8 = _ort(irs["int8_onnx"], x)
    for p in ("fp32", "bf16", "int8"):
        r = load_runner(irs[p], threads=1)
        try:
            out = r.infer(x)
            d = r.describe()
            assert out.shape == ref.shape and out.dtype == np.float32
            assert r.backend == "openvino" and r.precision == p and r.input_size == TINY_SIZE
            assert d["compile_config"]["INFERENCE_PRECISION_HINT"] == {"fp32": "f32", "bf16": "bf16", "int8": "f32"}[p]
            assert d["threads"] == 1
            agree = (out.argmax(1) == ref.argmax(1)).mean()
            if p == "fp32" or (p == "bf16" and d["inference_precision"] == "f32"):
                np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
            elif p == "bf16":
                assert agree > 0.95
            else:  # INT8 (random weights and inputs, so compare logits, not labels): close to ORT on the
                # same Q/DQ file and to FP32, yet clearly not FP32 (it did quantize)
                assert _cos(out, with_int8) > 0.98 and _cos(out, ref) > 0.98
                assert np.abs(out - ref).max() > 1e-3
                assert d["precision_used"].startswith("int8 (")
        finally:
            r.close()


def test_throughput_mode_async_requests_give_the_same_outputs(irs):
    from pspnet_deploy.runners import load_runner

    x = _batch(5, seed=1)
    a = load_runner(irs["fp32"], threads=1)
    b = load_runner(irs["fp32"], threads=2, performance_mode="throughput", streams=2, requests=3)
    try:
        assert b.describe()["streams"] == 2 and b.requests == 3 and b.describe()["performance_mode"] == "throughput"
        assert b._queue is not None
        np.testing.assert_allclose(b.infer(x), a.infer(x), rtol=1e-5, atol=1e-5)  # order kept across requests
    finally:
        a.close()
        b.close()


def test_runner_option_errors(irs):
    from pspnet_deploy.errors import UserError
    from pspnet_deploy.runners import load_runner

    with pytest.raises(UserError, match="latency or throughput"):
        load_runner(irs["fp32"], performance_mode="fast")
    with pytest.raises(UserError, match="--streams must be positive"):
        load_runner(irs["fp32"], streams=0)
    with pytest.raises(UserError, match="run on the CPU"):
        load_runner(irs["fp32"], device="cuda")
    r = load_runner(irs["fp32"], threads=1)
    try:
        with pytest.raises(UserError, match=r"takes Nx3x64x96"):
            r.infer(np.zeros((1, 3, 32, 32), np.float32))
    finally:
        r.close()


# ------------------------------------------------------------------------------------------ refusals

def _copy_ir(irs, precision, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    xml = irs[precision]
    for f in (xml, xml.with_suffix(".bin"), xml.with_name(xml.name + ".json")):
        (dst / f.name).write_bytes(f.read_bytes())
    return dst / xml.name


def _edit_sidecar(xml: Path, fn) -> None:
    sc_path = xml.with_name(xml.name + ".json")
    sc = json.loads(sc_path.read_text())
    fn(sc)
    sc_path.write_text(json.dumps(sc))


def _rehash(xml: Path) -> None:
    """Record the (damaged) files' sizes and hashes, as if the sidecar had been written for them."""
    from pspnet_deploy.utils import sha256_file

    def fn(sc):
        sc["engine"].update(size=xml.stat().st_size, sha256=sha256_file(xml))
    _edit_sidecar(xml, fn)


def _corrupt_xml(xml):
    xml.write_text(xml.read_text()[: len(xml.read_text()) // 2])


def _corrupt_xml_recorded(xml):
    xml.write_text("<net name='x' version='11'><layers><layer id='0' type='Nope'/></layers></net>")
    _rehash(xml)


def _missing_bin(xml):
    xml.with_suffix(".bin").unlink()


def _other_version(xml):
    _edit_sidecar(xml, lambda sc: sc["openvino"].update(version="2024.6.0"))


def _other_cpu(xml):
    def fn(sc):
        sc["cpu"]["cpu"] = "Intel(R) Xeon(R) Platinum 8480+"
        sc["cpu"]["isa"] = {k: True for k in sc["cpu"]["isa"]}
    _edit_sidecar(xml, fn)


def _no_sidecar(xml):
    xml.with_name(xml.name + ".json").unlink()


def _truncated_bin(xml):
    b = xml.with_suffix(".bin")
    b.write_bytes(b.read_bytes()[:1000])


@pytest.mark.parametrize("damage, msg", [
    (_corrupt_xml, "IR is"),  # size / hash differs from the sidecar
    (_corrupt_xml_recorded, "OpenVINO cannot read this IR"),  # OpenVINO's own parser refuses it
    (_missing_bin, "weights file tiny.fp32.bin is missing"),
    (_truncated_bin, "truncated copy"),
    (_other_version, "built with OpenVINO 2024.6.0 but this is OpenVINO"),
    (_other_cpu, "built on Intel(R) Xeon(R) Platinum 8480+"),
    (_no_sidecar, "no sidecar tiny.fp32.xml.json"),
])
def test_bad_ir_gives_one_line_and_exit_2(irs, tmp_path, capsys, damage, msg):
    from pspnet_deploy.cli.common import run
    from pspnet_deploy.cli.predict import main

    xml = _copy_ir(irs, "fp32", tmp_path / "m")
    damage(xml)
    img = tmp_path / "img.png"
    import cv2

    cv2.imwrite(str(img), np.zeros((40, 50, 3), np.uint8))
    assert run("pspnet-predict", main, [str(xml), str(img), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("pspnet-predict: error: ") and msg in err
    if damage not in (_no_sidecar,):
        assert "pspnet-build-engine" in err and "--backend openvino" in err  # the rebuild command
    assert not (tmp_path / "out").exists()


def test_other_cpu_refused_in_a_subprocess(irs, tmp_path):
    """The installed console entry point, end to end: one line on stderr, exit status 2."""
    xml = _copy_ir(irs, "bf16", tmp_path / "m")
    _other_cpu(xml)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-m", "pspnet_deploy.cli.eval", str(xml), "--data", "synthetic"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "built on Intel(R) Xeon(R) Platinum 8480+" in lines[0] and "--bf16" in lines[0]


# ------------------------------------------------------------------------------------------ tools

def test_predict_images_and_slide_mode_with_an_ir(irs, tmp_path):
    import cv2

    from pspnet_deploy.predict import Predictor
    from pspnet_deploy.runners import load_runner

    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(d / "a.png"), cv2.resize(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), (150, 100)))
    cv2.imwrite(str(d / "b.png"), cv2.resize(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), (96, 64)))
    outs = {}
    for name, model in (("ov", irs["fp32"]), ("ort", irs["onnx"])):
        r = load_runner(model, threads=1)
        try:
            Predictor(r, tmp_path / name, mode="slide").run([d])
        finally:
            r.close()
        lab = tmp_path / name / "labels"
        outs[name] = {p.relative_to(lab).as_posix(): cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in lab.rglob("*.png")}
    assert sorted(outs["ov"]) == ["imgs/a.png", "imgs/b.png"]
    assert outs["ov"]["imgs/a.png"].shape == (100, 150)
    for k in outs["ov"]:  # FP32 OpenVINO and ONNX Runtime label the same pixels
        assert (outs["ov"][k] == outs["ort"][k]).mean() > 0.999


def test_bench_reports_the_precision_used(irs, tmp_path):
    from pspnet_deploy.bench import run_bench

    rep = run_bench([f"{irs['onnx']}:ort-fp32", f"{irs['fp32']}:ov-fp32", f"{irs['bf16']}:ov-bf16",
                     f"{irs['int8']}:ov-int8"], tmp_path / "b", scope="model", iterations=2, warmup=1, threads=1,
                    peak=False, progress=False)
    rows = {r["model"]: r for r in rep["results"]}
    assert rows["ort-fp32"]["precision_used"] == "fp32"
    assert rows["ov-fp32"]["backend"] == "openvino" and rows["ov-fp32"]["precision_used"] == "fp32"
    models = {m["model"]: m for m in rep["models"]}
    bf16_native = _expect_bf16_native()
    assert rows["ov-bf16"]["precision_used"] == ("bf16" if bf16_native else "fp32 (bf16 asked)")
    assert rows["ov-int8"]["precision_used"].startswith("int8 (")
    assert models["ov-fp32"]["flops_per_image"] == models["ort-fp32"]["flops_per_image"]
    md = (tmp_path / "b" / "report.md").read_text()
    assert "| runs as |" in md and "avx2" in md
    if not bf16_native:
        assert "ov-bf16: BF16 requested, but this CPU has no BF16 instructions" in md
    assert "openvino" in rep["environment"]["versions"]


def test_triton_repo_for_an_ir(irs, tmp_path):
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format

    from pspnet_deploy.triton import write_triton_repo

    for p in ("fp32", "bf16"):
        res = write_triton_repo(irs[p], tmp_path / "repo", name=f"m_{p}", performance_hint="THROUGHPUT", streams=2)
        cfg = model_config_pb2.ModelConfig()
        text_format.Parse(Path(res["config"]).read_text(), cfg)
        assert cfg.backend == "openvino" and cfg.default_model_filename == "model.xml"
        assert cfg.max_batch_size == 0 and list(cfg.input[0].dims) == [1, 3, *TINY_SIZE]
        assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
        params = {k: v.string_value for k, v in cfg.parameters.items()}
        assert params["PERFORMANCE_HINT"] == "THROUGHPUT" and params["NUM_STREAMS"] == "2"
        assert ("HINT_BF16" in params) == (p == "bf16")
        v = Path(res["model_dir"]) / "1"
        assert sorted(f.name for f in v.iterdir()) == ["model.bin", "model.xml", "model.xml.json"]
        # what Triton's backend will read is a valid IR
        from pspnet_deploy.engine.openvino import ov_core

        assert ov_core().read_model(str(v / "model.xml")).inputs[0].get_any_name() == "input"


SIGSTACK_PROBE = r"""
import ctypes, gc, sys
from pspnet_deploy.runners import load_runner

class stack_t(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

def mapped(addr):
    for line in open("/proc/self/maps"):
        lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
        if lo <= addr < hi:
            return True
    return False

first = load_runner(sys.argv[1])
second = load_runner(sys.argv[2])
first.close(); del first; gc.collect()   # released in the order they were made
second.close(); del second; gc.collect()
st = stack_t()
assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(st)) == 0
SS_DISABLE = 2
print("disabled" if st.ss_flags & SS_DISABLE else ("mapped" if mapped(st.ss_sp) else "UNMAPPED"))
"""


def test_runners_leave_the_signal_stack_mapped(irs):
    """OpenVINO's CPU plugin swaps the calling thread's signal stack; with one plugin per Core, two
    runners released in creation order left the main thread on an unmapped stack, and the next
    Python signal handler (a DataLoader worker's SIGCHLD) killed the process with SIGSEGV (the
    full suite died in test_train this way). One process-wide Core (engine.openvino.ov_core) keeps
    the stack valid. Checked in a fresh process, where the order of plugin creation is known."""
    r = subprocess.run([sys.executable, "-c", SIGSTACK_PROBE, str(irs["fp32"]), str(irs["int8"])],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-1] in ("disabled", "mapped"), r.stdout
