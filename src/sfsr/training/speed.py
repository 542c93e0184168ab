"""The speed settings of a training job (bf16 autocast, channels_last, torch.compile) as they apply on
its device, and the CPU's native-bf16 detection behind ``bf16: true``.

Each setting is ``false``, ``true`` (= ``auto``) or ``always``:

* ``true``/``auto``: on CUDA; on a CPU, bf16 only where the CPU computes bfloat16 natively
  (:func:`cpu_has_native_bf16`), channels_last and compile not at all;
* ``always``: on any device (emulated bf16 on a CPU without AVX512-BF16/AMX is correct but slower
  than float32: docs/PERFORMANCE.md);
* ``false``: off.

The detection reads ``/proc/cpuinfo``; the environment variable ``SFSR_CPU_BF16`` overrides it
(``native``: act as on a CPU with native bf16; ``none``: as on one without), so the native-bf16 path
can be run and tested on any CPU. Ops without a bfloat16 kernel on the CPU (torchvision's
``deform_conv2d``) run in float32 inside autocast (:mod:`sfsr.models.ssen`).

The SR stages (:mod:`sfsr.training.parts`) and the classifier, its judges and the LR baseline
(:mod:`sfsr.training.classifier`) resolve their settings here; every job logs one line saying what
actually runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Callable

import torch

from sfsr.errors import ConfigError

log = logging.getLogger("sfsr.training")

SPEED_FLAGS = ("bf16", "channels_last", "compile")
#: CPU flags (``/proc/cpuinfo``) of native bfloat16 arithmetic: AVX512-BF16 or AMX-BF16 (Intel
#: Cooper Lake / Sapphire Rapids and later, AMD Zen 4 and later). Without them oneDNN emulates bf16
#: and a bf16 step is slower than float32 (docs/PERFORMANCE.md).
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: Environment variable overriding the native-bf16 detection: ``native`` or ``none``.
CPU_BF16_ENV = "SFSR_CPU_BF16"
_ENV_VALUES = {"native": True, "none": False}


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags of the first processor in ``/proc/cpuinfo`` (or of ``cpuinfo``, its
    text); empty where there is none (not Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_bf16_override() -> bool | None:
    """``SFSR_CPU_BF16`` as a bool (``native``: True, ``none``: False), None where unset or empty."""
    value = os.environ.get(CPU_BF16_ENV, "").strip().lower()
    if not value:
        return None
    if value not in _ENV_VALUES:
        raise ConfigError(f"environment variable {CPU_BF16_ENV}={os.environ[CPU_BF16_ENV]!r}: allowed "
                          "values are 'native' (act as on a CPU with native bf16), 'none' (as on one "
                          "without) or unset (detect from /proc/cpuinfo)")
    return _ENV_VALUES[value]


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool:
    """Whether the CPU computes bfloat16 natively (:data:`CPU_BF16_FLAGS`). ``flags``: the CPU's
    flags; default: ``SFSR_CPU_BF16`` where set, else :func:`cpu_flags` (and torch's own check where
    /proc/cpuinfo says nothing)."""
    if flags is None:
        forced = cpu_bf16_override()
        if forced is not None:
            return forced
        flags = cpu_flags()
        if not flags:
            cpu = getattr(torch, "cpu", None)
            return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                        or getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    return any(f in flags for f in CPU_BF16_FLAGS)


def cpu_bf16() -> tuple[bool, str]:
    """Whether this CPU runs bf16 natively, and why that was decided (for the log line): the
    ``SFSR_CPU_BF16`` override, else the detection (:func:`cpu_has_native_bf16`)."""
    forced = cpu_bf16_override()
    if forced is not None:
        return forced, f"{CPU_BF16_ENV}={os.environ[CPU_BF16_ENV].strip()}"
    native = cpu_has_native_bf16()
    return native, "detected: AVX512-BF16/AMX" if native else "no AVX512-BF16/AMX on this CPU"


def speed_flags(cfg: dict, device: torch.device, what: str = "training") -> dict[str, bool]:
    """The settings of :data:`SPEED_FLAGS` in ``cfg`` (a missing one is off) as they apply on
    ``device`` (see the module docstring). Logs one INFO line of what runs, and sets the CUDA matmul
    settings on CUDA."""
    cuda = device.type == "cuda"
    native, why = (True, "CUDA") if cuda else cpu_bf16()
    flags = {}
    for k in SPEED_FLAGS:
        value = cfg.get(k, False)
        if not any(value is v for v in (True, False)) and value not in ("auto", "always"):
            raise ConfigError(f"{what} setting '{k}' is {value!r}; allowed: true, false, auto, always")
        if value == "always":
            flags[k] = True
        elif value is True or value == "auto":
            flags[k] = native if k == "bf16" else cuda
        else:
            flags[k] = False
    log.info("%s on %s: %s", what, device.type, describe(cfg, flags, device, native, why))
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return flags


def describe(cfg: dict, flags: dict[str, bool], device: torch.device, native: bool, why: str) -> str:
    """One line of what runs: the dtype and why (``native``, ``why``: :func:`cpu_bf16`'s answer),
    the memory format, compile."""
    setting = cfg.get("bf16", False)
    if flags["bf16"]:
        reason = "forced: bf16 always" if setting == "always" else why
        if setting == "always" and not native:
            reason += "; this CPU emulates bf16, slower than float32"
        dtype = f"bf16 autocast on ({reason})"
    elif setting:
        dtype = f"float32 (bf16: {setting}, ignored: {why})"
    else:
        dtype = "float32"
    parts = [dtype, "channels_last" if flags["channels_last"] else "contiguous"]
    if flags.get("compile"):
        parts.append("torch.compile")
    ignored = [k for k in ("channels_last", "compile") if cfg.get(k) and not flags[k]]
    if ignored:
        parts.append(f"{'/'.join(ignored)} ignored on {device.type} (set 'always' to force)")
    return ", ".join(parts)


def place(module: torch.nn.Module, device: torch.device, flags: dict[str, bool]) -> torch.nn.Module:
    """``module`` on ``device`` in the memory format of ``flags`` (channels_last or contiguous), in
    training mode."""
    memory_format = torch.channels_last if flags["channels_last"] else torch.contiguous_format
    return module.to(device, memory_format=memory_format).train()


def autocast_context(flags: dict[str, bool], device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the job's autocast context: bf16 autocast on ``device`` where ``flags['bf16']``,
    else a null context."""
    if flags["bf16"]:
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext
