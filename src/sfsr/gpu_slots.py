"""GPU slots on one machine: which GPU(s) a Snakemake job uses.

``snakemake --resources gpu=4`` lets four GPU jobs run at once but tells none of them which GPU
to use, so all of them would land on GPU 0. :func:`acquire` gives a job ``n`` GPUs of its own:

* The candidate device ids are, in this order: ``CUDA_VISIBLE_DEVICES`` when it is set (a SLURM
  allocation, a user's choice: the job allocates *within* it), else ``SFSR_GPU_IDS`` (a
  comma-separated list, e.g. ``0,1,2,3`` to leave some GPUs of the machine out), else the GPUs that
  ``nvidia-smi -L`` lists. torch is never asked: ``torch.cuda.device_count()`` initialises the CUDA
  driver, after which ``CUDA_VISIBLE_DEVICES`` no longer has any effect in this process.
* Each id is a slot, one lock file per slot locked with ``fcntl.flock(LOCK_EX | LOCK_NB)``. The
  kernel drops a flock when the process that holds it dies (SIGKILL, OOM killer, node reboot), so
  a killed job's slot frees itself: no stale lock is ever left to delete.
* A job takes ``n`` free slots at once or none (it never holds some while waiting for more, so two
  waiting jobs cannot block each other); when there are not enough it logs one line saying what it
  waits for and who holds the slots, and tries again every ``poll`` seconds.
* It then sets ``CUDA_VISIBLE_DEVICES`` to the ids it holds (``"2"``, or ``"2,3"`` for a job of two
  GPUs), before torch initialises CUDA, and inherited by any process the job starts (torchrun's
  workers). In the job the GPUs are ``cuda:0 ... cuda:n-1``.
* Nothing happens (None is returned, the environment is left as it is) when the job asks for 0
  GPUs, or when there is no GPU: ``CUDA_VISIBLE_DEVICES`` set to an empty list or ``-1``, no
  ``nvidia-smi``, or no GPU listed.
* A job asking for more GPUs than there are candidates fails at once (:class:`ConfigError`)
  instead of waiting for ever; so does a candidate list naming one id twice (``CUDA_VISIBLE_DEVICES=0,0``:
  both would be the same lock, which the job could never take twice), and a lock folder that cannot
  be used (``SFSR_GPU_SLOT_DIR`` naming a file, a read-only or unwritable folder): one line naming the
  variable, its value and the fix.

Where the lock files are: ``SFSR_GPU_SLOT_DIR`` when set, else ``$XDG_RUNTIME_DIR/sfsr-gpu-slots``,
else ``<tmp>/sfsr-gpu-slots-<uid>``: node-local folders, so that jobs on different machines sharing
a file system never block each other. The file names carry the host name for the same reason. Under
SLURM the folder gets a ``slurm-<SLURM_JOB_ID>`` subfolder: the jobs that Snakemake runs inside one
allocation share its GPUs, while separate allocations on one node (whose ids SLURM numbers from 0 in
each) never see each other's locks. Jobs of different users do not coordinate (each user has their own
folder).

This module is torch-free; :func:`sfsr.workflow.run_rule` calls :func:`acquire_for_job` with the
job's ``resources.gpu`` before the rule's handler runs.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import random
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, MutableMapping, Sequence

from sfsr.errors import ConfigError

log = logging.getLogger("sfsr.gpu_slots")

ENV_IDS = "SFSR_GPU_IDS"
ENV_DIR = "SFSR_GPU_SLOT_DIR"
CUDA_ENV = "CUDA_VISIBLE_DEVICES"


def _id_list(text: str) -> list[str]:
    """``"0, 1,2"`` -> ``["0", "1", "2"]``; ``""`` and ``"-1"`` (CUDA's "no device") -> ``[]``."""
    ids = [part.strip() for part in text.split(",") if part.strip()]
    return [] if ids[:1] == ["-1"] else ids


def nvidia_smi_ids() -> list[str]:
    """Indices of the GPUs that ``nvidia-smi -L`` lists; ``[]`` without nvidia-smi or GPUs."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    return [str(i) for i, line in enumerate(l for l in out.stdout.splitlines() if l.startswith("GPU "))]


def candidate_ids(env: Mapping[str, str] | None = None,
                  detect: Callable[[], Sequence[str]] = nvidia_smi_ids) -> list[str]:
    """The device ids a job may take: ``CUDA_VISIBLE_DEVICES`` (when set, even empty), else
    ``SFSR_GPU_IDS``, else ``detect()`` (``nvidia-smi -L``)."""
    env = os.environ if env is None else env
    if CUDA_ENV in env:
        return _id_list(env[CUDA_ENV])
    if env.get(ENV_IDS, "").strip():
        return _id_list(env[ENV_IDS])
    return [str(i) for i in detect()]


def candidate_source(env: Mapping[str, str] | None = None) -> str:
    """Where :func:`candidate_ids` takes the ids from, for messages: ``CUDA_VISIBLE_DEVICES=<value>``,
    ``SFSR_GPU_IDS=<value>`` or ``nvidia-smi -L``."""
    env = os.environ if env is None else env
    if CUDA_ENV in env:
        return f"{CUDA_ENV}={env[CUDA_ENV]}"
    if env.get(ENV_IDS, "").strip():
        return f"{ENV_IDS}={env[ENV_IDS]}"
    return "nvidia-smi -L"


def _check_unique(candidates: Sequence[str], source: str) -> None:
    """Refuse a list naming one device twice (or two ids that share a lock file name)."""
    seen: dict[str, str] = {}
    for device_id in candidates:
        key = _slot_file(Path("."), device_id).name
        if key in seen:
            same = repr(device_id) if seen[key] == device_id else f"{seen[key]!r} and {device_id!r}"
            raise ConfigError(f"{source} names GPU {same} twice; list each GPU once (e.g. "
                              f"{','.join(dict.fromkeys(candidates))})")
        seen[key] = device_id


def _unusable_folder(where: Path, env: Mapping[str, str], given: bool, exc: OSError) -> ConfigError:
    """The one-line error for a lock folder that cannot be made or written."""
    if where.exists() and not where.is_dir():
        reason = "it is a file, not a folder"
    elif exc.errno == errno.ENOTDIR or any(p.exists() and not p.is_dir() for p in where.parents):
        reason = "a part of that path is a file, not a folder"
    else:
        reason = exc.strerror or str(exc)
    if given:
        return ConfigError(f"GPU lock folder {where}: cannot keep the slot lock files there ({reason}); "
                           f"give a folder you can write to")
    if env.get(ENV_DIR):
        there = "there" if Path(env[ENV_DIR]) == where else f"in {where}"
        return ConfigError(f"{ENV_DIR}={env[ENV_DIR]}: cannot keep the GPU slot lock files {there} "
                           f"({reason}); set {ENV_DIR} to a folder you can write to (made if missing), "
                           f"or unset it")
    return ConfigError(f"GPU lock folder {where}: cannot keep the slot lock files there ({reason}); set "
                       f"{ENV_DIR} to a folder you can write to (made if missing)")


def lock_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the slot lock files live (see the module docstring)."""
    env = os.environ if env is None else env
    if env.get(ENV_DIR):
        base = Path(env[ENV_DIR])
    elif env.get("XDG_RUNTIME_DIR"):
        base = Path(env["XDG_RUNTIME_DIR"]) / "sfsr-gpu-slots"
    else:
        base = Path(tempfile.gettempdir()) / f"sfsr-gpu-slots-{os.getuid()}"
    if env.get("SLURM_JOB_ID"):
        base = base / f"slurm-{env['SLURM_JOB_ID']}"
    return base


def _slot_file(folder: Path, device_id: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in device_id)
    return folder / f"{socket.gethostname()}-gpu-{safe}.lock"


@dataclass
class Slots:
    """GPUs held by this process: ``ids`` (as ``CUDA_VISIBLE_DEVICES`` names them) and the open lock
    files. :meth:`release` (or leaving the ``with`` block, or the process dying) frees them."""
    ids: list[str]
    files: list[Any] = field(default_factory=list, repr=False)

    def release(self) -> None:
        for fh in self.files:
            try:
                fcntl.flock(fh, fcntl.LOCK_UN)
            finally:
                fh.close()
        self.files = []

    def __enter__(self) -> "Slots":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _try_lock(path: Path, holder: str):
    """The open, flock-ed file of ``path``, or None when another process holds it."""
    fh = open(path, "a+", encoding="utf-8")  # noqa: SIM115  kept open while the slot is held
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        fh.close()
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    fh.seek(0)
    fh.truncate()
    fh.write(holder + "\n")  # who holds it, for the "waiting" line of other jobs
    fh.flush()
    return fh


def _holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() or "?"
    except OSError:
        return "?"


def acquire(n: int, *, ids: Sequence[str] | None = None, folder: str | os.PathLike | None = None,
            env: MutableMapping[str, str] | None = None, holder: str | None = None,
            poll: float = 2.0, timeout: float | None = None) -> Slots | None:
    """Hold ``n`` free GPU slots and set ``env['CUDA_VISIBLE_DEVICES']`` (default ``os.environ``)
    to their ids; waits while fewer than ``n`` are free. Returns the :class:`Slots`, or None (and
    changes nothing) for ``n == 0`` or when there is no GPU.

    ``ids`` overrides the candidates (default :func:`candidate_ids`), ``folder`` the lock folder
    (default :func:`lock_dir`); ``holder`` is written into the lock files (default: host and pid).
    ``timeout`` (seconds, default none) raises :class:`TimeoutError` when it runs out."""
    env = os.environ if env is None else env
    n = int(n or 0)
    if n <= 0:
        return None
    candidates = list(candidate_ids(env) if ids is None else ids)
    if candidates:
        _check_unique(candidates, candidate_source(env) if ids is None else f"the id list {','.join(candidates)}")
    if not candidates:
        log.info("job asks for %d GPU(s) but none is visible (no CUDA_VISIBLE_DEVICES ids, %s or "
                 "nvidia-smi GPUs): no GPU slot taken", n, ENV_IDS)
        return None
    if n > len(candidates):
        raise ConfigError(f"the job asks for {n} GPUs (resources gpu={n}) but only {len(candidates)} "
                          f"are available to it ({', '.join(candidates)}); lower the job's gpus setting or "
                          f"run it where {n} GPUs are visible")
    where = Path(folder) if folder is not None else lock_dir(env)
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unusable_folder(where, env, folder is not None, exc) from None
    holder = holder or f"pid {os.getpid()} on {socket.gethostname()}"
    start, waited = time.monotonic(), False
    while True:
        files, taken = [], []
        for device_id in candidates:
            try:
                fh = _try_lock(_slot_file(where, device_id), holder)
            except OSError as exc:  # the folder exists but cannot take the lock file
                Slots(taken, files).release()
                raise _unusable_folder(where, env, folder is not None, exc) from None
            if fh is not None:
                files.append(fh)
                taken.append(device_id)
                if len(taken) == n:
                    break
        if len(taken) == n:
            env[CUDA_ENV] = ",".join(taken)
            log.info("GPU slot(s) %s of %s taken (CUDA_VISIBLE_DEVICES=%s)%s", ",".join(taken),
                     ",".join(candidates), env[CUDA_ENV],
                     f" after waiting {time.monotonic() - start:.0f} s" if waited else "")
            return Slots(taken, files)
        Slots(taken, files).release()  # all or nothing: never hold some slots while waiting
        if not waited:
            busy = {d: _holder(_slot_file(where, d)) for d in candidates if d not in taken}
            log.info("waiting for %d free GPU slot(s) of %s (%d free now; busy: %s; locks in %s)", n,
                     ",".join(candidates), len(taken),
                     "; ".join(f"{d}: {h}" for d, h in busy.items()), where)
            waited = True
        if timeout is not None and time.monotonic() - start > timeout:
            raise TimeoutError(f"no {n} free GPU slot(s) of {', '.join(candidates)} within {timeout} s")
        time.sleep(poll * (0.5 + random.random()))  # jitter: waiting jobs do not retry in lockstep


def acquire_for_job(smk: Any, **kwargs: Any) -> Slots | None:
    """:func:`acquire` for a Snakemake job: ``n`` is its ``resources.gpu`` (0 when absent); the
    holder written into the lock files names the rule and its wildcards."""
    resources = getattr(smk, "resources", None)
    n = getattr(resources, "gpu", 0) if resources is not None else 0
    if not n:
        return None
    wildcards = getattr(smk, "wildcards", None)
    named = ", ".join(f"{k}={v}" for k, v in wildcards.items()) if hasattr(wildcards, "items") else ""
    holder = f"rule {getattr(smk, 'rule', '?')} {named} (pid {os.getpid()} on {socket.gethostname()})"
    return acquire(int(n), holder=holder, **kwargs)
