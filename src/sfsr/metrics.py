"""The project's single implementation of image-quality and classification metrics.

Every PSNR/SSIM number the project reports is computed by :func:`image_metrics`, under the
convention named by :data:`CONVENTION` (described field by field in :data:`CONVENTION_INFO` and in
``docs/metrics.md``). It is the convention of the published SR tables (SRCNN, VDSR, SRResNet,
EDSR...), computed in MATLAB:

* SR output is clamped to [0, 1], scaled by 255 and rounded half away from zero to uint8 before any
  metric (:func:`to_uint8`);
* the HR image is cropped to a multiple of the scale (``modcrop``) and the SR image must then have
  exactly its size;
* ``scale`` pixels are shaved from every border;
* PSNR and SSIM are computed on the luma Y of ITU-R BT.601 as MATLAB's ``rgb2ycbcr`` defines it
  (``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255`` on 0-255 values), kept in float64, not
  rounded; a grayscale HR image is compared on its own gray channel (see :func:`image_metrics`);
* SSIM is Wang et al.'s ``ssim_index``: 11x11 Gaussian window with sigma 1.5, ``K1 = 0.01``,
  ``K2 = 0.03``, ``L = 255``, averaged over the *valid* region (no padding).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from sfsr.data.bicubic import default_threads, modcrop
from sfsr.errors import DataError

if TYPE_CHECKING:  # torch is imported only where a tensor is handled (light jobs stay torch-free)
    import torch

CONVENTION = "y-bt601-matlab;gray-own;shave=scale;modcrop;ssim=gauss11-1.5-valid;uint8-round;v1"
"""Versioned name of the metric convention; stored in every result row. Bump ``v1`` on any change."""

CONVENTION_INFO: dict[str, Any] = {
    "name": CONVENTION,
    "quantization": "SR output clamped to [0,1], x255, rounded half away from zero to uint8",
    "crop": "HR cropped to a multiple of the scale (modcrop); SR must match its size exactly",
    "shave": "scale pixels removed from every border before PSNR and SSIM",
    "channel_rgb": "Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 on 0-255 values, float64, not "
                   "rounded (MATLAB rgb2ycbcr, BT.601 studio range)",
    "channel_gray": "a grayscale HR image is compared on its own gray values (0-255); the SR "
                    "image's gray value is its full-range luma 0.299 R + 0.587 G + 0.114 B, or the "
                    "SR image itself when it is single-channel",
    "psnr": "10 log10(255^2 / MSE) on the shaved channel, float64",
    "ssim": "Wang et al. ssim_index: 11x11 Gaussian window sigma 1.5, K1=0.01, K2=0.03, L=255, "
            "mean over the valid region (no padding)",
    "psnr_rgb": "PSNR over the three shaved RGB channels together (gray HR replicated to RGB)",
}

def _is_tensor(x: Any) -> bool:
    """Whether ``x`` is a torch tensor, without importing torch (a tensor implies torch is loaded)."""
    torch_mod = sys.modules.get("torch")
    return torch_mod is not None and isinstance(x, torch_mod.Tensor)


_Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])
_SSIM_SIGMA = 1.5
_SSIM_RADIUS = 5  # 11x11 window


def to_uint8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """Quantize a float image in [0, 1] to uint8 exactly as a saved SR output would be.

    Torch tensors are channel-first (``CHW`` or ``1CHW``); numpy arrays are channel-last (``HWC``)
    or ``HW``. Values are computed in float64: clamp to [0, 1], multiply by 255, round half away
    from zero. Returns a uint8 numpy ``HxWxC`` array (``HxW`` for a single channel).
    """
    if _is_tensor(x):
        t = x.detach().cpu().double()
        if t.ndim == 4:
            if t.shape[0] != 1:
                raise ValueError(f"to_uint8 takes one image, got a batch of shape {tuple(t.shape)}")
            t = t[0]
        if t.ndim == 3:
            t = t.permute(1, 2, 0)
        elif t.ndim != 2:
            raise ValueError(f"to_uint8 expects CHW, 1CHW or HW tensors, got {tuple(t.shape)}")
        arr = t.numpy()
    else:
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim not in (2, 3):
            raise ValueError(f"to_uint8 expects HWC or HW arrays, got shape {arr.shape}")
    arr = np.floor(np.clip(arr, 0.0, 1.0) * 255.0 + 0.5)  # non-negative: half away from zero
    out = arr.astype(np.uint8)
    if out.ndim == 3 and out.shape[2] == 1:
        out = out[:, :, 0]
    return out


def _as_rgb_array(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {img.shape}")
    return img.astype(np.float64)


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma as MATLAB ``rgb2ycbcr`` defines it, in float64 and not rounded.

    ``img`` holds 0-255 values (uint8 or float) as ``HxWx3`` RGB. Returns ``HxW`` float64 in
    [16, 235]: ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255``.
    """
    y = _as_rgb_array(img) @ _Y_WEIGHTS
    y += 16.0  # in place: the same sum as 16 + y, one temporary less
    return y


