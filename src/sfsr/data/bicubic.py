"""MATLAB-exact bicubic ``imresize`` for numpy arrays and torch tensors.

Reproduces MATLAB's ``imresize(img, scale, 'bicubic')`` (default antialiasing) bit for bit on uint8
images, which is how the SR benchmarks' LR images were made:

* cubic convolution kernel with a = -0.5 (Keys), support 4 pixels;
* when downscaling, the kernel is stretched by 1/scale (antialiasing) and scaled by ``scale``;
* output pixel ``x`` (1-based) maps to input coordinate ``u = x/scale + 0.5*(1 - 1/scale)``;
* weights are normalised to sum 1 per output pixel; out-of-range taps are mirrored
  (symmetric padding: ``[1..n, n..1]`` repeated), taps whose weight is zero for every output pixel
  are dropped;
* the two 1-D passes run in MATLAB's order: the dimension with the smaller scale factor first
  (ties: rows first);
* uint8 input: each pass accumulates in float64 and converts back to uint8 (round half away from
  zero, saturate to 0..255) before the next pass; float input is never rounded;
* output size ``ceil(in * scale)`` when a scale is given.

The per-dimension weights and indices are precomputed once; each pass is a gather + weighted sum
over the (few) kernel taps, vectorised over all pixels. Torch tensors stay on their device so LR
patches can be made on the GPU during training.
"""

from __future__ import annotations

import functools
import math
import sys
from typing import Any

import numpy as np

KERNEL_WIDTH = 4.0  # support of the cubic kernel (MATLAB: 4)


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic convolution kernel with a = -0.5, exactly as MATLAB's ``cubic``."""
    absx = np.abs(x)
    absx2 = absx * absx
    absx3 = absx2 * absx
    return ((1.5 * absx3 - 2.5 * absx2 + 1.0) * (absx <= 1)
            + (-0.5 * absx3 + 2.5 * absx2 - 4.0 * absx + 2.0) * ((absx > 1) & (absx <= 2)))


def contributions(in_length: int, out_length: int, scale: float,
                  antialiasing: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Weights (out_length x P, float64) and 0-based input indices (out_length x P) of one
    dimension, as MATLAB's ``contributions`` computes them."""
    if in_length < 1 or out_length < 1:
        raise ValueError(f"imresize: lengths must be >= 1, got in={in_length}, out={out_length}")
    kernel_width = KERNEL_WIDTH
    if scale < 1 and antialiasing:
        def kernel(x: np.ndarray) -> np.ndarray:
            return scale * _cubic(scale * x)
        kernel_width = kernel_width / scale
    else:
        kernel = _cubic
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    taps = int(math.ceil(kernel_width)) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]  # 1-based, may be out of range
    weights = kernel(u[:, None] - indices)
    weights = weights / np.sum(weights, axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])
    indices = mirror[np.mod(indices.astype(np.int64) - 1, mirror.size)]
    keep = np.any(weights != 0, axis=0)
    return np.ascontiguousarray(weights[:, keep]), np.ascontiguousarray(indices[:, keep])


