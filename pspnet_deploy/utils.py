"""Small shared helpers: output-path checks, atomic writes, stale-temp cleanup, hashing, versions, strict-JSON
copies, device and input-size checks. Nothing here imports torch at module level, so the CLIs can check
their arguments before any heavy import."""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import UserError

# --------------------------------------------------------------------------------------------
# output paths: one check used by every command before it starts work
# --------------------------------------------------------------------------------------------

_NO_SPACE = {errno.ENOSPC, errno.EFBIG} | ({errno.EDQUOT} if hasattr(errno, "EDQUOT") else set())
_NO_WRITE = {errno.EACCES, errno.EPERM, errno.EROFS}


def output_error(path: str | Path, e: OSError) -> UserError:
    """The one-line UserError for an OSError met while writing ``path``."""
    why = e.strerror or type(e).__name__
    if e.errno in _NO_SPACE:
        return UserError(f"{path}: no space left to write it ({why}); free disk space or choose another output path")
    if e.errno in _NO_WRITE:
        return UserError(f"{path}: cannot write here ({why}); choose a writable output path")
    if e.errno == errno.ENOTDIR:
        return UserError(f"{path}: a parent of this path is a file, not a folder; choose another output path")
    if e.errno == errno.EISDIR:
        return UserError(f"{path}: is a folder; give a file path")
    if e.errno == errno.EEXIST:
        return UserError(f"{path}: exists and is not a folder; choose another output path")
    return UserError(f"{path}: cannot write ({why}); choose another output path")


#: how native libraries that turn an errno into text say it ("No space left on device", "Disk quota
#: exceeded"); not EFBIG's "File too large", which other messages use for other limits
_NO_SPACE_TEXT = tuple(os.strerror(n) for n in sorted(_NO_SPACE - {errno.EFBIG}))


def no_space_error(e: BaseException, path: str | Path | None = None) -> UserError | None:
    """The one-line full-disk UserError when ``e`` (or an exception it was raised from) is a full disk
    (ENOSPC, EFBIG, EDQUOT), also when a native library (OpenVINO, ONNX Runtime, protobuf) reports
    it as its own exception type with the system's text; else None. ``path``: named when the
    exception names no file."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _NO_SPACE:
            return output_error(e.filename or path or "output", e)
        text = str(e)
        hit = next((t for t in _NO_SPACE_TEXT if t in text), None)
        if hit is not None:
            where = path or "output"
            return UserError(f"{where}: no space left to write it ({hit}); free disk space or choose another "
                             f"output path")
        e = e.__cause__ or e.__context__
    return None


#: a folder whose file system has less than this left is full (for writers that do not say so)
FULL_MARGIN = 1 << 20


def free_bytes(folder: str | Path) -> int | None:
    """Bytes this user may still write on ``folder``'s file system (root: the reserved blocks too),
    or None when it cannot be asked."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize


def write_failure(e: BaseException, path: str | Path, folder: str | Path | None) -> UserError | None:
    """The one-line UserError for a write of ``path`` that failed with ``e``: a full disk, however the
    writer reports it (the free space of ``folder`` asked while the failed files still hold it), or
    a read-only file system; None for anything else (a real bug, raised as it is)."""
    full = no_space_error(e, path) or (full_disk_error(folder, path) if folder is not None else None)
    if full is not None:
        return full
    if isinstance(e, OSError) and e.errno == errno.EROFS:
        return output_error(path, e)
    return None


def full_disk_error(folder: str | Path, path: str | Path) -> UserError | None:
    """The full-disk UserError for ``path`` when the file system of ``folder`` has less than
    :data:`FULL_MARGIN` bytes left for this user *now*, else None. For a failure that a native
    writer does not report as one (ONNX's C++ shape inference truncates its output on a full disk
    and the next reader fails to parse it): asked while the failed write's files still hold their
    space, i.e. before the temporaries are removed."""
    free = free_bytes(folder)
    if free is None or free >= FULL_MARGIN:
        return None
    return UserError(f"{path}: no space left to write it ({free // 1024} KiB free on its disk); free disk space or "
                     f"choose another output path")


