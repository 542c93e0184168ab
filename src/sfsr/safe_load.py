"""``torch.load(weights_only=True)`` whose failures say why in a few words (:func:`load`).

torch's own messages run to a dozen lines and, for a file the safe loader refuses, advise loading it
again with ``weights_only=False`` -- which runs whatever code the file carries. :func:`load_failure`
replaces them with a short reason (the full text stays in the exception chain), and torch's
warnings about a file it then refuses (``Detected pickle protocol 4 ...``) are dropped:

* an empty file, or one that is no zip archive / pickle torch can read (truncated, overwritten,
  another format): ``not a torch checkpoint (truncated or corrupt)``;
* a well-formed pickle that the safe loader refused and that imports or calls Python objects
  (``GLOBAL``/``STACK_GLOBAL``/``REDUCE``/``INST``/``OBJ``/``NEWOBJ`` opcodes): ``holds Python
  objects that a safe load refuses (it could run code)``. The pickle is only *parsed*
  (:func:`pickletools.genops`), never executed.
"""

from __future__ import annotations

import errno
import os
import pickle
import pickletools
import warnings
import zipfile
from pathlib import Path
from typing import Any

from sfsr.memory import is_out_of_memory

CORRUPT = "not a torch checkpoint (truncated or corrupt)"
UNSAFE = ("holds Python objects that a safe load refuses (it could run code); only load checkpoints "
          "you trust made by sfsr")
_OBJECT_OPCODES = {"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX"}
_MAX_PICKLE_BYTES = 64 << 20  # parse at most this much of a raw (not zipped) pickle


def cannot_read(path: str | os.PathLike, exc: OSError) -> str:
    """``cannot read <path>: Permission denied; check the file's permissions`` (or the OS's words
    for another error)."""
    what = exc.strerror or type(exc).__name__
    text = f"cannot read {os.fsdecode(path)}: {what}"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"{text}; check the file's permissions"
    if exc.errno == errno.EIO:
        return f"{text}; the device reported an I/O error, check the disk"
    return text


def _calls_objects(data: bytes) -> bool:
    """Whether ``data`` is one complete pickle that imports or calls Python objects."""
    try:
        return any(op.name in _OBJECT_OPCODES for op, _, _ in pickletools.genops(data))
    except Exception:  # malformed or truncated: genops stops with ValueError (or worse)
        return False


def _pickle_of(path: Path) -> bytes | None:
    """The pickle inside a torch zip archive (``*/data.pkl``), or the start of a raw pickle file."""
    with open(path, "rb") as fh:
        head = fh.read(4)
        if not head.startswith(b"PK\x03\x04"):
            return head + fh.read(_MAX_PICKLE_BYTES)
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
            return archive.read(names[0]) if names else None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
        return None


def load_failure(path: str | os.PathLike, exc: BaseException) -> tuple[str, bool]:
    """(a short reason, whether the file was refused as unsafe) for a failed safe ``torch.load``."""
    path = Path(path)
    if is_out_of_memory(exc):
        return "too large to load in the memory available", False
    try:
        if path.stat().st_size == 0:
            return f"empty (0 bytes), {CORRUPT}", False
        refused = isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in str(exc)
        if refused and ("Unsupported global" in str(exc) or _calls_objects(_pickle_of(path) or b"")):
            return UNSAFE, True
    except OSError:
        pass
    return CORRUPT, False


class UnusableFile(ValueError):
    """A file :func:`load` could open but not load: ``reason`` (one line), ``unsafe`` (refused by the
    safe loader because it would import or call Python objects)."""

    def __init__(self, reason: str, unsafe: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unsafe = unsafe


def load(path: str | os.PathLike) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``. A file that cannot be opened
    raises the :class:`OSError` (permissions, a missing file: see :func:`cannot_read`), one that
    cannot be loaded :class:`UnusableFile` with the reason of :func:`load_failure`."""
    import torch

    path = Path(path)
    with open(path, "rb"):
        pass
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EIO, errno.ENOENT):
                raise
            failure: BaseException = exc  # torch reads a truncated archive as errno 22 (EINVAL)
        except Exception as exc:
            failure = exc
        else:
            for w in caught:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            return state
    reason, unsafe = load_failure(path, failure)
    raise UnusableFile(reason, unsafe) from failure
