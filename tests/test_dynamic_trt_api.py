"""TensorRT optimisation profiles for dynamic-shape models (issue 24) and execution contexts on their
own streams for requests in flight (issue 25), held to the real API of TensorRT 10.0.1, 10.16.1 and
11.4.0 with the stand-in of tests/test_trt_api.py (generated from ../shared/tensorrt-api/*.txt).

The stand-in builder refuses a dynamic input without a shape in every profile and a profile that
contradicts the network; its execution context runs only shapes inside its active profile, forgets
the input shapes when the profile changes (as TensorRT does), and derives output shapes from the
input's named dimensions. Every call is checked against the version's signatures (a wrong method
name, argument count or an int where an enum is taken fails).

What this cannot catch: the real builder's kernels and speed per profile, how much device memory a
profile needs, whether the real engine accepts several contexts on the same profile at once (the
runner assumes it does: TensorRT 10 documents execution contexts of one engine as independent;
not checked on a GPU here), and real stream concurrency (the stand-in's streams run synchronously).
"""
from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import THREADS, TINY_SIZE, run_cli
from test_trt_api import _build, trt  # noqa: F401 - the stand-in fixture, parametrised over the three versions

MIN, OPT, MAX = (48, 48), (64, 96), (256, 320)
#: three size classes: small crops, a camera's exact size, and large frames
PROFILES = ("48x48:64x96:128x160", "97x131", "120x150:200x240:256x320")


@pytest.fixture(scope="module")
def dyn_onnx(tmp_path_factory, tiny_checkpoint):
    """The tiny model exported with --dynamic-shape and a dynamic batch (1..2), no parity run."""
    from pspnet_deploy.export import export_onnx

    out = tmp_path_factory.mktemp("dyn_trt") / "dyn.fp32.onnx"
    export_onnx(str(tiny_checkpoint), str(out), input_size=OPT, dynamic_shape=True, min_size=MIN, max_size=MAX,
                dynamic_batch=(1, 1, 2), verify=False, progress=False, threads=THREADS)
    return out


@pytest.fixture(scope="module")
def dyn_variants(dyn_onnx):
    """The FP16 and INT8 Q/DQ ONNX of the dynamic graph, written by the build's own conversion step
    (``cli.build_engine.make_variant``, what ``--fp16`` / ``--int8 --calib-data`` run first)."""
    from pspnet_deploy.cli.build_engine import make_variant
    from pspnet_deploy.engine import BuildOptions, plan_build

    out = {}
    for precision, extra in (("fp16", {}), ("int8", {"calib_data": "synthetic", "calib_images": 10})):
        opts = BuildOptions(precision=precision, **extra)
        plan = plan_build(dyn_onnx, opts)
        make_variant(plan, opts, lambda m: None)
        out[precision] = plan.build_onnx
    return out


def _copy(src: Path, folder: Path) -> Path:
    dst = folder / src.name
    dst.write_bytes(src.read_bytes())
    return dst


def _x(rng, h, w, n=1):
    return rng.standard_normal((n, 3, h, w)).astype(np.float32)


def test_default_profile_is_the_exports_bounds(trt, dyn_onnx, tmp_path, rng):
    """No --profiles: one profile min/opt/max = the export's --min-size / --input-size / --max-size
    (batch from its --dynamic-batch), recorded in the sidecar and spelled out in the rebuild
    command; the engine runs sizes that are not multiples of 8 or of the bins at their own size,
    the bytes those of ONNX Runtime on the same ONNX; a size outside the bounds is one line."""
    from pspnet_deploy.errors import UserError
    from pspnet_deploy.runners import load_runner

    src = _copy(dyn_onnx, tmp_path)
    sc = _build(src, tmp_path / "dyn.fp32.engine")
    assert sc["io"]["inputs"][0]["shape"] == [-1, 3, -1, -1]
    assert sc["io"]["profiles"] == [{"input": "input", "min": [1, 3, *MIN], "opt": [1, 3, *OPT], "max": [2, 3, *MAX]}]
    assert sc["io"]["profile"] == sc["io"]["profiles"][0]
    assert "--profiles 48x48:64x96:256x320" in sc["build"]["command"] and "--batch 1 1 2" in sc["build"]["command"]
    assert sc["build"]["options"]["profiles"] is None  # not given; the command records what was used
    with load_runner(src, threads=THREADS) as ref, load_runner(sc["engine"]["path"]) as eng:
        assert eng.dynamic_size and eng.input_size == OPT and eng.batch_range == (1, 2)
        for h, w, n in ((97, 131, 1), (241, 319, 2), (48, 48, 1), (256, 320, 1)):
            x = _x(rng, h, w, n)
            out = eng.infer(x)
            assert out.shape == (n, 4, h, w)
            np.testing.assert_array_equal(out, ref.infer(x))
        with pytest.raises(UserError, match="outside the model's size range 48x48 .. 256x320") as e:
            eng.infer(_x(rng, 40, 131))
        assert "\n" not in str(e.value)


