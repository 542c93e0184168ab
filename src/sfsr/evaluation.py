"""Evaluation of SR outputs: per-image tables, means with bootstrap confidence intervals (and the
LPIPS columns of :mod:`sfsr.perceptual_metrics`). The accuracy of a frozen classifier on HR,
bicubic and SR images is :mod:`sfsr.classification`'s.

All image-quality numbers come from :func:`sfsr.metrics.image_metrics` (one convention, recorded in
every row's ``convention`` column).

An SR image equal to its HR image has an infinite PSNR. Per-image tables keep ``inf`` (the exact
value); means and confidence intervals count it as :data:`PSNR_CAP_DB` (100 dB, above any real
reconstruction), and say how many images were capped in the column ``n_psnr_capped`` and in a
logged warning, so a mean never turns into ``inf`` silently (docs/metrics.md).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from collections.abc import Collection
from typing import Any, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from sfsr.data.images import images_by_stem, read_image
from sfsr.errors import DataError
from sfsr.metrics import METRICS, image_metrics

#: The metrics in dB (PSNRs): an exact reproduction (``inf``) is capped in their means.
PSNR_COLUMNS = tuple(name for name, metric in METRICS.items() if metric.unit == "dB")
#: The PSNR an exact reproduction (``inf``) counts as in means.
PSNR_CAP_DB = 100.0
log = logging.getLogger(__name__)




def _shorten(stems: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(stems[:limit])
    return shown + (f", ... ({len(stems)} in all)" if len(stems) > limit else "")


def matched_images(hr_dir: str | os.PathLike, sr_dir: str | os.PathLike, stems: Collection[str] | None = None
                   ) -> tuple[dict[str, Path], dict[str, Path]]:
    """The HR and SR images of two folders by stem (``{stem: path}`` each), the same stems on both
    sides; else :class:`DataError` listing what is missing on each side. ``stems``: only these
    images (an SR folder may hold more, e.g. the bicubic images of a training split)."""
    hr = images_by_stem(hr_dir, what="HR")
    sr = images_by_stem(sr_dir, what="SR")
    if stems is not None:
        wanted = {str(s) for s in stems}
        hr = {k: v for k, v in hr.items() if k in wanted}
        sr = {k: v for k, v in sr.items() if k in wanted}
    missing_sr = sorted(set(hr) - set(sr))
    missing_hr = sorted(set(sr) - set(hr))
    if missing_sr or missing_hr:
        parts = []
        if missing_sr:
            parts.append(f"no SR image in {sr_dir} for: {_shorten(missing_sr)}")
        if missing_hr:
            parts.append(f"no HR image in {hr_dir} for: {_shorten(missing_hr)}")
        raise DataError("HR and SR folders do not match by file stem; " + "; ".join(parts)
                        + ". Every HR image needs exactly one SR image with the same stem.")
    return hr, sr


def evaluate_folders(hr_dir: str | os.PathLike, sr_dir: str | os.PathLike, scale: int,
                     *, resizer: str | None = None, progress: bool = False,
                     stems: Collection[str] | None = None) -> pd.DataFrame:
    """Per-image PSNR-Y / SSIM-Y / PSNR-RGB of every SR image against the HR image of the same stem.

    Returns a long-format DataFrame with columns ``image, psnr_y, ssim_y, psnr_rgb, channel,
    crop_border, convention`` (+ ``resizer`` when given), sorted by image stem. Raises
    :class:`DataError` when the two folders do not hold the same stems (listing what is missing
    on each side) or when an SR image does not have the size of its modcropped HR image.
    ``stems``: only these images (:func:`split_stems`).
    """
    hr, sr = matched_images(hr_dir, sr_dir, stems)
    rows = []
    for stem in tqdm(sorted(hr), desc=f"evaluate x{scale}", disable=not progress):
        try:
            row = image_metrics(read_image(hr[stem]), read_image(sr[stem]), scale)
        except DataError as exc:
            raise DataError(f"{sr[stem]} (HR {hr[stem]}): {exc}") from None
        rows.append({"image": stem, **row})
    table = pd.DataFrame(rows, columns=["image", *METRICS, "channel", "crop_border",
                                        "convention"])
    if resizer is not None:
        table["resizer"] = resizer
    return table


def split_stems(manifest: str | os.PathLike, splits: Sequence[str] | None) -> list[str] | None:
    """The stems of a prepared set's images in ``splits`` (its ``manifest.csv``), sorted; None (every
    image) when ``splits`` is None. The evaluation of a classification set's SR outputs covers its
    val and test splits only, never the images the models or classifiers trained on."""
    if splits is None:
        return None
    frame = pd.read_csv(manifest, dtype={"stem": str, "split": str})
    if "split" not in frame.columns:
        raise DataError(f"{manifest} has no 'split' column, so its {list(splits)} images cannot be chosen")
    return sorted(frame.loc[frame["split"].isin(list(splits)), "stem"])


def example_stems(stems: Sequence[str], n: int, manifest: str | os.PathLike | None = None) -> list[str]:
    """The ``n`` images the ``image_metrics`` rule keeps under ``examples/``: the first ``n`` of
    ``stems`` by stem; for a classification set (a ``manifest.csv`` with a ``split`` column naming
    some of ``stems`` ``test``), the first ``n`` test images by stem instead, so the examples are
    images no model or classifier trained on. ``manifest``: its path (a missing file counts as no
    manifest)."""
    chosen = sorted(str(s) for s in stems)
    if manifest is not None and Path(manifest).is_file():
        frame = pd.read_csv(manifest, dtype={"stem": str, "split": str})
        if {"stem", "split"} <= set(frame.columns):
            test = set(frame.loc[frame["split"] == "test", "stem"])
            if test & set(chosen):
                chosen = [s for s in chosen if s in test]
    return chosen[:max(int(n), 0)]


def mean_metrics(df: pd.DataFrame) -> dict[str, Any]:
    """``{"n", "psnr_y", "ssim_y", "psnr_rgb"}``: the number of images and the plain means."""
    if len(df) == 0:
        raise DataError("no per-image metrics to average (empty table)")
    out: dict[str, Any] = {"n": int(len(df))}
    for col in METRICS:
        out[col] = float(_averaged(df[col].to_numpy(dtype=np.float64), col).mean())
    out["n_psnr_capped"] = _count_capped(df, "the means")
    return out


def _averaged(values: np.ndarray, column: str) -> np.ndarray:
    """The values a mean is taken of: PSNRs above :data:`PSNR_CAP_DB` (``inf``) count as the cap."""
    return np.minimum(values, PSNR_CAP_DB) if column in PSNR_COLUMNS else values


def _count_capped(df: pd.DataFrame, where: str) -> int:
    capped = np.zeros(len(df), dtype=bool)
    for col in PSNR_COLUMNS:
        capped |= df[col].to_numpy(dtype=np.float64) > PSNR_CAP_DB
    n = int(capped.sum())
    if n:
        names = df["image"].tolist() if "image" in df.columns else []
        shown = f" ({_shorten([str(x) for x, c in zip(names, capped) if c])})" if names else ""
        log.warning("%d image(s) equal their HR image exactly%s: PSNR is infinite; %s count it as "
                    "%g dB", n, shown, where, PSNR_CAP_DB)
    return n


def bootstrap_ci(values: Sequence[float] | np.ndarray, n_boot: int = 2000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float]:
    """Percentile-bootstrap ``(1 - alpha)`` confidence interval of the mean of ``values``.

    Resamples the values with replacement ``n_boot`` times (numpy, vectorised in chunks,
    deterministic for a given ``seed``). One value gives ``(v, v)``; none gives ``(nan, nan)``.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    n = x.size
    if n == 0:
        return (float("nan"), float("nan"))
    if n == 1:
        return (float(x[0]), float(x[0]))
    rng = np.random.default_rng(seed)
    chunk = max(1, 5_000_000 // n)
    means = np.concatenate([
        x[rng.integers(0, n, size=(min(chunk, n_boot - start), n))].mean(axis=1)
        for start in range(0, n_boot, chunk)
    ])
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (float(low), float(high))


def _require_columns(table: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(f"{what} lacks the column(s) {missing}; it has {list(table.columns)}")


def summarize(per_image: pd.DataFrame, by: Sequence[str] = ("model", "dataset", "scale"),
              *, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """Mean and bootstrap CI of PSNR-Y, SSIM-Y and PSNR-RGB per group of ``by`` columns.

    Output columns: ``*by, n, n_psnr_capped, <m>, <m>_ci_low, <m>_ci_high`` for each metric ``m``,
    and ``convention`` (PSNRs of exact reproductions count as :data:`PSNR_CAP_DB`). Groups mixing metric conventions are refused (they are not comparable).
    """
    by = list(by)
    _require_columns(per_image, by + list(METRICS) + ["convention"], "summarize: per-image table")
    rows = []
    for key, group in per_image.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        conventions = sorted(group["convention"].unique())
        if len(conventions) != 1:
            raise DataError(f"summarize: group {dict(zip(by, key))} mixes metric conventions "
                            f"{conventions}; recompute all rows with one convention")
        row: dict[str, Any] = dict(zip(by, key))
        row["n"] = int(len(group))
        row["n_psnr_capped"] = _count_capped(group, f"the means of {dict(zip(by, key))}")
        for col in METRICS:
            values = _averaged(group[col].to_numpy(dtype=np.float64), col)
            row[col] = float(values.mean())
            row[f"{col}_ci_low"], row[f"{col}_ci_high"] = bootstrap_ci(values, n_boot, seed, alpha)
        row["convention"] = conventions[0]
        rows.append(row)
    return pd.DataFrame(rows)


#: The columns :func:`add_lpips` reads from the per-image LPIPS tables.
LPIPS_SUMMARY_INPUT = ("lpips", "net")


def add_lpips(summary: pd.DataFrame, per_image: pd.DataFrame,
              by: Sequence[str] = ("model", "dataset", "scale"), *, n_boot: int = 2000,
              seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """``summary`` (of :func:`summarize`, unchanged) with the columns ``lpips, lpips_ci_low,
    lpips_ci_high, lpips_net`` appended: the mean LPIPS per group of ``by`` and its bootstrap CI,
    from the per-image LPIPS tables (:mod:`sfsr.perceptual_metrics`). A group with an image whose
    LPIPS was skipped (no backbone weights: ``lpips`` NaN, the reason in ``skipped``) gets NaN,
    which :func:`summary_markdown` shows as "skipped"; a group without LPIPS rows gets NaN there
    and in ``lpips_net`` (shown blank: not measured)."""
    by = list(by)
    _require_columns(per_image, by + list(LPIPS_SUMMARY_INPUT), "add_lpips: per-image LPIPS table")
    rows = []
    for key, group in per_image.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        values = group["lpips"].to_numpy(dtype=np.float64)
        row: dict[str, Any] = dict(zip(by, key))
        row["lpips_net"] = ", ".join(sorted(group["net"].astype(str).unique()))
        if np.isnan(values).any():
            row["lpips"] = row["lpips_ci_low"] = row["lpips_ci_high"] = float("nan")
        else:
            row["lpips"] = float(values.mean())
            row["lpips_ci_low"], row["lpips_ci_high"] = bootstrap_ci(values, n_boot, seed, alpha)
        rows.append(row)
    columns = ["lpips", "lpips_ci_low", "lpips_ci_high", "lpips_net"]
    table = pd.DataFrame(rows, columns=by + columns)
    return summary.merge(table, on=by, how="left", validate="one_to_one")


def summary_markdown(df: pd.DataFrame) -> str:
    """A Markdown table of :func:`summarize` output: ``mean [low, high]`` per metric (LPIPS, where
    :func:`add_lpips` added it: "skipped" where it was not computed)."""
    metric_fmt = {**{name: (m.title, m.fmt) for name, m in METRICS.items()}, "lpips": ("LPIPS", "{:.4f}")}
    keys = [c for c in df.columns if c not in {"n", "convention"} and not c.startswith(tuple(metric_fmt))]
    out = df[keys + ["n"]].copy()
    for col, (title, fmt) in metric_fmt.items():
        if col not in df.columns:
            continue
        if col == "lpips" and "lpips_net" in df.columns:
            nets = sorted(str(n) for n in df["lpips_net"].dropna().unique())
            title = f"LPIPS-{'/'.join(nets)}" if nets else title
        # LPIPS NaN: skipped (no backbone weights), or not measured for the row (no lpips_net)
        planned = df["lpips_net"].notna() if "lpips_net" in df.columns else pd.Series(True, df.index)
        missing = {i: ("skipped" if planned[i] else "") for i in df.index[df[col].isna()]} \
            if col == "lpips" else {}
        if f"{col}_ci_low" in df.columns:
            out[title] = [missing[i] if i in missing else
                          f"{fmt.format(m)} [{fmt.format(lo)}, {fmt.format(hi)}]" for i, m, lo, hi
                          in zip(df.index, df[col], df[f"{col}_ci_low"], df[f"{col}_ci_high"])]
        else:
            out[title] = [missing[i] if i in missing else fmt.format(m)
                          for i, m in zip(df.index, df[col])]
    text = out.to_markdown(index=False)
    if "convention" in df.columns:
        conventions = ", ".join(sorted(df["convention"].astype(str).unique()))
        text += f"\n\nMetric convention: `{conventions}`; brackets: 95% bootstrap CI of the mean.\n"
        if "lpips" in df.columns:
            text += ("LPIPS: lpips package, v0.1 linear layers, RGB in [-1, 1], the same border "
                     "crop; lower is better; \"skipped\": no backbone weights (see the job's log).\n")
    return text
