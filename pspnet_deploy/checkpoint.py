"""Checkpoints: a state dict plus JSON-serialisable metadata, written atomically, loaded safely.

Format (a dict saved with ``torch.save``, loaded with ``weights_only=True``):
``{"format": "pspnet-deploy/checkpoint", "version": 1, "meta": "<json>", "state_dict": {...},
  "train_state": {...} (optional: optimizer, epoch, RNG; only in training checkpoints)}``.
``meta`` holds ``model`` (PSPNet constructor arguments), ``classes``, ``palette``,
``ignore_index``, ``preprocess`` (see :class:`~pspnet_deploy.data.Preprocess`), ``dataset``,
``metrics`` and anything else the trainer records.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Callable

import torch

from .card import CHECKPOINT_FORMAT as FORMAT
from .card import CHECKPOINT_VERSION as VERSION
from .card import dump_checkpoint_meta, read_checkpoint_payload
from .data.preprocess import Preprocess
from .errors import UserError
from .model import PSPNet, build_model
from .utils import atomic_path, atomic_write_json, mkdirs, output_error, rmdirs_if_empty, sha256_file


def save_checkpoint(path: str | Path, model: torch.nn.Module, meta: dict, train_state: dict | None = None,
                    half: bool = False, drop_aux: bool = False) -> Path:
    """Write atomically. ``half`` stores floating tensors as FP16; ``drop_aux`` omits the aux head."""
    state = model.state_dict()
    if drop_aux:
        state = {k: v for k, v in state.items() if not k.startswith("aux_head.")}
    if half:
        state = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    meta = dict(meta)
    meta.setdefault("model", dict(getattr(model, "config", {})))
    meta["storage_dtype"] = "float16" if half else "float32"
    meta["has_aux_head"] = not drop_aux and getattr(model, "aux_head", None) is not None
    payload = {"format": FORMAT, "version": VERSION, "meta": dump_checkpoint_meta(meta, path), "state_dict": state}
    if train_state is not None:
        payload["train_state"] = train_state
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            torch.save(payload, tmp)
        except RuntimeError as e:  # torch's C++ zip writer reports a full disk as "file write failed" or
            # "[enforce fail at inline_container.cc] unexpected pos" (a short write)
            if "write" not in str(e).lower() and "inline_container" not in str(e):
                raise
            raise UserError(f"{path}: could not write the checkpoint (disk full or file size limit?): "
                            f"{str(e).splitlines()[0][:200]}; free disk space or choose another --out") from e
    return path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load and validate; returns the payload with ``meta`` decoded. Never runs pickled code."""
    return read_checkpoint_payload(path, map_location=map_location)


def fit_state_dict(model: torch.nn.Module, state: dict, path: str | Path, ignore_missing: tuple[str, ...] = (),
                   ignore_unexpected: tuple[str, ...] = (), hint: str = "") -> None:
    """Load ``state`` into ``model``; a mismatch becomes one line that says what differs (shapes
    first, then missing / unexpected names, a few of each and the counts) instead of PyTorch's
    multi-line RuntimeError."""
    own = model.state_dict()
    shapes = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
              if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state and not k.startswith(ignore_missing)]
    unexpected = [k for k in state if k not in own and not k.startswith(ignore_unexpected)]
    if shapes or missing or unexpected:
        parts = []
        if shapes:
            k, a, b = shapes[0]
            parts.append(f"{len(shapes)} tensor(s) of another shape, e.g. {k} is {list(a)} in the file but {list(b)} "
                         f"in the model")
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:2])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:2])})")
        raise UserError(f"{path}: weights do not fit the model: {'; '.join(parts)}"
                        + (f"; {hint}" if hint else ""))
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def _model_config(path, meta: dict) -> dict:
    cfg = meta.get("model")
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: checkpoint has no usable model description (meta 'model' is missing)")
    return cfg


def load_model(path: str | Path, map_location="cpu", aux: bool = False) -> tuple[PSPNet, dict]:
    """Build the model described by the checkpoint and load its weights (FP32, eval mode)."""
    payload = load_checkpoint(path, map_location)
    meta = payload["meta"]
    try:
        model = build_model(_model_config(path, meta), aux=aux)
    except UserError:
        raise
    except (KeyError, TypeError, ValueError, AssertionError, RuntimeError) as e:
        raise UserError(f"{path}: checkpoint has no usable model description ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:160] if str(e) else ''})") from e
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    if not aux:
        state = {k: v for k, v in state.items() if not k.startswith("aux_head.")}
    fit_state_dict(model, state, path, hint="the file's weights and its model description disagree (corrupt or "
                                            "edited); re-export or re-train it")
    model.eval()
    meta["sha256"] = sha256_file(path)
    return model, meta


# --------------------------------------------------------------------------------------------
# the training run's checkpoint set: last.pt, best.pt and history.json always from one epoch
# --------------------------------------------------------------------------------------------

SET_FILES = ("last.pt", "best.pt", "history.json")
STORE = ".checkpoints"
FAULT_ENV = "PSPNET_FAULT_AT"  # test hook: "<point>[@<epoch>]" SIGKILLs the trainer there


def _fault_point(name: str, epoch: int) -> None:
    """Kill this process at a named point when ``$PSPNET_FAULT_AT`` asks for it (kill tests)."""
    want = os.environ.get(FAULT_ENV)
    if not want:
        return
    point, _, at = want.partition("@")
    if point == name and (not at or int(at) == epoch):
        os.kill(os.getpid(), signal.SIGKILL)


