"""What the two training loops share, the SR stages' (:mod:`sfsr.training.loop`, counted in
iterations) and the classifier's (:mod:`sfsr.training.classifier`, counted in epochs):

* :func:`resumable_state`: ``state/last.pt`` (else ``prev.pt``) when it belongs to this run; the
  state of another run is deleted and the run starts afresh;
* :func:`begin`: a :class:`Run` that starts at step 0 or continues a resumed state (its step, best
  record, log rows and time so far), with one log line saying so;
* :class:`Run`: the log rows (``train_log.csv``), the progress bar, the clock (time of earlier
  sessions included), the checkpoint (state and log written together; the step of the last saved
  state kept for the non-finite message);
* :func:`check_finite` / :meth:`Run.non_finite`: a loss that is NaN or inf stops the run with an
  :class:`~sfsr.errors.SfsrError` naming the step and term, the last saved state untouched.

The speed settings both loops take are in :mod:`sfsr.training.speed`, their optimisers and schedules
in :func:`sfsr.training.parts.make_optimizer` / :func:`~sfsr.training.parts.make_scheduler`.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from sfsr import io
from sfsr.errors import SfsrError
from sfsr.training.state import load_state, save_state

log = logging.getLogger("sfsr.training")


class NonFinite(Exception):
    """A loss term is NaN or inf: ``args`` = (step, term, value)."""


def check_finite(values: np.ndarray, columns: Sequence[str], steps: Sequence[int]) -> None:
    """Raise :class:`NonFinite` for the first non-finite entry of ``values`` (one row per step of
    ``steps``, one column per term of ``columns``)."""
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        row, col = bad[0]
        raise NonFinite(steps[int(row)], columns[int(col)], float(values[row, col]))


def resumable_state(state_path: Path, what: str, identity: dict[str, Any]) -> dict | None:
    """``state/last.pt`` (else ``prev.pt``) when its ``identity`` entries (e.g. the run fingerprint)
    equal this run's; a state of another run is deleted (the workflow reruns a job when its settings
    or inputs change: that old state must not be continued) and None returned."""
    state = load_state(state_path, what)
    if state is not None and any(state.get(k) != v for k, v in identity.items()):
        log.warning("%s belongs to a %s run with other settings or inputs: starting afresh", state_path, what)
        shutil.rmtree(state_path.parent)
        return None
    return state


@dataclass
class Run:
    """Where a training run stands. ``unit``: what a step is ('iteration' or 'epoch'; the state
    holds ``state[unit]`` and ``state[unit + 's']``, the total); ``columns``: of ``train_log.csv``
    (written beside the ``state/`` folder); ``saved``: the step of the last saved state (None: none)."""
    state_path: Path
    unit: str
    columns: list[str]
    best: dict
    start: int = 0
    rows: list[dict] = field(default_factory=list)
    elapsed: float = 0.0  # seconds of earlier sessions
    saved: int | None = None
    bar: Any = None
    t0: float = field(default_factory=time.perf_counter)  # this session's start (open_bar resets it)

    def open_bar(self, total: int, initial: int, desc: str, enabled: bool = True) -> Any:
        """Start the clock and the progress bar (on stderr; every 30 s when it is not a terminal)."""
        self.t0 = time.perf_counter()
        self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
                        mininterval=1.0 if sys.stderr.isatty() else 30.0, file=sys.stderr, disable=not enabled)
        return self.bar

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def elapsed_s(self) -> float:
        return self.elapsed + time.perf_counter() - self.t0

    def add_row(self, row: dict, postfix: dict[str, str]) -> None:
        """A row of the log, its numbers shown on the progress bar."""
        self.rows.append(row)
        self.bar.set_postfix(postfix, refresh=False)

    def say(self, line: str) -> None:
        """A line on the terminal (above the progress bar)."""
        self.bar.write(line)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=self.columns)

    def checkpoint(self, step: int, state: dict | None) -> None:
        """Save ``state`` of ``step`` (with the best record, the time and the log so far; atomic, the
        previous state kept) and ``train_log.csv``. ``state`` None: another process writes it (a
        distributed run), this one only notes the step."""
        if state is not None:
            save_state(self.state_path, {**state, "best": self.best, "elapsed_s": self.elapsed_s(),
                                         "log": self.rows})
            io.write_csv(self.state_path.parent.parent / "train_log.csv", self.frame())
        self.saved = step

    def non_finite(self, exc: NonFinite, what: str, advice: str) -> SfsrError:
        """The error that stops a run on a non-finite loss (:func:`check_finite`)."""
        step, term, value = exc.args
        kept = (f"the last good state {self.state_path} ({self.unit} {self.saved}) was kept"
                if self.saved is not None else "no state had been saved yet")
        return SfsrError(f"{what} stopped: loss term '{term}' is {value} at {self.unit} {step}; {kept}. "
                         f"{advice}, then re-run (it resumes from the kept state)")


def begin(state: dict | None, state_path: Path, what: str, unit: str, total: int, columns: Sequence[str],
          best: dict, announce: bool = True) -> Run:
    """A fresh :class:`Run` (``best``: the record to beat) or, with a resumed ``state``, one that
    continues it; logs the resume (where ``announce``) and a changed number of steps."""
    run = Run(Path(state_path), unit, list(columns), best)
    if state is None:
        return run
    run.start = run.saved = state[unit]
    run.best, run.elapsed, run.rows = state["best"], state["elapsed_s"], state["log"]
    if state[unit + "s"] != total:
        log.warning("%s was made for %d %ss, now %d: the schedule changes", state_path, state[unit + "s"],
                    unit, total)
    if announce:
        log.info("resuming %s from %s at %s %d", what, state_path, unit, run.start)
    return run