def test_several_profiles_the_runner_picks_per_shape(trt, dyn_onnx, tmp_path, rng):
    """--profiles, one per size class: each is recorded (index order), the runner switches the
    context to the tightest profile covering each input (set_optimization_profile_async on its own
    stream, only when it changes) and the results are ONNX Runtime's; a size inside the export's
    bounds but outside every profile is refused in one line naming the profiles; with CUDA graphs
    each shape gets its own graph."""
    from pspnet_deploy.errors import UserError
    from pspnet_deploy.runners import load_runner

    src = _copy(dyn_onnx, tmp_path)
    sc = _build(src, tmp_path / "dyn.fp32.engine", "--profiles", *PROFILES, "--batch", "1", "1", "1")
    assert [(p["min"][2:], p["opt"][2:], p["max"][2:]) for p in sc["io"]["profiles"]] == [
        ([48, 48], [64, 96], [128, 160]), ([97, 131], [97, 131], [97, 131]), ([120, 150], [200, 240], [256, 320])]
    assert sc["build"]["options"]["profiles"] == ["48x48:64x96:128x160", "97x131:97x131:97x131",
                                                  "120x150:200x240:256x320"]
    plan = json.loads(Path(sc["engine"]["path"]).read_bytes())
    assert len(plan["profiles"]) == 3
    # (size, profile): 97x131 lies in profiles 0 and 1; the exact-size one is the tightest
    walk = [((97, 131), 1), ((64, 96), 0), ((200, 300), 2), ((100, 100), 0), ((97, 131), 1), ((97, 131), 1)]
    for graphs in (False, True):
        with load_runner(src, threads=THREADS) as ref, load_runner(sc["engine"]["path"], cuda_graph=graphs) as eng:
            ctx = eng.session.context
            assert [i for i, _ in ctx._switches] == [1, 2]  # buffers sized at every profile's largest shape
            del ctx._switches[:]
            for (h, w), index in walk:
                x = _x(rng, h, w)
                np.testing.assert_array_equal(eng.infer(x), ref.infer(x))
                assert ctx.active_optimization_profile == index
            assert [i for i, _ in ctx._switches] == [1, 0, 2, 0, 1]  # switched only on a change
            assert {s for _, s in ctx._switches} == {int(eng.session.stream)}
            if graphs:
                assert sorted(eng.session._graphs) == sorted({(1, 3, h, w) for (h, w), _ in walk})
            with pytest.raises(UserError) as e:
                eng.infer(_x(rng, 250, 100))  # inside 48x48 .. 256x320, in no profile
            msg = str(e.value)
            assert "\n" not in msg and "input 1x3x250x100 is outside every optimisation profile" in msg
            assert "1x3x48x48 / 1x3x64x96 / 1x3x128x160; 1x3x97x131" in msg and "--profiles" in msg
            x = _x(rng, 64, 96)  # still usable after a refusal
            np.testing.assert_array_equal(eng.infer(x), ref.infer(x))
    cuda = sys.modules["cuda.bindings.runtime"]
    assert not cuda.graphs and not cuda.execs and not cuda.live and not cuda.events


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_fp16_and_int8_dynamic_engines(trt, dyn_variants, tmp_path, rng, precision):
    """The FP16 and INT8 Q/DQ ONNX of the dynamic graph build with the same profiles (strongly
    typed, no precision flag) and run at unseen sizes as their ONNX does on ONNX Runtime. What the
    real FP16 / INT8 kernels compute is not checked here."""
    from pspnet_deploy.runners import load_runner

    src = _copy(dyn_variants[precision], tmp_path)
    sc = _build(src, tmp_path / f"dyn.{precision}.engine", "--profiles", PROFILES[0], PROFILES[2])
    assert sc["precision"] == precision and len(sc["io"]["profiles"]) == 2
    plan = json.loads(Path(sc["engine"]["path"]).read_bytes())
    assert plan["strongly_typed"] and plan["flags"] == []
    with load_runner(src, threads=THREADS) as ref, load_runner(sc["engine"]["path"]) as eng:
        assert eng.precision == precision
        for h, w in ((97, 131), (241, 319)):
            x = _x(rng, h, w)
            np.testing.assert_array_equal(eng.infer(x), ref.infer(x))


