"""Paired statistics of classification accuracy on the same test images (numpy and scipy only).

Every input (HR, bicubic, each SR model) is classified on the same test images, so comparisons are
paired: per image, ``True`` where the top-1 prediction is right.

* :func:`fixed_broken`: images a model gets right that the reference gets wrong (fixed), and the
  reverse (broken).
* :func:`mcnemar_exact`: the exact (binomial) McNemar test on those discordant pairs, two-sided.
* :func:`paired_diff_interval`: Newcombe's hybrid score interval of the difference of two paired
  proportions (a real interval even with no discordant image).
* :func:`fieller_ratio` and :func:`gap_closed`: Fieller's interval of a ratio of paired means, used
  for the share of the bicubic-to-HR gap a model closes.
* :func:`hierarchical_bootstrap`, :func:`seed_test`: uncertainty over training seeds, then images.
* :func:`paired_continuous_test`: Wilcoxon signed-rank test of paired continuous values.
* :func:`holm`: Holm–Bonferroni adjusted p-values.
* :func:`paired_table`, :func:`add_paired_columns`: the above for every input against a reference.
"""

from __future__ import annotations

import math
import warnings
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from sfsr.errors import DataError


def _bool(values: Sequence[bool] | np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=bool).ravel()


def _float(values: Sequence[float] | np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=float).ravel()


def _z(alpha: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(1 - alpha / 2))


def fixed_broken(model: Sequence[bool], reference: Sequence[bool]) -> tuple[int, int]:
    """(fixed, broken): images right for ``model`` and wrong for ``reference``, and the reverse."""
    m, r = _bool(model), _bool(reference)
    if m.shape != r.shape:
        raise DataError(f"paired statistics need the same images: {m.size} vs {r.size} predictions")
    return int(np.sum(m & ~r)), int(np.sum(~m & r))


