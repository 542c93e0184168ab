"""User-facing errors.

Every error a user can cause (bad config, bad image, bad checksum, missing file) is raised as a
subclass of :class:`SfsrError` with a message that names the file, key or value and suggests a fix.
The CLI and the workflow scripts print such messages without a traceback and exit non-zero.

The fix depends on where the user stands: a bad training image is skipped with the config key
``on_bad_image: skip`` in the workflow, while on the command line the file is the user's to replace.
An error may therefore carry one hint per context (``"workflow"``, ``"cli"``), added by
:meth:`SfsrError.message`. Operating-system errors (permissions, full disks, symlink loops, a
folder where a file is expected) are described by :func:`describe_os_error`.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterator

WORKFLOW = "workflow"
CLI = "cli"


class SfsrError(Exception):
    """Base class for errors caused by user input; the message is meant for the user."""

    def __init__(self, message: str = "", *, hints: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.hints = dict(hints or {})

    def message(self, context: str | None = None) -> str:
        """The message, followed by the fix that fits ``context`` (``"workflow"`` or ``"cli"``)."""
        hint = self.hints.get(context) if context else None
        return f"{self}; {hint}" if hint else str(self)


class ConfigError(SfsrError):
    """The configuration is invalid (names the key and its location)."""


class DataError(SfsrError):
    """A dataset, folder or file is missing or malformed."""


class ChecksumError(DataError):
    """A downloaded file does not match its expected checksum."""


class ImageError(DataError):
    """An image cannot be read or is not usable under the image policy (names the file)."""


class PathError(SfsrError):
    """A path cannot be read or written: permissions, a full disk, a symlink loop, a folder where a
    file is expected (raised from an :class:`OSError`, see :func:`describe_os_error`)."""


#: Fixes for an unusable input image.
BAD_IMAGE_HINTS = {
    WORKFLOW: "replace or remove the file, or set on_bad_image: skip in the dataset's settings",
    CLI: "replace or remove the file",
}
#: Fixes for an image over the pixel limit (a guard against decompression bombs).
TOO_LARGE_HINTS = {
    WORKFLOW: "if you trust the file, raise max_image_pixels in the config",
    CLI: "if you trust the file, raise the limit with --max-image-pixels N",
}
#: Fixes for a missing input folder.
FOLDER_HINTS = {
    WORKFLOW: "check the dataset's 'root' / 'path' / 'extensions' settings",
    CLI: "check the path and the file extensions",
}

_OS_FIXES = {
    errno.EACCES: "check the permissions, or choose a location you can write to",
    errno.EPERM: "check the permissions, or choose a location you can write to",
    errno.EROFS: "the file system is read-only; choose another location",
    errno.ENOSPC: "the disk is full; free some space and run the same command again",
    errno.EDQUOT: "the disk quota is exceeded; free some space and run the same command again",
    errno.EISDIR: "that path is a folder; give a file path",
    errno.ENOTDIR: "a part of that path is a file, not a folder; fix the path",
    errno.ELOOP: "the path runs through a symlink loop; fix or remove the link",
    errno.ENAMETOOLONG: "shorten the path",
    errno.ENOENT: "check the path",
    errno.EIO: "the device reported an I/O error; check the disk",
}


def describe_os_error(exc: OSError, target: str | os.PathLike | None = None) -> str:
    """One line for an :class:`OSError`: which path(s), what failed, and what to do. ``target``:
    the path the user named (``cannot write <target>``), instead of the temporary file the error
    may name."""
    what = exc.strerror or exc.__class__.__name__
    if target is not None:
        text = f"cannot write {os.fsdecode(target)}: {what}"
    else:
        paths = [os.fsdecode(p) for p in (exc.filename, exc.filename2) if p is not None]
        text = f"{' -> '.join(paths)}: {what}" if paths else what
    fix = _OS_FIXES.get(exc.errno or -1)
    return f"{text}; {fix}" if fix else text


@contextlib.contextmanager
def writing(target: str | os.PathLike) -> Iterator[None]:
    """Turn an :class:`OSError` raised while preparing or committing a write of ``target`` into a
    :class:`PathError` that names ``target`` (not its temporary sibling)."""
    try:
        yield
    except OSError as exc:
        raise PathError(describe_os_error(exc, target)) from exc


def _dead_link(path: str | os.PathLike) -> str | None:
    if not os.path.islink(path):
        return None
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symlink loop"
        return f"a dangling symlink (to {os.readlink(path)})"
    return None


def path_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be followed, if a symlink on it leads nowhere: ``"is a symlink loop"``,
    ``"is a dangling symlink (to <target>)"``, or ``"runs through <folder>, a symlink loop"`` for a
    folder on the way; None otherwise."""
    problem = _dead_link(path)
    if problem:
        return f"is {problem}"
    for parent in list(Path(path).parents)[:-1]:
        problem = _dead_link(parent)
        if problem:
            return f"runs through {parent}, {problem}"
    return None
