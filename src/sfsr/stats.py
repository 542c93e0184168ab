"""Paired statistics of classification accuracy on the same test images (numpy and scipy only).

Every input (HR, bicubic, each SR model) is classified on the same test images, so comparisons are
paired: per image, ``True`` where the top-1 prediction is right.

* :func:`fixed_broken`: images a model gets right that the reference gets wrong (fixed), and the
  reverse (broken).
* :func:`mcnemar_exact`: the exact (binomial) McNemar test on those discordant pairs, two-sided.
* :func:`paired_bootstrap`: 95% percentile-bootstrap intervals, resampling images, of the top-1
  difference and of the share of the bicubic-to-HR gap a model closes.
* :func:`paired_table`: all of them for every input against a reference input.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from sfsr.errors import DataError


def _bool(values: Sequence[bool] | np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=bool).ravel()


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


def paired_bootstrap(model: Sequence[bool], reference: Sequence[bool], *, hr: Sequence[bool] | None = None,
                     bicubic: Sequence[bool] | None = None, n_boot: int = 2000, seed: int = 0,
                     alpha: float = 0.05) -> dict[str, float]:
    """Percentile-bootstrap intervals over images (the same resampled images for every input):
    ``diff_low/diff_high`` of ``top1(model) - top1(reference)`` and, with ``hr`` and ``bicubic``,
    ``gap_low/gap_high`` of ``(top1(model) - top1(bicubic)) / (top1(hr) - top1(bicubic))`` (resamples
    where HR and bicubic tie are left out)."""
    m, r = _bool(model), _bool(reference)
    n = m.size
    if n == 0 or r.size != n:
        raise DataError(f"paired_bootstrap needs the same non-empty set of images ({n} vs {r.size})")
    rng = np.random.default_rng(seed)
    idx = rng.integers(n, size=(int(n_boot), n))
    q = [alpha / 2, 1 - alpha / 2]
    diff = m[idx].mean(axis=1) - r[idx].mean(axis=1)
    out = dict(zip(("diff_low", "diff_high"), np.quantile(diff, q).tolist()))
    if hr is not None and bicubic is not None:
        h, b = _bool(hr), _bool(bicubic)
        if h.size != n or b.size != n:
            raise DataError("paired_bootstrap: hr and bicubic need the same images as the model")
        denom = h[idx].mean(axis=1) - b[idx].mean(axis=1)
        ok = denom != 0
        gap = (m[idx].mean(axis=1)[ok] - b[idx].mean(axis=1)[ok]) / denom[ok]
        out.update(zip(("gap_low", "gap_high"), np.quantile(gap, q).tolist() if gap.size else [np.nan] * 2))
    return {k: float(v) for k, v in out.items()}


def paired_table(correct: Mapping[str, Sequence[bool]], reference: str, *, hr: str = "hr",
                 bicubic: str = "bicubic", n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per input of ``correct`` (input -> per-image top-1 correctness, same image order)
    against ``reference``: ``input, reference, n, top1, top1_reference, fixed, broken,
    mcnemar_p, diff_low, diff_high, gap_low, gap_high``."""
    if reference not in correct:
        raise DataError(f"paired_table: no predictions for the reference {reference!r} (has {sorted(correct)})")
    with_gap = hr in correct and bicubic in correct
    rows = []
    for name, values in correct.items():
        if name == reference:
            continue
        fixed, broken = fixed_broken(values, correct[reference])
        boot = paired_bootstrap(values, correct[reference], hr=correct[hr] if with_gap else None,
                                bicubic=correct[bicubic] if with_gap else None, n_boot=n_boot, seed=seed)
        rows.append({"input": name, "reference": reference, "n": len(_bool(values)),
                     "top1": float(_bool(values).mean()), "top1_reference": float(_bool(correct[reference]).mean()),
                     "fixed": fixed, "broken": broken, "mcnemar_p": mcnemar_exact(fixed, broken),
                     "diff_low": boot["diff_low"], "diff_high": boot["diff_high"],
                     "gap_low": boot.get("gap_low", np.nan), "gap_high": boot.get("gap_high", np.nan)})
    return pd.DataFrame(rows)


def add_paired_columns(table: pd.DataFrame, correct: Mapping[str, Sequence[bool]], *, hr: str = "hr",
                       bicubic: str = "bicubic", control_suffix: str = "_control", n_boot: int = 2000,
                       seed: int = 0) -> pd.DataFrame:
    """The accuracy table (one row per ``input``) with paired statistics against bicubic
    (``fixed_vs_bicubic``, ``broken_vs_bicubic``, ``p_vs_bicubic``, ``top1_diff_low/high``,
    ``gap_closed_low/high``) and, for an input whose ``<input>_control`` was also classified,
    against that budget-matched control (``control``, ``fixed_vs_control``, ``broken_vs_control``,
    ``p_vs_control``, ``diff_vs_control_low/high``). Inputs without per-image predictions get NaN."""
    out = table.copy()
    names = [n for n in out["input"] if n in correct]
    vs_bic = paired_table({n: correct[n] for n in names}, bicubic, hr=hr, bicubic=bicubic, n_boot=n_boot,
                          seed=seed).set_index("input") if bicubic in correct else pd.DataFrame()
    cols = {"fixed_vs_bicubic": "fixed", "broken_vs_bicubic": "broken", "p_vs_bicubic": "mcnemar_p",
            "top1_diff_low": "diff_low", "top1_diff_high": "diff_high", "gap_closed_low": "gap_low",
            "gap_closed_high": "gap_high"}
    for new, old in cols.items():
        out[new] = [vs_bic.loc[n, old] if n in vs_bic.index else np.nan for n in out["input"]]
    controls = {n: f"{n}{control_suffix}" for n in names if f"{n}{control_suffix}" in correct}
    out["control"] = [controls.get(n) for n in out["input"]]
    for col in ("fixed_vs_control", "broken_vs_control", "p_vs_control", "diff_vs_control_low",
                "diff_vs_control_high"):
        out[col] = np.nan
    for name, control in controls.items():
        row = paired_table({name: correct[name], control: correct[control]}, control, n_boot=n_boot,
                           seed=seed).iloc[0]
        at = out["input"] == name
        out.loc[at, ["fixed_vs_control", "broken_vs_control", "p_vs_control", "diff_vs_control_low",
                     "diff_vs_control_high"]] = [row["fixed"], row["broken"], row["mcnemar_p"],
                                                 row["diff_low"], row["diff_high"]]
    return out