class CheckpointSet:
    """``OUT/last.pt``, ``OUT/best.pt`` and ``OUT/history.json`` as one unit.

    Each save writes the three files into a fresh folder ``OUT/.checkpoints/eNNNNN.*`` (best.pt
    hard-linked from the previous set when it did not improve), then switches the symbolic link
    ``OUT/.checkpoints/current`` to that folder with one atomic rename. The three names in ``OUT``
    are fixed relative links through ``current``, so a reader, or a ``--resume``, sees either the
    whole previous set or the whole new one, whenever the process is killed. Folders of sets that
    are no longer current (a killed save's, the previous one) are removed by the next save.
    """

    def __init__(self, out: str | Path, continues: bool = False):
        """``continues``: this run resumes the set already in ``out`` (its best.pt is this run's)."""
        self.out = Path(out)
        self.continues = continues
        self._prepared = False
        self._created: list[Path] = []
        self.store = self.out / STORE
        self.current = self.store / "current"

    def _link(self, link: Path, target: str) -> None:
        """Point ``link`` at ``target`` with one rename (a symlink replaces a file or a link atomically)."""
        if link.is_symlink() and os.readlink(link) == target:
            return
        tmp = link.with_name(f".{link.name}.p{os.getpid()}.link")
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(target, tmp)
        os.replace(tmp, link)

    def _current_dir(self) -> Path | None:
        return self.store / os.readlink(self.current) if self.current.is_symlink() else None

    def prepare(self) -> None:
        """Before the first save: adopt plain files of an older run as the current set (hard links,
        so their content is never missing), and drop sets that a killed save left behind."""
        try:
            self._created = mkdirs(self.store)
            if self._current_dir() is None:
                plain = [n for n in SET_FILES if (self.out / n).is_file() and not (self.out / n).is_symlink()]
                if plain:
                    d = Path(tempfile.mkdtemp(prefix="adopted.", dir=self.store))
                    for n in plain:
                        os.link(self.out / n, d / n)
                    self._link(self.current, d.name)
            self._relink()
            self._drop_old()
        except OSError as e:
            raise output_error(self.out, e) from e

    def _relink(self) -> None:
        cur = self._current_dir()
        for n in SET_FILES:
            if cur is not None and (cur / n).exists():
                self._link(self.out / n, f"{STORE}/current/{n}")
            elif (self.out / n).is_symlink():
                (self.out / n).unlink()

    def _drop_old(self) -> None:
        cur = self._current_dir()
        for e in os.scandir(self.store):
            p = Path(e.path)
            if p == self.current or (cur is not None and p.name == cur.name):
                continue
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(p, ignore_errors=True)
            elif e.name.startswith(".current."):
                p.unlink()

    def save(self, epoch: int, write_last: Callable[[Path], None], write_best: Callable[[Path], None] | None,
             history: list) -> None:
        """Write a new set for ``epoch``; ``write_best`` None keeps the previous best.pt."""
        if not self._prepared:
            self.prepare()
            self._prepared = True
        try:
            d = Path(tempfile.mkdtemp(prefix=f"e{epoch:05d}.", dir=self.store))
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(d, 0o777 & ~umask)  # mkdtemp makes 0700
        except OSError as e:
            raise output_error(self.out, e) from e
        try:
            write_last(d / "last.pt")
            _fault_point("last-written", epoch)
            if write_best is not None:
                write_best(d / "best.pt")
            elif self.continues:
                cur = self._current_dir()
                if cur is not None and (cur / "best.pt").is_file():
                    try:
                        os.link(cur / "best.pt", d / "best.pt")
                    except OSError:
                        shutil.copy2(cur / "best.pt", d / "best.pt")
            _fault_point("best-written", epoch)
            atomic_write_json(d / "history.json", history)
            _fault_point("history-written", epoch)
            tmp = self.store / f".current.p{os.getpid()}.link"
            if tmp.is_symlink():
                tmp.unlink()
            os.symlink(d.name, tmp)
            os.replace(tmp, self.current)  # the commit: one atomic rename
            _fault_point("committed", epoch)
            self.continues = True
        except BaseException as e:
            if not (self.current.is_symlink() and os.readlink(self.current) == d.name):
                shutil.rmtree(d, ignore_errors=True)  # not committed: the previous set stays current
                if self._current_dir() is None:
                    rmdirs_if_empty(self._created)  # a first save that failed leaves no empty folders
            if isinstance(e, OSError):
                raise output_error(self.out, e) from e
            raise
        try:
            self._relink()
            _fault_point("linked", epoch)
            self._drop_old()
        except OSError as e:
            raise output_error(self.out, e) from e


def preprocess_of(meta: dict) -> Preprocess:
    return Preprocess.from_dict(meta["preprocess"])


def read_bytes_checkpoint(data: bytes) -> dict:  # pragma: no cover - convenience for in-memory use
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def release_checkpoint(src: str | Path, dst: str | Path, note: str | None = None) -> dict:
    """Write a deployable copy of a training checkpoint: FP16 storage, no auxiliary head, no
    optimizer state. Loads back to the same FP32 model (FP16 rounding of the weights aside)."""
    payload = load_checkpoint(src)
    meta = dict(payload["meta"])
    model = build_model(_model_config(src, meta), aux=True)
    fit_state_dict(model, {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()},
                   src, ignore_missing=("aux_head.",))
    meta["released_from"] = {"file": Path(src).name, "sha256": sha256_file(src)}
    meta.pop("history", None)
    if note:
        meta["note"] = note
    save_checkpoint(dst, model, meta, half=True, drop_aux=True)
    return {"path": str(dst), "bytes": Path(dst).stat().st_size, "sha256": sha256_file(dst)}


if __name__ == "__main__":  # python -m pspnet_deploy.checkpoint release SRC DST
    import sys

    if len(sys.argv) != 4 or sys.argv[1] != "release":
        print("usage: python -m pspnet_deploy.checkpoint release SRC.pt DST.pt", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(release_checkpoint(sys.argv[2], sys.argv[3])))
