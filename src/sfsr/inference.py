"""Upscaling images with MATLAB-exact bicubic interpolation or a trained generator.

A generator always sees a float RGB ``1x3xHxW`` tensor in [0, 1] (gray images are replicated to
three channels) and its output is quantized with :func:`sfsr.metrics.to_uint8` (clamp, x255,
round half away from zero), so a saved PNG holds exactly the pixels the metrics evaluate. Large
images can be processed in overlapping LR tiles (each axis split into nearly equal tiles of at most
``tile`` pixels): each tile is extended by ``tile_overlap`` LR pixels on every side, run through the
model, and only its core is kept, so the result equals the whole-image result whenever the model's
receptive-field radius is at most ``tile_overlap`` LR pixels (up to float rounding: within one grey
level).

Memory (:mod:`sfsr.memory`): with ``tile="auto"`` (``sfsr upscale`` without ``--tile``) the whole
image is run when its estimated need fits the memory available, else the largest tile that fits is
chosen and one line says so (the study passes ``evaluation.tile``, None by default: always whole,
so its numbers never depend on free memory); an image that
not even tiles of 32 fit is refused in one line, as is an allocation that fails during a pass.
Bicubic upscaling runs in bands of output rows with MATLAB's weights of the whole image, so it is
bit-identical to :func:`sfsr.data.bicubic.imresize` at a bounded memory (the uint8 result plus
:data:`BICUBIC_BAND_BYTES`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Collection
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from sfsr import io, memory
from sfsr.data.bicubic import imresize
from sfsr.data.images import DEFAULT_EXTENSIONS as IMAGE_EXTENSIONS
from sfsr.data.images import list_images, read_image, to_rgb
from sfsr.errors import ConfigError, DataError, path_problem
from sfsr.metrics import to_uint8
from sfsr.outputs import check_output_folder, move_into_folder
from sfsr.tensors import eval_mode, resolve_device, to_float  # resolve_device: public here too

log = logging.getLogger(__name__)
#: float64 temporaries of one band of a bicubic upscale (bytes)
BICUBIC_BAND_BYTES = 64 * memory.MiB


def _run_model(model: nn.Module, x: torch.Tensor, scale: int, bf16: bool) -> torch.Tensor:
    amp = torch.autocast(x.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with amp:
        y = model(x)
    expected = (x.shape[2] * scale, x.shape[3] * scale)
    if tuple(y.shape[2:]) != expected or y.shape[:2] != x.shape[:2]:
        raise DataError(f"the model turned a {tuple(x.shape)} input into {tuple(y.shape)}, expected "
                        f"(1, 3, {expected[0]}, {expected[1]}) for x{scale}; check that the "
                        "checkpoint's scale matches --scale")
    return y.float()


#: ``tile`` value that plans the tile from the memory available (:func:`upscale_image`)
AUTO_TILE = "auto"


def tile_bounds(n: int, tile: int) -> list[tuple[int, int]]:
    """Split ``n`` pixels into ``ceil(n / tile)`` nearly equal tiles (sizes differ by at most one,
    each at most ``tile``) as ``(start, stop)`` pairs: 510 with tiles of 256 is 255 + 255, not 256 +
    254, and 339 is 169 + 170, not 256 + 83. The same number of tiles as fixed steps of ``tile``,
    with the largest tile (which sets the peak memory) no larger and usually smaller."""
    count = -(-n // tile)
    cuts = [i * n // count for i in range(count + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def upscale_image(image: np.ndarray, *, scale: int, model: nn.Module | None = None,
                  device: str | torch.device = "cpu", tile: int | str | None = None,
                  tile_overlap: int = 16, bf16: bool = False, name: str = "image") -> np.ndarray:
    """Upscale one uint8 image by ``scale``.

    ``model=None``: MATLAB-exact bicubic (:func:`sfsr.data.bicubic.imresize`, bit for bit, in bands
    of output rows: :func:`bicubic_upscale`), gray stays gray; ``tile`` is not used.
    With a model: the image is fed as float RGB in [0, 1] (gray replicated), under
    ``torch.inference_mode`` in eval mode, optionally in overlapping LR tiles of at most ``tile``
    pixels (each axis split into nearly equal tiles, :func:`tile_bounds`) with ``tile_overlap``
    pixels of context on each side; ``tile`` None: the whole image (what the study does unless
    ``evaluation.tile`` is set: its numbers never depend on the memory a machine has free);
    ``tile`` ``"auto"`` (:data:`AUTO_TILE`, ``sfsr upscale`` without ``--tile``): the whole image
    when it fits in the memory available, else the largest tile that does
    (:func:`sfsr.memory.plan_tile`; one log line says so); a ``tile`` at least the image's size
    runs it whole. ``bf16``: bfloat16 autocast on the
    device (on a CPU without native bf16 it is emulated: correct, slower than float32). The model
    is moved to ``device``. Returns uint8 ``(H*scale) x (W*scale) x 3``. ``name`` labels the
    image in messages: not enough memory raises :class:`DataError` ``"<name>: ..."`` in one line.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise DataError(f"upscale_image expects a uint8 HxW or HxWxC image, got {image.dtype} {image.shape}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if model is None:
        return bicubic_upscale(image, scale, name=name)
    image = to_rgb(image)
    if image.shape[2] != 3:
        raise DataError(f"upscale_image expects gray or RGB, got {image.shape[2]} channels")
    if tile is not None and tile != AUTO_TILE and (isinstance(tile, str) or tile < 1):
        raise ConfigError(f"tile must be a positive number of LR pixels or {AUTO_TILE!r}, got {tile!r}")
    if tile_overlap < 0:
        raise ConfigError(f"tile_overlap must be >= 0, got {tile_overlap}")
    dev = torch.device(device)
    model.to(dev)
    h, w = image.shape[:2]
    s = int(scale)
    per_px = None
    if tile == AUTO_TILE:
        tile, per_px = _auto_tile(model, dev, h, w, s, tile_overlap, name)
    try:
        return _upscale_model(image, model, dev, s, tile, tile_overlap, bf16)
    except Exception as exc:
        if not memory.is_out_of_memory(exc):
            raise
        how = "whole" if tile is None or (tile >= h and tile >= w) else f"in tiles of {tile}"
        smaller = _smaller_tile(model, tile, h, w, s, tile_overlap, per_px, dev)
        fix = (f"try --tile {smaller}" if smaller else "free memory or use a machine with more")
        raise DataError(f"{name}: out of memory upscaling this {w}x{h} image x{s} {how} on {dev}; {fix}") from exc


def _auto_tile(model: nn.Module, dev: torch.device, h: int, w: int, s: int, overlap: int,
               name: str) -> tuple[int | None, int | None]:
    """(tile or None, bytes per LR pixel or None) for a pass without ``--tile``: the plan of
    :func:`sfsr.memory.plan_tile`, logged when it tiles; raises :class:`DataError` when nothing
    fits. (None, None) when the memory or the model's needs cannot be known."""
    try:  # first: the probe starts the thread pools, whose stacks count against ulimit -v
        per_px = memory.model_bytes_per_lr_pixel(memory.peak_values(model, dev), s)
    except Exception as exc:  # a model the 32x32 probe does not suit: run it as asked
        if memory.is_out_of_memory(exc):
            raise DataError(f"{name}: out of memory before upscaling; free memory or use a machine "
                            "with more") from exc
        log.debug("no memory estimate for %s (%s: %s)", type(model).__name__, type(exc).__name__, exc)
        return None, None
    available = memory.available_memory(dev)
    if available is None:
        return None, per_px
    host = memory.available_memory("cpu") if dev.type == "cuda" else None
    try:
        plan = memory.plan_tile(per_px, h, w, s, overlap, available, host)
    except memory.NotEnoughMemory as exc:
        p = exc.plan
        if exc.host_short:
            raise DataError(f"{name}: the x{s} result of this {w}x{h} image alone needs "
                            f"~{memory.format_bytes(memory.fixed_bytes(h, w, s))} of host memory, "
                            f"{memory.format_bytes(host or 0)} available; free memory or upscale a "
                            "smaller image") from None
        raise DataError(f"{name}: image {w}x{h} needs ~{memory.format_bytes(p.need_whole)} untiled and "
                        f"~{memory.format_bytes(p.need)} even in tiles of {memory.MIN_TILE}, "
                        f"{memory.format_bytes(p.available)} available on {dev}; free memory, or try "
                        f"anyway with --tile {memory.MIN_TILE}") from None
    if plan.tile is not None:
        log.warning("%s: image %dx%d needs ~%s untiled, %s available: tiling with --tile %d", name, w, h,
                    memory.format_bytes(plan.need_whole), memory.format_bytes(plan.available), plan.tile)
    return plan.tile, per_px


def _smaller_tile(model: nn.Module, tile: int | None, h: int, w: int, s: int, overlap: int,
                  per_px: int | None, dev: torch.device) -> int | None:
    """The tile to suggest after a pass ran out of memory: half the tile used (not below
    :data:`sfsr.memory.MIN_TILE`; None when it was that small already); after a whole-image pass
    the plan's tile for the memory available now (256 when that cannot be known)."""
    if tile is not None and (tile < h or tile < w):
        if tile <= memory.MIN_TILE:
            return None
        return max(memory.MIN_TILE, tile // 2 // memory.TILE_STEP * memory.TILE_STEP)
    try:
        available = memory.available_memory(dev)
        if per_px is None:
            per_px = memory.model_bytes_per_lr_pixel(memory.peak_values(model, dev), s)
        if available is not None:
            host = memory.available_memory("cpu") if dev.type == "cuda" else None
            plan = memory.plan_tile(per_px, h, w, s, overlap, available, host)
            if plan.tile is not None:
                return plan.tile
    except memory.NotEnoughMemory:
        return memory.MIN_TILE
    except Exception:  # no estimate: a fixed suggestion
        pass
    return min(256, max(memory.MIN_TILE, max(h, w) // 2 // memory.TILE_STEP * memory.TILE_STEP))


def _upscale_model(image: np.ndarray, model: nn.Module, dev: torch.device, s: int, tile: int | None,
                   tile_overlap: int, bf16: bool) -> np.ndarray:
    h, w = image.shape[:2]
    out = np.empty((h * s, w * s, 3), dtype=np.uint8)
    x = to_float(image)
    with eval_mode(model):
        with torch.inference_mode():
            if tile is None or (tile >= h and tile >= w):
                _quantize_into(out, _run_model(model, x.to(dev), s, bf16))
            else:
                for y0, y1 in tile_bounds(h, tile):
                    ya, yb = max(y0 - tile_overlap, 0), min(y1 + tile_overlap, h)
                    for x0, x1 in tile_bounds(w, tile):
                        xa, xb = max(x0 - tile_overlap, 0), min(x1 + tile_overlap, w)
                        y = _run_model(model, x[:, :, ya:yb, xa:xb].to(dev), s, bf16)
                        core = y[:, :, (y0 - ya) * s:(y1 - ya) * s, (x0 - xa) * s:(x1 - xa) * s]
                        del y
                        _quantize_into(out[y0 * s:y1 * s, x0 * s:x1 * s], core)
    return out


def bicubic_upscale(image: np.ndarray, scale: int, name: str = "image") -> np.ndarray:
    """:func:`sfsr.data.bicubic.imresize` ``(image, scale=scale)`` of a uint8 image, bit for bit, in
    bands of output rows: each band's rows pass uses the whole image's weights and taps for its
    rows (MATLAB's first pass, rows then columns for equal factors), then the columns pass, so every
    output value is computed from the same inputs by the same operations as in one piece; the
    float64 temporaries stay within :data:`BICUBIC_BAND_BYTES`. Refuses (:class:`DataError`, one
    line naming ``name``) when the result itself would not fit or an allocation fails."""
    from sfsr.data import bicubic as bc

    h, w = image.shape[:2]
    channels = image.shape[2] if image.ndim == 3 else 1
    try:
        out_shape, scales, order = bc._plan((h, w), scale, None)
    except ValueError as exc:
        raise DataError(f"{name}: {exc}") from None
    result = out_shape[0] * out_shape[1] * channels
    available = memory.available_memory("cpu")
    if available is not None and result + BICUBIC_BAND_BYTES > memory.BUDGET_FRACTION * available:
        raise DataError(f"{name}: the bicubic x{scale:g} result of this {w}x{h} image needs "
                        f"~{memory.format_bytes(result + BICUBIC_BAND_BYTES)}, "
                        f"{memory.format_bytes(available)} available; free memory or upscale a smaller image")
    try:
        if (image.dtype != np.uint8 or order != [0, 1]
                or any(bc._strided_plan(n, m, f) is not None for n, m, f in zip((h, w), out_shape, scales))):
            return imresize(image, scale=scale)  # not an upscale: no band form (not reached by sfsr upscale)
        rows_w, rows_i = bc._cached_contributions(h, out_shape[0], scales[0])
        cols_w, cols_i = bc._cached_contributions(w, out_shape[1], scales[1])
        out = np.empty(out_shape + image.shape[2:], dtype=np.uint8)
        per_row = 40 * channels * max(w, out_shape[1])  # float64 accumulator + temporaries
        band = max(1, BICUBIC_BAND_BYTES // per_row)
        for r0 in range(0, out_shape[0], band):
            r1 = min(out_shape[0], r0 + band)
            rows = bc._gather_pass_np(image, 0, rows_w[r0:r1], rows_i[r0:r1], True, np.float64)
            out[r0:r1] = bc._gather_pass_np(rows, 1, cols_w, cols_i, True, np.float64)
        return out
    except Exception as exc:
        if not memory.is_out_of_memory(exc):
            raise
        raise DataError(f"{name}: out of memory upscaling this {w}x{h} image with bicubic x{scale:g} "
                        f"(the result alone is {memory.format_bytes(result)}); free memory or upscale a "
                        "smaller image") from exc


#: Output values quantized per step of :func:`_quantize_into` (its float64 temporaries stay small).
_QUANTIZE_VALUES = 1 << 20


def _quantize_into(dst: np.ndarray, y: torch.Tensor) -> None:
    """:func:`sfsr.metrics.to_uint8` of the ``1x3xhxw`` model output ``y`` written into ``dst``
    (``h x w x 3`` uint8, a view of the preallocated output), a band of rows at a time: the same
    per-pixel arithmetic (float64 clamp, x255, round half away from zero), hence the same bytes,
    without a full-size float copy of the output (a float32 one on the host, several float64
    temporaries in ``to_uint8``)."""
    h, w = y.shape[2], y.shape[3]
    band = max(1, _QUANTIZE_VALUES // max(1, 3 * w))
    for r0 in range(0, h, band):
        r1 = min(h, r0 + band)
        q = to_uint8(y[0, :, r0:r1])
        dst[r0:r1] = q if q.ndim == 3 else q[:, :, None]


@contextlib.contextmanager
def _memory_errors(path: Path):
    """A failed allocation while reading, upscaling or writing ``path`` (one the pass did not
    describe itself) as one line naming it."""
    try:
        yield
    except Exception as exc:
        if not memory.is_out_of_memory(exc):
            raise
        raise DataError(f"{path}: out of memory reading, upscaling or writing this image; free memory "
                        "or try a smaller --tile N") from exc


def _plan_outputs(inputs: list[Path], output: Path, single: bool) -> list[Path]:
    if single:
        if output.is_dir() or output.suffix == "":
            return [output / f"{inputs[0].stem}.png"]
        if output.suffix.lower() != ".png":
            raise ConfigError(f"output {output} must be a .png file or a folder (outputs are PNG)")
        return [output]
    if output.exists() and not output.is_dir():
        raise ConfigError(f"input is a folder but output {output} is a file; give an output folder")
    return [output / f"{p.stem}.png" for p in inputs]


def upscale_path(input: str | os.PathLike, output: str | os.PathLike, *, scale: int | None = None,
                 checkpoint: str | os.PathLike | None = None, device: str = "auto",
                 tile: int | str | None = None, tile_overlap: int = 16, progress: bool = True,
                 bf16: bool = False, stems: Collection[str] | None = None) -> list[Path]:
    """Upscale an image file or every image of a folder; write ``<stem>.png`` (atomic writes).
    ``stems``: for a folder, only the images with these stems (all of them must be there).

    Without ``checkpoint``: bicubic (MATLAB-exact) at ``scale``. With ``checkpoint``: the
    generator it holds, at its own scale (``scale``, if given, must match it). ``output`` is a
    ``.png`` file or a folder for one input image, a folder for a folder. Returns written paths.
    """
    src = Path(input)
    dst = Path(output)
    for what, path in (("input", src), ("output", dst)):
        problem = path_problem(path)
        if problem:
            raise DataError(f"{what} {path} {problem}; fix or remove the link")
    if not src.exists():
        raise DataError(f"input not found: {src} (give an image file or a folder of images)")
    model = None
    dev = torch.device("cpu")
    if checkpoint is not None:
        from sfsr.models import load_generator  # only the model path needs the model code

        ckpt = Path(checkpoint)
        if not ckpt.is_file():
            raise DataError(f"checkpoint not found: {ckpt}")
        dev = resolve_device(device)
        model, ckpt_scale = load_generator(ckpt, dev)
        if getattr(model, "use_reference", False):
            raise ConfigError(f"{ckpt} is an SSEN (reference-based) generator; sfsr upscale takes "
                              "single-image generators; evaluate it with the refsr stage "
                              "(docs/refsr.md)")
        if scale is not None and int(scale) != int(ckpt_scale):
            raise ConfigError(f"--scale {scale} does not match the x{ckpt_scale} generator in {ckpt}; "
                              "leave --scale out (the checkpoint knows its scale) or use a matching "
                              "checkpoint")
        scale = int(ckpt_scale)
    else:
        if scale is None:
            raise ConfigError("give a scale for bicubic upscaling (e.g. --scale 4)")
    single = src.is_file()
    inputs = [src] if single else list_images(src, IMAGE_EXTENSIONS)
    if stems is not None and not single:
        wanted = {str(s) for s in stems}
        absent = sorted(wanted - {p.stem for p in inputs})
        if absent:
            raise DataError(f"{src} lacks {len(absent)} image(s) to upscale: {', '.join(absent[:5])}")
        inputs = [p for p in inputs if p.stem in wanted]
    if not inputs:
        raise DataError(f"no images in {src} ({', '.join(IMAGE_EXTENSIONS)})")
    stems = [p.stem for p in inputs]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise DataError(f"{src} holds several images with the same stem ({', '.join(dupes)}); outputs "
                        "are named <stem>.png, keep one of each")
    outputs = _plan_outputs(inputs, dst, single)
    clash = [o for i, o in zip(inputs, outputs) if os.path.realpath(o) == os.path.realpath(i)]
    if clash:
        raise ConfigError(f"output {clash[0]} would overwrite its input; choose another output path")
    if not single:
        check_output_folder(src, dst, [o.name for o in outputs])  # a file, the input's parent or inside it
    if single:
        with _memory_errors(src):
            sr = upscale_image(read_image(src), scale=scale, model=model, device=dev, tile=tile,
                               tile_overlap=tile_overlap, bf16=bf16, name=str(src))
            io.save_image(outputs[0], sr)
        return outputs
    # A folder: every output is made in a temporary sibling first, so a bad image half-way leaves
    # the output folder as it was (no partial results); then the files are moved in.
    tmp = io.make_temp_dir(dst, ".upscale")
    try:
        for src_path, dst_path in tqdm(list(zip(inputs, outputs)), desc=f"upscale x{scale}",
                                       disable=not progress):
            with _memory_errors(src_path):
                sr = upscale_image(read_image(src_path), scale=scale, model=model, device=dev, tile=tile,
                                   tile_overlap=tile_overlap, bf16=bf16, name=str(src_path))
                io.save_image(tmp / dst_path.name, sr)
                del sr
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    move_into_folder(tmp, dst, [o.name for o in outputs])  # only its own files; nothing deleted
    return outputs