def rgb_to_gray(img: np.ndarray) -> np.ndarray:
    """Full-range BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` (0-255, float64, not rounded).

    Used to compare an RGB SR output with a grayscale HR image (MATLAB ``rgb2gray`` without the
    rounding)."""
    return _as_rgb_array(img) @ _LUMA_WEIGHTS


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB between two same-shaped arrays (``inf`` when equal)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ: {a.shape} vs {b.shape}")
    mse = np.mean((a - b) ** 2)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / mse))


def _psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """:func:`psnr` of two uint8 arrays, the same float: the squared errors are integers, so their
    sum is exact in float64 as in integers (every partial sum is below 2**53) and the MSE is that
    sum over the count, as ``np.mean`` computes it. The squares are taken in 16 bits (no BLAS:
    OpenBLAS's spinning threads slowed the SSIM that follows; docs/PERFORMANCE.md, "Metrics, issue 14
    item 3")."""
    d = a.astype(np.int16)
    d -= b
    np.abs(d, out=d)
    sq = d.view(np.uint16)  # |error| <= 255, so its square (<= 65025) fits in 16 bits
    sq *= sq
    total = int(sq.sum(dtype=np.uint64))
    if total == 0:
        return float("inf")
    mse = np.float64(total) / np.float64(sq.size)
    return float(10.0 * np.log10(255.0**2 / mse))


def _gaussian_window_1d(sigma: float = _SSIM_SIGMA, radius: int = _SSIM_RADIUS) -> np.ndarray:
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-(x**2) / (2.0 * sigma**2))
    return w / w.sum()  # fspecial('gaussian', 11, 1.5) is the outer product of this vector


def _filter_valid(img: np.ndarray, w: np.ndarray) -> np.ndarray:
    """MATLAB ``filter2(w' * w, img, 'valid')`` for a symmetric separable window, with
    ``scipy.ndimage`` (the definition :func:`ssim` reproduces bit for bit; kept for the tests)."""
    from scipy import ndimage

    r = (len(w) - 1) // 2
    out = ndimage.correlate1d(img, w, axis=0, mode="constant")
    out = ndimage.correlate1d(out, w, axis=1, mode="constant")
    return out[r:-r, r:-r]


def _flat_pass(x: np.ndarray, w: np.ndarray, step: int, n: int, acc: np.ndarray, tmp: np.ndarray) -> None:
    """1-D correlation of the rows of ``x`` (a stack of maps, each flattened) with a symmetric
    window whose taps are ``step`` elements apart, into ``acc`` (``x.shape[0] x n``), in the exact
    floating-point order of ``scipy.ndimage.correlate1d`` (centre tap, then the outer pairs first:
    ``acc = x[c] w[r]; acc += (x[c-j] + x[c+j]) w[r-j]`` for ``j = r..1``), so every output is
    bit-identical to it. ``tmp`` is scratch of ``acc``'s shape.

    ``step`` = the row length filters along columns; ``step`` = 1 filters along rows of the
    flattened maps: outputs whose window straddles two rows are computed too and thrown away by
    the caller (2r of every row), which keeps every ufunc call one long contiguous loop (short
    strided row slices ran at about half the speed)."""
    r = (len(w) - 1) // 2

    def tap(k: int) -> np.ndarray:
        return x[:, k * step:k * step + n]

    np.multiply(tap(r), w[r], out=acc)
    for j in range(r, 0, -1):
        np.add(tap(r - j), tap(r + j), out=tmp)
        tmp *= w[r - j]
        acc += tmp