def _existing_ancestor(p: Path) -> Path:
    p = Path(os.path.abspath(p))
    while not os.path.lexists(p):
        p = p.parent
    return p


def _probe(folder: Path, target: Path) -> None:
    """Really write a few bytes in ``folder`` (catches read-only mounts, permissions, a full disk)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".pspnet-probe.{TMP_MARK}{os.getpid()}.", dir=folder)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(tmp)
    except OSError as e:
        raise output_error(target, e) from e


def check_output_file(path: str | Path, what: str = "output file") -> Path:
    """Fail now, not after minutes of work, when ``path`` cannot be written: it is a folder, a
    parent is a file, the folder is read-only or the disk is full. Creates nothing."""
    p = Path(path)
    if str(path).endswith(("/", os.sep)) or p.is_dir():
        raise UserError(f"{p}: is a folder; give a file path for the {what}")
    anc = _existing_ancestor(p.parent if str(p.parent) else Path("."))
    if not anc.is_dir():
        raise UserError(f"{p}: {anc} is a file, not a folder; choose another path for the {what}")
    _probe(anc, p)
    return p


def check_output_dir(path: str | Path, what: str = "output folder") -> Path:
    """Like :func:`check_output_file` for a folder the command will create or fill."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{p}: exists and is not a folder; choose another {what}")
    anc = _existing_ancestor(p)
    if not anc.is_dir():
        raise UserError(f"{p}: {anc} is a file, not a folder; choose another {what}")
    _probe(anc, p)
    return p


def mkdirs(p: Path) -> list[Path]:
    """``mkdir -p``; returns the folders it created, outermost first."""
    missing = []
    q = Path(p)
    while not q.exists():
        missing.append(q)
        if q.parent == q:
            break
        q = q.parent
    created = []
    try:
        for d in reversed(missing):
            d.mkdir(exist_ok=True)
            created.append(d)
    except OSError:
        rmdirs_if_empty(created)
        raise
    return created


def rmdirs_if_empty(created: list[Path]) -> None:
    for d in reversed(created):
        try:
            d.rmdir()  # only if still empty
        except OSError:
            break


@contextmanager
def output_dir(path: str | Path) -> Iterator[Path]:
    """Create ``path`` for a run; if the run fails, remove the folders it created that are still empty."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{p}: exists and is not a folder; choose another output folder")
    try:
        created = mkdirs(p)
    except OSError as e:
        raise output_error(p, e) from e
    try:
        yield p
    except BaseException:
        rmdirs_if_empty(created)
        raise


# --------------------------------------------------------------------------------------------
# atomic writes and stale temporary files
# --------------------------------------------------------------------------------------------

#: temporary names are ``.<target name>.p<pid>.<random><suffix>``: a later run can tell a live
#: writer's file from one a killed process left behind
TMP_MARK = "p"
_TMP_RE = re.compile(r"^\..+\.p(\d+)\.[a-z0-9_]{8}(\.[^.]+)?$")
_OLD_TMP_RE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # before the pid was in the name
OLD_TMP_AGE_S = 600


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_tmp(folder: str | Path) -> list[Path]:
    """Remove temporary files (and folders) that killed writers left in ``folder``; returns them.

    A temporary name carries its writer's pid: it is removed when that process is gone. Names
    from before that (``.NAME.XXXXXXXX.tmp``) are removed once they are 10 minutes old.
    """
    import shutil

    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for e in entries:
        if not e.name.startswith("."):
            continue
        m = _TMP_RE.match(e.name)
        try:
            stale = (m is not None and not _pid_alive(int(m.group(1)))) or (
                m is None and _OLD_TMP_RE.match(e.name) is not None and e.is_file(follow_symlinks=False)
                and now - e.stat(follow_symlinks=False).st_mtime > OLD_TMP_AGE_S)
            if not stale:
                continue
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path, ignore_errors=True)
            else:
                os.unlink(e.path)
            removed.append(Path(e.path))
        except OSError:
            pass
    return removed


def tmp_name(path: str | Path, suffix: str = ".tmp") -> tuple[str, str]:
    """(prefix, suffix) for ``tempfile.mkstemp``/``mkdtemp`` next to ``path`` (see :data:`TMP_MARK`)."""
    return f".{Path(path).name}.{TMP_MARK}{os.getpid()}.", suffix


@contextmanager
def temp_beside(path: str | Path) -> Iterator[tuple[Path, list[Path]]]:
    """The folder preparation that every temporary next to an output shares (:func:`atomic_path`,
    :func:`work_dir`, multi-file writers such as the OpenVINO IR): create the output's folder
    (``mkdir -p``), remove the temporaries killed writers left there, and run the body that makes
    the temporaries. Yields ``(folder, folders created)``. An OSError in the body (no space, no
    permission) removes the folders it created and becomes :func:`output_error`'s one line."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    created: list[Path] = []
    try:
        created = mkdirs(parent)
        clean_stale_tmp(parent)
        yield parent, created
    except OSError as e:
        rmdirs_if_empty(created)
        raise output_error(path, e) from e
    except BaseException:
        rmdirs_if_empty(created)
        raise


