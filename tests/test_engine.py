"""pspnet-build-engine and engine loading: everything around TensorRT runs here on CPU; the TensorRT
tests themselves are marked ``tensorrt`` and skip with a reason without TensorRT or a GPU."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_SIZE, run_cli, trt_env

@pytest.fixture
def work_onnx(onnx_b1, tmp_path):
    """A private copy, so variants written next to it stay in this test's folder."""
    dst = tmp_path / "tiny.fp32.onnx"
    dst.write_bytes(onnx_b1.read_bytes())
    return dst


# ---------------------------------------------------------------------------------- build plans

def test_plan_follows_the_onnx_precision(work_onnx, onnx_dyn):
    from pspnet_deploy.engine import BuildOptions, plan_build

    p = plan_build(work_onnx, BuildOptions())
    assert (p.precision, p.convert, p.strongly_typed, p.profile) == ("fp32", None, True, None)
    assert p.engine_path == work_onnx.with_name("tiny.fp32.engine")
    assert p.sidecar_path.name == "tiny.fp32.engine.json"
    p = plan_build(work_onnx, BuildOptions(precision="fp16"))
    assert (p.precision, p.convert, p.build_onnx.name) == ("fp16", "fp16", "tiny.fp16.onnx")
    assert p.engine_path.name == "tiny.fp16.engine"
    p = plan_build(work_onnx, BuildOptions(precision="int8", calib_data="synthetic"))
    assert (p.precision, p.convert, p.build_onnx.name) == ("int8", "int8", "tiny.int8.onnx")
    p = plan_build(work_onnx, BuildOptions(precision="fp16", legacy_fp16_flag=True))
    assert (p.precision, p.convert, p.strongly_typed, p.build_onnx) == ("fp16", None, False, work_onnx)
    d = plan_build(onnx_dyn, BuildOptions())
    assert d.profile == ((1, 3, *TINY_SIZE), (2, 3, *TINY_SIZE), (4, 3, *TINY_SIZE))  # the export's range
    d = plan_build(onnx_dyn, BuildOptions(batch=(1, 4, 16)))
    assert [s[0] for s in d.profile] == [1, 4, 16]


def test_plan_refuses_contradictions(work_onnx, tmp_path):
    from pspnet_deploy.engine import BuildOptions, plan_build
    from pspnet_deploy.errors import UserError

    with pytest.raises(UserError, match="needs calibration images: add --calib-data"):
        plan_build(work_onnx, BuildOptions(precision="int8"))
    with pytest.raises(UserError, match="fixed batch of 1; --batch 1 4 8 needs an ONNX with a dynamic batch"):
        plan_build(work_onnx, BuildOptions(batch=(1, 4, 8)))
    with pytest.raises(UserError, match="1 <= MIN <= OPT <= MAX"):
        plan_build(work_onnx, BuildOptions(batch=(4, 2, 8)))
    with pytest.raises(UserError, match="--legacy-fp16-flag goes with --fp16"):
        plan_build(work_onnx, BuildOptions(legacy_fp16_flag=True))
    with pytest.raises(UserError, match="--opt-level must be 0..5"):
        plan_build(work_onnx, BuildOptions(opt_level=7))
    with pytest.raises(UserError, match="engine files end in .engine"):
        plan_build(work_onnx, BuildOptions(), tmp_path / "x.onnx")
    with pytest.raises(UserError, match="ONNX file not found"):
        plan_build(tmp_path / "missing.onnx", BuildOptions())
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(UserError, match="cannot read ONNX model"):
        plan_build(junk, BuildOptions())