_SSIM_WINDOW = _gaussian_window_1d()
_SSIM_BLOCK_VALUES = 1 << 15  # values per map and band: 32k was the fastest of 8k-64k on the 2-core AMD EPYC
# VM (1 MiB L2 per core; 8k on issue 14's Intel VM): docs/PERFORMANCE.md, issue 26 item 3. The band
# size does not change a value: every output is computed the same way in any band.


def _ssim_map_rows(a: np.ndarray, b: np.ndarray, out: np.ndarray, r0: int, r1: int,
                   c1: float, c2: float) -> None:
    """Rows ``r0:r1`` of the valid SSIM map of ``a`` and ``b`` into ``out``: the same arithmetic
    as filtering the whole images, one cache-sized band of rows at a time."""
    w = _SSIM_WINDOW
    pad = 2 * _SSIM_RADIUS
    ab = a[r0:r1 + pad]
    bb = b[r0:r1 + pad]
    m, cols = r1 - r0, ab.shape[1]
    maps = np.empty((5,) + ab.shape)
    maps[0] = ab
    maps[1] = bb
    np.multiply(ab, ab, out=maps[2])
    np.multiply(bb, bb, out=maps[3])
    np.multiply(ab, bb, out=maps[4])
    flat = maps.reshape(5, -1)
    n = m * cols
    rows = np.empty((5, n))
    tmp = np.empty((5, n))
    _flat_pass(flat, w, cols, n, rows, tmp)  # along columns: m x cols per map
    filt = np.empty((5, n))
    valid = n - pad  # the flat outputs up to the last valid one
    _flat_pass(rows, w, 1, valid, filt[:, :valid], tmp[:, :valid])  # along rows
    mu_a, mu_b, f_aa, f_bb, f_ab = filt[:, :valid]
    # The expressions of the whole-image form, evaluated in place on the flat maps (the outputs
    # that straddle two rows are computed too: weighted means of real pixels, so no division by
    # zero) with the same operations and operands: ``2 * mu_a * mu_b`` is ``(2 * mu_a) * mu_b``,
    # which equals ``2 * (mu_a * mu_b)`` exactly, as doubling is exact; ``x**2`` is ``x * x``.
    mu_ab = np.multiply(mu_a, mu_b, out=tmp[0, :valid])
    mu_a *= mu_a  # mu_a^2
    mu_b *= mu_b  # mu_b^2
    f_aa -= mu_a  # var_a
    f_bb -= mu_b  # var_b
    f_ab -= mu_ab  # cov
    f_ab *= 2
    f_ab += c2  # 2 cov + c2
    mu_ab *= 2
    mu_ab += c1
    mu_ab *= f_ab  # num = (2 mu_ab + c1)(2 cov + c2)
    mu_a += mu_b
    mu_a += c1  # mu_a^2 + mu_b^2 + c1
    f_aa += f_bb
    f_aa += c2  # var_a + var_b + c2
    mu_a *= f_aa  # den
    mu_ab /= mu_a
    out[r0:r1] = tmp[0].reshape(m, cols)[:, :cols - pad]  # the valid columns


