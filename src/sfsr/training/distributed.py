"""One training job on several GPUs (or CPU processes): DistributedDataParallel (docs/multi_gpu.md).

* :func:`launch` runs ``python -m torch.distributed.run --standalone --nproc-per-node N -m
  sfsr.training.worker <settings>``: N worker processes on this machine, each calling
  :func:`sfsr.training.loop.train` with the same arguments (:mod:`sfsr.training.worker`, the
  torchrun entry point, is a module of its own: the loop imports this module). The workflow script calls it when the
  job's ``resources.gpu`` (the stage's ``gpus`` setting) is above 1; the job's GPU slots
  (:mod:`sfsr.gpu_slots`) are inherited through ``CUDA_VISIBLE_DEVICES``.
* Inside ``train``, :func:`setup` sees torchrun's ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``, joins the
  process group (``nccl`` on CUDA, ``gloo`` on CPU) and puts rank r on ``cuda:<LOCAL_RANK>``; with no
  ``WORLD_SIZE`` (or 1) it returns :data:`SINGLE` and nothing in the loop changes.
* Data: ``batch_size`` stays the *global* batch. Iteration i of a one-process run trains on the
  samples ``(i-1)*B ... i*B-1`` of the iteration-indexed dataset (sample k is seeded by
  ``(seed, k)``); rank r of W takes the r-th contiguous ``B/W`` of them
  (:func:`sfsr.training.data.make_loader`). The ranks
  see disjoint data, the union is exactly the one-process batch, and a resume at iteration i starts
  every rank at the same place. (This replaces torch's DistributedSampler, which is epoch based.)
* :func:`wrap` puts the generator (with the LR head when there is one) and the discriminator in
  DistributedDataParallel; the optimisers, EMA, state and outputs keep using the underlying modules,
  so checkpoints have the same keys as a one-process run's and resume with any number of processes.
  Gradients are averaged over the ranks, so every rank takes the same optimiser step and the EMA,
  updated on every rank from the same weights, stays identical everywhere.
* Rank 0 alone logs, validates, writes ``best.pt``, the state and the outputs; the others wait at a
  barrier. Logged losses are means over all ranks.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist

log = logging.getLogger("sfsr.training")

#: How long a rank waits at a barrier (rank 0 validating, writing a checkpoint) before giving up.
BARRIER_TIMEOUT = timedelta(hours=1)


@dataclass(frozen=True)
class Dist:
    """Where this process stands: ``rank`` of ``world`` processes (``local_rank`` on this machine)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this process joined the group in setup() and leaves it in close()

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that logs, validates and writes."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean of ``values`` over the ranks (every rank gets the same result)."""
        if not self.active:
            return values
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)  # gloo has no AVG
        return values / self.world

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


SINGLE = Dist()


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group when started by torchrun with more than one process; returns this
    process's :class:`Dist` and its device (``cuda:<LOCAL_RANK>`` on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE, device
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=BARRIER_TIMEOUT)
    if rank == 0:
        log.info("distributed training: %d processes, backend %s, device of rank 0 %s", world,
                 dist.get_backend(), device)
    return Dist(rank, world, local_rank, owns), device


# ----------------------------------------------------------------------------------- models
class _DiscriminatorForward:
    """The discriminator's forward in a distributed run: through DDP when its weights are trained
    (the discriminator's step: gradients averaged over the ranks), through the plain module in the
    generator's step, where :func:`~sfsr.training.step.train_step` turns its gradients off (a DDP
    forward there would wait for gradients that never come)."""

    def __init__(self, module: torch.nn.Module, local: Any, synced: Any) -> None:
        self.first = next(module.parameters())
        self.local, self.synced = local, synced

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self.first.requires_grad:
            return self.synced(x)
        return self.local(x)


