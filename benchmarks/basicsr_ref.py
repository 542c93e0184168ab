"""Reference competitor: a re-implementation of BasicSR's metric and resize code (XPixelGroup/BasicSR,
``basicsr/metrics/psnr_ssim.py`` and ``basicsr/utils/matlab_functions.py``), kept here so every
benchmark compares sfsr with it *in the same run* (BasicSR itself is not installed in the
project's environment; :mod:`benchmarks.basicsr_real` runs its real metric code where its source and
cv2 are available, and calibrates this one: docs/PERFORMANCE.md).

Faithful in what costs time:

* ``calculate_psnr`` / ``calculate_ssim`` with ``test_y_channel=True``: crop ``crop_border`` pixels,
  Y of BT.601 in float32 (``bgr2ycbcr(img / 255., y_only=True) * 255``), then float64; SSIM's
  11x11 Gaussian window applied as a 2-D filter (BasicSR: ``cv2.filter2D``, which switches to a
  DFT for kernels of 11x11 and more; here ``scipy.signal.fftconvolve``, OpenCV is not installed),
  valid region, mean. PSNR and SSIM each convert the images themselves, as BasicSR's two calls do.
* ``imresize``: float images in [0, 1], torch float32, weights/indices per dimension
  (``calculate_weights_indices``), symmetric padding by copying, then one ``mv`` per output row
  (rows pass) and per output column (columns pass) and channel; no rounding between the passes
  (so it is not MATLAB-exact on uint8 images).

Whole-process use (the competitor of ``sfsr evaluate``): ``python -m benchmarks.basicsr_ref
metrics --hr DIR --sr DIR --crop-border 4``; like BasicSR's ``scripts/metrics/calculate_psnr_ssim.py``
it imports the package (``import basicsr`` loads torch and torchvision through its archs, data and
models), reads each pair, and prints per-image and mean PSNR/SSIM.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

# ------------------------------------------------------------------------------------ metrics


def to_y_channel(img: np.ndarray) -> np.ndarray:
    """BasicSR ``metric_util.to_y_channel`` for an RGB HWC uint8 image: float32, 0-255 Y."""
    img = img.astype(np.float32) / 255.0
    if img.ndim == 3 and img.shape[2] == 3:
        img = np.dot(img, [65.481, 128.553, 24.966]) + 16.0  # rgb2ycbcr(y_only=True); float64 result
        img = img.astype(np.float32) / 255.0  # _convert_output_type_range(float32): / 255
        img = img[..., None]
    return img * 255.0


def _prepare(img: np.ndarray, img2: np.ndarray, crop_border: int, test_y_channel: bool):
    """The steps BasicSR's calculate_psnr and calculate_ssim share: shape check, border crop, Y, float64."""
    assert img.shape == img2.shape, f"Image shapes are different: {img.shape}, {img2.shape}."
    if crop_border != 0:
        img = img[crop_border:-crop_border, crop_border:-crop_border, ...]
        img2 = img2[crop_border:-crop_border, crop_border:-crop_border, ...]
    if test_y_channel:
        img, img2 = to_y_channel(img), to_y_channel(img2)
    return img.astype(np.float64), img2.astype(np.float64)


def calculate_psnr(img: np.ndarray, img2: np.ndarray, crop_border: int, test_y_channel: bool = True) -> float:
    img, img2 = _prepare(img, img2, crop_border, test_y_channel)
    mse = np.mean((img - img2) ** 2)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(255.0 * 255.0 / mse))


def _gaussian_window() -> np.ndarray:
    x = np.arange(11, dtype=np.float64) - 5
    k = np.exp(-(x**2) / (2 * 1.5**2))
    k /= k.sum()  # cv2.getGaussianKernel(11, 1.5)
    return np.outer(k, k)


def _filter2d_valid(img: np.ndarray, window: np.ndarray) -> np.ndarray:
    from scipy.signal import fftconvolve

    return fftconvolve(img, window[::-1, ::-1], mode="valid")  # correlation = flipped convolution


def _ssim(img: np.ndarray, img2: np.ndarray) -> float:
    c1 = (0.01 * 255) ** 2
    c2 = (0.03 * 255) ** 2
    window = _gaussian_window()
    mu1 = _filter2d_valid(img, window)
    mu2 = _filter2d_valid(img2, window)
    mu1_sq, mu2_sq, mu1_mu2 = mu1**2, mu2**2, mu1 * mu2
    sigma1_sq = _filter2d_valid(img**2, window) - mu1_sq
    sigma2_sq = _filter2d_valid(img2**2, window) - mu2_sq
    sigma12 = _filter2d_valid(img * img2, window) - mu1_mu2
    ssim_map = ((2 * mu1_mu2 + c1) * (2 * sigma12 + c2)) / ((mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2))
    return float(ssim_map.mean())


def calculate_ssim(img: np.ndarray, img2: np.ndarray, crop_border: int, test_y_channel: bool = True) -> float:
    img, img2 = _prepare(img, img2, crop_border, test_y_channel)
    if img.ndim == 2:
        img, img2 = img[..., None], img2[..., None]
    return float(np.mean([_ssim(img[..., i], img2[..., i]) for i in range(img.shape[2])]))