def test_plan_reads_precision_from_metadata_and_graph(work_onnx, tmp_path):
    import onnx

    from pspnet_deploy.engine import BuildOptions, onnx_precision, plan_build
    from pspnet_deploy.errors import UserError

    m = onnx.load(str(work_onnx))
    helper = onnx.helper
    scale = helper.make_tensor("qs", onnx.TensorProto.FLOAT, [], [0.1])
    m.graph.initializer.append(scale)
    first = m.graph.node[0]
    src = first.input[0]
    m.graph.node.insert(0, helper.make_node("QuantizeLinear", [src, "qs"], ["q_out"], name="q"))
    m.graph.node.insert(1, helper.make_node("DequantizeLinear", ["q_out", "qs"], ["dq_out"], name="dq"))
    for n in m.graph.node[2:]:
        for i, name in enumerate(n.input):
            if name == src:
                n.input[i] = "dq_out"
    for p in m.metadata_props:
        if p.key == "pspnet.precision":
            p.value = json.dumps("int8")
    q = tmp_path / "tiny.int8.onnx"
    onnx.save(m, str(q))
    assert onnx_precision(q) == "int8"
    assert plan_build(q, BuildOptions(precision="int8")).convert is None  # already INT8: build it as it is
    with pytest.raises(UserError, match="is the INT8 ONNX; --fp16 starts from the FP32 ONNX"):
        plan_build(q, BuildOptions(precision="fp16"))
    del m.metadata_props[:]  # no metadata: the graph decides (Q/DQ nodes -> int8)
    onnx.save(m, str(q))
    assert onnx_precision(q) == "int8"
    said = onnx.load(str(work_onnx))  # metadata that contradicts the graph (int8 said, no Q/DQ): refused
    for p in said.metadata_props:
        if p.key == "pspnet.precision":
            p.value = json.dumps("int8")
    onnx.save(said, str(tmp_path / "said.int8.onnx"))
    with pytest.raises(UserError, match=r"no Q/DQ nodes \(fp32\) but the metadata pspnet.precision says int8"):
        plan_build(tmp_path / "said.int8.onnx", BuildOptions(precision="int8"))


def test_engine_modules_import_no_circle():
    """No module of pspnet_deploy/engine imports (module level or in a function) one that imports
    it back, directly or through others: the build writes and checks sidecars, the sidecar never
    reaches for the build. The public names stay importable from the package."""
    from test_layering import PKG, imports

    from pspnet_deploy import engine

    mods = {p.stem: p for p in (PKG / "engine").glob("*.py") if p.stem != "__init__"}
    deps = {m: {t.split(".")[2] for t, _ in imports(p) if t.startswith("pspnet_deploy.engine.")} & set(mods)
            for m, p in mods.items()}

    def reaches(a, b, seen=()):
        return any(d == b or (d not in seen and reaches(d, b, seen + (d,))) for d in deps[a])
    circles = sorted(m for m in mods if reaches(m, m))
    assert not circles, f"import circles through {circles}: {deps}"
    assert all(hasattr(engine, n) for n in engine.__all__)


# ---------------------------------------------------------------------------------- sidecar checks

def test_sidecar_carries_what_the_runner_needs(work_onnx, tmp_path, fake_engine):
    from pspnet_deploy.engine import read_sidecar
    from pspnet_deploy.card import read_card
    from pspnet_deploy.utils import sha256_file

    eng = fake_engine(tmp_path, work_onnx, ["--workspace", "2", "--opt-level", "4", "--timing-cache",
                                            tmp_path / "t.cache", "--version-compatible"])
    sc = read_sidecar(eng)
    meta = read_card(work_onnx).meta
    assert sc["model"]["classes"] == meta["classes"] and sc["model"]["palette"] == meta["palette"]
    assert sc["model"]["preprocess"] == meta["preprocess"] and sc["model"]["output_kind"] == "logits"
    assert sc["onnx"]["sha256"] == sha256_file(work_onnx)
    assert sc["engine"]["size"] == eng.stat().st_size and sc["engine"]["sha256"] == sha256_file(eng)
    assert sc["tensorrt"] == {"version": "10.3.0", "version_compatible": True, "hardware_compatibility": "none",
                              "strongly_typed": True, "profile_sets": 1}
    assert sc["gpu"]["compute_capability"] == "9.0" and sc["gpu"]["driver"] == "12.4"
    assert sc["precision"] == "fp32" and sc["build"]["seconds"] == 12.5
    assert sc["io"]["inputs"][0]["shape"] == [1, 3, *TINY_SIZE]
    cmd = sc["build"]["command"]
    assert cmd.startswith("pspnet-build-engine ") and "--workspace 2.0 --opt-level 4" in cmd
    assert f"--timing-cache {tmp_path / 't.cache'} --version-compatible" in cmd