def test_profiles_are_checked_before_any_work(dyn_onnx, onnx_b1, tmp_path):
    """A profile outside the export's bounds, a malformed one, --profiles or --contexts on a fixed-size ONNX:
    exit 2, one line, nothing written (no TensorRT needed to refuse)."""
    src = _copy(dyn_onnx, tmp_path)
    cases = [(src, ["--profiles", "40x40:64x96:256x320"], "reaches outside the bounds the model was exported for "
                                                          "(48x48 .. 256x320)"),
             (src, ["--profiles", "64x96:48x48:256x320"], "min <= opt <= max"),
             (src, ["--profiles", "64-96"], "is not MIN:OPT:MAX"),
             (onnx_b1, ["--profiles", "64x96"], "--profiles needs a dynamic-shape ONNX"),
             (onnx_b1, ["--contexts", "2"], "--contexts is for engines with dynamic inputs"),
             (src, ["--contexts", "0"], "--contexts must be 1..64")]
    for onnx, args, msg in cases:
        r = run_cli("pspnet_deploy.cli.build_engine", onnx, "--engine", tmp_path / "x.engine", *args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert lines[0].startswith("pspnet-build-engine: error:") and msg in lines[0], lines[0]
    assert not (tmp_path / "x.engine").exists()
    r = run_cli("pspnet_deploy.cli.build_engine", src, "--profiles", *PROFILES, "--dry-run")
    assert r.returncode == 0 and "3 optimisation profile(s) 1x3x48x48 / 1x3x64x96 / 2x3x128x160" in r.stdout, r.stderr


def test_contexts_on_their_own_streams(trt, onnx_b1, tmp_path, rng):
    """request_workers(batch, N): N execution contexts of the one engine, each with its own stream
    and buffers (interleaved stage/execute on two of them keeps each one's input and output), driven
    from N threads at once with the engine's device made current in each; with --cuda-graph each
    context captures its own graph. The extra contexts are kept for the next level and released
    with the runner: no buffer, graph or event outlives it."""
    from pspnet_deploy.runners import load_runner

    src = _copy(onnx_b1, tmp_path)
    sc = _build(src, tmp_path / "tiny.fp32.engine")
    cuda = sys.modules["cuda.bindings.runtime"]
    x1, x2 = _x(rng, *TINY_SIZE), _x(rng, *TINY_SIZE)
    with load_runner(src, threads=THREADS) as ref, load_runner(sc["engine"]["path"], device="cuda:1",
                                                               cuda_graph=True) as eng:
        workers, how = eng.request_workers(x1, 3)
        assert len(workers) == 3 and "3 TensorRT execution contexts, each on its own CUDA stream" in how
        lanes = [eng.session, *eng._lanes]
        assert len({int(s.stream) for s in lanes}) == 3 and len({id(s.context) for s in lanes}) == 3
        assert len({s._dev[s.input_name] for s in lanes}) == 3 and all(s.engine is eng.session.engine for s in lanes)
        a, b = lanes[1], lanes[2]
        sa, sb = a.stage(x1), b.stage(x2)  # both staged before either runs
        a.execute(sa)
        b.execute(sb)
        a.synchronize()
        b.synchronize()
        np.testing.assert_array_equal(a.host_view("logits"), ref.infer(x1)[0:1])
        np.testing.assert_array_equal(b.host_view("logits"), ref.infer(x2)[0:1])
        want = ref.infer(x1)
        outs: list = [[] for _ in workers]
        devices_before = len(cuda.devices)

        def drive(i):
            for _ in range(3):
                outs[i].append(workers[i]())
        threads = [threading.Thread(target=drive, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(len(o) == 3 for o in outs)
        for o in outs:
            for y in o:
                np.testing.assert_array_equal(y, want)
        assert cuda.devices[devices_before:] == [1, 1, 1]  # once per thread, on the engine's device
        assert all(len(s._graphs) == 1 for s in lanes)  # each context captured its own graph
        again, _ = eng.request_workers(x1, 2)
        assert len(again) == 2 and len(eng._lanes) == 2  # kept, not made again
    assert not cuda.live and not cuda.graphs and not cuda.execs and not cuda.events


@pytest.mark.parametrize("trt", ["11.4.0"], indirect=True)  # the API surface: test_contexts_on_their_own_streams
def test_bench_sweeps_tensorrt_concurrency(trt, onnx_b1, tmp_path):
    """pspnet-bench --concurrency 1 2 on an engine: one load row per level, each with the contexts
    it used (stand-in timings mean nothing)."""
    from pspnet_deploy.bench import run_bench

    src = _copy(onnx_b1, tmp_path)
    sc = _build(src, tmp_path / "tiny.fp32.engine")
    rep = run_bench([sc["engine"]["path"]], tmp_path / "bench", scope="model", batches=[1], iterations=4, warmup=1,
                    concurrency=[1, 2], peak=False, progress=False, device="cuda", write=False)
    rows = rep["load"]
    assert [r["concurrency"] for r in rows] == [1, 2] and all(r["requests"] >= 4 for r in rows)
    assert "2 TensorRT execution contexts" in rows[1]["how"] and rows[1]["backend"] == "tensorrt"
    cuda = sys.modules["cuda.bindings.runtime"]
    assert not cuda.live and not cuda.events


def test_export_refuses_uint8_with_dynamic_shape(tiny_checkpoint, tmp_path):
    """--input-kind uint8 builds its pixel path for one size: with --dynamic-shape it is refused in
    one line (exit 2) before anything is exported, instead of failing inside the graph checks."""
    out = tmp_path / "u8dyn.onnx"
    r = run_cli("pspnet_deploy.cli.export", tiny_checkpoint, "--onnx", out, "--dynamic-shape", "--input-size", "64",
                "96", "--input-kind", "uint8", "--output-kind", "labels")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("pspnet-export: error: --dynamic-shape with --input-kind uint8 is not supported")
    assert not out.exists()


def test_concurrent_contexts_of_a_dynamic_engine_get_profiles_of_their_own(trt, dyn_onnx, tmp_path, rng):
    """TensorRT wants execution contexts that run at once on an engine with dynamic inputs each on
    profiles of its own: --contexts N builds every size class N times (recorded), context s uses
    set s only (its profile choice, switches and refusals stay inside its set), and asking for more
    requests in flight than the engine has sets is refused in one line with the rebuild command."""
    from pspnet_deploy.errors import UserError
    from pspnet_deploy.runners import load_runner

    src = _copy(dyn_onnx, tmp_path)
    sc = _build(src, tmp_path / "dyn.fp32.engine", "--profiles", PROFILES[0], PROFILES[2], "--batch", "1", "1", "1",
                "--contexts", "3")
    assert sc["tensorrt"]["profile_sets"] == 3 and len(sc["io"]["profiles"]) == 6
    assert [p["max"][2:] for p in sc["io"]["profiles"]] == [[128, 160], [256, 320]] * 3
    assert "--contexts 3" in sc["build"]["command"] and sc["build"]["command"].count("--profiles") == 1
    with load_runner(src, threads=THREADS) as ref, load_runner(sc["engine"]["path"]) as eng:
        workers, how = eng.request_workers(_x(rng, 97, 131), 3)
        lanes = [eng.session, *eng._lanes]
        assert [s.profile_set for s in lanes] == [0, 1, 2]
        for lane_index, lane in enumerate(lanes):
            for (h, w), klass in (((200, 300), 1), ((64, 96), 0)):
                x = _x(rng, h, w)
                np.testing.assert_array_equal(lane.run(x), ref.infer(x))
                assert lane.context.active_optimization_profile == 2 * lane_index + klass
            assert {i for i, _ in lane.context._switches} <= {2 * lane_index, 2 * lane_index + 1}
            with pytest.raises(UserError, match="outside every optimisation profile"):
                lane.run(_x(rng, 250, 100))
        want = ref.infer(_x(np.random.default_rng(5), 97, 131))
        x = _x(np.random.default_rng(5), 97, 131)
        workers, _ = eng.request_workers(x, 3)
        results = [None] * 3
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, workers[i]())) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for y in results:
            np.testing.assert_array_equal(y, want)
        with pytest.raises(UserError) as e:
            eng.request_workers(x, 4)
        msg = str(e.value)
        assert "\n" not in msg and "4 requests in flight need 4 execution contexts" in msg
        assert "the engine has profiles for 3; rebuild it with --contexts 4: pspnet-build-engine " in msg
        assert msg.endswith("--contexts 4") or "--contexts 4 " in msg.split("rebuild it with")[1]
    single = _build(src, tmp_path / "one.fp32.engine")
    with load_runner(single["engine"]["path"]) as eng:
        with pytest.raises(UserError, match="has profiles for 1; rebuild it with --contexts 2"):
            eng.request_workers(_x(rng, 97, 131), 2)
    cuda = sys.modules["cuda.bindings.runtime"]
    assert not cuda.live and not cuda.events
