"""Kills, a full disk and Ctrl-C against the real commands (issue 20, classes 5 and 9).

Each test runs the real CLI in a subprocess on a small real model (a 2.6 MB convolution network
with the toolkit's metadata, so an OpenVINO build takes about 1.5 s) and asserts the promises:

- a SIGKILL at any moment of ``pspnet-build-engine --backend openvino`` over an existing IR leaves
  the previous IR whole (it loads and computes what it computed before) or no IR that a reader
  accepts (the runner refuses it with one line), never a mix; the next run leaves no temporary;
- the same for ``pspnet-calibrate``: the previous output unchanged, its scratch folder removed
  by the next run;
- a full disk (a real tmpfs mounted for the test) is the one-line message, exit 2, temporaries
  removed, and a previous IR on that disk still whole;
- Ctrl-C (SIGINT to the process group, as a terminal sends it) is one line and exit 130, with no
  traceback and no telemetry; OpenVINO's telemetry never touches the network (an audit hook on
  the socket and urllib events of the build's own process);
- the inputs' bytes are unchanged and the folders hold no stray file.

Kill moments: named points (``$PSPNET_FAULT_AT``, :func:`pspnet_deploy.utils.fault_point`) between
the steps that publish an IR, and moments found by polling the folder for the temporaries. What
this cannot catch: a power loss (the page cache is not flushed; renames are not fsynced).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, TINY_SIZE, all_ignore_dataset, tiny_meta

if importlib.util.find_spec("openvino") is None:  # not imported here: an import alone sends telemetry
    pytest.skip("openvino is not installed", allow_module_level=True)

THREADS = os.environ.get("PSPNET_TEST_THREADS", "1")
BUILD = "pspnet_deploy.cli.build_engine"
CALIBRATE = "pspnet_deploy.cli.calibrate"


# ------------------------------------------------------------------------------------ helpers

def conv_net(path: Path, seed: int = 0, width: int = 192, classes: int = 4) -> Path:
    """A small real segmentation-shaped ONNX (three 3x3 convolutions, a 1x1 classifier) carrying the
    toolkit's metadata (classes, palette, preprocessing), so every command accepts it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from pspnet_deploy.card import write_onnx_metadata

    rng = np.random.default_rng(seed)
    nodes, inits, prev, cin = [], [], "x", 3
    for i in range(3):
        w = (rng.standard_normal((width, cin, 3, 3)) / np.sqrt(9 * cin)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        prev, cin = f"r{i}", width
    inits.append(numpy_helper.from_array(rng.standard_normal((classes, cin, 1, 1)).astype(np.float32), "wo"))
    nodes.append(helper.make_node("Conv", [prev, "wo"], ["logits"]))
    h, w_ = TINY_SIZE
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, h, w_])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes, h, w_])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    write_onnx_metadata(m, tiny_meta())
    onnx.save(m, str(path))
    return path


def env(**extra) -> dict:
    e = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=THREADS, **extra)
    for k in ("PSPNET_FAULT_AT", "PYTHONWARNINGS"):
        if k not in extra:
            e.pop(k, None)
    return e


def cli(module: str, *args, fault: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    extra = {"PSPNET_FAULT_AT": fault} if fault else {}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env(**extra),
                          capture_output=True, text=True, timeout=timeout)


