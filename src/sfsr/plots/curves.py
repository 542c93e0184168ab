"""Training curves: one panel per loss term (and validation PSNR), one line per model.

Part of :mod:`sfsr.plots` (its docstring has the conventions).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from sfsr.errors import DataError
from sfsr.plots.style import _check_columns, _colors_for, _legend_below, _save_and_close, _style


_LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (3, 1, 1, 1, 1, 1)))


#: Columns of a training log (sfsr.training.loop) that are not loss terms; every other column is
#: one (pixel, perceptual, adversarial, g_total, d_loss, semantic_kl, ...).
LOG_NON_LOSS_COLUMNS = ("iteration", "epoch", "lr", "data_wait_fraction", "elapsed_s")


def _is_loss_column(column: str) -> bool:
    return column not in LOG_NON_LOSS_COLUMNS and not column.startswith("val_")


def make_training_curves(logs: Mapping[str, pd.DataFrame], title: str = "",
                         colors: Mapping[str, str] | None = None) -> Figure:
    """Three panels: every loss-term column of every log against ``iteration`` (log-scale y;
    colour = model, line style = loss term), and ``val_psnr_y`` (dB) against ``iteration`` and
    against wall-clock minutes (``elapsed_s``) where validation ran. The bicubic PSNR-Y of the same
    validation images (``val_bicubic_psnr_y``, written by the training loop) is drawn as a dashed
    line: one black line when every model has the same value, else one per model in its colour.

    ``logs`` maps a model label to its training log (``train_log.csv``). Rows without a value
    (NaN) are skipped per column. Losses with non-positive values are drawn on a symlog axis.
    """
    if not logs:
        raise DataError("plot_training_curves: no training logs given")
    for label, log in logs.items():
        _check_columns(log, ["iteration"], f"training log of {label!r}")
    models = list(logs)
    cols = _colors_for(models, colors)
    terms = sorted({c for log in logs.values() for c in log.columns if _is_loss_column(c)})
    styles = {t: _LINESTYLES[i % len(_LINESTYLES)] for i, t in enumerate(terms)}
    bicubic: dict[str, float] = {}
    for label, log in logs.items():
        if "val_bicubic_psnr_y" in log.columns:
            values = log["val_bicubic_psnr_y"].dropna()
            if not values.empty:
                bicubic[label] = float(values.iloc[-1])
    one_bicubic = len({round(v, 6) for v in bicubic.values()}) == 1
    with _style():
        fig = Figure(figsize=(14, 4.6), layout="constrained")
        ax_loss, ax_val, ax_time = fig.subplots(1, 3)
        any_nonpositive, any_val, any_time = False, False, False
        for label, log in logs.items():
            for term in terms:
                if term not in log.columns:
                    continue
                d = log[["iteration", term]].dropna()
                if d.empty:
                    continue
                any_nonpositive |= bool((d[term] <= 0).any())
                ax_loss.plot(d["iteration"], d[term], color=cols[label], linestyle=styles[term],
                             linewidth=1.3)
            if "val_psnr_y" in log.columns:
                keep = [c for c in ("iteration", "val_psnr_y", "elapsed_s") if c in log.columns]
                d = log[keep].dropna(subset=["val_psnr_y"])
                d = d[np.isfinite(d["val_psnr_y"])]
                if not d.empty:
                    any_val = True
                    ax_val.plot(d["iteration"], d["val_psnr_y"], color=cols[label], marker="o",
                                markersize=3.5, linewidth=1.3)
                    if "elapsed_s" in d.columns and d["elapsed_s"].notna().any():
                        any_time = True
                        t = d.dropna(subset=["elapsed_s"])
                        ax_time.plot(t["elapsed_s"] / 60.0, t["val_psnr_y"], color=cols[label],
                                     marker="o", markersize=3.5, linewidth=1.3)
        for ax in (ax_val, ax_time):
            for label, value in bicubic.items():
                ax.axhline(value, color="black" if one_bicubic else cols[label], linestyle="--",
                           linewidth=1.0, zorder=1)
                if one_bicubic:
                    break
        if any_nonpositive:
            ax_loss.set_yscale("symlog", linthresh=1e-3)
        else:
            ax_loss.set_yscale("log")
        ax_loss.set(xlabel="iteration", ylabel="training loss (log scale)", title="Loss terms")
        ax_val.set(xlabel="iteration", ylabel="validation PSNR-Y (dB)", title="Validation PSNR-Y")
        ax_time.set(xlabel="training time (wall-clock minutes)", ylabel="validation PSNR-Y (dB)",
                    title="Validation PSNR-Y against time")
        if not terms:
            ax_loss.text(0.5, 0.5, "no loss columns", ha="center", va="center",
                         transform=ax_loss.transAxes)
        for ax, has in ((ax_val, any_val), (ax_time, any_time)):
            if not has:
                ax.text(0.5, 0.5, "no validation rows", ha="center", va="center", transform=ax.transAxes)
        if bicubic:
            what = "bicubic, same images" if one_bicubic else "bicubic of each model's images"
            ax_val.legend([Line2D([], [], color="black" if one_bicubic else "0.4", linestyle="--")],
                          [what], loc="lower right")
        if title:
            fig.suptitle(title)
        handles = [Line2D([], [], color=cols[m], linewidth=2) for m in models]
        if len(terms) > 1:
            ax_loss.legend([Line2D([], [], color="0.3", linestyle=styles[t]) for t in terms],
                           list(terms), title="loss term",
                           loc="upper right")
        elif terms:
            ax_loss.set_ylabel(f"{terms[0]} loss (log scale)")
        _legend_below(fig, handles, models)
    return fig


def plot_training_curves(logs: Mapping[str, pd.DataFrame], out_png: str | os.PathLike,
                         title: str = "", colors: Mapping[str, str] | None = None) -> list[Path]:
    """Save :func:`make_training_curves` as PNG + PDF; returns the two paths."""
    return _save_and_close(make_training_curves(logs, title, colors), out_png)
