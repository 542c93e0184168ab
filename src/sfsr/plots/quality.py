"""Image-quality figures: metric means with 95% intervals per model, and RefSR quality by
reference level.

Part of :mod:`sfsr.plots` (its docstring has the conventions).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from sfsr.evaluation import bootstrap_ci
from sfsr.metrics import METRICS
from sfsr.plots.style import _canonical_order, _check_columns, _colors_for, _legend_below, _save_and_close, _style


def make_metric_bars(summary: pd.DataFrame, metric: str = "psnr_y",
                     colors: Mapping[str, str] | None = None) -> Figure:
    """Mean ``metric`` per model with its bootstrap 95% CI, one panel per dataset (rows) x scale
    (columns) of :func:`sfsr.evaluation.summarize` output.

    Drawn as a dot per model with CI whiskers (PSNR differences of tenths of a dB are invisible on
    bars that start at 0, and bars with a cut axis exaggerate them). Models keep the canonical
    order and colours of :func:`model_colors`.
    """
    _check_columns(summary, ["model", "dataset", "scale", metric], "plot_metric_bars")
    lo_col, hi_col = f"{metric}_ci_low", f"{metric}_ci_high"
    has_ci = lo_col in summary.columns and hi_col in summary.columns
    models = _canonical_order(summary["model"].astype(str).tolist(), colors)
    cols = _colors_for(models, colors)
    datasets = sorted(summary["dataset"].astype(str).unique())
    scales = sorted(summary["scale"].unique())
    ylabel = METRICS[metric].title if metric in METRICS else metric
    with _style():
        fig = Figure(figsize=(max(4.5, 0.55 * len(models) + 1.8) * len(scales),
                              3.4 * len(datasets) + 0.8), layout="constrained")
        axes = np.atleast_2d(fig.subplots(len(datasets), len(scales), squeeze=False))
        for i, ds in enumerate(datasets):
            for j, sc in enumerate(scales):
                ax = axes[i, j]
                sub = summary[(summary["dataset"].astype(str) == ds) & (summary["scale"] == sc)]
                present = [m for m in models if m in set(sub["model"].astype(str))]
                for x, m in enumerate(present):
                    row = sub[sub["model"].astype(str) == m].iloc[0]
                    mean = float(row[metric])
                    err = None
                    if has_ci and np.isfinite(row[lo_col]) and np.isfinite(row[hi_col]):
                        err = [[mean - float(row[lo_col])], [float(row[hi_col]) - mean]]
                    ax.errorbar([x], [mean], yerr=err, fmt="o", color=cols[m], markersize=7,
                                capsize=4, elinewidth=1.6)
                ax.set_xticks(range(len(present)), present, rotation=30, ha="right")
                ax.set_xlim(-0.6, len(present) - 0.4)
                n = int(sub["n"].iloc[0]) if "n" in sub.columns and len(sub) else None
                ax.set_title(f"{ds}  ×{sc}" + (f"  (n = {n} images)" if n else ""))
                if j == 0:
                    ax.set_ylabel(ylabel)
        handles = [Line2D([], [], color=cols[m], marker="o", linestyle="") for m in models]
        _legend_below(fig, handles, models, ncol=min(len(models), 6))
        fig.suptitle(f"{ylabel}: mean and 95% bootstrap CI" if has_ci else f"{ylabel}: mean")
    return fig


def plot_metric_bars(summary: pd.DataFrame, out_png: str | os.PathLike, metric: str = "psnr_y",
                     colors: Mapping[str, str] | None = None) -> list[Path]:
    """Save :func:`make_metric_bars` as PNG + PDF; returns the two paths."""
    return _save_and_close(make_metric_bars(summary, metric, colors), out_png)


def _level_key(level: Any) -> tuple[int, int, str]:
    """Sort levels numerically when they hold a number (``ref1`` < ``ref2`` < ``ref10``)."""
    digits = "".join(ch for ch in str(level) if ch.isdigit())
    return (0, int(digits), str(level)) if digits else (1, 0, str(level))


def make_refsr(table: pd.DataFrame, colors: Mapping[str, str] | None = None,
               n_boot: int = 2000, seed: int = 0, ylabel: str = "PSNR-Y (dB)") -> Figure:
    """PSNR-Y (dB) per reference-similarity level, one line per model (columns ``model, level,
    psnr_y``). With several rows per (model, level) — per-image values — the mean is drawn with a
    95% bootstrap CI band (:func:`sfsr.evaluation.bootstrap_ci`). Models without levels (e.g. a
    single-image baseline given with ``level`` NaN) are drawn as horizontal lines."""
    _check_columns(table, ["model", "level", "psnr_y"], "plot_refsr")
    df = table[np.isfinite(table["psnr_y"].astype(float))]
    models = _canonical_order(df["model"].astype(str).tolist(), colors)
    cols = _colors_for(models, colors)
    levels = sorted(df["level"].dropna().unique(), key=_level_key)
    xpos = {lvl: i for i, lvl in enumerate(levels)}
    with _style():
        fig = Figure(figsize=(max(5.5, 1.0 * len(levels) + 3), 4.4), layout="constrained")
        ax = fig.subplots()
        banded = False
        for m in models:
            sub = df[df["model"].astype(str) == m]
            if sub["level"].isna().all():
                ax.axhline(float(sub["psnr_y"].mean()), color=cols[m], linestyle="--", linewidth=1.4)
                continue
            x, mean, lo, hi = [], [], [], []
            for lvl, g in sub.dropna(subset=["level"]).groupby("level"):
                values = g["psnr_y"].to_numpy(dtype=float)
                x.append(xpos[lvl])
                mean.append(values.mean())
                low, high = bootstrap_ci(values, n_boot=n_boot, seed=seed)
                lo.append(low)
                hi.append(high)
            order = np.argsort(x)
            x, mean, lo, hi = (np.asarray(v)[order] for v in (x, mean, lo, hi))
            ax.plot(x, mean, color=cols[m], marker="o", linewidth=1.6)
            if np.any(hi > lo):
                banded = True
                ax.fill_between(x, lo, hi, color=cols[m], alpha=0.18, linewidth=0)
        ax.set_xticks(range(len(levels)), [str(v) for v in levels])
        ax.set(xlabel="reference similarity level (most → least similar)", ylabel=ylabel,
               title="RefSR: quality vs reference similarity"
               + ("  (bands: 95% bootstrap CI)" if banded else ""))
        no_level = {m for m in models if df[df["model"].astype(str) == m]["level"].isna().all()}
        handles = [Line2D([], [], color=cols[m], marker=None if m in no_level else "o",
                          linestyle="--" if m in no_level else "-") for m in models]
        _legend_below(fig, handles, models)
    return fig


def plot_refsr(table: pd.DataFrame, out_png: str | os.PathLike,
               colors: Mapping[str, str] | None = None, ylabel: str = "PSNR-Y (dB)") -> list[Path]:
    """Save :func:`make_refsr` as PNG + PDF; returns the two paths."""
    return _save_and_close(make_refsr(table, colors, ylabel=ylabel), out_png)
