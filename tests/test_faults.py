"""Bad input over every command, as a table: each row runs the real CLI in a subprocess and must
end with exit code 2, exactly one stderr line ``<prog>: error: ...`` that names the problem, no
traceback, no "internal error", and no file left behind (no output, no temporary file, no empty
folder). Rows are grouped by fault class: arguments out of range, unwritable output paths, sizes,
unreadable or hostile checkpoints, model files whose contents contradict themselves.

TensorRT is not needed: every engine row fails on the file or its sidecar before TensorRT is asked.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY_CLASSES, tiny_meta

THREADS = os.environ.get("PSPNET_TEST_THREADS", "1")
CUDA = False
try:
    import torch

    CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    pass


class Evil:
    """A pickle that would create a file if unpickled with full pickle (it must never be)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, tiny_checkpoint) -> dict:
    """The bad inputs, made once: tiny checkpoint variants, foreign and contradictory ONNX files,
    engine sidecars, a file where a folder is expected."""
    import onnx
    import torch
    from onnx import TensorProto, helper, numpy_helper

    from pspnet_deploy.checkpoint import FORMAT
    from pspnet_deploy.card import SIDECAR_FORMAT

    d = tmp_path_factory.mktemp("bad")
    c = {"ck": str(tiny_checkpoint), "d": d, "marker": d / "PWNED"}
    (d / "file").write_text("a file, not a folder")
    (d / "folder").mkdir()
    (d / "text.pt").write_text("hello\n")  # 6 bytes
    (d / "random.pt").write_bytes(os.urandom(4096))
    torch.save({"payload": Evil(c["marker"])}, d / "evil.pt")
    torch.save({"format": FORMAT, "version": 1, "meta": json.dumps(tiny_meta())}, d / "nostate.pt")
    torch.save({"format": FORMAT, "version": "x", "meta": "{}", "state_dict": {}}, d / "badversion.pt")
    (d / "empty.onnx").write_bytes(b"")

    def conv_onnx(path, channels, meta):
        w = numpy_helper.from_array(np.ones((channels, 3, 1, 1), np.float32), "w")
        g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 96])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 64, 96])], [w])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        for k, v in meta.items():
            m.metadata_props.add(key=f"pspnet.{k}", value=v if isinstance(v, str) else json.dumps(v))
        onnx.save(m, str(path))

    import numpy as np

    good = {"classes": [f"c{i}" for i in range(11)], "palette": [[i, i, i] for i in range(11)],
            "preprocess": tiny_meta()["preprocess"], "ignore_index": 255}
    conv_onnx(d / "foreign.onnx", 4, {})
    conv_onnx(d / "channels.onnx", 4, good)  # 4 output channels, 11 class names
    conv_onnx(d / "classes.onnx", 4, dict(good, classes="road,car,boat,sky"[:9] + "{"))  # corrupt string
    sidecar = {"format": SIDECAR_FORMAT, "version": 1, "precision": "fp32",
               "engine": {"path": "m.engine", "size": 50, "sha256": "0" * 64}, "tensorrt": {"version": "10.0"},
               "gpu": {"name": "x"}, "io": {"inputs": [{"name": "x", "shape": [1, 3, 64, 96], "dtype": "float32"}],
                                              "outputs": [{"name": "y", "shape": [1, 11, 64, 96], "dtype": "float32"}]},
               "model": {k: v for k, v in good.items()}}
    (d / "size.engine").write_bytes(b"\0" * 100)
    (d / "size.engine.json").write_text(json.dumps(sidecar))
    (d / "ver.engine").write_bytes(b"\0" * 50)
    (d / "ver.engine.json").write_text(json.dumps(dict(sidecar, version="x")))
    import cv2

    ok, png = cv2.imencode(".png", np.zeros((64, 96, 3), np.uint8))
    (d / "imgs").mkdir()
    (d / "imgs" / "broken.png").write_bytes(png.tobytes()[:60])  # truncated: libpng complains on stderr
    return c