def umask_mode(path: str | Path) -> None:
    """Give a finished file the mode every output gets (``0666 & ~umask``): ``mkstemp`` and some
    writers (OpenVINO's serializer) create files 0600."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


#: the write guards of the active file plans: :mod:`pspnet_deploy.runfiles` adds its own when it is
#: imported (it sits above this module, so this module never imports it); every rename asks them
WRITE_GUARDS: list = []


def _guard_write(path) -> None:
    for guard in WRITE_GUARDS:
        guard(path)


def publish(moves: list[tuple[Path, Path]], retire: tuple[Path, ...] | list[Path] = ()) -> None:
    """Put finished temporaries in place: each ``(temporary, final)`` gets the usual mode, then the
    files in ``retire`` are removed (the file that vouches for the old set, e.g. a sidecar), then
    the temporaries are renamed in the order given (the file that vouches for the new set last).
    Each rename is atomic; a kill between two leaves a set that its reader refuses with one line,
    never a mix that it accepts. Every final path is checked against the run's file plan first."""
    for _tmp, final in moves:
        _guard_write(final)
    for tmp, _final in moves:
        umask_mode(tmp)
    with sigint_deferred():  # Ctrl-C between two renames would leave the set unusable: it waits for the last
        for old in retire:
            try:
                os.unlink(old)
            except FileNotFoundError:
                pass
        fault_point("publish:retired")
        for tmp, final in moves:
            os.replace(tmp, final)
            fault_point(f"publish:{final.name}")


@contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C back for the duration; an interrupt that came meanwhile is raised right after,
    when the files are consistent again. For the short steps a Ctrl-C must not cut in two: making a
    temporary and registering it for removal, removing temporaries, renaming a set of files into
    place. Python runs signal handlers in the main thread only, so the Python-level handler is
    swapped (blocking the signal would not do: a native library's thread would take it and the
    main thread would still raise at once); elsewhere than the main thread nothing changes."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: came.append(signum))
    except (ValueError, OSError):
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if came and callable(previous):
            previous(signal.SIGINT, None)  # Python's default handler raises KeyboardInterrupt here
        elif came and previous == signal.SIG_DFL:
            os.kill(os.getpid(), signal.SIGINT)


FAULT_ENV = "PSPNET_FAULT_AT"  # test hook (as in pspnet_deploy.checkpoint): SIGKILL this process at a named point


def fault_point(name: str) -> None:
    """Kill this process with SIGKILL at ``name`` when ``$PSPNET_FAULT_AT`` is ``name``, or send it
    SIGINT (a Ctrl-C) when it is ``name=SIGINT`` (the kill and interrupt tests of
    tests/test_faults_io.py); nothing otherwise."""
    want = os.environ.get(FAULT_ENV)
    if want and want.split("=")[0] == name:
        import signal

        os.kill(os.getpid(), signal.SIGINT if want.endswith("=SIGINT") else signal.SIGKILL)


@contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the destination folder; rename it onto ``path`` on success.

    On any exception the temporary file is removed, ``path`` is untouched and folders this call
    created are removed again. A full disk while writing becomes a one-line UserError. Stale
    temporary files of killed writers in the folder are cleaned first.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give a file path")
    _guard_write(path)  # never onto an input of the running command (its file plan)
    tmp_path: Path | None = None
    created: list[Path] = []
    done = False
    try:
        with temp_beside(path) as (parent, created):
            prefix, sfx = tmp_name(path, suffix or ".tmp")
            with sigint_deferred():  # the temporary exists only once the cleanup below knows it
                fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=sfx, dir=parent)
                os.close(fd)
                tmp_path = Path(tmp)
        try:
            yield tmp_path
            publish([(tmp_path, path)])
            done = True
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - a full disk, however the writer reports it, is one line
            err = write_failure(e, path, parent)
            if err is not None:
                raise err from e
            raise
    finally:
        if not done:
            with sigint_deferred():
                if tmp_path is not None:
                    try:
                        tmp_path.unlink()
                    except OSError:
                        pass
                rmdirs_if_empty(created)


@contextmanager
def work_dir(beside: str | Path) -> Iterator[Path]:
    """A scratch folder next to the output ``beside`` (intermediate models of calibration, QAT),
    named like every temporary file (:func:`tmp_name`), so a killed run's folder is removed by the
    next write in that folder; removed on exit, and a full disk inside it is the one-line error."""
    import shutil

    beside = Path(beside)
    work: Path | None = None
    created: list[Path] = []
    ok = False
    try:
        with temp_beside(beside) as (parent, created):
            with sigint_deferred():  # the folder exists only once the cleanup below knows it
                work = Path(tempfile.mkdtemp(prefix=tmp_name(beside)[0], suffix=".work", dir=parent))
        try:
            yield work
            ok = True
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - a full disk, however the writer reports it, is one line
            err = write_failure(e, beside, work)
            if err is not None:
                raise err from e
            raise
    finally:
        with sigint_deferred():
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)
            if not ok:
                rmdirs_if_empty(created)


def check_writable(path: str | Path, expect: str = "a file path") -> None:
    """:func:`check_output_file` with what to give instead of a folder (e.g. "an .onnx file path")."""
    if Path(path).is_dir():
        raise UserError(f"{path}: is a folder; give {expect}")
    check_output_file(path)