def wrap(parts: Any, d: Dist, device: torch.device, flags: dict[str, bool]) -> None:
    """Put ``parts.trainable`` and ``parts.disc`` in DistributedDataParallel (the forwards the step
    calls: ``g_fwd``, ``d_fwd``); the parts themselves stay the plain modules."""
    if not d.active:
        return
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    # an LR head whose loss weight is 0 (the shared control) gets no gradient
    unused = parts.head is not None and "shared_cls" not in parts.weights
    g = DDP(parts.trainable, device_ids=ids, find_unused_parameters=unused)
    parts.g_fwd = torch.compile(g) if flags["compile"] else g
    if parts.disc is not None:
        synced = DDP(parts.disc, device_ids=ids)
        parts.d_fwd = _DiscriminatorForward(parts.disc, parts.d_fwd,
                                            torch.compile(synced) if flags["compile"] else synced)


# ----------------------------------------------------------------------------------- launch
PR_SET_PDEATHSIG = 1


def _prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


def _die_with_parent(prctl=_prctl()) -> None:
    """Linux: SIGTERM this process when its parent dies (a SIGKILLed job must not leave its
    torchrun or its workers training on)."""
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _stream(stream: Any) -> Any:
    """``stream`` when it is a real file (the job's log), else None (inherit)."""
    try:
        stream.fileno()
        return stream
    except (AttributeError, OSError, ValueError):
        return None


def _worker_path() -> list[str]:
    """The workers' PYTHONPATH: the folder holding this sfsr first, so that they import the same
    code (a checkout's src/, which the workflow scripts put on sys.path, or a ``pip install --target``
    folder), then the current PYTHONPATH. An installed sfsr's site-packages is left off: the
    interpreter finds it there anyway, and on PYTHONPATH it would come before the standard library."""
    import site

    here = Path(__file__).resolve().parents[2]  # <folder>/sfsr/training/distributed.py
    site_dirs = {Path(p).resolve() for p in [*site.getsitepackages(), site.getusersitepackages()]}
    current = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return current if here in site_dirs else [str(here), *current]


def launch(nproc: int, stage: str, cfg: dict, *, train_hr_dirs: Sequence[str | os.PathLike],
           valid_hr_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
           init_checkpoint: str | os.PathLike | None = None, device: str = "auto", seed: int = 0,
           max_iterations: int | None = None,
           classifier_checkpoint: str | os.PathLike | None = None) -> Path:
    """:func:`sfsr.training.loop.train` on ``nproc`` processes of this machine (torchrun); returns
    what ``train`` returns. SIGTERM/SIGINT of this process stops the workers (they leave their last
    checkpoint) and is raised again here; a failed worker raises :class:`SfsrError`."""
    from sfsr.errors import SfsrError

    args = dict(stage=stage, cfg=cfg, train_hr_dirs=[str(p) for p in train_hr_dirs],
                valid_hr_dirs=[str(p) for p in valid_hr_dirs], out_dir=str(out_dir),
                init_checkpoint=str(init_checkpoint) if init_checkpoint is not None else None,
                device=device, seed=seed, max_iterations=max_iterations,
                classifier_checkpoint=str(classifier_checkpoint) if classifier_checkpoint is not None else None)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(_worker_path())}
    if not env["PYTHONPATH"]:
        del env["PYTHONPATH"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={int(nproc)}",
           "-m", "sfsr.training.worker", json.dumps(args)]
    log.info("training on %d processes: %s '<train arguments>'", nproc, " ".join(cmd[:-1]))
    out = _stream(sys.stderr)
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=out, preexec_fn=_die_with_parent)
    try:
        status = proc.wait()
    except BaseException:  # SIGTERM (Terminated) / SIGINT: stop the workers, then pass it on
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    if status != 0:
        raise SfsrError(f"{stage} training on {nproc} processes failed (torchrun exit status {status}); the "
                        "workers' messages are in the log above. Running it again resumes from the last "
                        "checkpoint")
    out_dir = Path(out_dir)
    stopped = max_iterations is not None and int(max_iterations) < int(cfg["iterations"])
    return out_dir / "state" / "last.pt" if stopped else out_dir / "generator.pt"
