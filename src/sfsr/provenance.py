"""What is recorded next to every result: config, seed, package versions, git commit, machine."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import random
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from sfsr import io

_PACKAGES = ("sfsr", "torch", "torchvision", "numpy", "scipy", "scikit-image", "pillow", "pandas",
             "snakemake")


def package_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit(start: str | os.PathLike | None = None) -> str:
    """The commit of the checkout holding ``start`` (default: the working directory), with
    ``-dirty`` when tracked files are modified; ``unknown`` outside a git checkout."""
    cwd = Path(start or os.getcwd())
    if cwd.is_file():
        cwd = cwd.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name (``/proc/cpuinfo``; else :func:`platform.processor`)."""
    try:
        text = Path("/proc/cpuinfo").read_text() if cpuinfo is None else cpuinfo
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return platform.processor() or "unknown"


def device_info() -> dict[str, Any]:
    """The machine: host, platform, CPU model and count, torch's CPU kernel level (AVX2, AVX512, ...)
    and threads, ``SFSR_CPU_BF16`` where set (results can differ in the last bits across these:
    docs/reproducibility.md), and the GPU."""
    info: dict[str, Any] = {"host": platform.node(), "platform": platform.platform(),
                            "cpu": cpu_model(), "cpu_count": os.cpu_count()}
    if os.environ.get("SFSR_CPU_BF16"):
        info["SFSR_CPU_BF16"] = os.environ["SFSR_CPU_BF16"]
    try:
        import torch

        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.is_available()
        if info["cuda"]:
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover - torch is a dependency
        info["cuda"] = False
    return info


def record(config: Any = None, seed: int | None = None, **extra: Any) -> dict[str, Any]:
    """A provenance record: time, seed, versions, git commit, machine, config and extras."""
    return {
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "machine": device_info(),
        "command": sys.argv,
        "config": config,
        **extra,
    }


def write(path: str | os.PathLike, config: Any = None, seed: int | None = None, **extra: Any) -> dict:
    """Write :func:`record` as JSON next to a result (atomically) and return it."""
    rec = record(config=config, seed=seed, **extra)
    io.write_json(path, rec)
    return rec


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (all devices). ``deterministic`` also asks cuDNN for
    deterministic kernels (slower)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
