"""Resumable training state on disk: written atomically with the previous good state kept beside
it, read back so that a corrupt, truncated, empty or foreign file never wedges a job.

* :func:`save_state` renames ``last.pt`` to ``prev.pt`` (atomic) and writes the new ``last.pt``
  atomically (temporary file + rename). A crash at any point leaves at least one complete state.
* :func:`load_state` removes stale temporary files of killed writes, reads ``last.pt``, falls back to
  ``prev.pt`` when ``last.pt`` cannot be read, and returns None (start afresh) when neither can, with
  one log line saying which and why. Files are read with ``torch.load(weights_only=True)``
  (:func:`sfsr.safe_load.load`, as :func:`sfsr.io.torch_load`): a pickle that would run code is
  refused like a corrupt file, and the log says which of the two it was.
* :func:`run_fingerprint`: what a state belongs to (a state of another run is not resumed);
  :func:`rng_state` / :func:`set_rng_state`: the RNG states a state carries.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from sfsr import io, safe_load
from sfsr.data.manifest import manifest_path
from sfsr.training.settings import RUN_NEUTRAL_KEYS

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
    state = safe_load.load(path)  # a short reason when it fails (UnusableFile), never torch's advice
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


def rng_state() -> dict[str, Any]:
    """Python/numpy/torch RNG states as tensors and plain numbers (loadable with weights_only)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]), "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
        "python_version": int(py_state[0]), "python": torch.tensor(py_state[1], dtype=torch.int64),
        "python_gauss": py_state[2],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_gauss"]))
    random.setstate((state["python_version"], tuple(int(v) for v in state["python"].tolist()),
                     state["python_gauss"]))


def file_sha256(path: str | os.PathLike | None) -> str | None:
    """Hex SHA-256 of a file's content; None for None or a missing file."""
    if path is None or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_fingerprint(stage: str, cfg: dict, seed: int, train_hr_dirs: Sequence[str | os.PathLike],
                    init_checkpoint: str | os.PathLike | None,
                    classifier_checkpoint: str | os.PathLike | None = None) -> str:
    """SHA-256 of everything that defines a run: stage, settings (less RUN_NEUTRAL_KEYS), seed,
    training folders (and their manifest.csv content, which selects the split and gives labels),
    and the content of the initial and classifier checkpoints."""
    payload = {"stage": stage, "seed": seed, "init": file_sha256(init_checkpoint),
               "train": sorted(str(Path(d).resolve()) for d in train_hr_dirs),
               "cfg": {k: v for k, v in cfg.items() if k not in RUN_NEUTRAL_KEYS}}
    manifests = {str(Path(d).resolve()): file_sha256(manifest_path(d)) for d in train_hr_dirs}
    if any(manifests.values()):
        payload["manifests"] = manifests
    if classifier_checkpoint is not None:
        payload["classifier"] = file_sha256(classifier_checkpoint)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
