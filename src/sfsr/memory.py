"""How much memory an upscale needs, how much there is, and the tile that makes one fit.

``sfsr upscale`` without ``--tile`` runs the whole image at once when that fits and tiles it
otherwise (:func:`plan_tile`); the numbers are estimates, made before any large allocation.

**What a pass needs** (bytes; ``h x w`` LR pixels, scale ``s``, a tile region of ``a`` LR pixels;
the whole image: ``a = h*w``)::

    need   = per_px * a + fixed(h, w, s)
    per_px = 4 * (V + 3 + 9*s*s)                     (model_bytes_per_lr_pixel; float32)
    V      = max(ACTIVATION_COPIES * A, T)           (peak_values)
    fixed  = (30 + 3*s*s) * h*w + min(32 MiB, 32 * 3*s*s * h*w)   (fixed_bytes)

``A`` is the model's largest activation in values per LR pixel: the largest tensor any of its
modules takes or returns, measured by a forward pass over a 32x32 probe (for a pixel-shuffle x4
upsampler with F features it is the ``F x 4h x 4w`` map, ``16 F`` per LR pixel: 1024 for F = 64).
At the peak, around the last convolutions at HR size, the input and the output of a convolution are
alive together and oneDNN may hold a reordered (blocked-layout) copy of each:
``ACTIVATION_COPIES = 4`` such tensors. ``T``: a transposed convolution on the CPU also unfolds its
input into a column buffer (``out * kh * kw`` values per input pixel, col2im), alive with its input
and output (the autoencoder's upsampler). The other model terms: the float input (3 values per LR
pixel), the model output, the residual base and their sum (``3 s^2`` values each). Outside the
model: the uint8 image and the copy ``to_float`` makes of it (3 bytes each), its two float
temporaries (24), the uint8 result (``3 s^2``) and the quantization band (float64 temporaries of
at most 2^20 result values: 32 MiB, less for a small result). Measured peak RSS
increases of whole-image passes on the CPU stayed below this estimate (docs/reliability.md). A
tiled pass keeps ``fixed`` for the whole image and ``per_px`` for one tile with its context,
``(t + 2 overlap)^2`` LR pixels at most.

**What is available** (:func:`available_memory`): on the CPU the least of ``MemAvailable``
(``/proc/meminfo``), the cgroup's limit less its usage (v1 or v2, page cache that can be dropped
not counted) and the address-space limit (``RLIMIT_AS``, ``ulimit -v``) less the address space
in use; on a GPU the free device memory (``torch.cuda.mem_get_info``) plus what torch's caching
allocator holds unused. A plan uses at most :data:`BUDGET_FRACTION` of it.
"""

from __future__ import annotations

import math
import os
import resource
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GiB = 1 << 30
MiB = 1 << 20
#: tensors of the largest activation's size alive at the peak of a pass (see the module docstring)
ACTIVATION_COPIES = 4
#: the share of the available memory a plan may use
BUDGET_FRACTION = 0.8
#: the smallest tile worth running (LR pixels); below it the overlap dominates
MIN_TILE = 32
#: automatic tiles are multiples of this (LR pixels)
TILE_STEP = 16
#: side of the probe image :func:`peak_values` runs (LR pixels)
PROBE_SIZE = 32
_QUANTIZE_BAND_BYTES = 32 * MiB