def mcnemar_exact(fixed: int, broken: int) -> float:
    """Two-sided exact McNemar p-value: under the null a discordant image is fixed or broken with
    probability 1/2, so ``min(fixed, broken)`` is Binomial(fixed + broken, 1/2). 1.0 when there is no
    discordant image."""
    from scipy.stats import binomtest

    n = int(fixed) + int(broken)
    if n == 0:
        return 1.0
    return float(binomtest(min(int(fixed), int(broken)), n, 0.5, alternative="two-sided").pvalue)


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm–Bonferroni step-down adjusted p-values (Holm 1979, Scand J Statist 6:65).

    With the ``m`` non-NaN p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted value of
    ``p_(i)`` is ``max_{j <= i} min(1, (m - j + 1) p_(j))`` (monotone, capped at 1), returned in the
    input order. NaN entries stay NaN and do not count in ``m``. Rejecting where the adjusted value is
    below ``alpha`` controls the family-wise error rate at ``alpha``."""
    p = _float(pvalues)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def _wilson(successes: int, n: int, z: float) -> tuple[float, float]:
    """Wilson (1927) score interval of a proportion ``successes / n`` (no continuity correction)."""
    p = successes / n
    centre = (2 * n * p + z * z) / (2 * (n + z * z))
    half = z * math.sqrt(z * z + 4 * n * p * (1 - p)) / (2 * (n + z * z))
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_diff_interval(fixed: int, broken: int, n: int, *, both_right: int,
                         alpha: float = 0.05) -> tuple[float, float]:
    """Newcombe's hybrid score interval for the difference of two paired proportions
    (Newcombe 1998, Stat Med 17:2635, method 10), ``p_model - p_reference``.

    The paired 2x2 table in Newcombe's notation: ``a = both_right``, ``b = fixed`` (model right,
    reference wrong), ``c = broken`` (the reverse), ``d = n - a - b - c`` (both wrong).
    ``p1 = (a + b) / n``, ``p2 = (a + c) / n``, ``theta = p1 - p2 = (b - c) / n``; ``(l1, u1)``,
    ``(l2, u2)`` are the Wilson score intervals of ``p1`` and ``p2``. With the continuity-corrected
    correlation ``phi = (A - n/2) / sqrt(EFGH)`` if ``A = ad - bc > n/2``, ``0`` if ``0 <= A <= n/2``,
    ``A / sqrt(EFGH)`` if ``A < 0`` (``E, F, G, H`` the margins ``a+b, c+d, a+c, b+d``; ``phi = 0``
    when a margin is 0)::

        low  = theta - sqrt((p1 - l1)^2 - 2 phi (p1 - l1)(u2 - p2) + (u2 - p2)^2)
        high = theta + sqrt((u1 - p1)^2 - 2 phi (u1 - p1)(p2 - l2) + (p2 - l2)^2)

    clipped to [-1, 1]. With no discordant pair it is a non-degenerate interval around 0."""
    a, b, c = int(both_right), int(fixed), int(broken)
    n = int(n)
    d = n - a - b - c
    if n <= 0 or min(a, b, c, d) < 0:
        raise DataError(f"paired_diff_interval: impossible 2x2 table (both_right={a}, fixed={b}, "
                        f"broken={c}, n={n})")
    z = _z(alpha)
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = _wilson(a + b, n, z)
    l2, u2 = _wilson(a + c, n, z)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    phi = 0.0
    if margins > 0:
        cross = a * d - b * c
        if cross > n / 2:
            phi = (cross - n / 2) / math.sqrt(margins)
        elif cross < 0:
            phi = cross / math.sqrt(margins)
    theta = p1 - p2
    delta = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    eps = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return max(-1.0, theta - delta), min(1.0, theta + eps)


def fieller_ratio(num: Sequence[float], den: Sequence[float], alpha: float = 0.05) -> dict[str, float | bool]:
    """Ratio of means ``mean(num) / mean(den)`` of per-image paired values, with Fieller's interval
    (Fieller 1954, J R Stat Soc B 16:175).

    With ``mn, md`` the means, ``vn, vd`` the sample variances (ddof 1) divided by ``n``, ``c`` the
    sample covariance divided by ``n`` and ``z`` the normal ``1 - alpha/2`` quantile, the interval is
    the set of ``R`` with ``(mn - R md)^2 <= z^2 (vn - 2 R c + R^2 vd)``, i.e. between the roots of

        (md^2 - z^2 vd) R^2 - 2 (mn md - z^2 c) R + (mn^2 - z^2 vn) = 0.

    It is a bounded interval only when ``md^2 - z^2 vd > 0`` (the denominator's mean differs
    significantly from 0); otherwise ``bounded`` is False and ``ratio``, ``low``, ``high`` are NaN.
    Returns ``{"ratio", "low", "high", "bounded"}``."""
    x, y = _float(num), _float(den)
    n = x.size
    if n < 2 or y.size != n:
        raise DataError(f"fieller_ratio needs the same images, at least 2 ({x.size} vs {y.size})")
    mn, md = float(x.mean()), float(y.mean())
    cov = np.cov(x, y, ddof=1) / n
    vn, vd, c = float(cov[0, 0]), float(cov[1, 1]), float(cov[0, 1])
    z2 = _z(alpha) ** 2
    qa = md * md - z2 * vd
    if not qa > 0:
        return {"ratio": np.nan, "low": np.nan, "high": np.nan, "bounded": False}
    qb = mn * md - z2 * c
    qc = mn * mn - z2 * vn
    root = math.sqrt(max(0.0, qb * qb - qa * qc))
    return {"ratio": mn / md, "low": (qb - root) / qa, "high": (qb + root) / qa, "bounded": True}


def gap_closed(model: Sequence[float], hr: Sequence[float], bicubic: Sequence[float], *,
               alpha: float = 0.05) -> dict[str, float | str]:
    """Share of the bicubic-to-HR gap a model closes, ``(mean(model) - mean(bicubic)) /
    (mean(hr) - mean(bicubic))``, with Fieller's interval (:func:`fieller_ratio` of the per-image
    ``model - bicubic`` over ``hr - bicubic``). Per-image values are 0/1 correctness or floats.

    ``status`` is ``"no gap to close"`` (``gap``, ``low``, ``high`` NaN) when the HR-bicubic
    difference is not significantly different from 0, else ``"ok"``. The same function gives the gap
    relative to a control: pass the control as ``bicubic``. Returns ``{"gap", "low", "high",
    "status"}``."""
    m, h, b = _float(model), _float(hr), _float(bicubic)
    if not m.size == h.size == b.size:
        raise DataError(f"gap_closed needs the same images ({m.size}, {h.size}, {b.size})")
    res = fieller_ratio(m - b, h - b, alpha=alpha)
    return {"gap": res["ratio"], "low": res["low"], "high": res["high"],
            "status": "ok" if res["bounded"] else "no gap to close"}


def hierarchical_bootstrap(model: Mapping[int, Sequence[float]], reference: Mapping[int, Sequence[float]], *,
                           n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Two-level percentile bootstrap of the mean paired difference ``model - reference`` over
    training seeds, then images (e.g. Saravanan et al. 2020, "Application of the hierarchical
    bootstrap to multi-level data in neuroscience").

    ``model`` and ``reference`` map a training seed to per-image values on the same images, paired by
    seed key (pass a seedless reference as the same array for every seed). ``d_s`` is the per-image
    difference of seed ``s``. ``estimate`` is the mean over seeds of ``mean(d_s)`` (not
    bootstrapped); ``per_seed`` lists those means in sorted seed order.

    Draw order, with ``rng = numpy.random.default_rng(seed)`` and ``k`` seeds, ``n`` images: for each
    of the ``n_boot`` replicates, first ``rng.integers(k, size=k)`` (seed positions in sorted seed
    order; skipped when ``k == 1``), then for each drawn seed in turn ``rng.integers(n, size=n)``
    (images); the replicate is the mean over the drawn seeds of the mean resampled difference.
    ``low``/``high`` are the ``alpha/2`` and ``1 - alpha/2`` quantiles of the replicates
    (``numpy.quantile``, linear). With one seed it is the ordinary paired image bootstrap.
    Returns ``{"estimate", "low", "high", "n_seeds", "per_seed"}``."""
    keys = sorted(model)
    if not keys or sorted(reference) != keys:
        raise DataError(f"hierarchical_bootstrap: model and reference need the same seeds "
                        f"({keys} vs {sorted(reference)})")
    diffs = []
    for key in keys:
        m, r = _float(model[key]), _float(reference[key])
        if m.size == 0 or m.size != r.size:
            raise DataError(f"hierarchical_bootstrap: seed {key} has {m.size} vs {r.size} values")
        diffs.append(m - r)
    n = diffs[0].size
    if any(d.size != n for d in diffs):
        raise DataError("hierarchical_bootstrap: every seed needs the same images")
    d = np.stack(diffs)
    k = len(keys)
    per_seed = d.mean(axis=1)
    rng = np.random.default_rng(seed)
    reps = np.empty(int(n_boot))
    for i in range(int(n_boot)):
        drawn = rng.integers(k, size=k) if k > 1 else np.zeros(1, dtype=int)
        reps[i] = np.mean([d[s, rng.integers(n, size=n)].mean() for s in drawn])
    low, high = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return {"estimate": float(per_seed.mean()), "low": float(low), "high": float(high), "n_seeds": k,
            "per_seed": [float(v) for v in per_seed]}


