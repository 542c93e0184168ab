"""Visual comparison grids: the same crop of HR, bicubic and every model's SR image.

Part of :mod:`sfsr.plots` (its docstring has the conventions).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib import patches
from matplotlib.figure import Figure
from scipy import ndimage

from sfsr.data.bicubic import imresize, modcrop
from sfsr.data.images import read_image, to_rgb
from sfsr.errors import DataError
from sfsr.metrics import psnr, rgb_to_gray, rgb_to_y
from sfsr.plots.style import _canonical_order, _check_columns, _colors_for, _save_and_close, _style


def _channel(image: np.ndarray, gray_reference: bool) -> np.ndarray:
    """The channel PSNR-Y is computed on (as :func:`sfsr.metrics.image_metrics`): BT.601 Y of RGB,
    or the gray values when the HR image is gray."""
    image = np.asarray(image)
    if gray_reference:
        return image.astype(np.float64) if image.ndim == 2 else rgb_to_gray(image)
    return rgb_to_y(to_rgb(image))


def choose_crop(hr: np.ndarray, srs: Mapping[str, np.ndarray] | Sequence[np.ndarray], size: int,
                border: int = 0) -> tuple[int, int]:
    """Top-left ``(row, col)`` of the ``size`` x ``size`` window where the SR images differ most.

    Local error = mean squared Y error against ``hr`` over the window (``uniform_filter``); the
    window maximising the variance of that local error across the SR images wins (with a single
    SR image: its largest local error). Windows stay ``border`` pixels inside the image.
    """
    srs = list(srs.values()) if isinstance(srs, Mapping) else list(srs)
    if not srs:
        raise DataError("choose_crop: no SR images given")
    gray = np.asarray(hr).ndim == 2
    y_hr = _channel(hr, gray)
    h, w = y_hr.shape
    size = int(size)
    if size > min(h, w) - 2 * border or size < 1:
        raise DataError(f"choose_crop: a {size}px crop does not fit a {w}x{h} image with a "
                        f"{border}px border; use a smaller crop")
    local = []
    for sr in srs:
        y_sr = _channel(sr, gray)
        if y_sr.shape != y_hr.shape:
            raise DataError(f"choose_crop: SR image {y_sr.shape[::-1]} and HR {y_hr.shape[::-1]} "
                            "differ in size (modcrop the HR image to the scale first)")
        local.append(ndimage.uniform_filter((y_sr - y_hr) ** 2, size=size, mode="reflect"))
    stack = np.stack(local)
    score = stack.var(axis=0) if len(local) > 1 else stack[0]
    # uniform_filter centres a window of `size` at index c covering c - size//2 ... c + (size-1)//2
    half = size // 2
    lo_r, hi_r = border + half, h - border - size + half
    lo_c, hi_c = border + half, w - border - size + half
    valid = score[lo_r:hi_r + 1, lo_c:hi_c + 1]
    r, c = np.unravel_index(int(np.argmax(valid)), valid.shape)
    return int(r + lo_r - half), int(c + lo_c - half)


def pick_images(per_image: pd.DataFrame, n: int = 3, exclude: Sequence[str] = ("bicubic", "hr"),
                ) -> pd.DataFrame:
    """The ``n`` images on which the models differ most: largest spread (max - min) of
    ``psnr_y`` across models, per ``dataset``/``scale`` when those columns exist.

    Models in ``exclude`` are left out of the spread unless fewer than two models would remain.
    Returns ``[dataset, scale,] image, spread_db, best, worst`` sorted by decreasing spread.
    """
    _check_columns(per_image, ["model", "image", "psnr_y"], "pick_images")
    df = per_image[np.isfinite(per_image["psnr_y"].astype(float))]
    kept = df[~df["model"].astype(str).isin(list(exclude))]
    if kept["model"].nunique() >= 2:
        df = kept
    keys = [c for c in ("dataset", "scale") if c in df.columns] + ["image"]
    grouped = df.groupby(keys, sort=True)
    out = grouped["psnr_y"].agg(lambda s: float(s.max() - s.min())).rename("spread_db").to_frame()
    out["best"] = grouped.apply(lambda g: str(g.loc[g["psnr_y"].idxmax(), "model"]),
                                include_groups=False)
    out["worst"] = grouped.apply(lambda g: str(g.loc[g["psnr_y"].idxmin(), "model"]),
                                 include_groups=False)
    out = out.reset_index().sort_values(["spread_db", *keys], ascending=[False, *[True] * len(keys)])
    return out.head(int(n)).reset_index(drop=True)


def _display(image: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    image = np.asarray(image)
    if image.ndim == 2:
        return image, {"cmap": "gray", "vmin": 0, "vmax": 255}
    return image, {}


def make_visual_grid(hr_path: str | os.PathLike, sr_paths: Mapping[str, str | os.PathLike],
                     scale: int, crop: tuple[int, int, int] | None = None, *,
                     lr_path: str | os.PathLike | None = None, size: int | None = None,
                     colors: Mapping[str, str] | None = None) -> Figure:
    """HR overview with a zoom box, then the same zoomed crop from HR, (LR), bicubic and each
    model, each titled with that crop's PSNR-Y (dB, :func:`sfsr.metrics.psnr` on
    :func:`sfsr.metrics.rgb_to_y`; gray values for gray HR images).

    ``sr_paths`` maps a model to its SR image (same size as ``modcrop(HR, scale)``). Without a
    ``bicubic`` entry, bicubic is computed from ``lr_path`` (or from HR downscaled with the
    project's MATLAB bicubic). ``crop`` is ``(row, col, size)``; by default :func:`choose_crop`
    with ``size`` (default a quarter of the short side, at least 16 px) away from the ``scale``
    border that the metric convention shaves. The window used is stored on the returned figure as
    ``fig.sfsr_crop = (row, col, size)``.
    """
    hr = modcrop(read_image(hr_path), scale)
    lr = read_image(lr_path) if lr_path is not None else None
    srs: dict[str, np.ndarray] = {}
    if "bicubic" not in sr_paths:
        base = lr if lr is not None else imresize(hr, 1 / scale)
        srs["bicubic"] = imresize(base, output_shape=hr.shape[:2])
    for name, path in sr_paths.items():
        srs[str(name)] = read_image(path)
    for name, img in srs.items():
        if img.shape[:2] != hr.shape[:2]:
            source = sr_paths.get(name, "computed")
            raise DataError(f"visual grid: SR image of {name!r} ({source}) is "
                            f"{img.shape[1]}x{img.shape[0]} but modcrop(HR, {scale}) of {hr_path} is "
                            f"{hr.shape[1]}x{hr.shape[0]}")
    models = _canonical_order(list(srs), colors)
    cols = _colors_for(["hr", *models], colors)
    if crop is None:
        size = int(size or max(16, min(hr.shape[:2]) // 4))
        border = scale if min(hr.shape[:2]) - 2 * scale >= size else 0
        top, left = choose_crop(hr, srs, size, border=border)
    else:
        top, left, size = (int(v) for v in crop)
        if top < 0 or left < 0 or top + size > hr.shape[0] or left + size > hr.shape[1]:
            raise DataError(f"visual grid: crop {crop} (row, col, size) falls outside the "
                            f"{hr.shape[1]}x{hr.shape[0]} image {hr_path}")
    window = (slice(top, top + size), slice(left, left + size))
    gray = hr.ndim == 2
    y_hr = _channel(hr[window], gray)
    panels: list[tuple[str, np.ndarray, str]] = [("HR (reference)", hr[window], cols["hr"])]
    if lr is not None:
        lr_win = lr[top // scale:(top + size) // scale, left // scale:(left + size) // scale]
        panels.append((f"LR (×{scale}, nearest)", np.repeat(np.repeat(lr_win, scale, 0), scale, 1),
                       "0.4"))
    for m in models:
        value = psnr(y_hr, _channel(srs[m][window], gray))
        panels.append((f"{m}\n{value:.2f} dB" if math.isfinite(value) else f"{m}\ninf dB",
                       srs[m][window], cols[m]))
    ncols = math.ceil(len(panels) / 2)
    with _style():
        fig = Figure(figsize=(3.6 + 2.0 * ncols, 4.6), layout="constrained")
        left_fig, right_fig = fig.subfigures(1, 2, width_ratios=[1.6, ncols])
        ax = left_fig.subplots()
        image, kw = _display(hr)
        ax.imshow(image, **kw)
        ax.add_patch(patches.Rectangle((left - 0.5, top - 0.5), size, size, fill=False,
                                       edgecolor="#ff2020", linewidth=2))
        ax.set_title(f"{Path(hr_path).stem} (HR, ×{scale})")
        ax.set_axis_off()
        axes = np.atleast_1d(right_fig.subplots(2, ncols, squeeze=False)).ravel()
        for a, (title, img, color) in zip(axes, panels):
            image, kw = _display(img)
            a.imshow(image, interpolation="nearest", **kw)
            a.set_title(title, fontsize=9, color="black")
            a.set_xticks([])
            a.set_yticks([])
            a.grid(False)
            for spine in a.spines.values():
                spine.set_visible(True)
                spine.set_edgecolor(color)
                spine.set_linewidth(2.5)
        for a in axes[len(panels):]:
            a.set_axis_off()
        right_fig.suptitle(f"zoom: rows {top}-{top + size - 1}, cols {left}-{left + size - 1}; "
                           "PSNR-Y of the crop", fontsize=9)
    fig.sfsr_crop = (top, left, size)  # type: ignore[attr-defined]  # for callers and tests
    return fig


def plot_visual_grid(hr_path: str | os.PathLike, sr_paths: Mapping[str, str | os.PathLike],
                     out_png: str | os.PathLike, scale: int,
                     crop: tuple[int, int, int] | None = None, *,
                     lr_path: str | os.PathLike | None = None, size: int | None = None,
                     colors: Mapping[str, str] | None = None) -> list[Path]:
    """Save :func:`make_visual_grid` as PNG + PDF; returns the two paths."""
    fig = make_visual_grid(hr_path, sr_paths, scale, crop, lr_path=lr_path, size=size,
                           colors=colors)
    return _save_and_close(fig, out_png)
