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

The per-dimension weights and indices are precomputed once (and cached). When they are the same
for every output pixel -- integer downscaling factors, bit for bit -- a pass is a strided 1-D filter
over the symmetric-padded axis (``_strided_plan``), computed in cache-sized bands on up to two
threads (:func:`resize_threads`, ``SFSR_RESIZE_THREADS``); otherwise (upscaling, non-integer
factors) a gather + weighted sum over the (few) kernel taps. Both forms do the same floating-point
operations in the same order (``acc = x_0 w_0; acc += x_k w_k``), so every path gives identical
bits. CPU tensors outside autograd and ``torch.compile`` run on the numpy kernels in their own
dtype (no oversubscribed intra-op pool); other tensors stay on their device (LR patches made on the
GPU during training).
"""

from __future__ import annotations

import functools
import math
import os
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


def _raw_contributions(in_length: int, out_length: int, scale: float,
                       antialiasing: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Weights (out_length x P, float64) and 0-based input indices *before mirroring* (may lie
    outside ``0..in_length-1``) of one dimension, with the taps that are zero for every output
    pixel dropped: MATLAB's ``contributions`` up to the symmetric padding."""
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
    keep = np.any(weights != 0, axis=0)
    raw = indices.astype(np.int64) - 1
    return np.ascontiguousarray(weights[:, keep]), np.ascontiguousarray(raw[:, keep])


def _mirror(raw: np.ndarray, in_length: int) -> np.ndarray:
    """MATLAB's symmetric padding of 0-based indices: ``[0..n-1, n-1..0]`` repeated."""
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])
    return mirror[np.mod(raw, mirror.size)]