def seed_test(per_seed_diffs: Sequence[float]) -> float:
    """Two-sided one-sample t-test of per-seed differences against 0
    (:func:`scipy.stats.ttest_1samp`); NaN for fewer than 2 seeds, 1.0 when every difference is
    exactly 0 (scipy's answer, NaN, for other constant differences is kept)."""
    from scipy.stats import ttest_1samp

    x = _float(per_seed_diffs)
    if x.size < 2:
        return float("nan")
    if np.all(x == 0):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(ttest_1samp(x, 0.0).pvalue)


def paired_continuous_test(x: Sequence[float], y: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired continuous values (log-probabilities, PSNR)
    (:func:`scipy.stats.wilcoxon`, ``zero_method="wilcox"``: zero differences dropped, scipy's default
    method); 1.0 when every difference is 0."""
    from scipy.stats import wilcoxon

    a, b = _float(x), _float(y)
    if a.size != b.size or a.size == 0:
        raise DataError(f"paired_continuous_test needs the same non-empty images ({a.size} vs {b.size})")
    if np.all(a - b == 0):
        return 1.0
    return float(wilcoxon(a, b, zero_method="wilcox").pvalue)


def paired_table(correct: Mapping[str, Sequence[bool]], reference: str, *, hr: str = "hr",
                 bicubic: str = "bicubic", alpha: float = 0.05) -> pd.DataFrame:
    """One row per input of ``correct`` (input -> per-image top-1 correctness, same image order)
    against ``reference``: ``input, reference, n, top1, top1_reference, fixed, broken,
    mcnemar_p, diff_low, diff_high, gap_low, gap_high, gap_status``.

    ``diff_low/high``: Newcombe's hybrid score interval of ``top1 - top1_reference``
    (:func:`paired_diff_interval`). ``gap_low/high``: Fieller's interval of the share of the
    bicubic-to-HR gap closed (:func:`gap_closed`), with ``gap_status`` ``"ok"`` or ``"no gap to
    close"`` (NaN interval); all NaN (status None) without HR and bicubic. Analytic intervals: no
    bootstrap, so nothing here depends on a random seed."""
    if reference not in correct:
        raise DataError(f"paired_table: no predictions for the reference {reference!r} (has {sorted(correct)})")
    with_gap = hr in correct and bicubic in correct
    ref = _bool(correct[reference])
    rows = []
    for name, values in correct.items():
        if name == reference:
            continue
        m = _bool(values)
        fixed, broken = fixed_broken(m, ref)
        low, high = paired_diff_interval(fixed, broken, m.size, both_right=int(np.sum(m & ref)), alpha=alpha)
        gap = (gap_closed(m, _bool(correct[hr]), _bool(correct[bicubic]), alpha=alpha) if with_gap
               else {"low": np.nan, "high": np.nan, "status": None})
        rows.append({"input": name, "reference": reference, "n": m.size,
                     "top1": float(m.mean()), "top1_reference": float(ref.mean()),
                     "fixed": fixed, "broken": broken, "mcnemar_p": mcnemar_exact(fixed, broken),
                     "diff_low": low, "diff_high": high,
                     "gap_low": gap["low"], "gap_high": gap["high"], "gap_status": gap["status"]})
    return pd.DataFrame(rows)


def add_paired_columns(table: pd.DataFrame, correct: Mapping[str, Sequence[bool]], *, hr: str = "hr",
                       bicubic: str = "bicubic", control_suffix: str = "_control") -> pd.DataFrame:
    """The accuracy table (one row per ``input``) with paired statistics against bicubic
    (``fixed_vs_bicubic``, ``broken_vs_bicubic``, ``p_vs_bicubic``, ``top1_diff_low/high``: Newcombe's
    interval, ``gap_closed_low/high``: Fieller's interval, ``gap_closed_status``) and, for an input
    whose ``<input>_control`` was also classified, against that budget-matched control (``control``,
    ``fixed_vs_control``, ``broken_vs_control``, ``p_vs_control``, ``diff_vs_control_low/high``).
    Inputs without per-image predictions get NaN. See :func:`paired_table`."""
    out = table.copy()
    names = [n for n in out["input"] if n in correct]
    vs_bic = paired_table({n: correct[n] for n in names}, bicubic, hr=hr, bicubic=bicubic
                          ).set_index("input") if bicubic in correct else pd.DataFrame()
    cols = {"fixed_vs_bicubic": "fixed", "broken_vs_bicubic": "broken", "p_vs_bicubic": "mcnemar_p",
            "top1_diff_low": "diff_low", "top1_diff_high": "diff_high", "gap_closed_low": "gap_low",
            "gap_closed_high": "gap_high", "gap_closed_status": "gap_status"}
    for new, old in cols.items():
        out[new] = [vs_bic.loc[n, old] if n in vs_bic.index else np.nan for n in out["input"]]
    controls = {n: f"{n}{control_suffix}" for n in names if f"{n}{control_suffix}" in correct}
    out["control"] = [controls.get(n) for n in out["input"]]
    for col in ("fixed_vs_control", "broken_vs_control", "p_vs_control", "diff_vs_control_low",
                "diff_vs_control_high"):
        out[col] = np.nan
    for name, control in controls.items():
        row = paired_table({name: correct[name], control: correct[control]}, control).iloc[0]
        at = out["input"] == name
        out.loc[at, ["fixed_vs_control", "broken_vs_control", "p_vs_control", "diff_vs_control_low",
                     "diff_vs_control_high"]] = [row["fixed"], row["broken"], row["mcnemar_p"],
                                                 row["diff_low"], row["diff_high"]]
    return out