def test_sidecar_records_exact_workspace_and_absolute_paths(work_onnx, tmp_path, fake_engine, monkeypatch):
    """A workspace of 0.1234567 GiB is 132560622 bytes: the sidecar keeps the bytes and the
    command keeps the float exactly (``%g`` would round it to 0.123457); relative paths given on
    the command line are recorded absolute, so the rebuild line works from any folder."""
    import shlex

    from pspnet_deploy.cli.build_engine import build_parser
    from pspnet_deploy.engine import read_sidecar

    monkeypatch.chdir(tmp_path)
    (tmp_path / "calib").mkdir()
    eng = fake_engine(tmp_path, work_onnx, ["--workspace", "0.1234567", "--timing-cache", "caches/t.cache", "--fp16",
                                            "--calib-data", "calib"], name="tiny.fp16.engine")
    sc = read_sidecar(eng)
    opts = sc["build"]["options"]
    assert opts["workspace_bytes"] == int(0.1234567 * 2**30) == 132560622
    assert opts["timing_cache"] == str(tmp_path / "caches" / "t.cache")
    assert opts["calib_data"] == str(tmp_path / "calib")
    again = build_parser().parse_args(shlex.split(sc["build"]["command"])[1:])
    assert again.workspace == 0.1234567 and int(again.workspace * 2**30) == opts["workspace_bytes"]
    assert again.timing_cache == str(tmp_path / "caches" / "t.cache") and again.calib_data == str(tmp_path / "calib")


def test_rebuild_command_keeps_every_option_the_parser_knows(work_onnx, tmp_path, fake_engine):
    """The recorded command is derived from pspnet-build-engine's own parser, so options such as
    --calib-method survive into the rebuild line a refused engine prints; options left at their
    default are recorded too (the default method changed once, percentile -> mse: a rebuild must
    not silently change with it), as are the calibration image count and batch profile a build
    took from defaults."""
    import shlex

    from pspnet_deploy.cli.build_engine import build_parser
    from pspnet_deploy.engine import check_engine, read_sidecar
    from pspnet_deploy.errors import UserError

    args = ["--int8", "--calib-data", "synthetic", "--calib-split", "val", "--calib-images", "12",
            "--calib-method", "percentile", "--workspace", "1.5", "--opt-level", "2", "--device", "cuda:1"]
    eng = fake_engine(tmp_path, work_onnx, args, name="tiny.int8.engine")
    with pytest.raises(UserError) as e:
        check_engine(eng, env=trt_env(tensorrt="10.5.1"))
    cmd = str(e.value).split("rebuild here: ", 1)[1]
    argv = shlex.split(cmd)
    assert argv[:4] == ["pspnet-build-engine", str(work_onnx.resolve()), "--engine", str(eng.resolve())]
    assert argv[4:] == ["--backend", "tensorrt", *args]  # in the parser's order, with every value
    again = build_parser().parse_args(argv[1:])  # and the parser reads it back to the same request
    assert (again.int8, again.calib_method, again.calib_images, again.workspace, again.device) == \
        (True, "percentile", 12, 1.5, "cuda:1")
    defaults = fake_engine(tmp_path, work_onnx, ["--int8", "--calib-data", "synthetic"], name="defaults.int8.engine")
    argv = shlex.split(read_sidecar(defaults)["build"]["command"])
    from pspnet_deploy.precision.calibrate import DEFAULT_NUM_IMAGES
    from pspnet_deploy.precision.ranges import DEFAULT_METHOD

    assert argv[4:] == ["--backend", "tensorrt", "--int8", "--calib-data", "synthetic", "--calib-split", "train",
                        "--calib-images", str(DEFAULT_NUM_IMAGES), "--calib-method", DEFAULT_METHOD,
                        "--device", "cuda:0"]
    fp32 = fake_engine(tmp_path, work_onnx, [], name="plain.fp32.engine")  # no conversion: no calibration options
    assert shlex.split(read_sidecar(fp32)["build"]["command"])[4:] == ["--backend", "tensorrt", "--device", "cuda:0"]
    moved = tmp_path / "elsewhere.int8.engine"
    moved.write_bytes(eng.read_bytes())
    moved.with_name(moved.name + ".json").write_bytes(eng.with_name(eng.name + ".json").read_bytes())
    with pytest.raises(UserError, match=rf"--engine {moved.resolve()}"):  # the rebuild writes where the file is
        check_engine(moved, env=trt_env(tensorrt="10.5.1"))


