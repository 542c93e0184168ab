"""Resumable training state on disk: written atomically with the previous good state kept beside
it, read back so that a corrupt, truncated, empty or foreign file never wedges a job.

* :func:`save_state` renames ``last.pt`` to ``prev.pt`` (atomic) and writes the new ``last.pt``
  atomically (temporary file + rename). A crash at any point leaves at least one complete state.
* :func:`load_state` removes stale temporary files of killed writes, reads ``last.pt``, falls back to
  ``prev.pt`` when ``last.pt`` cannot be read, and returns None (start afresh) when neither can, with
  one log line saying which and why. Files are read with ``torch.load(weights_only=True)``: a
  pickle that would run code is refused like a corrupt file.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from sfsr import io

log = logging.getLogger(__name__)


def previous_path(path: str | os.PathLike) -> Path:
    """``state/last.pt`` -> ``state/prev.pt``."""
    path = Path(path)
    return path.with_name("prev" + path.suffix)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the hidden temporary files that :mod:`sfsr.io` writes next to a target (``.<name>.*.tmp*``)
    and that a killed write left behind; returns them."""
    folder = Path(folder)
    stale = [p for p in folder.glob(".*.tmp*") if p.is_file()] if folder.is_dir() else []
    for p in stale:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    if stale:
        log.info("removed %d stale temporary file(s) of an interrupted checkpoint write in %s",
                 len(stale), folder)
    return stale


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically, keeping the previous file as ``prev.pt``."""
    path = Path(path)
    if path.is_file():
        os.replace(path, previous_path(path))
    io.torch_save(path, state)


def _read(path: Path) -> dict[str, Any]:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"holds a {type(state).__name__}, not a training state")
    return state


def load_state(path: str | os.PathLike, what: str = "training") -> dict[str, Any] | None:
    """The state in ``path`` or, when it cannot be read, in ``prev.pt`` beside it; None when there is
    none or neither can be read (the caller starts afresh). Never raises for a bad file."""
    path = Path(path)
    remove_stale_temporaries(path.parent)
    problems: list[str] = []
    for candidate in (path, previous_path(path)):
        if not candidate.is_file():
            continue
        try:
            state = _read(candidate)
        except Exception as exc:  # truncated, empty, not a torch file, unsafe pickle, ...
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            problems.append(f"{candidate.name} ({reason})")
            continue
        if problems:
            log.warning("%s state %s cannot be read (%s): resuming from the previous good state %s",
                        what, path, "; ".join(problems), candidate)
        return state
    if problems:
        log.warning("%s state in %s cannot be read (%s): starting afresh", what, path.parent,
                    "; ".join(problems))
    return None
