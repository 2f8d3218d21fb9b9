"""Writing outputs so that nothing is half-written, lost or mixed: the one place files are written from.

* Files: every writer goes through :func:`atomic_path` -- a temp file next to the target, renamed over it
  with ``os.replace`` on success, removed on error -- with the usual permissions (0666 minus the umask),
  never ``mkstemp``'s private 0600.
* Output folders: :class:`OutputFolder` is one run's ``--out``. It is checked before any work (not under
  a file; in a folder this process may write in; not the current folder or one holding it; not an existing
  non-empty folder unless ``force``; ``force`` never replaces a folder holding an
  input of the run or one that is not an earlier output of the same command), filled in a private staging
  folder ``.NAME.tmp-*`` next to it, and renamed into place as one unit at the end. An interrupted or
  failed run removes its staging folder and leaves the previous outputs as they were; of two runs to the
  same ``--out`` the first to finish takes it, the second keeps its outputs under a new name (or, with
  ``force``, replaces the first run's folder as a whole).
* Single output files (``--out y.npz``): :func:`check_output_file` before any work, an atomic write at the end.
"""
from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from cassi.errors import OutputConflict, UserError, check_interrupted, interrupts_deferred, record_written

PathLike = str | os.PathLike


def umask_mode(mode: int) -> int:
    """``mode`` restricted by the process umask (what ``open`` / ``mkdir`` would give)."""
    current = os.umask(0)
    os.umask(current)
    return mode & ~current


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, umask_mode(0o666))
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(path: PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats replaced by None (strict JSON has no NaN / Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_text(value: Any) -> str:
    """Strict JSON (NaN / inf written as null), indented, with a final newline."""
    return json.dumps(json_safe(value), indent=2, allow_nan=False) + "\n"


def write_json(path: PathLike, value: Any) -> Path:
    """:func:`json_text` of ``value`` to ``path``, atomically."""
    return write_text(path, json_text(value))


def save_figure(figure: Any, path: PathLike, **kwargs: Any) -> Path:
    """``figure.savefig`` to ``path`` atomically (format from the suffix of ``path``)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=path.suffix.lstrip(".") or "png", **kwargs)
    return path


def save_npz(path: PathLike, compress: bool = True, **arrays: np.ndarray) -> Path:
    """``arrays`` as a .npz at exactly ``path`` (no ``.npz`` appended), atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        (np.savez_compressed if compress else np.savez)(handle, **arrays)
    return Path(path)


def save_npy(path: PathLike, array: np.ndarray) -> Path:
    """One array as a .npy at exactly ``path``, atomically (no pickled objects)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
    return Path(path)


# ------------------------------------------------------------------------------------------ checks
def _check_parents(path: Path, name: str) -> None:
    """The nearest existing folder above ``path`` (``name``: how messages call it, e.g. ``--out DIR``) is a folder
    this process may write in: the missing folders are made there and the output is written beside ``path``."""
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"cannot write {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UserError(f"{name} cannot be written: no permission to write in {parent}")
            return


def _inside(inner: Path, outer: Path) -> bool:
    inner, outer = inner.resolve(), outer.resolve()
    return inner == outer or outer in inner.parents


def check_output_file(path: PathLike, force: bool = False, inputs: Iterable[PathLike | None] = ()) -> Path:
    """Check a single output file before any work: its folder can be made and written in, it is not a folder, it
    is not one of ``inputs``, and it does not exist yet unless ``force``. Creates its parent folder."""
    path = Path(path)
    _check_parents(path, f"output {path}")
    if path.is_dir():
        raise UserError(f"output {path} is a folder; name a file")
    for source in filter(None, inputs):
        if Path(source).exists() and _inside(Path(source), path):
            raise UserError(f"output {path} is the input {source}; choose another output name")
    if path.exists() and not force:
        raise UserError(f"output {path} already exists; pass --force to replace it or choose another name")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


class OutputFolder:
    """One run's output folder, written as one unit (see the module docstring).

    ``marker``: the file every output of this command holds (``results.json``, ``calibration.json``...),
    or a tuple of such files when the command writes several kinds of output: ``force`` replaces a
    non-empty folder only when it holds one. ``inputs``: the run's input paths; a
    folder containing one of them is never replaced.

    Usage: construct before any work (it checks ``path``), then ``with folder as staging:`` write into
    ``staging``; leaving the block without an error renames it to ``path``.
    """

    def __init__(self, path: PathLike, marker: str | tuple[str, ...], force: bool = False,
                 inputs: Iterable[PathLike | None] = ()) -> None:
        self.path, self.force = Path(path), force
        self.markers = (marker,) if isinstance(marker, str) else tuple(marker)
        self.inputs = [Path(p) for p in inputs if p is not None]
        self.staging: Path | None = None
        if _inside(Path.cwd(), self.path):        # its staging folder would be made inside it, the rename then fails
            where = "is" if self.path.resolve() == Path.cwd().resolve() else "holds"
            raise UserError(f"--out {self.path} {where} the current folder: name a folder for the outputs "
                            "(e.g. --out out)")
        _check_parents(self.path, f"--out {self.path}")
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--out {self.path} is a file; name a folder")
        if self._non_empty():
            if not force:
                raise UserError(f"--out {self.path} already exists and is not empty; pass --force to replace it (as a whole) or "
                                "choose another folder")
            self._check_replaceable()

    def _non_empty(self) -> bool:
        return self.path.is_dir() and any(self.path.iterdir())

    def _check_replaceable(self) -> None:
        if not any((self.path / marker).is_file() for marker in self.markers):
            markers = " or ".join(self.markers)
            raise UserError(f"--out {self.path} is not empty and holds no {markers} of an earlier run; "
                            "--force only replaces earlier outputs of this command: choose another folder")
        for source in self.inputs:
            if source.exists() and _inside(source, self.path):
                raise UserError(f"--force would delete the input {source}, which lies inside --out {self.path}; "
                                "choose another folder")

    def __enter__(self) -> Path:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-", dir=self.path.parent))
        except OSError as err:                  # not the staging folder's name: the user never gave it
            raise UserError(f"--out {self.path} cannot be written: {err.strerror or err}") from err
        os.chmod(self.staging, umask_mode(0o777))
        return self.staging

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if kind is None:
                self._commit()
        finally:
            if self.staging is not None and self.staging.exists():
                shutil.rmtree(self.staging)

    def _commit(self) -> None:
        """Rename the staging folder into place, Ctrl-C held back until it is (--force's two renames included)."""
        check_interrupted()                              # a swallowed Ctrl-C must not publish the outputs
        with interrupts_deferred():
            written = self._rename_into_place()
            record_written(written)
        if written != self.path:
            raise OutputConflict(f"--out {self.path} was written by another run while this one ran; this run's "
                                 f"outputs are in {written}")
        check_interrupted()

    def _rename_into_place(self) -> Path:
        """Rename the staging folder to ``self.path``, or, where a concurrent run took it first, to a name beside it;
        the folder it now is."""
        try:
            os.rename(self.staging, self.path)            # atomic; takes the place of a missing or empty folder
            return self.path
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise
        if self.force and self.path.is_dir():
            self._check_replaceable()
            old = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.old-", dir=self.path.parent))
            os.rename(self.path, old / self.path.name)
            os.rename(self.staging, self.path)
            shutil.rmtree(old)
            return self.path
        kept = self.path.with_name(f"{self.path.name}.{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        os.rename(self.staging, kept)
        return kept