def contributions(in_length: int, out_length: int, scale: float,
                  antialiasing: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Weights (out_length x P, float64) and 0-based input indices (out_length x P) of one
    dimension, as MATLAB's ``contributions`` computes them."""
    weights, raw = _raw_contributions(in_length, out_length, scale, antialiasing)
    return weights, np.ascontiguousarray(_mirror(raw, in_length))


class _Strided:
    """One pass whose weights are the same for every output pixel (integer downscaling factors):
    output ``i`` is ``sum_k w[k] * padded[start + step * i + offsets[k]]`` over the
    symmetric-padded input, a strided 1-D filter (``offsets``: the kept taps, increasing; MATLAB
    drops taps whose weight is zero everywhere, also inside the kernel, e.g. at distance 1/scale).
    ``pad_index`` gathers the padded axis (``None``: no padding needed)."""

    __slots__ = ("weights", "offsets", "start", "step", "pad_index", "exact_uint8")

    def __init__(self, weights: np.ndarray, offsets: tuple[int, ...], start: int, step: int,
                 pad_index: np.ndarray | None):
        self.weights, self.offsets, self.start = weights, offsets, start
        self.step, self.pad_index = step, pad_index
        self.exact_uint8 = _exact_on_uint8(weights)


def _exact_on_uint8(weights: np.ndarray) -> bool:
    """Whether ``sum_k w_k x_k`` is computed *exactly* in float64 for any uint8 ``x_k``, in any
    order of the additions (also with fused multiply-adds): true when every weight is a multiple of
    ``2**-e`` (dyadic, as for the factors 1/2, 1/4, 1/8) and ``255 * sum|w| * 2**e < 2**53``, so
    that every product and partial sum is an integer multiple of ``2**-e`` that float64 holds
    exactly. Then a matrix product gives the very bits of the tap-by-tap sum."""
    for e in range(0, 48):
        scaled = weights * (2.0 ** e)  # exact: a power of two
        if np.all(scaled == np.floor(scaled)):
            return bool(255.0 * np.sum(np.abs(weights)) * 2.0 ** e < 2.0 ** 52)
    return False


@functools.lru_cache(maxsize=256)
def _strided_plan(in_length: int, out_length: int, scale: float) -> _Strided | None:
    """The strided form of a pass when MATLAB's weights are identical (bit for bit) for every
    output pixel and the taps advance by a constant integer step; else ``None`` (general gather).
    Shared: nothing may write to its arrays."""
    weights, raw = _raw_contributions(in_length, out_length, scale)
    if not np.all(weights == weights[0]):
        return None
    steps = np.diff(raw[:, 0])
    step = int(steps[0]) if steps.size else 1
    if step < 1 or not np.all(steps == step):
        return None
    offsets = raw[0] - raw[0, 0]
    if not np.all(raw - raw[:, :1] == offsets):
        return None
    lo = max(0, -int(raw[0, 0]))
    hi = max(0, int(raw[-1, -1]) - (in_length - 1))
    pad_index = _mirror(np.arange(-lo, in_length + hi), in_length) if (lo or hi) else None
    return _Strided(np.ascontiguousarray(weights[0]), tuple(int(o) for o in offsets),
                    int(raw[0, 0]) + lo, step, pad_index)


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


#: float64 values of one band's accumulator (256 KiB): a band's temporaries stay in the L2 cache.
_BAND_VALUES = 1 << 15
#: below this many output values a pass runs on the calling thread (patches, small images).
_THREADED_MIN_VALUES = 1 << 17
_POOL: Any = None
_POOL_KEY: tuple[int, int] | None = None


def default_threads(env_var: str) -> int:
    """Threads for sfsr's numpy kernels (bicubic bands, SSIM bands): ``env_var`` if set, else the
    CPUs this process may use, at most 2, and 1 unless a core is free (1-minute load average below
    CPUs - 0.5): on the shared 2-core VM a second thread was slower than one at every load we saw
    (GIL hand-offs between threads the scheduler keeps preempting; docs/PERFORMANCE.md, "No
    collapse with a busy core"). Bands are handed out
    one at a time, so a thread on a busy core just takes fewer bands (no collapse, unlike a static
    split)."""
    env = os.environ.get(env_var)
    if env:
        return max(1, int(env))
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    n = max(1, min(2, n))
    if n > 1:
        try:
            if os.getloadavg()[0] >= n - 0.5:
                return 1
        except OSError:
            pass
    return n


def resize_threads() -> int:
    """Threads of one numpy resize pass (``SFSR_RESIZE_THREADS``; see :func:`default_threads`)."""
    return default_threads("SFSR_RESIZE_THREADS")


def _pool(threads: int) -> Any:
    """A thread pool per process (re-made after a fork: a forked child has no worker threads)."""
    global _POOL, _POOL_KEY
    key = (os.getpid(), threads)
    if _POOL_KEY != key:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(threads, thread_name_prefix="sfsr-imresize")
        _POOL_KEY = key
    return _POOL


def _run_bands(work: Any, starts: Any, out_values: int) -> None:
    threads = resize_threads() if out_values >= _THREADED_MIN_VALUES else 1
    if threads > 1 and len(starts) > 1:
        list(_pool(threads).map(work, starts))
    else:
        for r0 in starts:
            work(r0)


_MM_BLOCK = 4  # outputs per block of the matrix form (a 4 x (4 step + reach) band matrix)
_MM_MNK = 200_000  # M*N*K of one product: OpenBLAS stays single-threaded below 262144 (its default)


def _round_into(acc: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = _round_uint8_np(acc)``, in place (``acc`` is overwritten)."""
    r = np.floor(acc)
    acc -= r  # the fraction: exact
    r += acc >= 0.5
    np.clip(r, 0, 255, out=r)
    out[...] = r


def _matrix_pass_uint8(x: np.ndarray, dim: int, plan: _Strided, out_len: int) -> np.ndarray:
    """A strided pass on uint8 data whose sums are exact in float64 (:func:`_exact_on_uint8`), as
    matrix products: blocks of ``_MM_BLOCK`` outputs are one small band matrix times a window of
    input rows (a strided view, no copy), in bands of rows converted to float64 in cache, on up to
    two threads. Exact sums make the result bit-identical to the tap-by-tap form."""
    from numpy.lib.stride_tricks import as_strided

    xs = np.swapaxes(x, 0, 1) if dim == 1 else x
    xp = np.take(xs, plan.pad_index, axis=0) if plan.pad_index is not None else xs
    rest = xp.shape[1:]
    n = int(np.prod(rest))
    xp2 = xp.reshape(xp.shape[0], n)
    m, step, offs = _MM_BLOCK, plan.step, plan.offsets
    reach = offs[-1] + 1
    k_rows = step * (m - 1) + reach
    t = np.zeros((m, k_rows))
    for i in range(m):
        t[i, [step * i + o for o in offs]] = plan.weights
    cols = max(64, _MM_MNK // (m * k_rows))  # columns per product (the pool threads, not BLAS's)
    blocks = -(-out_len // m)
    per_band = max(1, (4 * _BAND_VALUES // max(1, min(n, cols))) // (step * m))
    out = np.empty((blocks * m, n), dtype=np.uint8)
    tasks = [(b0, c0) for b0 in range(0, blocks, per_band) for c0 in range(0, n, cols)]

    def work(task: tuple[int, int]) -> None:
        b0, c0 = task
        b1 = min(blocks, b0 + per_band)
        c1 = min(n, c0 + cols)
        first = plan.start + step * m * b0
        rows = step * (m * (b1 - b0) - 1) + reach
        band = np.zeros((rows, c1 - c0))
        have = xp2[first:first + rows, c0:c1]  # the last block may run past the end: zeros there
        band[:have.shape[0]] = have
        win = as_strided(band, shape=(b1 - b0, k_rows, c1 - c0),
                         strides=(band.strides[0] * step * m, band.strides[0], band.strides[1]),
                         writeable=False)
        acc = np.matmul(t, win).reshape((b1 - b0) * m, c1 - c0)
        _round_into(acc, out[b0 * m:b1 * m, c0:c1])

    _run_bands(work, tasks, out.size)
    res = out[:out_len].reshape((out_len,) + rest)
    return np.ascontiguousarray(np.swapaxes(res, 0, 1)) if dim == 1 else res


def _strided_pass_np(x: np.ndarray, dim: int, plan: _Strided, out_len: int, is_uint8: bool,
                     work_dtype: Any) -> np.ndarray:
    """One pass as a strided filter, in bands of output (``dim`` 0) or of rows (``dim`` 1), with the
    arithmetic of the gather path: ``acc = x_0 w_0``, then ``acc += x_k w_k`` in tap order, in
    ``work_dtype``; uint8: MATLAB's rounding, stored as uint8 (exact: the values are integers)."""
    if is_uint8 and plan.exact_uint8:
        return _matrix_pass_uint8(x, dim, plan, out_len)
    xp = np.take(x, plan.pad_index, axis=dim) if plan.pad_index is not None else x
    w = plan.weights.astype(work_dtype)
    offs, step, start = plan.offsets, plan.step, plan.start
    reach = offs[-1] + 1  # input positions one output's taps span
    shape = list(x.shape)
    shape[dim] = out_len
    out = np.empty(shape, dtype=np.uint8 if is_uint8 else work_dtype)
    if dim == 0:
        band = max(1, _BAND_VALUES // max(1, int(np.prod(shape[1:]))))
        starts = range(0, out_len, band)
    else:
        band = max(1, _BAND_VALUES // max(1, int(np.prod(shape[1:]))))
        starts = range(0, shape[0], band)

    def work(r0: int) -> None:
        if dim == 0:
            r1 = min(out_len, r0 + band)
            span = step * (r1 - r0 - 1) + 1
            src = xp[start + step * r0: start + step * r0 + span + reach - 1].astype(work_dtype)

            def tap(k: int) -> np.ndarray:
                return src[offs[k]:offs[k] + span:step]
        else:
            r1 = min(shape[0], r0 + band)
            span = step * (out_len - 1) + 1
            src = xp[r0:r1, start:start + span + reach - 1].astype(work_dtype)

            def tap(k: int) -> np.ndarray:
                return src[:, offs[k]:offs[k] + span:step]
        acc = np.multiply(tap(0), w[0])
        tmp = np.empty_like(acc)
        for k in range(1, len(offs)):
            np.multiply(tap(k), w[k], out=tmp)
            acc += tmp
        if is_uint8:
            _round_into(acc, out[r0:r1])
        else:
            out[r0:r1] = acc

    _run_bands(work, starts, out.size)
    return out


def _gather_pass_np(x: np.ndarray, dim: int, weights: np.ndarray, indices: np.ndarray,
                    is_uint8: bool, work_dtype: Any) -> np.ndarray:
    """One pass in the general form (weights that vary per output pixel): a gather + weighted sum
    over the (few) kernel taps, vectorised over all pixels."""
    moved = np.moveaxis(x, dim, 0)
    w = weights.astype(work_dtype)
    wshape = (w.shape[0],) + (1,) * (moved.ndim - 1)
    acc = w[:, 0].reshape(wshape) * moved[indices[:, 0]].astype(work_dtype)
    for k in range(1, w.shape[1]):  # loop over kernel taps only (<= 34)
        acc += w[:, k].reshape(wshape) * moved[indices[:, k]].astype(work_dtype)
    if is_uint8:
        acc = _round_uint8_np(acc).astype(np.uint8)
    return np.moveaxis(acc, 0, dim)


def _resize_np_core(image: np.ndarray, out_shape: tuple[int, int], scales: tuple[float, float],
                    order: list[int], work_dtype: Any) -> np.ndarray:
    """Both passes on an ``HxW[xC...]`` array (uint8: rounded after each pass, else never)."""
    is_uint8 = image.dtype == np.uint8
    x = image
    for dim in order:
        in_len = x.shape[dim]
        plan = _strided_plan(in_len, out_shape[dim], scales[dim])
        if plan is not None:
            x = _strided_pass_np(x, dim, plan, out_shape[dim], is_uint8, work_dtype)
        else:
            weights, indices = _cached_contributions(in_len, out_shape[dim], scales[dim])
            x = _gather_pass_np(x, dim, weights, indices, is_uint8, work_dtype)
    return x


def _resize_numpy(image: np.ndarray, scale: float | None,
                  output_shape: tuple[int, int] | None) -> np.ndarray:
    if image.ndim not in (2, 3):
        raise ValueError(f"imresize: numpy input must be HxW or HxWxC, got shape {image.shape}")
    is_uint8 = image.dtype == np.uint8
    if not (is_uint8 or np.issubdtype(image.dtype, np.floating)):
        raise TypeError(f"imresize: numpy input must be uint8 or floating point, got {image.dtype}")
    out_shape, scales, order = _plan(image.shape[:2], scale, output_shape)
    x = _resize_np_core(image, out_shape, scales, order, np.float64)
    if is_uint8:
        return x
    return x.astype(image.dtype, copy=False)


def _torch_on_numpy(image: Any) -> bool:
    """Whether a torch tensor is resized by the numpy kernels: CPU tensors outside autograd and
    outside ``torch.compile`` tracing. They then run on at most :func:`resize_threads` threads
    instead of torch's intra-op pool, with the same arithmetic (same dtype, same order)."""
    import torch

    if image.device.type != "cpu" or image.requires_grad:
        return False
    compiler = getattr(torch, "compiler", None)
    return not (compiler is not None and compiler.is_compiling())


def _resize_torch(image: Any, scale: float | None, output_shape: tuple[int, int] | None,
                  native: bool | None = None) -> Any:
    """``native=None``: CPU tensors go through the numpy kernels (:func:`_torch_on_numpy`);
    ``True`` forces the torch kernels (GPU, autograd, compile; benchmarks compare both)."""
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
    if native is None:
        native = not _torch_on_numpy(image)
    if not native:
        lead = tuple(image.shape[:-2])
        h, w = image.shape[-2:]
        src = image.detach().reshape(-1, h, w)
        if src.dtype in (torch.float16, torch.bfloat16):
            src = src.float()
        arr = src.numpy().transpose(1, 2, 0)  # H x W x N view: the passes run on the two first axes
        np_work = np.float64 if work_dtype == torch.float64 else np.float32
        out = _resize_np_core(arr, out_shape, scales, order, np_work)
        res = torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))
        return res.reshape(*lead, *out_shape).to(image.dtype)
    x = image.to(work_dtype)
    for dim in order:
        axis = x.ndim - 2 + dim
        plan = _strided_plan(x.shape[axis], out_shape[dim], scales[dim])
        if plan is not None:
            if plan.pad_index is not None:
                x = x.index_select(axis, torch.as_tensor(plan.pad_index, dtype=torch.long,
                                                         device=x.device))
            w = torch.as_tensor(plan.weights, dtype=work_dtype, device=x.device)
            span = plan.step * (out_shape[dim] - 1) + 1

            def tap(k: int) -> Any:
                return x.narrow(axis, plan.start + plan.offsets[k], span)[(slice(None),) * axis
                                                            + (slice(None, None, plan.step),)]

            acc = tap(0) * w[0]
            for k in range(1, w.shape[0]):
                acc = acc + tap(k) * w[k]
        else:
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