@functools.lru_cache(maxsize=256)
def _cached_contributions(in_length: int, out_length: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`contributions` memoised for the torch path, which resizes many same-sized patches
    (on-the-fly LR batches, the residual base of every generator forward). The arrays are
    shared (on CPU also with the tensors made from them): nothing may write to them."""
    return contributions(in_length, out_length, scale)


def _plan(in_shape: tuple[int, int], scale: float | None,
          output_shape: tuple[int, int] | None) -> tuple[tuple[int, int], tuple[float, float], list[int]]:
    """Output shape, per-dimension scale and MATLAB's pass order (0 = rows, 1 = columns)."""
    if (scale is None) == (output_shape is None):
        raise ValueError("imresize: give exactly one of scale or output_shape")
    if scale is not None:
        scale = float(scale)
        if not scale > 0:
            raise ValueError(f"imresize: scale must be > 0, got {scale}")
        scales = (scale, scale)
        out_shape = (int(math.ceil(in_shape[0] * scale)), int(math.ceil(in_shape[1] * scale)))
    else:
        out_shape = (int(output_shape[0]), int(output_shape[1]))
        if min(out_shape) < 1:
            raise ValueError(f"imresize: output_shape must be positive, got {output_shape}")
        scales = (out_shape[0] / in_shape[0], out_shape[1] / in_shape[1])
    order = sorted(range(2), key=lambda d: scales[d])  # stable: ties keep rows first
    return out_shape, scales, order


def _round_uint8_np(x: np.ndarray) -> np.ndarray:
    """MATLAB's double -> uint8: round half away from zero, saturate (kept as float64)."""
    r = np.floor(x)
    r += (x - r) >= 0.5  # x - floor(x) is exact, unlike floor(x + 0.5)
    return np.clip(r, 0, 255)


def _resize_numpy(image: np.ndarray, scale: float | None,
                  output_shape: tuple[int, int] | None) -> np.ndarray:
    if image.ndim not in (2, 3):
        raise ValueError(f"imresize: numpy input must be HxW or HxWxC, got shape {image.shape}")
    is_uint8 = image.dtype == np.uint8
    if not (is_uint8 or np.issubdtype(image.dtype, np.floating)):
        raise TypeError(f"imresize: numpy input must be uint8 or floating point, got {image.dtype}")
    out_shape, scales, order = _plan(image.shape[:2], scale, output_shape)
    x = image.astype(np.float64)
    for dim in order:
        weights, indices = contributions(x.shape[dim], out_shape[dim], scales[dim])
        moved = np.moveaxis(x, dim, 0)
        wshape = (weights.shape[0],) + (1,) * (moved.ndim - 1)
        acc = weights[:, 0].reshape(wshape) * moved[indices[:, 0]]
        for k in range(1, weights.shape[1]):  # loop over kernel taps only (<= 34)
            acc += weights[:, k].reshape(wshape) * moved[indices[:, k]]
        if is_uint8:
            acc = _round_uint8_np(acc)
        x = np.moveaxis(acc, 0, dim)
    if is_uint8:
        return x.astype(np.uint8)
    return x.astype(image.dtype, copy=False)


def _resize_torch(image: Any, scale: float | None, output_shape: tuple[int, int] | None) -> Any:
    import torch

    if image.ndim < 2:
        raise ValueError(f"imresize: torch input must be (..., H, W), got shape {tuple(image.shape)}")
    is_uint8 = image.dtype == torch.uint8
    if is_uint8:
        work_dtype = torch.float64  # MATLAB accumulates in double
    elif image.dtype in (torch.float64, torch.float32):
        work_dtype = image.dtype
    elif image.dtype in (torch.float16, torch.bfloat16):
        work_dtype = torch.float32
    else:
        raise TypeError(f"imresize: torch input must be uint8 or floating point, got {image.dtype}")
    out_shape, scales, order = _plan(tuple(image.shape[-2:]), scale, output_shape)
    x = image.to(work_dtype)
    for dim in order:
        axis = x.ndim - 2 + dim
        weights, indices = _cached_contributions(x.shape[axis], out_shape[dim], scales[dim])
        w = torch.as_tensor(weights, dtype=work_dtype, device=x.device)
        idx = torch.as_tensor(indices, dtype=torch.long, device=x.device)
        wshape = [1] * x.ndim
        wshape[axis] = -1
        acc = x.index_select(axis, idx[:, 0]) * w[:, 0].view(wshape)
        for k in range(1, w.shape[1]):  # loop over kernel taps only (<= 34)
            acc = acc + x.index_select(axis, idx[:, k]) * w[:, k].view(wshape)
        if is_uint8:
            r = torch.floor(acc)
            acc = torch.clamp(r + ((acc - r) >= 0.5).to(work_dtype), 0, 255)
        x = acc
    return x.to(image.dtype)


def imresize(image: Any, scale: float | None = None,
             output_shape: tuple[int, int] | None = None) -> Any:
    """MATLAB-exact bicubic resize (antialiased when downscaling).

    ``image``: numpy HxW / HxWxC (uint8 -> uint8 with MATLAB's per-pass rounding; float ->
    same float dtype, computed in float64, never rounded) or a torch tensor (..., H, W) on any
    device (uint8 -> uint8, computed in float64; float32/float64 computed in their own precision;
    float16/bfloat16 computed in float32). Give exactly one of ``scale`` (e.g. ``1/4``; output
    ``ceil(in*scale)``) or ``output_shape`` ``(H, W)``. Downscale an HR image with
    ``imresize(modcrop(hr, s), 1/s)``.
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(image, torch.Tensor):
        return _resize_torch(image, scale, output_shape)
    return _resize_numpy(np.asarray(image), scale, output_shape)


def modcrop(image: Any, scale: int) -> Any:
    """Crop the bottom/right so height and width are multiples of ``scale``.

    numpy: HxW or HxWxC; torch: (..., H, W)."""
    scale = int(scale)
    if scale < 1:
        raise ValueError(f"modcrop: scale must be >= 1, got {scale}")
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(image, torch.Tensor):
        h, w = image.shape[-2:]
        return image[..., : h - h % scale, : w - w % scale]
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"modcrop: numpy input must be HxW or HxWxC, got shape {image.shape}")
    h, w = image.shape[:2]
    return image[: h - h % scale, : w - w % scale]