def test_check_refuses_planted_mismatches(work_onnx, tmp_path, fake_engine):
    from pspnet_deploy.engine import TensorRTUnavailable, check_engine
    from pspnet_deploy.errors import UserError

    eng = fake_engine(tmp_path, work_onnx)
    sidecar, _ = check_engine(eng, env=trt_env())  # same TensorRT and GPU: accepted
    assert sidecar["precision"] == "fp32"

    with pytest.raises(UserError, match=r"built with TensorRT 10\.3\.0 but this is TensorRT 10\.5\.1.*"
                                        r"rebuild here: pspnet-build-engine .*tiny\.fp32\.onnx --engine"):
        check_engine(eng, env=trt_env(tensorrt="10.5.1"))
    with pytest.raises(UserError, match=r"TensorRT 11\.0\.0"):
        check_engine(eng, env=trt_env(tensorrt="11.0.0"))
    with pytest.raises(UserError, match=r"built for NVIDIA H100 80GB HBM3 \(compute capability 9\.0\) but this GPU "
                                        r"is NVIDIA A100-SXM4-40GB \(compute capability 8\.0\)"):
        check_engine(eng, env=trt_env(gpu={"name": "NVIDIA A100-SXM4-40GB", "compute_capability": "8.0"}))
    warnings = []
    from pspnet_deploy.engine import check_environment, read_sidecar

    check_environment(read_sidecar(eng), trt_env(gpu={"name": "NVIDIA H100 PCIe"}), eng, warn=warnings.append)
    assert len(warnings) == 1 and "same compute capability 9.0" in warnings[0]
    with pytest.raises(TensorRTUnavailable, match="TensorRT is not installed"):
        check_engine(eng, env=trt_env(tensorrt=None, tensorrt_error="TensorRT is not installed (import tensorrt: x)"))
    with pytest.raises(TensorRTUnavailable, match="no CUDA GPU visible"):
        check_engine(eng, env=trt_env(gpu=None, gpu_error="no CUDA GPU visible") | {"gpu": None})

    vc = fake_engine(tmp_path, work_onnx, ["--version-compatible", "--hardware-compatible"], name="vc.fp32.engine")
    check_engine(vc, env=trt_env(tensorrt="10.7.0"))  # version compatible: later TensorRT runs it
    check_engine(vc, env=trt_env(tensorrt="10.16.1", gpu={"name": "NVIDIA L4", "compute_capability": "8.9"}))
    with pytest.raises(UserError) as e:  # version compatibility stops at the major version (support matrix)
        check_engine(vc, env=trt_env(tensorrt="11.1.0"))
    assert "\n" not in str(e.value) and re.search(
        r"built with TensorRT 10\.3\.0 \(version compatible: later 10\.x versions run it\) but this is TensorRT "
        r"11\.1\.0, a newer major version; rebuild here: pspnet-build-engine ", str(e.value))
    with pytest.raises(UserError, match="older TensorRT 10.0.1"):
        check_engine(vc, env=trt_env(tensorrt="10.0.1"))
    with pytest.raises(UserError, match="hardware-compatible for Ampere and newer GPUs"):
        check_engine(vc, env=trt_env(gpu={"name": "Tesla T4", "compute_capability": "7.5"}))


def test_check_refuses_truncated_replaced_and_sidecarless_engines(work_onnx, tmp_path, fake_engine):
    from pspnet_deploy.engine import check_engine, sidecar_path
    from pspnet_deploy.errors import UserError

    eng = fake_engine(tmp_path, work_onnx)
    data = eng.read_bytes()
    eng.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"2000 bytes but its sidecar records 4000 \(truncated copy\?\)"):
        check_engine(eng, env=trt_env())
    eng.write_bytes(data[:-1] + b"X")
    with pytest.raises(UserError, match="sha256 differs from its sidecar"):
        check_engine(eng, env=trt_env())
    sc = sidecar_path(eng)
    sc.write_text("{ not json")
    with pytest.raises(UserError, match="sidecar is not valid JSON"):
        check_engine(eng, env=trt_env())
    sc.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(UserError, match="not a pspnet-deploy engine sidecar"):
        check_engine(eng, env=trt_env())
    sc.unlink()
    with pytest.raises(UserError, match="no sidecar tiny.fp32.engine.json"):
        check_engine(eng, env=trt_env())


def test_load_runner_on_cpu_checks_the_file_then_says_tensorrt_is_missing(work_onnx, tmp_path, fake_engine):
    from pspnet_deploy.engine import TensorRTUnavailable, tensorrt_version
    from pspnet_deploy.errors import UserError
    from pspnet_deploy.runners import load_runner

    if tensorrt_version()[0] is not None:
        pytest.skip("TensorRT is installed here; this checks the machines without it")
    eng = fake_engine(tmp_path, work_onnx)
    with pytest.raises(TensorRTUnavailable, match="cannot run TensorRT engines here: TensorRT is not installed"):
        load_runner(eng)
    eng.write_bytes(eng.read_bytes()[:10])
    with pytest.raises(UserError, match="truncated"):
        load_runner(eng)


