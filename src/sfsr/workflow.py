"""Glue for ``workflow_scripts/*.py`` (run by Snakemake's ``script:`` directive).

:func:`run_rule` sends logging, warnings and stdout/stderr of the job to the rule's ``log:`` file,
calls the handler registered for the running rule and turns a user error
(:class:`sfsr.errors.SfsrError`, with the fix that fits the workflow) or an operating-system error
(permission denied, disk full, a symlink loop: :func:`sfsr.errors.describe_os_error`) into one clear
message in the log and on the console, with exit status 1 so Snakemake marks the job failed (and
removes its incomplete outputs); the traceback of an OS error goes to the log only.

Writing the log can never hide the error: the ``[sfsr] rule X failed: ...`` line goes to the console
first, and a log write that fails (its disk full, a quota, an I/O error) raises nothing; the first
such failure prints one line ``[sfsr] rule X: cannot write its log <path>: ...`` on the console, the
job goes on, and what its log could not take is lost. A full disk that fails a write of the job
names the file (:mod:`sfsr.io`), or, for an error naming no file, the job's outputs.

SIGTERM (what Snakemake, SLURM preemption and ``kill`` send) and SIGINT end the job with one line
saying so and exit status 143 / 130; writes are atomic, so nothing half-written is left, and a
training job started again resumes from its last checkpoint (docs/reliability.md). The config key
``max_image_pixels`` sets the pixel limit of every image read (:mod:`sfsr.data.images`).

A job with ``resources: gpu=N`` (N > 0) first takes N GPU slots of its own
(:func:`sfsr.gpu_slots.acquire_for_job`: ``CUDA_VISIBLE_DEVICES`` set to them, waiting while they
are busy) and frees them when it ends; handlers must therefore not initialise CUDA at import time.

The job's log starts with one line saying its threading (:func:`sfsr.threads.policy_line`: torch's
threads, the job's ``threads``, ``OMP_WAIT_POLICY`` and where it came from).
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import signal
import sys
import traceback
from typing import Any, Callable

from sfsr import threads
from sfsr.errors import WORKFLOW, SfsrError, describe_os_error


class Terminated(BaseException):
    """Raised in the job by SIGTERM, so that cleanup (``finally``, atomic writes) runs."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


class LogFile(io.TextIOBase):
    """The job's log file, line-buffered, whose writes never raise: the first :class:`OSError` (a
    full disk, a quota, an I/O error) prints one line on ``console`` naming the log, and what is
    written afterwards is dropped. ``fileno()`` is the file's (a subprocess may write to it)."""

    def __init__(self, path: str, rule: str, console: Any) -> None:
        super().__init__()
        self.path, self.rule, self.console = str(path), rule, console
        self.error: OSError | None = None
        self._fh = open(path, "w", encoding="utf-8", buffering=1)  # noqa: SIM115  closed by close()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def _failed(self, exc: OSError) -> None:
        if self.error is None:
            self.error = exc
            _say(self.console, f"[sfsr] rule {self.rule}: {describe_os_error(exc, self.path)} "
                               f"(the job goes on; its log stays incomplete)")

    def write(self, text: str) -> int:
        if self.error is None and not self._fh.closed:
            try:
                self._fh.write(text)
            except OSError as exc:
                self._failed(exc)
        return len(text)

    def flush(self) -> None:
        if self.error is None and not self._fh.closed:
            try:
                self._fh.flush()
            except OSError as exc:
                self._failed(exc)

    def fileno(self) -> int:
        return self._fh.fileno()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        if not self._fh.closed:
            try:
                self._fh.close()
            except OSError as exc:  # the buffer could not be flushed; the file is closed anyway
                self._failed(exc)
        super().close()


def _say(console: Any, line: str) -> None:
    """Print ``line`` on the console; a console that cannot take it does not raise either."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        print(line, file=console, flush=True)


def _describe(exc: OSError, smk: Any) -> str:
    """:func:`describe_os_error`; a full disk (quota) that names no file names the job's outputs."""
    if exc.filename is None and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        outputs = [str(p) for p in (getattr(smk, "output", None) or [])]
        if outputs:
            shown = ", ".join(outputs[:3]) + (f" (and {len(outputs) - 3} more)" if len(outputs) > 3 else "")
            return describe_os_error(exc, target=shown)
    return describe_os_error(exc)


def run_rule(smk: Any, handlers: dict[str, Callable[[Any], None]]) -> None:
    rule = smk.rule
    if rule not in handlers:
        raise SystemExit(f"{smk.scriptdir if hasattr(smk, 'scriptdir') else 'workflow script'}: "
                         f"no handler for rule {rule!r} (known: {', '.join(handlers)})")
    log_path = smk.log[0] if len(smk.log) else None
    console = sys.__stderr__
    try:
        log_fh = LogFile(log_path, rule, console) if log_path else sys.stderr
    except OSError as exc:
        _say(console, f"\n[sfsr] rule {rule} failed: {describe_os_error(exc, log_path)}\n")
        raise SystemExit(1) from None
    handler = logging.StreamHandler(log_fh)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    signal.signal(signal.SIGTERM, _raise_terminated)
    # SIGINT too, even where the job was started with it ignored (a shell starts background jobs so)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    log = logging.getLogger("sfsr")
    # threads (Snakemake starts the script with OMP_NUM_THREADS = the job's threads) and wait policy
    log.info("%s", threads.policy_line(getattr(smk, "threads", None)))
    slots = None
    try:
        from sfsr.data.images import set_max_image_pixels
        from sfsr.gpu_slots import acquire_for_job

        slots = acquire_for_job(smk)  # before the handler initialises CUDA (docs/multi_gpu.md)

        set_max_image_pixels((getattr(smk, "config", None) or {}).get("max_image_pixels"))
        with contextlib.redirect_stdout(log_fh), contextlib.redirect_stderr(log_fh):
            handlers[rule](smk)
    except SfsrError as exc:  # the console first: a log on a full disk must not hide the error
        _say(console, f"\n[sfsr] rule {rule} failed: {exc.message(WORKFLOW)}\n")
        log.error("%s", exc.message(WORKFLOW))
        raise SystemExit(1) from None
    except OSError as exc:
        _say(console, f"\n[sfsr] rule {rule} failed: {_describe(exc, smk)}\n")
        with contextlib.suppress(OSError):
            traceback.print_exc(file=log_fh)
        log.error("%s", _describe(exc, smk))
        raise SystemExit(1) from None
    except (KeyboardInterrupt, Terminated) as exc:
        name, status = ("SIGINT", 130) if isinstance(exc, KeyboardInterrupt) else ("SIGTERM", 143)
        log.warning("rule %s stopped by %s; nothing half-written is left, and running the same "
                    "command again resumes a training job from its last checkpoint", rule, name)
        _say(console, f"\n[sfsr] rule {rule} stopped by {name}\n")
        raise SystemExit(status) from None
    except BaseException:
        with contextlib.suppress(OSError):
            traceback.print_exc(file=log_fh)
        raise
    finally:
        if slots is not None:
            slots.release()
        if log_fh is not sys.stderr:
            log_fh.close()
