"""Atomic file writes.

Every result, table, image and checkpoint the pipeline writes goes through these helpers: the data
is written to a temporary file in the same folder, flushed, fsync'ed and renamed over the target, so
a job killed at any point leaves either the old file or the new one, never half of one.

A write that fails (a full disk, a quota, an I/O error: from ``write``, ``fsync``, ``close`` or the
rename) raises :class:`sfsr.errors.PathError` naming the file the caller asked for, not the temporary
file, and not nameless either (``write()`` on a full disk raises an ``OSError`` without a file name);
a file written into a folder made by :func:`make_temp_dir` is named at its final place.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np

from sfsr.errors import PathError, writing

#: Temporary folders of :func:`make_temp_dir` -> the folder they become (to name a failed write
#: inside one at the place the user asked for).
_TEMP_DIRS: dict[Path, Path] = {}


def default_mode(directory: bool = False) -> int:
    """Permissions a plainly created file (0o666) or folder (0o777) gets under the current umask.
    Temporary files and folders are created private (0o600/0o700); results must not stay so."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def make_temp_dir(target: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """A hidden temporary sibling folder of ``target`` (same file system, so it can be renamed
    into place), with the permissions of a plainly created folder."""
    target = Path(target)
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent))
        os.chmod(tmp, default_mode(directory=True))
    _TEMP_DIRS[tmp] = target
    return tmp


def _final_name(path: Path) -> Path:
    """``path``, or where it will be once the :func:`make_temp_dir` folder it lies in is renamed."""
    for parent in path.parents:
        if parent in _TEMP_DIRS:
            return _TEMP_DIRS[parent] / path.relative_to(parent)
    return path


@contextlib.contextmanager
def _writes_of(path: Path, tmp: str) -> Iterator[None]:
    """Turn an :class:`OSError` of writing ``tmp`` (the temporary sibling of ``path``) into a
    :class:`PathError` naming ``path``: one raised by our own write, fsync, close or rename, or by the
    caller's block when it names no file or ``tmp`` (``fh.write`` on a full disk). An OSError that
    names another file (the block read something else) is left alone."""
    try:
        yield
    except OSError as exc:
        if exc.filename not in (None, tmp, os.fsencode(tmp)):
            raise
        with writing(_final_name(path)):
            raise


def _check_target(path: Path) -> None:
    """Refuse a target that is an existing folder before anything is written (``os.replace`` would
    fail at the very end with a message about the temporary file)."""
    if path.is_dir():
        raise PathError(f"cannot write {path}: it is a folder; give a file path")


def _temp_file(path: Path, prefix: str, suffix: str) -> tuple[int, str]:
    """``mkstemp`` beside ``path`` (its folder made if needed); refuses a folder as target."""
    _check_target(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)


@contextlib.contextmanager
def _replace_when_done(tmp: str, path: Path) -> Iterator[None]:
    """Rename ``tmp`` over ``path`` (plain-file permissions) when the block succeeds; remove it on
    any exception, leaving ``path`` untouched."""
    try:
        yield
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    if "r" in mode or "a" in mode or "+" in mode:
        raise ValueError(f"atomic_open is for writing only, got mode {mode!r}")
    path = Path(path)
    fd, tmp = _temp_file(path, f".{path.name}.", ".tmp")
    with _writes_of(path, tmp), _replace_when_done(tmp, path):
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for libraries that want a filename (torch.save,
    matplotlib savefig, PIL). The temporary file keeps the target's suffix so format detection
    works; it is renamed over ``path`` on success and removed on failure."""
    path = Path(path)
    fd, tmp = _temp_file(path, f".{path.stem}.", f".tmp{path.suffix}")
    os.close(fd)
    with _writes_of(path, tmp), _replace_when_done(tmp, path):
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")


def write_csv(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame as CSV atomically (no index column)."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        frame.to_csv(fh, index=False)


def save_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Save a uint8 HxW or HxWxC array as PNG (lossless), atomically."""
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"save_image expects uint8, got {image.dtype} for {path}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def _write_error(exc: BaseException, folder: Path) -> OSError | None:
    """The :class:`OSError` behind a failed ``torch.save``: one in the exception's chain (torch
    re-raises a failed ``write`` as a ``RuntimeError`` from its zip writer's cleanup), else ENOSPC
    when ``folder``'s file system has no free block left (torch's own C++ writer reports a full disk
    only as ``basic_ios::clear: iostream error``); None otherwise."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    try:
        free = os.statvfs(folder)
    except OSError:
        return None
    if free.f_bavail == 0 or free.f_bavail * free.f_frsize < 64 * 1024:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return None


def torch_save(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` atomically (checkpoints). A failed write (a full disk) raises
    :class:`PathError` ``"cannot write <path>: No space left on device; the disk is full; ..."``,
    leaving ``path`` as it was and no temporary file."""
    import torch

    path = Path(path)
    with atomic_open(path, "wb") as fh:  # a Python file: a failed write raises OSError with its errno
        try:
            torch.save(obj, fh)
        except RuntimeError as exc:
            cause = _write_error(exc, path.parent)
            if cause is None:
                raise
            raise OSError(cause.errno, cause.strerror) from exc


def torch_load(path: str | os.PathLike, what: str, missing: str, unreadable: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU (:func:`sfsr.safe_load.load`); every failure
    is a one-line :class:`DataError`: a missing file ``"<what> '<path>' not found; <missing>"``, one
    that cannot be opened ``"cannot read <path>: Permission denied; check the file's permissions"``,
    a truncated or foreign one ``"<what> <path>: not a torch checkpoint (truncated or corrupt);
    <unreadable>"``, one the safe load refuses ``"<what> <path>: holds Python objects that a safe
    load refuses (it could run code); only load checkpoints you trust made by sfsr"`` (never torch's
    advice to load it unsafely). torch's own text stays in the exception chain."""
    from sfsr.errors import DataError
    from sfsr.safe_load import UnusableFile, cannot_read, load

    path = Path(path)
    try:
        if not path.is_file():
            raise DataError(f"{what} {str(path)!r} not found; {missing}")
        return load(path)
    except OSError as exc:  # e.g. permission denied on the file or a folder on the way
        raise DataError(cannot_read(path, exc)) from exc
    except UnusableFile as exc:
        raise DataError(f"{what} {path}: {exc.reason}" + ("" if exc.unsafe else f"; {unreadable}")) from exc
