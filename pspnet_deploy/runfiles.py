"""A run's file plan: what a command reads, what it writes, and the rule between them.

Every command declares its files here before any heavy work (:class:`RunFiles`), and
:meth:`RunFiles.check` refuses, with one line, an output that

- is an input of the run (the same path after resolving symlinks and ``..``, or the same file
  through a hard link: same device and inode), or one of the files an input consists of (an
  ONNX's external data, an engine's sidecar, an OpenVINO IR's ``.bin``);
- is an existing file inside a folder the run reads (a dataset file);
- is another output of the run (two outputs on one path: the second would overwrite the first);
- replaces a folder (``replaces=True``, e.g. a Triton model folder) that holds an input.

A checked plan stays active for the rest of the process: :func:`pspnet_deploy.utils.atomic_path`,
through which every file is written, asks :func:`guard_write` before it renames anything into place,
so a writer that a command forgot to declare still cannot replace one of the run's inputs.

The run's temporary names are :func:`pspnet_deploy.utils.tmp_name`'s (``.<name>.p<pid>.<random>``
in the destination folder), removed on failure and, after a kill, by the next write in that folder.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

#: folders with more entries than this are not scanned for hard links to an existing output (the
#: same-path check still applies); a real dataset folder is far smaller
MAX_SCAN_ENTRIES = 500_000


@dataclass(frozen=True)
class _File:
    path: Path  # as given (for messages)
    real: Path  # resolved
    what: str
    is_dir: bool = False
    replaces: bool = False


def _real(p: str | Path) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.fspath(p))))


def _stat(p: Path):
    try:
        return os.stat(p)
    except OSError:
        return None


def _inside(child: Path, folder: Path) -> bool:
    return child != folder and folder in child.parents


class RunFiles:
    """A command's declared inputs and outputs (see the module docstring)::

        files = RunFiles()
        files.read_model(a.model)
        files.read_dir(a.data, "--data")
        files.write(a.json, "--json report")
        files.check()
    """

    def __init__(self) -> None:
        self.inputs: list[_File] = []
        self.outputs: list[_File] = []

    # -- inputs --------------------------------------------------------------------------
    def read(self, path: str | Path | None, what: str) -> "RunFiles":
        """An input file (ignored when ``path`` is None)."""
        if path is not None:
            self.inputs.append(_File(Path(path), _real(path), what))
        return self

    def read_model(self, path: str | Path | None, what: str = "model") -> "RunFiles":
        """A model file and every file it consists of (:func:`pspnet_deploy.card.model_files`)."""
        if path is None:
            return self
        from .card import model_files

        for f in model_files(path):
            self.read(f, what if _real(f) == _real(path) else f"{what} ({Path(path).name}'s {Path(f).name})")
        return self

    def read_dir(self, path: str | Path | None, what: str) -> "RunFiles":
        """A folder the run reads (a dataset, a folder of images); ignored when it is not a folder
        (``synthetic``, a missing path: the reader says what is wrong)."""
        if path is not None and os.path.isdir(path):
            self.inputs.append(_File(Path(path), _real(path), what, is_dir=True))
        return self

    # -- outputs -------------------------------------------------------------------------
    def write(self, path: str | Path | None, what: str) -> "RunFiles":
        """An output file: writable (:func:`pspnet_deploy.utils.check_output_file`) and, at
        :meth:`check`, none of the inputs."""
        if path is None:
            return self
        from .utils import check_output_file

        check_output_file(path, what)
        self.outputs.append(_File(Path(path), _real(path), what))
        return self

    def also_writes(self, path: str | Path | None, what: str) -> "RunFiles":
        """A file the run writes beside a checked output (a sidecar, a report): no writability
        probe of its own (its folder is the output's), the same identity rules."""
        if path is not None:
            self.outputs.append(_File(Path(path), _real(path), what))
        return self

    def write_dir(self, path: str | Path | None, what: str, replaces: bool = False,
                  files: tuple[str, ...] = ()) -> "RunFiles":
        """An output folder (:func:`pspnet_deploy.utils.check_output_dir`). ``replaces``: the run
        replaces the folder as a whole, so no input may live in it. ``files``: names the run writes
        in it, checked like outputs."""
        if path is None:
            return self
        from .utils import check_output_dir

        check_output_dir(path, what)
        self.outputs.append(_File(Path(path), _real(path), what, is_dir=True, replaces=replaces))
        for name in files:
            self.also_writes(Path(path) / name, f"{what}'s {name}")
        return self

    # -- the rule ------------------------------------------------------------------------
    def check(self) -> "RunFiles":
        """Refuse a plan that breaks the rule (UserError, one line, nothing written); then make it
        the process's active plan for :func:`guard_write`."""
        for i, o in enumerate(self.outputs):
            for other in self.outputs[:i]:
                if not (o.is_dir or other.is_dir) and o.real == other.real:
                    raise UserError(f"{o.path}: given as both the {other.what} and the {o.what}; the second would "
                                    f"overwrite the first, so choose two different paths")
            self._check_output(o)
        _ACTIVE[:] = [self]
        return self

    def _check_output(self, o: _File) -> None:
        ost = None if o.is_dir else _stat(o.real)
        for i in self.inputs:
            if i.is_dir:
                if o.is_dir:
                    if o.replaces and (o.real == i.real or _inside(i.real, o.real)):
                        raise self._refuse(o, f"holds the {i.what} {i.path}, and the run replaces this folder")
                    continue
                if ost is not None and _inside(o.real, i.real):
                    raise self._refuse(o, f"is a file of the {i.what} {i.path}, which the run reads")
                continue
            if o.is_dir:
                if o.replaces and _inside(i.real, o.real):
                    raise self._refuse(o, f"holds the {i.what} {i.path}, and the run replaces this folder")
                continue
            if o.real == i.real:
                linked = _real(o.path) != Path(os.path.abspath(o.path)) or _real(i.path) != Path(os.path.abspath(i.path))
                raise self._refuse(o, f"is the {i.what} {i.path}" + (" (the same file through a link)" if linked else ""))
            ist = _stat(i.real)
            if ost is not None and ist is not None and (ost.st_dev, ost.st_ino) == (ist.st_dev, ist.st_ino):
                raise self._refuse(o, f"is a hard link to the {i.what} {i.path}")
        if ost is not None and ost.st_nlink > 1:
            for i in self.inputs:
                if i.is_dir:
                    hit = _find_inode(i.real, ost)
                    if hit is not None:
                        raise self._refuse(o, f"is a hard link to {hit}, a file of the {i.what} {i.path}, which "
                                              f"the run reads")

    @staticmethod
    def _refuse(o: _File, why: str) -> UserError:
        return UserError(f"{o.path}: the {o.what} {why}; writing it would destroy an input of this run, so choose "
                         f"another path")

    # -- after the check -----------------------------------------------------------------
    def input_clash(self, path: str | Path) -> str | None:
        """Why writing ``path`` would replace an input of this plan (None when it would not)."""
        real = _real(path)
        st = _stat(real)
        for i in self.inputs:  # input folders were checked by check(); files the run adds there are its own
            if i.is_dir:
                continue
            if real == i.real:
                return f"the {i.what} {i.path}"
            elif st is not None:
                ist = _stat(i.real)
                if ist is not None and (st.st_dev, st.st_ino) == (ist.st_dev, ist.st_ino):
                    return f"a hard link to the {i.what} {i.path}"
        return None


def _find_inode(folder: Path, st) -> Path | None:
    seen = 0
    for root, dirs, files in os.walk(folder):
        for name in files:
            seen += 1
            if seen > MAX_SCAN_ENTRIES:
                return None
            s = _stat(Path(root) / name)
            if s is not None and (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino):
                return Path(root) / name
    return None


#: the checked plan of this process (at most one: a command's)
_ACTIVE: list[RunFiles] = []


def guard_write(path: str | Path) -> None:
    """Refuse (UserError) to put a file at ``path`` when it would replace an input of the active plan."""
    for plan in _ACTIVE:
        why = plan.input_clash(path)
        if why is not None:
            raise UserError(f"{path}: refusing to overwrite {why}; choose another output path")


def reset() -> None:
    """Forget the active plan (a library caller running several commands in one process)."""
    _ACTIVE.clear()


from .utils import WRITE_GUARDS  # noqa: E402 - utils.atomic_path / publish ask the plan through this list

if guard_write not in WRITE_GUARDS:
    WRITE_GUARDS.append(guard_write)

__all__ = ["RunFiles", "guard_write", "reset"]