T = "--threads 1"
# (id, command, arguments with {ck} {d} placeholders, words the one error line must contain)
CASES = [
    # training arguments out of range: refused before torch is imported
    ("train-val-every-0", "train", "--val-every 0", "--val-every"),
    ("train-scale-reversed", "train", "--scale 2 0.5", "--scale"),
    ("train-batch-0", "train", "--batch-size 0", "--batch-size"),
    ("train-lr-negative", "train", "--lr -1", "--lr"),
    ("train-workers-negative", "train", "--workers -1", "--workers"),
    ("train-bins-0", "train", "--bins 0", "--bins"),
    ("train-head-channels-0", "train", "--head-channels 0", "--head-channels"),
    ("train-device-tpu", "train", "--device tpu", "--device"),
    ("train-epochs-0", "train", "--epochs 0", "--epochs"),
    ("train-not-a-number", "train", "--epochs many", "invalid int"),
    ("train-crop-memory", "train", "--crop 16000 16000 --batch-size 8", "memory"),
    ("train-out-under-file", "train", "--out {d}/file/run", "not a folder"),
    ("train-init-no-weights", "train", f"--init {{d}}/nostate.pt --crop 64 64 {T} --workers 0", "no weights"),
    ("train-resume-other-dataset", "train", f"--resume {{ck}} --crop 64 64 {T} --workers 0", "4 classes"),
    ("train-resume-text", "train", "--resume {d}/text.pt --out {d}/o", "not a PyTorch file"),
    ("train-resume-evil", "train", "--resume {d}/evil.pt --out {d}/o", "refused"),
    # eval
    ("eval-json-folder", "eval", "{ck} --data synthetic --json {d}/folder", "is a folder"),
    ("eval-json-under-file", "eval", "{ck} --data synthetic --json {d}/file/r.json", "not a folder"),
    ("eval-size-too-small", "eval", f"{{ck}} --data synthetic --input-size 7 7 --limit 1 {T}", "too small"),
    ("eval-size-memory", "eval", "{ck} --data synthetic --input-size 8000 8000 --batch-size 64", "memory"),
    ("eval-size-too-large", "eval", "{ck} --data synthetic --input-size 40000 40000", "too large"),
    ("eval-scales-whole", "eval", "{ck} --data synthetic --mode whole --scales 0.5 1", "add --mode slide"),
    ("eval-scales-zero", "eval", "{ck} --data synthetic --scales 0 1", "in (0, 4]"),
    ("eval-text-pt", "eval", "{d}/text.pt --data synthetic", "not a PyTorch file"),
    ("eval-random-pt", "eval", "{d}/random.pt --data synthetic", "not a PyTorch file"),
    ("eval-evil-pt", "eval", "{d}/evil.pt --data synthetic", "never contains"),
    ("eval-no-state-dict", "eval", "{d}/nostate.pt --data synthetic", "no weights"),
    ("eval-version-x", "eval", "{d}/badversion.pt --data synthetic", "not a number"),
    ("eval-empty-onnx", "eval", "{d}/empty.onnx --data synthetic", "not an ONNX model"),
    ("eval-channels-vs-classes", "eval", "{d}/channels.onnx --data synthetic", "4 channels"),
    ("eval-device-tpu", "eval", "{ck} --data synthetic --device tpu", "--device"),
    # export
    ("export-json-folder", "export", "{ck} --onnx {d}/o/m.onnx --json {d}/folder", "is a folder"),
    ("export-onnx-under-file", "export", "{ck} --onnx {d}/file/m.onnx", "not a folder"),
    ("export-random-pt", "export", "{d}/random.pt --onnx {d}/o/m.onnx", "not a PyTorch file"),
    # calibrate
    ("calibrate-output-under-file", "calibrate", "{d}/channels.onnx --data synthetic -o {d}/file/m.onnx", "not a folder"),
    ("calibrate-output-folder", "calibrate", "{d}/channels.onnx --data synthetic -o {d}/folder", "onnx"),
    ("calibrate-cache-under-file", "calibrate",
     "{d}/channels.onnx --data synthetic -o {d}/o/m.onnx --cache-dir {d}/file/cache", "not a folder"),
    ("calibrate-json-folder", "calibrate", "{d}/channels.onnx --data synthetic -o {d}/o/m.onnx --json {d}/folder",
     "is a folder"),
    # build-engine
    ("build-engine-empty-onnx", "build_engine", "{d}/empty.onnx --dry-run", "{d}/empty.onnx"),
    ("build-engine-under-file", "build_engine", "{d}/channels.onnx --engine {d}/file/m.engine", "not a folder"),
    # predict
    ("predict-out-under-file", "predict", "{ck} {d}/imgs -o {d}/file/pred", "not a folder"),
    ("predict-broken-png", "predict", f"{{ck}} {{d}}/imgs/broken.png -o {{d}}/pred {T}", "cannot decode"),
    ("predict-corrupt-classes", "predict", "{d}/classes.onnx {d}/imgs -o {d}/pred", "pspnet.classes"),
    ("predict-device-tpu", "predict", "{ck} {d}/imgs -o {d}/pred --device tpu", "--device"),
    # bench
    ("bench-out-under-file", "bench", "--model {ck} --out {d}/file/b", "not a folder"),
    ("bench-size-too-small", "bench", f"--model {{ck}} --out {{d}}/b --input-size 1 1 --no-peak {T}", "too small"),
    # triton
    ("triton-foreign-onnx", "triton", "{d}/foreign.onnx --repo {d}/repo", "no pspnet."),
    ("triton-channels", "triton", "{d}/channels.onnx --repo {d}/repo", "4 channels"),
    ("triton-engine-size", "triton", "{d}/size.engine --repo {d}/repo", "sidecar records"),
    ("triton-sidecar-version-x", "triton", "{d}/ver.engine --repo {d}/repo", "not a number"),
    ("triton-repo-under-file", "triton", "{d}/channels.onnx --repo {d}/file/repo", "not a folder"),
]
if not CUDA:
    CASES.append(("train-cuda-without-gpu", "train", f"--device cuda --data synthetic --crop 64 64 {T}", "CUDA"))