def _threads() -> int:
    """Worker threads for SSIM bands (``SFSR_METRIC_THREADS``; else at most 2, 1 on an
    oversubscribed machine: :func:`sfsr.data.bicubic.default_threads`)."""
    return default_threads("SFSR_METRIC_THREADS")


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """SSIM of two 2-D arrays, Wang et al.'s MATLAB ``ssim_index`` with the default settings.

    11x11 Gaussian window (sigma 1.5), ``K1 = 0.01``, ``K2 = 0.03``, ``L = data_range``; local
    statistics use the biased (population) covariance; the mean is taken over the valid region
    (pixels whose whole window lies inside the image), so images must be at least 11x11.

    The separable filter runs in bands of rows that fit in the CPU cache (on up to two threads)
    with the floating-point order of ``scipy.ndimage.correlate1d``: the value is bit-identical to
    filtering the whole images with it (:func:`_filter_valid`).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"ssim expects two 2-D arrays of the same shape, got {a.shape} and {b.shape}")
    if min(a.shape) < 2 * _SSIM_RADIUS + 1:
        raise ValueError(f"ssim needs images of at least 11x11 pixels, got {a.shape}")
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    pad = 2 * _SSIM_RADIUS
    h, w = a.shape[0] - pad, a.shape[1] - pad
    out = np.empty((h, w), dtype=np.float64)
    band = max(8, _SSIM_BLOCK_VALUES // a.shape[1])
    starts = list(range(0, h, band))
    threads = min(_threads(), len(starts))
    if threads > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda r0: _ssim_map_rows(a, b, out, r0, min(h, r0 + band), c1, c2), starts))
    else:
        for r0 in starts:
            _ssim_map_rows(a, b, out, r0, min(h, r0 + band), c1, c2)
    return float(np.mean(out))


def _split_channels(img: np.ndarray, what: str) -> np.ndarray:
    """Return ``HxW`` (gray) or ``HxWx3`` uint8; reject anything else with a clear message."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise TypeError(f"image_metrics: {what} must be uint8 (quantize SR output with "
                        f"sfsr.metrics.to_uint8 first), got {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3 and img.shape[2] == 4:
        raise DataError(f"image_metrics: {what} has 4 channels (RGBA); convert it to RGB first")
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise DataError(f"image_metrics: {what} must be HxW gray or HxWx3 RGB, got shape {img.shape}")
    return img


@dataclass(frozen=True)
class Views:
    """What a metric of :data:`METRICS` compares, shaved: ``hr``/``sr`` the compared channel (float64
    Y of RGB images, or the gray values of a gray HR image; see :func:`image_metrics`), ``hr_rgb``/
    ``sr_rgb`` the uint8 RGB images (gray replicated)."""
    hr: np.ndarray
    sr: np.ndarray
    hr_rgb: np.ndarray
    sr_rgb: np.ndarray


@dataclass(frozen=True)
class Metric:
    """One image-quality metric: ``label`` and ``unit`` (tables, axes, the CLI: "PSNR-Y (dB)"),
    ``fmt`` (its number in tables), ``higher_is_better`` and ``compute(views) -> float``."""
    label: str
    fmt: str
    higher_is_better: bool
    compute: Callable[[Views], float]
    unit: str = ""

    @property
    def title(self) -> str:
        """The label with its unit: ``PSNR-Y (dB)``."""
        return f"{self.label} ({self.unit})" if self.unit else self.label

    def show(self, value: float) -> str:
        """The value as the CLI prints it: ``PSNR-Y 30.12 dB``."""
        return f"{self.label} {self.fmt.format(value)}" + (f" {self.unit}" if self.unit else "")


#: Every per-image metric, by its column name, in column order. :func:`image_metrics` computes them;
#: the evaluation's columns and tables, the plots, the RefSR tables, the CLI and the workflow's
#: ``metric`` wildcard read this table (adding a metric: docs/architecture.md, "Adding things").
METRICS: dict[str, Metric] = {
    "psnr_y": Metric("PSNR-Y", "{:.2f}", True, lambda v: psnr(v.hr, v.sr), unit="dB"),
    "ssim_y": Metric("SSIM-Y", "{:.4f}", True, lambda v: ssim(v.hr, v.sr)),
    "psnr_rgb": Metric("PSNR-RGB", "{:.2f}", True, lambda v: _psnr_uint8(v.hr_rgb, v.sr_rgb), unit="dB"),
}


def image_metrics(hr: np.ndarray, sr: np.ndarray, scale: int) -> dict[str, Any]:
    """The :data:`METRICS` (PSNR-Y, SSIM-Y, PSNR-RGB) of one SR image under :data:`CONVENTION`.

    ``hr`` and ``sr`` are uint8 ``HxW`` or ``HxWx3`` arrays. ``hr`` is cropped to a multiple of
    ``scale``; ``sr`` must then have exactly its height and width (else :class:`DataError`).
    ``scale`` pixels are shaved from every border.

    * RGB HR: PSNR/SSIM on the BT.601 Y of both (a gray SR is replicated to RGB first);
      ``channel = 'y'``.
    * Gray HR: compared on its own gray values; the SR gray value is the SR image itself when it
      is single-channel, else its full-range luma ``0.299 R + 0.587 G + 0.114 B`` (not the 16-235
      Y, which would shrink every error by 219/255); ``channel = 'gray'``. ``psnr_rgb`` compares
      the HR gray replicated to three channels with the SR RGB image.
    """
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    scale = int(scale)
    hr = _split_channels(hr, "HR image")
    sr = _split_channels(sr, "SR image")
    hr = modcrop(hr, scale)
    if hr.shape[:2] != sr.shape[:2]:
        raise DataError(f"SR image is {sr.shape[1]}x{sr.shape[0]} (WxH) but the HR image cropped to a "
                        f"multiple of x{scale} is {hr.shape[1]}x{hr.shape[0]}; the SR output must be "
                        f"exactly scale x the LR size of modcrop(HR, {scale})")
    s = scale
    if min(hr.shape[:2]) - 2 * s < 2 * _SSIM_RADIUS + 1:
        raise DataError(f"image of {hr.shape[1]}x{hr.shape[0]} is too small to evaluate at x{scale} "
                        f"(needs at least {2 * s + 11} pixels per side)")
    hr, sr = hr[s:-s, s:-s], sr[s:-s, s:-s]  # shave first: every channel value is per pixel
    hr_rgb = np.repeat(hr[:, :, None], 3, axis=2) if hr.ndim == 2 else hr
    sr_rgb = np.repeat(sr[:, :, None], 3, axis=2) if sr.ndim == 2 else sr
    if hr.ndim == 2:
        channel = "gray"
        hr_c = hr.astype(np.float64)
        sr_c = sr.astype(np.float64) if sr.ndim == 2 else rgb_to_gray(sr)
    else:
        channel = "y"
        hr_c = rgb_to_y(hr_rgb)
        sr_c = rgb_to_y(sr_rgb)
    views = Views(hr_c, sr_c, hr_rgb, sr_rgb)
    return {
        **{name: metric.compute(views) for name, metric in METRICS.items()},
        "channel": channel,
        "crop_border": s,
        "convention": CONVENTION,
    }


def _to_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    import torch

    return x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def topk_accuracy(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray | Iterable[int],
                  ks: Iterable[int] = (1, 5)) -> dict[int, float]:
    """Fraction of samples whose label is among the ``k`` highest logits, for each ``k``.

    ``logits`` is ``N x num_classes``; ``labels`` holds ``N`` class indices. ``k`` larger than the
    number of classes counts every sample as correct. Returns ``{k: accuracy in [0, 1]}``.
    (Imports torch: it runs next to a classifier.)
    """
    logits_t = _to_tensor(logits).float()
    labels_t = _to_tensor(labels if not isinstance(labels, (list, tuple)) else np.asarray(labels)).long()
    if logits_t.ndim != 2 or labels_t.ndim != 1 or logits_t.shape[0] != labels_t.shape[0]:
        raise ValueError(f"topk_accuracy expects logits N x C and labels N, got {tuple(logits_t.shape)} "
                         f"and {tuple(labels_t.shape)}")
    n, c = logits_t.shape
    if n == 0:
        raise ValueError("topk_accuracy: no samples")
    ks = [int(k) for k in ks]
    kmax = min(max(ks), c)
    top = logits_t.topk(kmax, dim=1).indices  # N x kmax, best first
    hit = top == labels_t[:, None]
    return {k: float(hit[:, :min(k, c)].any(dim=1).float().mean()) for k in ks}