def start(module: str, *args) -> subprocess.Popen:
    """The command in its own process group (what a terminal's Ctrl-C reaches)."""
    return subprocess.Popen([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def listing(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


def temporaries(d: Path) -> set[str]:
    """Hidden entries: the toolkit's temporaries (``.NAME.pPID.XXXXXXXX...``) and scratch folders."""
    return {n for n in listing(d) if any(part.startswith(".") for part in Path(n).parts)}


def poll_kill(p: subprocess.Popen, folder: Path, pattern: str, timeout: float = 120) -> bool:
    """SIGKILL ``p`` as soon as an entry matching ``pattern`` appears in ``folder`` (True), or
    let it finish (False: it was faster than the polling)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if any(folder.glob(pattern)):
            p.kill()
            p.wait()
            return True
        if p.poll() is not None:
            return False
        time.sleep(0.002)
    p.kill()
    p.wait()
    raise AssertionError(f"nothing matching {pattern} appeared in {timeout} s")


X = np.random.default_rng(0).standard_normal((1, 3, *TINY_SIZE)).astype(np.float32)


def ir_state(xml: Path, old: np.ndarray | None, new: np.ndarray | None = None) -> str:
    """"old"/"new": the IR loads (sidecar, sizes and sha256 checked) and computes exactly what that
    build computed; "refused": the runner refuses it with one line. Anything else fails the test."""
    from pspnet_deploy.errors import UserError
    from pspnet_deploy.runners import load_runner

    try:
        r = load_runner(xml, threads=1)
    except UserError as e:
        assert "\n" not in str(e), str(e)
        return "refused"
    out = r.infer(X)
    if old is not None and np.array_equal(out, old):
        return "old"
    if new is not None and np.array_equal(out, new):
        return "new"
    raise AssertionError(f"{xml} loads but computes neither the previous nor the new model: a mixed IR")


def run_ir(xml: Path) -> np.ndarray:
    from pspnet_deploy.runners import load_runner

    return load_runner(xml, threads=1).infer(X)


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("nets")
    a = conv_net(d / "a.fp32.onnx", seed=0)
    b = conv_net(d / "b.fp32.onnx", seed=1, width=256)  # another model, larger .bin and .xml
    return {"a": a, "b": b, "sha": {a: sha(a), b: sha(b)}}


@pytest.fixture(scope="module")
def built_ir(nets, tmp_path_factory) -> Path:
    """Net A built once by the real command (an IR is its three files; a copy of all three is the IR)."""
    xml = tmp_path_factory.mktemp("built") / "m.xml"
    r = cli(BUILD, nets["a"], "--backend", "openvino", "--engine", xml)
    assert r.returncode == 0, r.stderr[-2000:]
    return xml


@pytest.fixture(scope="module")
def new_out(nets, tmp_path_factory) -> np.ndarray:
    """What net B's IR computes (built once, elsewhere): a rebuild that completed is recognised by it."""
    xml = tmp_path_factory.mktemp("built_b") / "m.xml"
    r = cli(BUILD, nets["b"], "--backend", "openvino", "--engine", xml)
    assert r.returncode == 0, r.stderr[-2000:]
    return run_ir(xml)


@pytest.fixture
def old_ir(built_ir, tmp_path) -> dict:
    """A copy of net A's IR at ``tmp_path/ir/m.xml``; net B rebuilds it in the tests."""
    import shutil

    d = tmp_path / "ir"
    d.mkdir()
    for n in ("m.xml", "m.bin", "m.xml.json"):
        shutil.copy2(built_ir.parent / n, d / n)
    xml = d / "m.xml"
    return {"xml": xml, "dir": d, "out": run_ir(xml), "files": {n: sha(d / n) for n in ("m.xml", "m.bin", "m.xml.json")}}


def rebuild(nets, xml: Path, **kw) -> subprocess.CompletedProcess:
    return cli(BUILD, nets["b"], "--backend", "openvino", "--engine", xml, **kw)


# ------------------------------------------------------------------------------------ kills

#: the named moments between the steps of writing and publishing an IR (see engine/openvino.py)
POINTS = ["ir:serialized", "ir:sidecar-written", "publish:retired", "publish:m.bin", "publish:m.xml"]


@pytest.mark.parametrize("point", POINTS)
def test_killed_rebuild_at_named_point(nets, old_ir, point):
    """SIGKILL at each step of publishing: before the old sidecar goes the previous IR is whole
    (byte for byte); after, no sidecar, so the runner refuses the IR with one line."""
    xml, d = old_ir["xml"], old_ir["dir"]
    r = rebuild(nets, xml, fault=point)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    state = ir_state(xml, old_ir["out"])
    before_publish = point.startswith("ir:")
    assert state == ("old" if before_publish else "refused"), (point, state)
    if before_publish:
        assert {n: sha(d / n) for n in old_ir["files"]} == old_ir["files"]
    else:
        assert not (d / "m.xml.json").exists()
    assert {sha(p) for p in (nets["a"], nets["b"])} == set(nets["sha"].values())  # inputs untouched


def test_killed_rebuild_then_next_run_is_clean(nets, old_ir, new_out):
    """Killed with its three temporaries written (the serializer's .xml and .bin, the sidecar's): the
    previous IR is whole; the next build over it removes the killed run's temporaries and
    publishes the new IR."""
    xml, d = old_ir["xml"], old_ir["dir"]
    r = rebuild(nets, xml, fault="ir:sidecar-written")
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    assert len(temporaries(d)) == 3, sorted(listing(d))
    assert ir_state(xml, old_ir["out"]) == "old"
    r = rebuild(nets, xml)
    assert r.returncode == 0, r.stderr[-2000:]
    assert listing(d) == {"m.xml", "m.bin", "m.xml.json"}, sorted(listing(d))
    assert ir_state(xml, old_ir["out"], new_out) == "new"
    assert not np.array_equal(new_out, old_ir["out"])
    assert {sha(p) for p in (nets["a"], nets["b"])} == set(nets["sha"].values())


def test_killed_rebuild_while_its_temporaries_exist(nets, old_ir, new_out):
    """SIGKILL as soon as the build's temporary .xml appears (found by polling the folder): the IR is
    the previous one (or, on a machine faster than the polling, the new one), never a mix."""
    xml, d = old_ir["xml"], old_ir["dir"]
    p = start(BUILD, nets["b"], "--backend", "openvino", "--engine", xml)
    poll_kill(p, d, ".m.xml.p*.xml")
    assert ir_state(xml, old_ir["out"], new_out) in ("old", "refused", "new")


@pytest.mark.parametrize("offset", [0.3, 0.6, 0.9, 1.2])
def test_killed_rebuild_at_time_offsets(nets, old_ir, new_out, offset):
    """SIGKILL after a fixed time (Python start-up, ONNX conversion, compilation, the writes, or after
    publishing, before the process ended): the IR is the previous one, the new one, or refused with
    one line; never a mix."""
    xml = old_ir["xml"]
    p = start(BUILD, nets["b"], "--backend", "openvino", "--engine", xml)
    time.sleep(offset)
    p.kill()
    p.wait()
    state = ir_state(xml, old_ir["out"], new_out)
    assert state in ("old", "refused", "new"), state


def test_killed_calibrate(nets, tmp_path):
    """pspnet-calibrate killed while its scratch folder exists: the previous output is unchanged, and
    the next run removes the killed run's folder and leaves only its outputs."""
    src = tmp_path / "src"
    src.mkdir()
    onnx = src / "n.fp32.onnx"
    onnx.write_bytes(nets["a"].read_bytes())
    out = tmp_path / "q" / "n.int8.onnx"
    args = [onnx, "--data", "synthetic", "--num-images", "10", "--method", "minmax", "-o", out, "--no-progress",
            "--threads", THREADS]
    r = cli(CALIBRATE, *args)
    assert r.returncode == 0, r.stderr[-2000:]
    first = {n: sha(out.parent / n) for n in listing(out.parent) if (out.parent / n).is_file()}
    onnx_sha = sha(onnx)
    p = start(CALIBRATE, *args)
    assert poll_kill(p, out.parent, ".n.int8.onnx.p*.work/*"), "calibration finished before its work folder was seen"
    assert temporaries(out.parent)
    assert {n: sha(out.parent / n) for n in first} == first  # the previous output, byte for byte
    assert not set(listing(out.parent)) - set(first) - temporaries(out.parent)
    r = cli(CALIBRATE, *args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not temporaries(out.parent), sorted(temporaries(out.parent))
    assert set(listing(out.parent)) == set(first)
    assert sha(onnx) == onnx_sha and listing(src) == {"n.fp32.onnx"}


# ------------------------------------------------------------------------------------ full disk

@contextmanager
def tmpfs(path: Path, size: str):
    """A real, small file system (tmpfs) at ``path``: skip when this process may not mount one."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for a real full disk here ({r.stderr.strip() or r.returncode}); "
                    f"these tests need root or CAP_SYS_ADMIN")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def one_error_line(r: subprocess.CompletedProcess, prog: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ": error: " in ln]
    assert len(errors) == 1 and r.stderr.strip().splitlines()[-1] == errors[0], r.stderr[-3000:]
    assert errors[0].startswith(f"{prog}: error: ")
    return errors[0]


def test_full_disk_openvino_build(nets, tmp_path):
    """An IR whose .bin does not fit: the one-line full-disk message, exit 2, nothing left there (nor
    the folder the build made for it)."""
    with tmpfs(tmp_path / "disk", "1m") as disk:
        r = cli(BUILD, nets["a"], "--backend", "openvino", "--engine", disk / "new" / "m.xml")
        line = one_error_line(r, "pspnet-build-engine")
        assert "no space left" in line and str(disk / "new" / "m.xml") in line, line
        assert listing(disk) == set(), sorted(listing(disk))


def test_full_disk_openvino_rebuild_keeps_previous_ir(nets, tmp_path):
    """The previous IR fits, the new one does not fit beside it: one line, and the previous IR is
    byte for byte what it was and still runs."""
    with tmpfs(tmp_path / "disk", "5m") as disk:
        xml = disk / "m.xml"
        assert cli(BUILD, nets["a"], "--backend", "openvino", "--engine", xml).returncode == 0
        before = {n: sha(disk / n) for n in listing(disk)}
        out = run_ir(xml)
        r = rebuild(nets, xml)
        assert "no space left" in one_error_line(r, "pspnet-build-engine")
        assert {n: sha(disk / n) for n in listing(disk)} == before
        assert ir_state(xml, out) == "old"
        assert (os.stat(xml).st_mode & 0o777) == 0o666 & ~_umask()  # the .xml follows the umask


def _umask() -> int:
    u = os.umask(0)
    os.umask(u)
    return u


@pytest.mark.parametrize("size", ["2m", "3m"])
def test_full_disk_calibrate(nets, tmp_path, size):
    """pspnet-calibrate onto a disk that fills up (while preparing the model, or while ONNX Runtime's
    quantizer runs its shape inference, which truncates its file instead of failing): one line."""
    with tmpfs(tmp_path / "disk", size) as disk:
        r = cli(CALIBRATE, nets["a"], "--data", "synthetic", "--num-images", "10", "--method", "minmax",
                "-o", disk / "m.int8.onnx", "--no-progress", "--threads", THREADS)
        assert "no space left" in one_error_line(r, "pspnet-calibrate")
        assert listing(disk) == set(), sorted(listing(disk))
    assert sha(nets["a"]) == nets["sha"][nets["a"]]


# ------------------------------------------------------------------------------------ Ctrl-C, telemetry

@pytest.mark.parametrize("delay", [0.0, 0.15])
def test_ctrl_c_during_openvino_build(nets, old_ir, new_out, delay):
    """SIGINT to the build's process group once it has started converting: exit 130, one line, no
    traceback, no telemetry text; the previous IR is whole and no temporary is left."""
    xml, d = old_ir["xml"], old_ir["dir"]
    p = start(BUILD, nets["b"], "--backend", "openvino", "--engine", xml)
    first = p.stderr.readline()
    if "rebuilding from the changed ONNX" in first:  # the rebuild note (another ONNX than the old IR's) comes first
        first += p.stderr.readline()
    assert "converting" in first, first
    time.sleep(delay)
    os.killpg(p.pid, signal.SIGINT)
    _out, rest = p.communicate(timeout=120)
    err = first + rest
    assert "Traceback" not in err and "telemetry" not in err.lower(), err
    if "pspnet-build-engine: wrote " in err:  # a fast machine: the IR was published before the interrupt came
        assert p.returncode in (0, 130, -signal.SIGINT), (p.returncode, err)
        assert ir_state(xml, old_ir["out"], new_out) == "new"
        assert listing(d) == {"m.xml", "m.bin", "m.xml.json"}, sorted(listing(d))
        return
    assert p.returncode == 130, (p.returncode, err)
    lines = err.strip().splitlines()
    assert lines[-1] == "pspnet-build-engine: interrupted", err
    assert all(ln.startswith(("pspnet-build-engine: converting", "pspnet-build-engine: note: ")) for ln in lines[:-1]), err
    assert sum(ln.startswith("pspnet-build-engine: note: ") for ln in lines) <= 1, err
    assert "Traceback" not in err and "telemetry" not in err.lower(), err
    assert ir_state(xml, old_ir["out"], new_out) in ("old", "new")  # publishing is not cut by Ctrl-C
    assert listing(d) == {"m.xml", "m.bin", "m.xml.json"}, sorted(listing(d))


@pytest.mark.parametrize("point", ["ir:temporary-made", "ir:serialized", "publish:retired", "publish:m.bin"])
def test_ctrl_c_at_named_point(nets, old_ir, new_out, point):
    """A Ctrl-C (SIGINT the process sends itself) at the moments where one would cut a step in two:
    while a temporary is made and not yet registered for removal, between the serializer and the
    sidecar, and between the renames that publish the IR. Exit 130, one line; the previous IR whole
    (before publishing) or the new one whole (publishing finishes first); no temporary left."""
    xml, d = old_ir["xml"], old_ir["dir"]
    r = rebuild(nets, xml, fault=f"{point}=SIGINT")
    assert r.returncode == 130, (r.returncode, r.stderr[-3000:])
    assert r.stderr.strip().splitlines()[-1] == "pspnet-build-engine: interrupted", r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "telemetry" not in r.stderr.lower()
    assert ir_state(xml, old_ir["out"], new_out) == ("new" if point.startswith("publish:") else "old")
    assert listing(d) == {"m.xml", "m.bin", "m.xml.json"}, sorted(listing(d))


AUDIT = """
import os, runpy, sys
def hook(event, args):  # inherited by forked children (the telemetry sends from one)
    if event.startswith("socket.") or event == "urllib.Request":
        with open(OUT, "a") as f:
            f.write(f"{os.getpid()} {event} {repr(args)[:200]}\\n")
sys.addaudithook(hook)
sys.argv = ["pspnet-build-engine"] + sys.argv[1:]
runpy.run_module("pspnet_deploy.cli.build_engine", run_name="__main__")
"""


def test_openvino_telemetry_does_not_reach_the_network(nets, tmp_path):
    """An OpenVINO build (ONNX conversion included) makes no socket and no URL request, and writes
    nothing into the home folder's telemetry files."""
    record = tmp_path / "events.txt"
    script = tmp_path / "audit.py"
    script.write_text(AUDIT.replace("OUT", repr(str(record))))
    home = tmp_path / "home"
    home.mkdir()
    r = subprocess.run([sys.executable, str(script), nets["a"], "--backend", "openvino", "--engine",
                        tmp_path / "m.xml"], cwd=ROOT, env=env(HOME=str(home)), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    time.sleep(0.5)  # a sender child still running would write its events now
    assert not record.exists(), record.read_text()[:2000]
    assert listing(home) == set(), sorted(listing(home))  # no ~/intel/openvino_ga_cid, no stats


# ------------------------------------------------------------------------------------ misleading messages

def test_training_on_all_ignore_masks_says_so(tmp_path):
    """Masks that are the ignore index everywhere make the loss 0/0: the one line names the masks,
    not the learning rate; nothing is written."""
    data = all_ignore_dataset(tmp_path / "data", count=2, classes=2)
    before = {n: sha(data / n) for n in listing(data) if (data / n).is_file()}
    r = cli("pspnet_deploy.cli.train", "--data", data, "--out", tmp_path / "run", "--backbone", "resnet18",
            "--head-channels", "16", "--crop", "64", "64", "--batch-size", "2", "--epochs", "1", "--workers", "0",
            "--threads", THREADS, "--no-progress", "--max-steps-per-epoch", "1", "--val-limit", "1")
    line = one_error_line(r, "pspnet-train")
    assert "ignore index 255" in line and "masks" in line and "--lr" not in line, line
    assert {n: sha(data / n) for n in before} == before and set(listing(data)) == set(before) | {"images", "masks"}
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").rglob("*.pt"))


def test_nonfinite_loss_error_tells_the_causes_apart():
    import torch

    from pspnet_deploy.utils import nonfinite_loss_error

    y = torch.full((2, 4, 4), 255)
    assert "ignore index 255" in str(nonfinite_loss_error(float("nan"), y, 255, 3))
    y[0, 0, 0] = 1
    assert str(nonfinite_loss_error(float("inf"), y, 255, 3)) == "loss became inf at step 3; lower --lr"


def test_no_space_error_reads_native_and_chained_errors(tmp_path):
    import errno

    from pspnet_deploy.utils import full_disk_error, no_space_error

    assert "no space left" in str(no_space_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "f.onnx")))
    native = RuntimeError(f"write failed: {os.strerror(errno.ENOSPC)}")
    assert "out.xml: no space left" in str(no_space_error(native, "out.xml"))
    try:
        try:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
        except OSError as inner:
            raise ValueError("parse error") from inner
    except ValueError as outer:
        assert no_space_error(outer, "x") is not None
    assert no_space_error(ValueError("parse error")) is None
    assert full_disk_error(tmp_path, "x") is None  # this disk is not full


def test_ctrl_c_during_calibrate(nets, tmp_path):
    """SIGINT to pspnet-calibrate's process group while its scratch folder exists: exit 130, one
    line, no traceback, and the scratch folder and every temporary are gone."""
    out = tmp_path / "q" / "n.int8.onnx"
    p = start(CALIBRATE, nets["a"], "--data", "synthetic", "--num-images", "10", "--method", "minmax", "-o", out,
              "--no-progress", "--threads", THREADS)
    t0 = time.monotonic()
    while not any(out.parent.glob(".n.int8.onnx.p*.work/*")):
        assert p.poll() is None, p.communicate()[1][-2000:]
        assert time.monotonic() - t0 < 120
        time.sleep(0.002)
    os.killpg(p.pid, signal.SIGINT)
    _out, err = p.communicate(timeout=120)
    if p.returncode == 0:
        pytest.skip("calibration finished before the interrupt arrived; nothing to check")
    assert p.returncode == 130, (p.returncode, err[-3000:])
    assert err.strip().splitlines()[-1] == "pspnet-calibrate: interrupted", err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert not out.parent.exists() or listing(out.parent) == set(), sorted(listing(out.parent))
    assert sha(nets["a"]) == nets["sha"][nets["a"]]