# ------------------------------------------------------------------------------------ imresize


def _cubic(x):
    absx = x.abs()
    absx2 = absx**2
    absx3 = absx**3
    return ((1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1).type_as(absx)
            + (-0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2) * ((absx > 1) * (absx <= 2)).type_as(absx))


def calculate_weights_indices(in_length: int, out_length: int, scale: float, kernel_width: float,
                              antialiasing: bool):
    import torch

    if scale < 1 and antialiasing:
        kernel_width = kernel_width / scale
    x = torch.linspace(1, out_length, out_length)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(u - kernel_width / 2)
    p = math.ceil(kernel_width) + 2
    indices = left.view(out_length, 1) + torch.linspace(0, p - 1, p).view(1, p)
    distance = u.view(out_length, 1) - indices
    weights = scale * _cubic(distance * scale) if (scale < 1 and antialiasing) else _cubic(distance)
    weights = weights / weights.sum(1, keepdim=True)
    zeros = (weights == 0).sum(0)
    if not math.isclose(zeros[0], 0, rel_tol=1e-6):
        indices, weights = indices.narrow(1, 1, p - 2), weights.narrow(1, 1, p - 2)
    if not math.isclose(zeros[-1], 0, rel_tol=1e-6):
        indices, weights = indices.narrow(1, 0, p - 2), weights.narrow(1, 0, p - 2)
    weights, indices = weights.contiguous(), indices.contiguous()
    sym_len_s = -indices.min() + 1
    sym_len_e = indices.max() - in_length
    indices = indices + sym_len_s - 1
    return weights, indices, int(sym_len_s), int(sym_len_e)


def _pad_symmetric(img, dim: int, start: int, end: int):
    import torch

    parts = []
    if start > 0:
        parts.append(img.narrow(dim, 0, start).flip(dim))
    parts.append(img)
    if end > 0:
        parts.append(img.narrow(dim, img.size(dim) - end, end).flip(dim))
    return torch.cat(parts, dim)


def imresize(img, scale: float, antialiasing: bool = True):
    """BasicSR ``imresize``: numpy HWC float in [0, 1] -> numpy HWC float32, not rounded."""
    import torch

    with torch.no_grad():
        squeeze = img.ndim == 2
        if squeeze:
            img = img[:, :, None]
        t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()
        in_c, in_h, in_w = t.size()
        out_h, out_w = math.ceil(in_h * scale), math.ceil(in_w * scale)
        wh, ih, hs, he = calculate_weights_indices(in_h, out_h, scale, 4, antialiasing)
        ww, iw, ws, we = calculate_weights_indices(in_w, out_w, scale, 4, antialiasing)
        aug = _pad_symmetric(t, 1, hs, he)
        out1 = torch.empty(in_c, out_h, in_w)
        kw = wh.size(1)
        for i in range(out_h):
            idx = int(ih[i][0])
            for j in range(in_c):
                out1[j, i, :] = aug[j, idx:idx + kw, :].transpose(0, 1).mv(wh[i])
        aug = _pad_symmetric(out1, 2, ws, we)
        out2 = torch.empty(in_c, out_h, out_w)
        kw = ww.size(1)
        for i in range(out_w):
            idx = int(iw[i][0])
            for j in range(in_c):
                out2[j, :, i] = aug[j, :, idx:idx + kw].mv(ww[i])
        out = out2.numpy()
        return out[0] if squeeze else out.transpose(1, 2, 0)


def imresize_uint8(img: np.ndarray, scale: float) -> np.ndarray:
    """How BasicSR's scripts make LR images: ``img / 255.``, ``imresize``, ``* 255``, round."""
    out = imresize(img.astype(np.float32) / 255.0, scale)
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------ script


def _metrics_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.basicsr_ref metrics")
    parser.add_argument("--hr", required=True)
    parser.add_argument("--sr", required=True)
    parser.add_argument("--crop-border", type=int, default=4)
    args = parser.parse_args(argv)
    import torch  # noqa: F401  `from basicsr.metrics import ...` imports the basicsr package: torch,
    import torchvision  # noqa: F401  torchvision (archs), as BasicSR's metrics script pays for
    from PIL import Image

    psnrs, ssims = [], []
    for hr_path in sorted(Path(args.hr).iterdir()):
        sr_path = Path(args.sr) / hr_path.name
        hr = np.asarray(Image.open(hr_path).convert("RGB"))
        sr = np.asarray(Image.open(sr_path).convert("RGB"))
        h, w = sr.shape[:2]
        hr = hr[:h, :w]
        psnrs.append(calculate_psnr(hr, sr, args.crop_border))
        ssims.append(calculate_ssim(hr, sr, args.crop_border))
        print(f"{hr_path.stem:20s}\tPSNR: {psnrs[-1]:.6f} dB, \tSSIM: {ssims[-1]:.6f}")
    print(f"Average: PSNR: {np.mean(psnrs):.6f} dB, SSIM: {np.mean(ssims):.6f}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "metrics":
        sys.exit("usage: python -m benchmarks.basicsr_ref metrics --hr DIR --sr DIR [--crop-border N]")
    sys.exit(_metrics_main(sys.argv[2:]))