def say(progress: bool, msg: str) -> None:
    """A progress line on stderr (stdout carries a command's result); nothing when ``progress`` is off."""
    if progress:
        print(msg, file=sys.stderr, flush=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def versions() -> dict:
    """Versions of the toolkit and the libraries that matter to numbers (those installed)."""
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version()}
    for name in ("pspnet-deploy", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "openvino", "numpy",
                 "opencv-python-headless"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def jsonable(obj):
    """Copy of ``obj`` safe for strict JSON: NaN/Inf floats become strings, numpy scalars and arrays
    Python values, anything else that JSON has no type for (paths, ...) its ``str``."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return str(obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


# --------------------------------------------------------------------------------------------
# training: a loss that is not a number
# --------------------------------------------------------------------------------------------

def nonfinite_loss_error(loss: float, target, ignore_index: int, step: int) -> UserError:
    """Why a training loss became NaN/Inf, as one line. Asked only once the loss is not finite (no
    cost per step): when no pixel of the batch's masks is labelled (every one is ``ignore_index``)
    the mean cross-entropy is 0/0, which is the dataset's fault, not the learning rate's."""
    labelled = int((target != ignore_index).sum())
    if labelled == 0:
        return UserError(f"loss became {loss} at step {step}: every pixel of this batch's masks is the ignore index "
                         f"{ignore_index}, so there is nothing to learn from; check the dataset's masks (their label "
                         f"values and the ignore index it declares)")
    return UserError(f"loss became {loss} at step {step}; lower --lr")


# --------------------------------------------------------------------------------------------
# native libraries' stderr (libpng, FFmpeg): captured, so a command prints only its own lines
# --------------------------------------------------------------------------------------------

class _Captured:
    text = ""


@contextmanager
def native_stderr_captured() -> Iterator[_Captured]:
    """Send what C libraries write to file descriptor 2 (libpng and FFmpeg warnings about a file)
    into a buffer for the duration; ``.text`` holds it afterwards. Python's own stderr is flushed
    first and restored after; a no-op where fd 2 cannot be duplicated."""
    cap = _Captured()
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield cap
        return
    buf = tempfile.TemporaryFile()
    try:
        os.dup2(buf.fileno(), 2)
        try:
            yield cap
        finally:
            os.dup2(saved, 2)
            buf.seek(0)
            cap.text = buf.read(65536).decode("utf-8", "replace")
    finally:
        os.close(saved)
        buf.close()


# --------------------------------------------------------------------------------------------
# devices and input sizes: checked before torch is imported or memory allocated
# --------------------------------------------------------------------------------------------

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device(device: str, allow_auto: bool = True) -> str:
    """Syntax of ``--device`` (no torch import): cpu, cuda, cuda:N (and auto where allowed)."""
    d = str(device).strip().lower()
    if not _DEVICE_RE.match(d) or (d == "auto" and not allow_auto):
        forms = "auto, cpu, cuda or cuda:N" if allow_auto else "cpu, cuda or cuda:N"
        raise UserError(f"--device must be {forms}, got {device!r}")
    return d


def torch_device(device: str):
    """The ``torch.device`` for ``--device``; UserError when CUDA is asked for but not usable here."""
    import torch

    d = check_device(device)
    if d == "auto":
        d = "cuda" if torch.cuda.is_available() else "cpu"
    if d.startswith("cuda"):
        if not torch.cuda.is_available():
            why = "this PyTorch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise UserError(f"--device {device}: {why} (torch {torch.__version__}); use --device cpu")
        idx = int(d.split(":")[1]) if ":" in d else 0
        if idx >= torch.cuda.device_count():
            raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible "
                            f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return torch.device(d)


#: Memory rule for ``--input-size`` / ``--crop`` (see README, "Limits"): a forward pass of the
#: smallest model (PSPNet ResNet-18, output stride 8) peaks at about 520 bytes per input pixel on
#: CPU, a training step (forward + backward, aux head) at about 1750 per pixel of each image. A size
#: is refused when even 400 (inference) / 1500 (training) bytes per pixel times the batch exceed the
#: memory available now, so nothing that could run is refused and hopeless sizes fail at once.
INFER_BYTES_PER_PIXEL = 400
TRAIN_BYTES_PER_PIXEL = 1500
MAX_SIDE = 16384  # no image side beyond this, whatever the memory (OpenCV's own limits are near it)


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (MemAvailable), or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_input_size(size, what: str = "--input-size", batch: int = 1, training: bool = False,
                     min_side: int | None = None) -> tuple[int, int] | None:
    """Bounds of an (H, W) size: positive, at least ``min_side`` (the model's smallest input, see
    :func:`pspnet_deploy.model.min_input_size`), at most :data:`MAX_SIDE`, and within the memory
    rule above. Returns ``(h, w)`` (None for None)."""
    if size is None:
        return None
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise UserError(f"{what} takes H W, got {size!r}") from None
    if h <= 0 or w <= 0:
        raise UserError(f"{what} must be positive, got {h}x{w}")
    if min_side is not None and min(h, w) < min_side:
        raise UserError(f"{what} {h}x{w} is too small for this model: each side must be at least {min_side} pixels "
                        f"(the feature map must hold the largest pyramid bin)")
    if max(h, w) > MAX_SIDE:
        raise UserError(f"{what} {h}x{w} is too large: each side must be at most {MAX_SIDE} pixels")
    per_px = TRAIN_BYTES_PER_PIXEL if training else INFER_BYTES_PER_PIXEL
    need = per_px * h * w * max(1, int(batch))
    avail = available_memory()
    if avail is not None and need > avail:
        raise UserError(f"{what} {h}x{w}{f' x batch {batch}' if batch > 1 else ''} needs at least {need / 2**30:.1f} GiB "
                        f"of memory ({per_px} bytes per pixel), but only {avail / 2**30:.1f} GiB is available; "
                        f"use a smaller size{' or batch' if batch > 1 else ''}")
    return h, w
