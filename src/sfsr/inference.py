"""Upscaling images with MATLAB-exact bicubic interpolation or a trained generator.

A generator always sees a float RGB ``1x3xHxW`` tensor in [0, 1] (gray images are replicated to
three channels) and its output is quantized with :func:`sfsr.metrics.to_uint8` (clamp, x255,
round half away from zero), so a saved PNG holds exactly the pixels the metrics evaluate. Large
images can be processed in overlapping LR tiles (each axis split into nearly equal tiles of at most
``tile`` pixels): each tile is extended by ``tile_overlap`` LR pixels on every side, run through the
model, and only its core is kept, so the result equals the whole-image result whenever the model's
receptive-field radius is at most ``tile_overlap`` LR pixels (up to float rounding: within one grey
level).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from sfsr import io
from sfsr.data.bicubic import imresize
from sfsr.data.images import DEFAULT_EXTENSIONS as IMAGE_EXTENSIONS
from sfsr.data.images import list_images, read_image, to_rgb
from sfsr.errors import ConfigError, DataError, path_problem
from sfsr.metrics import to_uint8
from sfsr.outputs import check_output_folder
from sfsr.tensors import eval_mode, resolve_device, to_float  # resolve_device: public here too



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


def tile_bounds(n: int, tile: int) -> list[tuple[int, int]]:
    """Split ``n`` pixels into ``ceil(n / tile)`` nearly equal tiles (sizes differ by at most one,
    each at most ``tile``) as ``(start, stop)`` pairs: 510 with tiles of 256 is 255 + 255, not 256 +
    254, and 339 is 169 + 170, not 256 + 83. The same number of tiles as fixed steps of ``tile``,
    with the largest tile (which sets the peak memory) no larger and usually smaller."""
    count = -(-n // tile)
    cuts = [i * n // count for i in range(count + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def upscale_image(image: np.ndarray, *, scale: int, model: nn.Module | None = None,
                  device: str | torch.device = "cpu", tile: int | None = None,
                  tile_overlap: int = 16, bf16: bool = False) -> np.ndarray:
    """Upscale one uint8 image by ``scale``.

    ``model=None``: MATLAB-exact bicubic (:func:`sfsr.data.bicubic.imresize`), gray stays gray.
    With a model: the image is fed as float RGB in [0, 1] (gray replicated), under
    ``torch.inference_mode`` in eval mode, optionally in overlapping LR tiles of at most ``tile``
    pixels (each axis split into nearly equal tiles, :func:`tile_bounds`) with ``tile_overlap``
    pixels of context on each side; ``bf16``: bfloat16 autocast on the device (on a CPU without
    native bf16 it is emulated: correct, slower than float32). The model is moved to ``device``. Returns uint8
    ``(H*scale) x (W*scale) x 3``.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise DataError(f"upscale_image expects a uint8 HxW or HxWxC image, got {image.dtype} {image.shape}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if model is None:
        return imresize(image, scale=scale)
    image = to_rgb(image)
    if image.shape[2] != 3:
        raise DataError(f"upscale_image expects gray or RGB, got {image.shape[2]} channels")
    if tile is not None and tile < 1:
        raise ConfigError(f"tile must be a positive number of LR pixels, got {tile}")
    if tile_overlap < 0:
        raise ConfigError(f"tile_overlap must be >= 0, got {tile_overlap}")
    dev = torch.device(device)
    model.to(dev)
    x = to_float(image)
    h, w = image.shape[:2]
    s = int(scale)
    out = np.empty((h * s, w * s, 3), dtype=np.uint8)
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
                 method: str = "bicubic", checkpoint: str | os.PathLike | None = None,
                 device: str = "auto", tile: int | None = None, tile_overlap: int = 16,
                 progress: bool = True, bf16: bool = False) -> list[Path]:
    """Upscale an image file or every image of a folder; write ``<stem>.png`` (atomic writes).

    Without ``checkpoint``: ``method`` (only ``bicubic``) at ``scale``. With ``checkpoint``: the
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
        if scale is not None and int(scale) != int(ckpt_scale):
            raise ConfigError(f"--scale {scale} does not match the x{ckpt_scale} generator in {ckpt}; "
                              "leave --scale out (the checkpoint knows its scale) or use a matching "
                              "checkpoint")
        scale = int(ckpt_scale)
    else:
        if method != "bicubic":
            raise ConfigError(f"unknown upscaling method {method!r}; use 'bicubic' or give a checkpoint")
        if scale is None:
            raise ConfigError("give a scale for bicubic upscaling (e.g. --scale 4)")
    single = src.is_file()
    inputs = [src] if single else list_images(src, IMAGE_EXTENSIONS)
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
        sr = upscale_image(read_image(src), scale=scale, model=model, device=dev, tile=tile,
                           tile_overlap=tile_overlap, bf16=bf16)
        io.save_image(outputs[0], sr)
        return outputs
    # A folder: every output is made in a temporary sibling first, so a bad image half-way leaves
    # the output folder as it was (no partial results); then the files are moved in.
    tmp = io.make_temp_dir(dst, ".upscale")
    try:
        for src_path, dst_path in tqdm(list(zip(inputs, outputs)), desc=f"upscale x{scale}",
                                       disable=not progress):
            sr = upscale_image(read_image(src_path), scale=scale, model=model, device=dev, tile=tile,
                               tile_overlap=tile_overlap, bf16=bf16)
            io.save_image(tmp / dst_path.name, sr)
        if not dst.exists():
            os.replace(tmp, dst)
        else:
            for dst_path in outputs:
                os.replace(tmp / dst_path.name, dst_path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return outputs
