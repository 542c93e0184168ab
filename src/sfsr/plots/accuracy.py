"""Classification accuracy per model and the image-quality / accuracy trade-off.

Part of :mod:`sfsr.plots` (its docstring has the conventions).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pandas as pd
from matplotlib import patches
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from sfsr.errors import DataError
from sfsr.plots.style import FAMILY_MARKERS, model_family, _canonical_order, _check_columns, _colors_for, _legend_below, _save_and_close, _style


def _name_column(df: pd.DataFrame, what: str) -> str:
    for col in ("input", "model"):
        if col in df.columns:
            return col
    raise DataError(f"{what}: table needs an 'input' (or 'model') column naming each input; it has "
                    f"{list(df.columns)}")


def _facets(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Split by the ``dataset``/``scale``/``judge`` columns that are present (one facet when
    absent); the prior's panel comes before the independent judges' of the same set and scale."""
    keys = [c for c in ("dataset", "scale", "judge") if c in df.columns]
    if not keys:
        return [("", df)]
    out = []
    for key, group in df.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        parts = []
        for k, v in zip(keys, key):
            if k == "judge":
                parts.append("judge: the semantic prior" if v == "prior" else f"judge: {v} (independent)")
            else:
                parts.append(f"×{v}" if k == "scale" else str(v))
        order = tuple(v if k != "judge" else (v != "prior", str(v)) for k, v in zip(keys, key))
        out.append((order, "  ".join(parts), group))
    return [(label, group) for _, label, group in sorted(out, key=lambda t: t[0])]


def make_accuracy(acc: pd.DataFrame, colors: Mapping[str, str] | None = None) -> Figure:
    """Top-1 (solid) and top-5 (hatched, when present) accuracy in % per input — HR, bicubic,
    each SR model, the LR head — with the fraction of the bicubic→HR gap closed written above
    each top-1 bar. With the paired columns ``top1_diff_low/high`` (:func:`sfsr.stats.add_paired_columns`)
    each top-1 bar gets an error bar: bicubic's top-1 plus the 95% paired-bootstrap interval of the
    difference to bicubic on the same images. Input: :func:`sfsr.classification.accuracy_table` output
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
            line_labels: dict[str, list[str]] = {}  # lines at the same accuracy share one label
            for _, row in sub.iterrows():
                m = str(row[name])
                top1 = 100 * float(row["top1"])
                psnr_here = float(row["psnr_y"]) if pd.notna(row["psnr_y"]) else math.nan
                if m in lines or m not in number or not np.isfinite(psnr_here):
                    if m in lines:
                        ax.axhline(top1, color=cols[m], linestyle="--" if m == "hr" else ":",
                                   linewidth=1.2)
                        line_labels.setdefault(f"{top1:.1f}", []).append(m)
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
            for value, names in line_labels.items():
                ax.annotate(f"{' = '.join(names)} {value}%", (0.01, float(value)),
                            xycoords=("axes fraction", "data"), xytext=(0, 2), textcoords="offset points",
                            fontsize=9, color=cols[names[0]] if len(names) == 1 else "black")
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
