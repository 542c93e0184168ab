"""Figures and the summary table of the study report.

Every figure has a ``make_*`` function that returns a :class:`matplotlib.figure.Figure` (so tests
and notebooks can inspect it) and a thin ``plot_*`` function that saves it as PNG **and** PDF with
the same stem, atomically (:func:`sfsr.io.atomic_path`), and returns the two paths. Figures are
built with :class:`~matplotlib.figure.Figure` directly (never ``pyplot``): no global state, Agg
canvas for PNG, the PDF backend for PDF, nothing needs a display.

Colours are per model and identical in every figure (:func:`model_colors`); ``hr`` is black and
``bicubic`` grey. Image-quality numbers shown on visual grids come from :mod:`sfsr.metrics` (the
project's single metric implementation), on the Y channel (own gray values for gray HR images).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import patches
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import ndimage

from sfsr import io
from sfsr.data.bicubic import imresize, modcrop
from sfsr.data.images import read_image
from sfsr.errors import DataError
from sfsr.evaluation import bootstrap_ci
from sfsr.metrics import psnr, rgb_to_gray, rgb_to_y

__all__ = [
    "FAMILIES", "family_lookup", "model_family", "model_colors",
    "make_training_curves", "plot_training_curves",
    "make_metric_bars", "plot_metric_bars",
    "make_accuracy", "plot_accuracy",
    "make_tradeoff", "plot_tradeoff",
    "choose_crop", "pick_images", "make_visual_grid", "plot_visual_grid",
    "make_refsr", "plot_refsr",
    "save_figure", "summary_table",
]

# --------------------------------------------------------------------------------------------
# Style, colours, families
# --------------------------------------------------------------------------------------------

STYLE: dict[str, Any] = {
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 9,
    "ytick.labelsize": 9, "legend.fontsize": 9, "figure.titlesize": 12, "figure.dpi": 100,
    "savefig.dpi": 150, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
    "axes.spines.right": False,
}
"""Matplotlib settings applied while a figure is built and saved (fonts >= 9 pt)."""

FIXED_COLORS: dict[str, str] = {"hr": "#000000", "bicubic": "#8c8c8c", "lr_head": "#6b4226"}
"""Reserved colours: HR black, bicubic grey, the LR classification head brown."""

# tab10 without its grey (reserved for bicubic), then the light halves of tab20, then tab20b.
_PALETTE: tuple[str, ...] = tuple(
    [matplotlib.colors.to_hex(c) for i, c in enumerate(matplotlib.colormaps["tab10"].colors)
     if i != 7]
    + [matplotlib.colors.to_hex(c) for i, c in enumerate(matplotlib.colormaps["tab20"].colors)
       if i % 2 == 1 and i != 15]
    + [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["tab20b"].colors]
)

FAMILIES: tuple[str, ...] = ("hr", "bicubic", "lr_head", "psnr", "gan", "semantic", "shared",
                             "refsr", "other")
"""Model families in display order (legend order, colour order)."""

FAMILY_MARKERS: dict[str, str] = {"hr": "*", "bicubic": "X", "lr_head": "P", "psnr": "o",
                                  "gan": "^", "semantic": "s", "shared": "D", "refsr": "v",
                                  "other": "h"}

_PSNR_ARCHS = ("srresnet", "msrresnet", "edsr", "rrdbnet", "autoencoder")
_GAN_NAMES = ("srgan", "esrgan", "gan")


def model_family(name: str) -> str:
    """Family of a model/input name, from the words in its name (case-insensitive).

    ``hr``, ``bicubic`` and ``lr_head`` (also ``<model>_lr_head``) are their own families; then, first match wins:
    ``refsr`` (name contains ``refsr``), ``shared`` (``shared``), ``semantic`` (``semantic`` or
    ``sem``), ``gan`` (``srgan``, ``esrgan``, ``gan``), ``psnr`` (``srresnet``, ``msrresnet``,
    ``edsr``, ``rrdbnet``, ``autoencoder``, ``psnr``), else ``other``. Semantic/shared/RefSR come
    first because those models are often named after the generator they build on
    (``srgan_semantic``).
    """
    n = str(name).lower()
    if n in ("hr", "bicubic", "lr_head"):
        return n
    if n.endswith("_lr_head"):  # the LR head of a shared-feature model, e.g. srresnet_x4_lr_head
        return "lr_head"
    words = set(n.replace("-", "_").split("_"))
    if "refsr" in n:
        return "refsr"
    if "shared" in n:
        return "shared"
    if "semantic" in n or "sem" in words:
        return "semantic"
    if any(g in n for g in _GAN_NAMES):
        return "gan"
    if any(a in n for a in _PSNR_ARCHS) or "psnr" in n:
        return "psnr"
    return "other"


def family_lookup(families: Mapping[str, str]) -> Callable[[str], str]:
    """``name -> family`` from a mapping (the workflow passes each name's family: hr, bicubic,
    lr_head or its training stage's); names it lacks are ``other``."""
    return lambda name: families.get(str(name), "other")


def _canonical_order(models: Sequence[str], colors: Mapping[str, str] | None = None,
                     family: Callable[[str], str] = model_family) -> list[str]:
    """Unique names in display order (legends, bars): the order of ``colors`` when it covers them
    (:func:`model_colors` returns its colours in display order), else by (family order, name)."""
    names = list(dict.fromkeys(str(m) for m in models))
    if colors is not None and all(m in colors for m in names):
        rank = {m: i for i, m in enumerate(colors)}
        return sorted(names, key=rank.__getitem__)
    return sorted(names, key=lambda m: (FAMILIES.index(family(m)), m))


def model_colors(models: Sequence[str], universe: Sequence[str] | None = None,
                 families: Mapping[str, str] | None = None) -> dict[str, str]:
    """One colour per model, the same in every figure, in display order.

    ``hr``/``bicubic``/``lr_head`` have fixed colours (:data:`FIXED_COLORS`). The other names of
    ``universe`` (default: ``models``) are put in canonical order (family, then name) and take the
    palette's colours in that order; the result is restricted to ``models`` and listed in that
    order. ``families``: each name's family (the workflow passes them, from the stage table);
    without it the family is guessed from the name (:func:`model_family`, for ad-hoc use). Pass the
    study's full model list as ``universe`` and every subset gets the same colours (this is what
    the report does). Deterministic; the palette (tab10 minus grey, then tab20/tab20b) cycles
    beyond 37 models.
    """
    family = family_lookup(families) if families is not None else model_family
    names = _canonical_order(list(universe or []) + list(models), family=family)
    free = [m for m in names if m not in FIXED_COLORS]
    colors = {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(free)}
    colors.update({m: c for m, c in FIXED_COLORS.items() if m in names})
    wanted = {str(m) for m in models}
    return {m: colors[m] for m in names if m in wanted}


def _colors_for(models: Sequence[str], colors: Mapping[str, str] | None) -> dict[str, str]:
    """``colors`` if it covers ``models``, else :func:`model_colors` over ``models`` + ``colors``."""
    if colors is not None and all(m in colors for m in models):
        return dict(colors)
    return model_colors(list(models), universe=list(colors or []) + list(models))


def _style() -> Any:
    return matplotlib.rc_context(STYLE)


def _check_columns(df: pd.DataFrame, needed: Sequence[str], what: str) -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DataError(f"{what}: table lacks the column(s) {missing}; it has {list(df.columns)}")


def save_figure(fig: Figure, out_png: str | os.PathLike) -> list[Path]:
    """Save ``fig`` as ``out_png`` (PNG) and as the PDF of the same stem, atomically.

    Metadata dates are left out so reruns give identical files. Returns ``[png, pdf]``.
    """
    png = Path(out_png)
    if png.suffix.lower() != ".png":
        raise DataError(f"figure output must end with .png, got {png}; the PDF is written beside it")
    pdf = png.with_suffix(".pdf")
    with _style():
        with io.atomic_path(png) as tmp:
            fig.savefig(tmp, format="png", metadata={"Software": None})
        with io.atomic_path(pdf) as tmp:
            fig.savefig(tmp, format="pdf", metadata={"CreationDate": None, "Creator": None,
                                                      "Producer": None})
    return [png, pdf]


def _legend_columns(fig: Figure, labels: Sequence[str], fontsize: float = 9.0) -> int:
    """How many legend columns fit the figure's width: an entry is its handle (~0.5 in) plus its
    text (~0.6 x font size per character), so long model names get fewer columns, never clipped."""
    if not labels:
        return 1
    entry_in = 0.55 + 0.6 * fontsize / 72.0 * max(len(str(x)) for x in labels)
    return max(1, min(len(labels), int(0.95 * fig.get_figwidth() // entry_in)))


def _legend_below(fig: Figure, handles: list, labels: list[str], ncol: int | None = None) -> None:
    """A legend under the axes with as many columns as fit the figure's width (at most ``ncol``)."""
    if handles:
        fit = _legend_columns(fig, labels)
        fig.legend(handles, labels, loc="outside lower center",
                   ncol=min(ncol, fit) if ncol else fit, frameon=False)


# --------------------------------------------------------------------------------------------
# Training curves
# --------------------------------------------------------------------------------------------

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


def _save_and_close(fig: Figure, out_png: str | os.PathLike) -> list[Path]:
    try:
        return save_figure(fig, out_png)
    finally:
        fig.clear()


# --------------------------------------------------------------------------------------------
# Metric means with CIs
# --------------------------------------------------------------------------------------------

_METRIC_LABELS = {"psnr_y": "PSNR-Y (dB)", "ssim_y": "SSIM-Y", "psnr_rgb": "PSNR-RGB (dB)"}


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
    ylabel = _METRIC_LABELS.get(metric, metric)
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


# --------------------------------------------------------------------------------------------
# Classification accuracy and the quality/accuracy trade-off
# --------------------------------------------------------------------------------------------

def _name_column(df: pd.DataFrame, what: str) -> str:
    for col in ("input", "model"):
        if col in df.columns:
            return col
    raise DataError(f"{what}: table needs an 'input' (or 'model') column naming each input; it has "
                    f"{list(df.columns)}")


def _facets(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Split by the ``dataset``/``scale`` columns that are present (one facet when absent)."""
    keys = [c for c in ("dataset", "scale") if c in df.columns]
    if not keys:
        return [("", df)]
    out = []
    for key, group in df.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        label = "  ".join(f"×{v}" if k == "scale" else str(v) for k, v in zip(keys, key))
        out.append((label, group))
    return out


def make_accuracy(acc: pd.DataFrame, colors: Mapping[str, str] | None = None) -> Figure:
    """Top-1 (solid) and top-5 (hatched, when present) accuracy in % per input — HR, bicubic,
    each SR model, the LR head — with the fraction of the bicubic→HR gap closed written above
    each top-1 bar. With the paired columns ``top1_diff_low/high`` (:func:`sfsr.stats.add_paired_columns`)
    each top-1 bar gets an error bar: bicubic's top-1 plus the 95% paired-bootstrap interval of the
    difference to bicubic on the same images. Input: :func:`sfsr.evaluation.accuracy_table` output
    (one panel per dataset x scale when those columns are present)."""
    name = _name_column(acc, "plot_accuracy")
    _check_columns(acc, [name, "top1"], "plot_accuracy")
    has_top5 = "top5" in acc.columns and acc["top5"].notna().any()
    inputs = _canonical_order(acc[name].astype(str).tolist(), colors)
    cols = _colors_for(inputs, colors)
    facets = _facets(acc)
    width = 0.4 if has_top5 else 0.7
    with _style():
        fig = Figure(figsize=(max(5.5, 0.75 * len(inputs) + 2), 3.8 * len(facets) + 0.8),
                     layout="constrained")
        axes = np.atleast_1d(fig.subplots(len(facets), 1, squeeze=False)[:, 0])
        for ax, (label, sub) in zip(axes, facets):
            present = [m for m in inputs if m in set(sub[name].astype(str))]
            bicubic_rows = sub[sub[name].astype(str) == "bicubic"]
            for x, m in enumerate(present):
                row = sub[sub[name].astype(str) == m].iloc[0]
                top1 = 100 * float(row["top1"])
                yerr = None
                if len(bicubic_rows) and pd.notna(row.get("top1_diff_low", np.nan)):
                    base = 100 * float(bicubic_rows["top1"].iloc[0])
                    low, high = base + 100 * float(row["top1_diff_low"]), base + 100 * float(row["top1_diff_high"])
                    yerr = [[max(0.0, top1 - low)], [max(0.0, high - top1)]]
                ax.bar(x - (width / 2 if has_top5 else 0), top1, width, color=cols[m],
                       edgecolor="black", linewidth=0.6, yerr=yerr, capsize=3 if yerr else 0,
                       error_kw={"elinewidth": 1.0})
                if has_top5 and pd.notna(row["top5"]):
                    ax.bar(x + width / 2, 100 * float(row["top5"]), width, color=cols[m], alpha=0.45,
                           hatch="//", edgecolor="black", linewidth=0.6)
                gap = row.get("gap_closed", np.nan)
                text = f"{top1:.1f}%"
                if pd.notna(gap) and m not in ("hr", "bicubic"):
                    text += f"\ngap {float(gap):.2f}"
                ax.annotate(text, (x - (width / 2 if has_top5 else 0), top1), xytext=(0, 2),
                            textcoords="offset points", ha="center", va="bottom", fontsize=9)
            ax.set_xticks(range(len(present)), present, rotation=30, ha="right")
            ax.set_ylim(0, 112)
            ax.set_ylabel("accuracy (%)")
            n = int(sub["n"].iloc[0]) if "n" in sub.columns and len(sub) else None
            ax.set_title("Classifier accuracy" + (f" — {label}" if label else "")
                         + (f"  (n = {n} images)" if n else ""))
        handles = [patches.Patch(facecolor=cols[m], edgecolor="black") for m in inputs]
        labels = list(inputs)
        if has_top5:
            handles += [patches.Patch(facecolor="white", edgecolor="black"),
                        patches.Patch(facecolor="white", edgecolor="black", hatch="//")]
            labels += ["top-1", "top-5"]
        _legend_below(fig, handles, labels, ncol=min(len(labels), 6))
    return fig


def plot_accuracy(acc: pd.DataFrame, out_png: str | os.PathLike,
                  colors: Mapping[str, str] | None = None) -> list[Path]:
    """Save :func:`make_accuracy` as PNG + PDF; returns the two paths."""
    return _save_and_close(make_accuracy(acc, colors), out_png)


def make_tradeoff(acc_with_metrics: pd.DataFrame, colors: Mapping[str, str] | None = None,
                  family: Callable[[str], str] = model_family) -> Figure:
    """PSNR-Y (dB) against top-1 accuracy (%): one labelled point per input that has a PSNR
    (bicubic and each SR model), marker by ``family(name)``, colour by model. HR accuracy (and the
    LR head's, when present) are drawn as horizontal reference lines, since they have no PSNR."""
    name = _name_column(acc_with_metrics, "plot_tradeoff")
    _check_columns(acc_with_metrics, [name, "top1", "psnr_y"], "plot_tradeoff")
    inputs = _canonical_order(acc_with_metrics[name].astype(str).tolist(), colors, family)
    cols = _colors_for(inputs, colors)
    facets = _facets(acc_with_metrics)
    # reference lines (no PSNR): HR and LR heads (``lr_head`` or ``<model>_lr_head``); numbered
    # points: every other input with a finite PSNR
    lines = {m for m in inputs if family(m) in ("hr", "lr_head")}
    has_psnr = {str(r[name]) for _, r in acc_with_metrics.iterrows()
                if np.isfinite(float(r["psnr_y"]) if pd.notna(r["psnr_y"]) else np.nan)}
    points = [m for m in inputs if m not in lines and m in has_psnr]
    number = {m: i for i, m in enumerate(points, start=1)}
    with _style():
        fig = Figure(figsize=(7.5, 4.8 * len(facets) + 0.4 + 0.22 * len(points) / 2), layout="constrained")
        axes = np.atleast_1d(fig.subplots(len(facets), 1, squeeze=False)[:, 0])
        families_seen: list[str] = []
        for ax, (label, sub) in zip(axes, facets):
            for _, row in sub.iterrows():
                m = str(row[name])
                top1 = 100 * float(row["top1"])
                psnr_here = float(row["psnr_y"]) if pd.notna(row["psnr_y"]) else math.nan
                if m in lines or m not in number or not np.isfinite(psnr_here):
                    if m in lines:
                        ax.axhline(top1, color=cols[m], linestyle="--" if m == "hr" else ":",
                                   linewidth=1.2)
                        ax.annotate(f"{m} {top1:.1f}%", (0.01, top1),
                                    xycoords=("axes fraction", "data"), xytext=(0, 2), textcoords="offset points", fontsize=9,
                                    color=cols[m])
                    continue
                fam = family(m)
                if fam not in families_seen:
                    families_seen.append(fam)
                ax.scatter(float(row["psnr_y"]), top1, color=cols[m],
                           marker=FAMILY_MARKERS.get(fam, "h"), s=70, edgecolor="black",
                           linewidth=0.6, zorder=3, label=m)
                # a short number beside the point (names are in the legend): readable with a
                # dozen models where full names would overlap
                ax.annotate(str(number[m]), (float(row["psnr_y"]), top1), xytext=(5, 3),
                            textcoords="offset points", fontsize=8, fontweight="bold")
            ax.set(xlabel="PSNR-Y (dB)", ylabel="top-1 accuracy (%)",
                   title="Quality vs recognisability" + (f" — {label}" if label else ""))
            ax.margins(x=0.15, y=0.12)
        handles = [Line2D([], [], color=cols[m], marker=FAMILY_MARKERS.get(family(m), "h"),
                          linestyle="", markeredgecolor="black", markersize=8) for m in points]
        fam_handles = [Line2D([], [], color="0.5", marker=FAMILY_MARKERS.get(f, "h"), linestyle="",
                              markersize=8) for f in families_seen]
        fig.legend(fam_handles, [f"{f} family" for f in families_seen], loc="outside right upper", title="marker",
                   frameon=False)
        _legend_below(fig, handles, [f"{number[m]}  {m}" for m in points])
    return fig


def plot_tradeoff(acc_with_metrics: pd.DataFrame, out_png: str | os.PathLike,
                  colors: Mapping[str, str] | None = None,
                  family: Callable[[str], str] = model_family) -> list[Path]:
    """Save :func:`make_tradeoff` as PNG + PDF; returns the two paths."""
    return _save_and_close(make_tradeoff(acc_with_metrics, colors, family), out_png)


# --------------------------------------------------------------------------------------------
# Visual comparison grids
# --------------------------------------------------------------------------------------------

def _channel(image: np.ndarray, gray_reference: bool) -> np.ndarray:
    """The channel PSNR-Y is computed on (as :func:`sfsr.metrics.image_metrics`): BT.601 Y of RGB,
    or the gray values when the HR image is gray."""
    image = np.asarray(image)
    if gray_reference:
        return image.astype(np.float64) if image.ndim == 2 else rgb_to_gray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return rgb_to_y(image)


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


# --------------------------------------------------------------------------------------------
# Reference-based SR
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Summary table
# --------------------------------------------------------------------------------------------

def _per_model(value: Mapping[str, Any] | pd.DataFrame | None, column: str, what: str,
               value_cols: Sequence[str]) -> pd.DataFrame | None:
    """A mapping ``model -> value`` or a DataFrame with ``model`` (+ optional ``scale``) as a
    DataFrame with ``model[, scale], column``."""
    if value is None:
        return None
    if isinstance(value, pd.DataFrame):
        _check_columns(value, ["model"], f"summary_table {what}")
        src = next((c for c in (column, *value_cols) if c in value.columns), None)
        if src is None:
            raise DataError(f"summary_table {what}: table needs a {column!r} column; it has "
                            f"{list(value.columns)}")
        keep = ["model"] + (["scale"] if "scale" in value.columns else [])
        out = value[keep + [src]].rename(columns={src: column})
    else:
        out = pd.DataFrame({"model": list(value), column: list(value.values())})
    out["model"] = out["model"].astype(str)
    return out


def summary_table(summary: pd.DataFrame, accuracy: pd.DataFrame | None = None,
                  params: Mapping[str, int] | pd.DataFrame | None = None,
                  train_time: Mapping[str, float] | pd.DataFrame | None = None,
                  families: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per model x dataset x scale: PSNR-Y / SSIM-Y (/ PSNR-RGB) mean and 95% interval
    (from :func:`sfsr.evaluation.summarize`), classifier accuracy where available (``top1, top5,
    gap_closed, gap_closed_top5``, joined on model and — when the accuracy table has it — scale;
    its classification set is kept as ``acc_dataset``), parameter count ``params``, training time
    ``train_time_s`` and the metric ``convention``.

    ``params``/``train_time``: mapping ``model -> value`` or a DataFrame with ``model`` (and
    optionally ``scale``). ``families``: each model's family, for the row order (default: guessed
    from the name, :func:`model_family`). Render with :func:`sfsr.evaluation.summary_markdown`.
    """
    _check_columns(summary, ["model", "dataset", "scale", "psnr_y", "ssim_y", "convention"],
                   "summary_table")
    if summary.duplicated(["model", "dataset", "scale"]).any():
        dup = summary[summary.duplicated(["model", "dataset", "scale"], keep=False)]
        raise DataError("summary_table: the summary has several rows for "
                        f"{dup[['model', 'dataset', 'scale']].drop_duplicates().to_dict('records')}; "
                        "summarize by model, dataset and scale")
    metric_cols = [c for c in summary.columns
                   if c.startswith(("psnr_y", "ssim_y", "psnr_rgb"))]
    out = summary[["model", "dataset", "scale"] + (["n"] if "n" in summary.columns else [])
                  + metric_cols + ["convention"]].copy()
    out["model"] = out["model"].astype(str)
    if accuracy is not None:
        name = _name_column(accuracy, "summary_table accuracy")
        acc = accuracy.rename(columns={name: "model"}).copy()
        acc["model"] = acc["model"].astype(str)
        if "dataset" in acc.columns:
            if acc["dataset"].nunique() > 1:
                raise DataError("summary_table: the accuracy table covers several classification "
                                f"sets {sorted(acc['dataset'].unique())}; pass one at a time")
            acc = acc.rename(columns={"dataset": "acc_dataset"})
        keys = ["model"] + (["scale"] if "scale" in acc.columns else [])
        acc_cols = [c for c in ("acc_dataset", "top1", "top5", "gap_closed", "gap_closed_top5")
                    if c in acc.columns]
        if acc.duplicated(keys).any():
            raise DataError(f"summary_table: the accuracy table has several rows per {keys}")
        out = out.merge(acc[keys + acc_cols], on=keys, how="left")
    for value, column, what, alts in ((params, "params", "params", ("n_params", "parameters")),
                                      (train_time, "train_time_s", "train_time",
                                       ("training_time_s", "elapsed_s"))):
        extra = _per_model(value, column, what, alts)
        if extra is not None:
            keys = ["model"] + (["scale"] if "scale" in extra.columns else [])
            out = out.merge(extra, on=keys, how="left")
    family = family_lookup(families) if families is not None else model_family
    order = {m: i for i, m in enumerate(_canonical_order(out["model"].tolist(), family=family))}
    out = out.sort_values(["dataset", "scale", "model"], key=lambda s: s.map(order)
                          if s.name == "model" else s).reset_index(drop=True)
    cols = [c for c in out.columns if c != "convention"] + ["convention"]
    return out[cols]