def test_parser_errors_are_one_line_naming_every_node():
    from pspnet_deploy.engine import format_parser_errors

    msg = format_parser_errors("m.onnx", [
        {"node": 12, "node_name": "resize_3", "node_operator": "Resize", "code": "UNSUPPORTED_NODE",
         "desc": "Assertion failed:\n mode must be linear"},
        {"node": 40, "code": "INVALID_NODE", "desc": "bad attribute"}])
    assert "\n" not in msg
    assert msg.startswith("m.onnx: TensorRT's ONNX parser rejected the model (2 errors): ")
    assert "node 12 (Resize 'resize_3'): UNSUPPORTED_NODE: Assertion failed: mode must be linear" in msg
    assert "node 40: INVALID_NODE: bad attribute" in msg


def test_parse_device():
    from pspnet_deploy.engine import parse_device
    from pspnet_deploy.errors import UserError

    assert [parse_device(d) for d in (None, "cpu", "cuda", "cuda:1", "2", 3)] == [0, 0, 0, 1, 2, 3]
    with pytest.raises(UserError, match="not a CUDA device"):
        parse_device("tpu:0")


# ---------------------------------------------------------------------------------- the CLI on CPU

def _cli(args, timeout=240):
    return run_cli("pspnet_deploy.cli.build_engine", *args, timeout=timeout)


def _no_tensorrt_here():
    from pspnet_deploy.engine import environment

    env = environment(0)
    return env["tensorrt_error"] or env["gpu_error"]


needs_no_trt = pytest.mark.skipif(not _no_tensorrt_here(), reason="TensorRT and a GPU are here; this checks the "
                                                                    "path for machines without them")


@needs_no_trt
def test_cli_without_tensorrt_one_line_nonzero_and_no_engine(work_onnx, tmp_path):
    out = tmp_path / "out" / "m.engine"
    p = _cli([work_onnx, "--engine", out])
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("pspnet-build-engine: error: cannot build engines here: ")
    assert "TensorRT" in lines[0] or "GPU" in lines[0]
    assert not out.exists() and not out.with_name("m.engine.json").exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@needs_no_trt
def test_cli_int8_without_tensorrt_still_writes_the_int8_onnx(work_onnx, tmp_path):
    out = tmp_path / "tiny.int8.engine"
    p = _cli([work_onnx, "--int8", "--calib-data", "synthetic", "--calib-images", "10", "--engine", out])
    assert p.returncode == 2, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("pspnet-build-engine: error: cannot build engines here: ")
    int8 = work_onnx.with_name("tiny.int8.onnx")
    assert f"wrote {int8}" in last
    assert int8.is_file() and not out.exists() and not out.with_name("tiny.int8.engine.json").exists()
    from pspnet_deploy.engine import onnx_precision
    from pspnet_deploy.runners import load_runner

    assert onnx_precision(int8) == "int8"
    r = load_runner(int8, threads=1)  # the file is usable: ONNX Runtime runs it
    out_ = r.infer(np.zeros((1, 3, *TINY_SIZE), np.float32))
    assert out_.shape == (1, 4, *TINY_SIZE) and np.isfinite(out_).all()


def test_cli_dry_run_and_bad_input(work_onnx, tmp_path):
    from pspnet_deploy.cli.build_engine import main
    from pspnet_deploy.cli.common import run

    p = _cli([work_onnx, "--fp16", "--dry-run"])
    assert p.returncode == 0, p.stderr
    assert f"write the FP16 ONNX {work_onnx.with_name('tiny.fp16.onnx')}" in p.stdout
    assert "build a FP16 engine" in p.stdout and "strongly typed" in p.stdout and "fixed batch 1" in p.stdout
    assert not work_onnx.with_name("tiny.fp16.onnx").exists()
    assert run("pspnet-build-engine", main, [str(work_onnx), "--int8"]) == 2
    assert run("pspnet-build-engine", main, [str(work_onnx), "--batch", "1", "2", "4"]) == 2
    assert run("pspnet-build-engine", main, [str(tmp_path / "none.onnx")]) == 2


