"""The threading policy of sfsr's torch work (issue 21 item 3: graceful under contention). Torch-free.

torch's intra-op threads are OpenMP (libgomp) threads. By default a thread that has finished its
share of a parallel region spin-waits (libgomp: ~300000 iterations, a few ms) for the next region
instead of sleeping. When another process takes one of the cores, the spinning thread keeps its core
busy waiting for a partner the kernel has descheduled, and every one of the thousands of parallel
regions of a training step pays for it: one busy process costs far more than the fair share. With
``OMP_WAIT_POLICY=PASSIVE`` a thread sleeps at once, and a busy core costs about what it should,
at some quiet speed on tiny models (measured: ``python -m benchmarks --only contention``;
docs/PERFORMANCE.md "Threading under contention").

libgomp reads ``OMP_WAIT_POLICY`` once, when torch loads it, so the setting must be in the
environment before torch is imported: :func:`apply_env_defaults` runs at the top of
``sfsr/__init__.py``, and every workflow script, the CLI and the benchmarks import sfsr before torch.
It uses ``os.environ.setdefault``: a value the user has set wins (``OMP_WAIT_POLICY=ACTIVE`` spins
as torch did; ``GOMP_SPINCOUNT=N`` sets libgomp's spin count, whatever the wait policy). Where torch
was imported before sfsr (a library user's ``import torch`` first), the setting cannot reach this
process's OpenMP any more; it is still put in the environment (child processes get it) and
:func:`describe` says it was too late.

The number of threads is left as it is: Snakemake already starts every job's script with
``OMP_NUM_THREADS`` set to the job's ``threads`` (which torch reads), and one thread was slower
than two in the benchmark (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import os
import sys
from typing import Any

#: What sfsr puts in the environment where it is not set (the user's own value wins).
ENV_DEFAULTS: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}

#: The environment variables that set torch's CPU threading, reported by :func:`describe`.
THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS")

#: What :func:`apply_env_defaults` found and did (filled at sfsr's import).
STATE: dict[str, Any] = {"set": {}, "kept": {}, "torch_loaded_before": None}


def apply_env_defaults(environ: Any = None) -> dict[str, Any]:
    """Put :data:`ENV_DEFAULTS` into ``environ`` (default: ``os.environ``) where unset and record in
    :data:`STATE` what was set, what was kept from the user, and whether torch (and so its OpenMP
    runtime, which has read the environment already) was imported before. Returns :data:`STATE`."""
    env = os.environ if environ is None else environ
    STATE["set"], STATE["kept"] = {}, {}
    for key, value in ENV_DEFAULTS.items():
        if key in env:
            STATE["kept"][key] = env[key]
        else:
            env[key] = value
            STATE["set"][key] = value
    STATE["torch_loaded_before"] = "torch" in sys.modules
    return STATE


def describe() -> dict[str, Any]:
    """The threading in effect: torch's intra-op and inter-op threads (None where torch is not
    imported: it is not imported for this), the threading environment variables, and whether sfsr's
    defaults reached torch's OpenMP (False where torch was imported before sfsr)."""
    torch = sys.modules.get("torch")
    info: dict[str, Any] = {
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "interop_threads": torch.get_num_interop_threads() if torch is not None else None,
        "env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ},
        "set_by_sfsr": dict(STATE["set"]),
        "kept_from_environment": dict(STATE["kept"]),
        "applied_before_torch": STATE["torch_loaded_before"] is False,
    }
    return info


def policy_line(job_threads: int | None = None) -> str:
    """One line for a job's log: threads and wait policy in effect, and where they come from."""
    d = describe()
    env = d["env"]
    if d["torch_threads"] is not None:
        threads = f"{d['torch_threads']} torch threads ({d['interop_threads']} inter-op)"
    else:
        threads = f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}" if "OMP_NUM_THREADS" in env else \
            "torch's default threads (the CPUs)"
    if job_threads is not None:
        threads += f", job threads {job_threads}"
    wait = env.get("OMP_WAIT_POLICY", "libgomp's default (spin, then sleep)")
    source = "sfsr's default" if "OMP_WAIT_POLICY" in d["set_by_sfsr"] else "from the environment"
    line = f"threading: {threads}; OMP_WAIT_POLICY={wait} ({source})"
    if "GOMP_SPINCOUNT" in env:
        line += f", GOMP_SPINCOUNT={env['GOMP_SPINCOUNT']}"
    if not d["applied_before_torch"]:
        line += " -- NOT in effect in this process: torch was imported before sfsr, and its OpenMP " \
                "runtime reads the setting when it loads (import sfsr first)"
    return line