def _tree(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(ctx, case, tmp_path):
    name, cmd, args, needle = case
    d = ctx["d"]
    before = _tree(d)
    argv = [a.format(ck=ctx["ck"], d=d) for a in args.split()]
    if cmd == "train" and "--out" not in args:
        argv += ["--out", str(d / "run")]
    if cmd == "train" and "--data" not in args:
        argv += ["--data", "synthetic"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=THREADS)
    env.pop("PYTHONWARNINGS", None)
    r = subprocess.run([sys.executable, "-m", f"pspnet_deploy.cli.{cmd}", *argv], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    prog = "pspnet-" + cmd.replace("_", "-")
    err = r.stderr
    assert r.returncode == 2, (r.returncode, err[-3000:])
    assert "Traceback" not in err and "internal error" not in err, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    assert needle.format(d=d) in lines[0], (needle, lines[0])
    assert "weights_only" not in lines[0]
    assert _tree(d) == before, sorted(_tree(d) ^ before)  # nothing written, nothing half-written
    assert not list(tmp_path.iterdir())  # nor in the working folder (default output paths)
    assert not ctx["marker"].exists()  # the pickle never ran


def test_predict_skips_its_own_outputs(tmp_path, tiny_checkpoint):
    """``pspnet-predict photos -o photos/pred`` twice: the second run segments the same photos,
    not the first run's outputs."""
    import cv2
    import numpy as np

    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "a.png"), np.full((64, 96, 3), 90, np.uint8))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=THREADS)
    for _ in range(2):
        r = subprocess.run([sys.executable, "-m", "pspnet_deploy.cli.predict", str(tiny_checkpoint), str(photos),
                            "-o", str(photos / "pred"), "--threads", "1"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "segmented 1 image" in r.stdout, r.stdout
    assert sorted(p.name for p in (photos / "pred" / "labels" / "photos").iterdir()) == ["a.png"]


def test_stale_tmp_of_killed_writer_is_cleaned(tmp_path):
    """A temporary file a killed writer left (its pid is gone) is removed by the next write in that
    folder; a live writer's is kept."""
    from pspnet_deploy.utils import atomic_write_text

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    dead = tmp_path / f".report.json.p{p.pid}.abcdefgh.tmp"
    live = tmp_path / f".report.json.p{os.getppid()}.abcdefgh.tmp"
    dead.write_bytes(b"x" * 1000)
    live.write_bytes(b"x")
    atomic_write_text(tmp_path / "other.txt", "hi")
    assert not dead.exists() and live.exists() and (tmp_path / "other.txt").read_text() == "hi"


def test_full_disk_is_one_line(tmp_path, tiny_checkpoint):
    """A write that runs out of space (simulated with a file-size limit, which fails writes with
    EFBIG the way a full disk fails them with ENOSPC) is one line, and leaves no partial file."""
    import resource

    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=THREADS)
    out = tmp_path / "rel.pt"
    r = subprocess.run([sys.executable, "-c",
                        "import sys; from pspnet_deploy.cli.common import run; from pspnet_deploy.checkpoint import "
                        "release_checkpoint as rc; sys.exit(run('x', lambda a: rc(sys.argv[1], sys.argv[2]) and 0))",
                        str(tiny_checkpoint), str(out)], env=env, capture_output=True, text=True, timeout=300,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000)))
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1 and "disk" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_weights_that_do_not_fit_are_named(tiny_checkpoint):
    """A state dict of another model: one line that names a differing tensor with both shapes and the
    counts, instead of PyTorch's multi-line RuntimeError cut short."""
    from pspnet_deploy.checkpoint import fit_state_dict, load_checkpoint
    from pspnet_deploy.errors import UserError

    from conftest import make_tiny_model

    state = load_checkpoint(tiny_checkpoint)["state_dict"]
    model = make_tiny_model(num_classes=7)
    with pytest.raises(UserError) as e:
        fit_state_dict(model, state, "x.pt", hint="use the same options")
    msg = str(e.value)
    assert "\n" not in msg and "x.pt: weights do not fit the model" in msg and "use the same options" in msg
    assert "head.4.weight is [4, 32, 1, 1] in the file but [7, 32, 1, 1] in the model" in msg, msg