def test_cli_refuses_a_timing_cache_that_is_the_onnx_or_the_engine(work_onnx, tmp_path, capsys):
    """The timing cache is read and rewritten: naming the ONNX or the engine is refused in one line,
    before anything (TensorRT included) is touched, and nothing changes on disk."""
    from pspnet_deploy.cli.build_engine import main
    from pspnet_deploy.cli.common import run

    before = work_onnx.read_bytes()
    engine = tmp_path / "m.engine"
    for cache, what in ((work_onnx, "ONNX"), (engine, "engine")):
        assert run("pspnet-build-engine", main, [str(work_onnx), "--engine", str(engine), "--timing-cache",
                                                 str(cache)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"pspnet-build-engine: error: {cache}: --timing-cache is the {what} ")
    assert work_onnx.read_bytes() == before and not engine.exists()


# ---------------------------------------------------------------------------------- TensorRT itself

def _trt_skip_reason():
    from pspnet_deploy.engine import environment

    env = environment(0)
    if env["tensorrt_error"]:
        return env["tensorrt_error"]
    if env["gpu_error"]:
        return env["gpu_error"]
    return env["cuda_error"]


_TRT_SKIP = _trt_skip_reason()


@pytest.mark.tensorrt
@pytest.mark.skipif(_TRT_SKIP is not None, reason=f"needs TensorRT + GPU: {_TRT_SKIP}")
@pytest.mark.parametrize("precision", [None, "fp16"])
def test_trt_engine_matches_onnxruntime(work_onnx, tmp_path, precision, rng):
    from pspnet_deploy.cli.build_engine import build
    from pspnet_deploy.engine import BuildOptions, read_sidecar
    from pspnet_deploy.runners import load_runner

    cache = tmp_path / "timing.cache"
    sc = build(work_onnx, None, BuildOptions(precision=precision, timing_cache=str(cache), opt_level=1))
    eng = Path(sc["engine"]["path"])
    assert eng.is_file() and cache.is_file() and read_sidecar(eng)["engine"]["sha256"] == sc["engine"]["sha256"]
    ref = load_runner(work_onnx, threads=1)
    trt = load_runner(eng, device="cuda")
    x = ref.preprocess(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))[None]
    a, b = ref.infer(x), trt.infer(x)
    assert b.shape == a.shape and b.dtype == np.float32
    assert (a.argmax(1) == b.argmax(1)).mean() > (0.999 if precision is None else 0.98)
    trt.close()
    graph = load_runner(eng, device="cuda", cuda_graph=True)
    np.testing.assert_allclose(graph.infer(x), b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(graph.infer(x), b, rtol=1e-5, atol=1e-5)  # replay
    graph.close()


@pytest.mark.tensorrt
@pytest.mark.skipif(_TRT_SKIP is not None, reason=f"needs TensorRT + GPU: {_TRT_SKIP}")
def test_trt_dynamic_batch_profile(onnx_dyn, tmp_path, rng):
    from pspnet_deploy.engine import BuildOptions, build_engine
    from pspnet_deploy.errors import UserError
    from pspnet_deploy.runners import load_runner

    src = tmp_path / "dyn.fp32.onnx"
    src.write_bytes(onnx_dyn.read_bytes())
    sc = build_engine(src, None, BuildOptions(batch=(1, 2, 3)))
    assert sc["io"]["profile"]["max"][0] == 3
    r = load_runner(sc["engine"]["path"], device="cuda")
    ref = load_runner(src, threads=1)
    x = np.stack([ref.preprocess(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)) for _ in range(3)])
    for n in (1, 3, 2):
        assert (r.infer(x[:n]).argmax(1) == ref.infer(x[:n]).argmax(1)).mean() > 0.999
    with pytest.raises(UserError, match="batches of 1..3"):
        r.infer(np.concatenate([x, x]))
    r.close()


@pytest.mark.tensorrt
@pytest.mark.skipif(_TRT_SKIP is not None, reason=f"needs TensorRT + GPU: {_TRT_SKIP}")
def test_trt_parser_rejection_is_one_line(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from pspnet_deploy.engine import BuildOptions, build_engine
    from pspnet_deploy.errors import UserError

    node = helper.make_node("NoSuchOp", ["input"], ["logits"], domain="example.custom", name="mystery")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 8, 8])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.custom", 1)])
    for k, v in {"classes": ["a", "b", "c", "d"], "palette": [[0, 0, 0]] * 4,
                 "preprocess": {"input_size": [8, 8], "mean": [0, 0, 0], "std": [1, 1, 1]}}.items():
        p = m.metadata_props.add()
        p.key, p.value = f"pspnet.{k}", json.dumps(v)
    bad = tmp_path / "bad.onnx"
    onnx.save(m, str(bad))
    with pytest.raises(UserError) as e:
        build_engine(bad, tmp_path / "bad.engine", BuildOptions())
    assert "parser rejected the model" in str(e.value) and "node 0" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "bad.engine").exists()