_ACTIVATIONS: "weakref.WeakKeyDictionary[Any, float]" = weakref.WeakKeyDictionary()


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says an allocation failed: :class:`MemoryError` (numpy, Python), torch's
    ``DefaultCPUAllocator: can't allocate memory``, ``CUDA out of memory`` (a RuntimeError
    subclass), a C++ ``std::bad_alloc``."""
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc)
        return any(k in text for k in ("can't allocate memory", "out of memory", "bad_alloc",
                                       "Cannot allocate memory", "Unable to allocate"))
    return False


def format_bytes(n: float) -> str:
    """``14.2 GiB``, ``640 MiB``, ``5.3 MiB``."""
    if n >= GiB:
        return f"{n / GiB:.1f} GiB"
    return f"{max(n, 0) / MiB:.0f} MiB" if n >= 10 * MiB else f"{max(n, 0) / MiB:.1f} MiB"


# ----------------------------------------------------------------------------------- estimate
def peak_values(model: Any, device: Any = "cpu") -> float:
    """Float values per LR pixel that a pass of ``model`` holds at its peak:
    ``max(ACTIVATION_COPIES * A, T)``, ``A`` the largest tensor any module takes or returns, ``T``
    the largest transposed convolution's input + output + column buffer (``out * kh * kw`` values
    per input pixel: the CPU's col2im), from one forward pass over a ``PROBE_SIZE`` x
    ``PROBE_SIZE`` input on ``device`` (cached per model)."""
    import torch
    from torch import nn

    cached = _ACTIVATIONS.get(model)
    if cached is not None:
        return cached
    largest = [0, 0]

    def hook(module: Any, inputs: Any, output: Any) -> None:
        sizes = [t.numel() for t in (*inputs, output) if isinstance(t, torch.Tensor)]
        largest[0] = max([largest[0], *sizes])
        if isinstance(module, nn.ConvTranspose2d) and isinstance(inputs[0], torch.Tensor):
            x = inputs[0]
            columns = x.numel() // x.shape[1] * module.out_channels * math.prod(module.kernel_size)
            largest[1] = max(largest[1], sum(sizes) + columns)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            model(torch.rand(1, 3, PROBE_SIZE, PROBE_SIZE, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    value = max(ACTIVATION_COPIES * largest[0], largest[1]) / (PROBE_SIZE * PROBE_SIZE)
    _ACTIVATIONS[model] = value
    return value


def model_bytes_per_lr_pixel(values: float, scale: int) -> int:
    """Bytes a model pass holds per LR pixel of its input, from :func:`peak_values`:
    ``4 * (values + 3 + 9 s^2)`` (float32)."""
    return int(math.ceil(4 * (values + 3 + 9 * scale * scale)))


def fixed_bytes(h: int, w: int, scale: int) -> int:
    """Bytes an upscale of an ``h x w`` image holds whatever its tiles: the uint8 image, its float
    copy and temporaries, the uint8 result, the quantization band."""
    values = 3 * scale * scale * h * w  # of the result
    return 30 * h * w + values + min(_QUANTIZE_BAND_BYTES, 32 * values)


def tile_region(h: int, w: int, tile: int | None, overlap: int) -> int:
    """LR pixels of the largest tile with its context (the whole image for ``tile`` None)."""
    if tile is None or (tile >= h and tile >= w):
        return h * w
    return min(tile + 2 * overlap, h) * min(tile + 2 * overlap, w)


@dataclass(frozen=True)
class TilePlan:
    """The outcome of :func:`plan_tile`: ``tile`` None (whole image) or the LR tile to use;
    ``need_whole`` and ``need``: the estimated bytes of the whole-image pass and of the plan
    (device memory for a GPU, else host), ``available``: the memory planned against."""

    tile: int | None
    need_whole: int
    need: int
    available: int


class NotEnoughMemory(Exception):
    """Not even the smallest tile fits: ``plan`` holds the numbers of tiles of :data:`MIN_TILE`."""

    def __init__(self, plan: TilePlan, host_short: bool) -> None:
        super().__init__("not enough memory")
        self.plan = plan
        self.host_short = host_short


def plan_tile(per_px: int, h: int, w: int, scale: int, overlap: int, available: int,
              host_available: int | None = None) -> TilePlan:
    """The whole image if it fits in ``BUDGET_FRACTION * available``, else the largest tile (a
    multiple of :data:`TILE_STEP`, at least :data:`MIN_TILE`) that does. ``host_available`` None:
    the model runs in the same memory (CPU); else ``available`` is the GPU's and the whole-image
    arrays (:func:`fixed_bytes`) must fit the host's. Raises :class:`NotEnoughMemory` when
    nothing fits."""
    fixed = fixed_bytes(h, w, scale)
    shared = host_available is None
    budget = BUDGET_FRACTION * available

    def need(tile: int | None) -> int:
        return per_px * tile_region(h, w, tile, overlap) + (fixed if shared else 0)

    need_whole = need(None)
    host_short = not shared and fixed > BUDGET_FRACTION * host_available
    if need_whole <= budget and not host_short:
        return TilePlan(None, need_whole, need_whole, available)
    if not host_short:
        for tile in range((max(h, w) - 1) // TILE_STEP * TILE_STEP, MIN_TILE - 1, -TILE_STEP):
            if need(tile) <= budget:
                return TilePlan(tile, need_whole, need(tile), available)
    raise NotEnoughMemory(TilePlan(MIN_TILE, need_whole, need(MIN_TILE), available), host_short)


# ---------------------------------------------------------------------------------- available
def _meminfo(path: str | os.PathLike = "/proc/meminfo") -> int | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _stat(path: Path, *keys: str) -> int:
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key in keys:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def cgroup_available(root: str | os.PathLike = "/sys/fs/cgroup",
                     proc_cgroup: str | os.PathLike = "/proc/self/cgroup") -> int | None:
    """The least, over this process's memory cgroup and its ancestors, of limit - (usage - inactive
    page cache); None without a limit. cgroup v2 (``memory.max``/``memory.current``) or v1
    (``memory/memory.limit_in_bytes``/``memory.usage_in_bytes``); limits of 2^62 and more count as
    none."""
    root = Path(root)
    v2_rel = v1_rel = None
    try:
        for line in Path(proc_cgroup).read_text().splitlines():
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            if parts[0] == "0" and parts[1] == "":
                v2_rel = parts[2]
            elif "memory" in parts[1].split(","):
                v1_rel = parts[2]
    except OSError:
        return None
    candidates: list[tuple[Path, str, str, Path]] = []  # (folder, limit file, usage file, stat)
    for base, rel, limit, usage in ((root, v2_rel, "memory.max", "memory.current"),
                                    (root / "memory", v1_rel, "memory.limit_in_bytes", "memory.usage_in_bytes")):
        if rel is None or not base.is_dir():
            continue
        folder = base / rel.lstrip("/")
        if not folder.is_dir():  # inside a cgroup namespace the mount is the process's own group
            folder = base
        while True:
            candidates.append((folder, limit, usage, folder / "memory.stat"))
            if folder == base:
                break
            folder = folder.parent
    best: int | None = None
    for folder, limit_name, usage_name, stat in candidates:
        limit = _read_int(folder / limit_name)
        if limit is None or limit >= 1 << 62:
            continue
        usage = _read_int(folder / usage_name) or 0
        usage -= _stat(stat, "inactive_file", "total_inactive_file")
        free = max(0, limit - max(usage, 0))
        best = free if best is None else min(best, free)
    return best


def _address_space_available() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return max(0, soft - int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    return soft


def available_memory(device: Any = "cpu") -> int | None:
    """Bytes available to a pass on ``device`` (see the module docstring); None when unknown."""
    if getattr(device, "type", str(device).split(":")[0]) == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    values = [v for v in (_meminfo(), cgroup_available(), _address_space_available()) if v is not None]
    return min(values) if values else None
