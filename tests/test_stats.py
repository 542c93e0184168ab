"""Paired statistics of classification accuracy, against hand-computed small cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sfsr.errors import DataError
from sfsr.stats import (fieller_ratio, fixed_broken, gap_closed, hierarchical_bootstrap, holm, mcnemar_exact,
                        paired_continuous_test, paired_diff_interval, paired_table, seed_test)

Z95 = 1.959963984540054  # the normal 0.975 quantile


def test_fixed_and_broken_count_the_discordant_images():
    model = [1, 1, 0, 1, 0, 1]
    reference = [0, 1, 1, 0, 0, 1]
    assert fixed_broken(model, reference) == (2, 1)
    with pytest.raises(DataError, match="same images"):
        fixed_broken([1, 0], [1])


def test_exact_mcnemar_by_hand():
    # 2 fixed, 0 broken: P(X <= 0 | n=2) = 1/4, two-sided 1/2
    assert mcnemar_exact(2, 0) == pytest.approx(0.5)
    # 9 fixed, 1 broken: two-sided 2 * (C(10,0) + C(10,1)) / 2^10 = 22 / 1024
    assert mcnemar_exact(9, 1) == pytest.approx(22 / 1024)
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024)
    assert mcnemar_exact(5, 5) == pytest.approx(1.0)
    assert mcnemar_exact(0, 0) == 1.0


def test_paired_table_against_a_reference():
    correct = {"hr": [1, 1, 1, 1], "bicubic": [0, 1, 0, 0], "sr": [1, 1, 0, 0]}
    table = paired_table(correct, "bicubic").set_index("input")
    assert list(table.index) == ["hr", "sr"]
    assert table.loc["sr", ["fixed", "broken"]].tolist() == [1, 0]
    assert table.loc["sr", "top1"] == 0.5 and table.loc["sr", "top1_reference"] == 0.25
    assert table.loc["hr", "mcnemar_p"] == pytest.approx(mcnemar_exact(3, 0))
    # the top-1 difference interval is Newcombe's: sr vs bicubic has a=1 both right, b=1, c=0, d=2
    assert (table.loc["sr", "diff_low"], table.loc["sr", "diff_high"]) == pytest.approx(
        _newcombe_by_formula(1, 1, 0, 2))
    # the gap interval is Fieller's: num = sr - bicubic = [1,0,0,0], den = hr - bicubic = [1,0,1,1]:
    # means 1/4, 3/4; sample variances / n: (3/4 * 1/3) / 4 = 1/16 both; covariance / n: (1/3 * 1/4) / 4 = 1/48
    qa, qb, qc = 9 / 16 - Z95 ** 2 / 16, 3 / 16 - Z95 ** 2 / 48, 1 / 16 - Z95 ** 2 / 16
    roots = sorted(np.roots([qa, -2 * qb, qc]).real)
    assert [table.loc["sr", "gap_low"], table.loc["sr", "gap_high"]] == pytest.approx(roots)
    assert table.loc["sr", "gap_status"] == "ok"
    # HR against bicubic closes the whole gap, a zero-width interval at 1
    assert [table.loc["hr", "gap_low"], table.loc["hr", "gap_high"]] == pytest.approx([1, 1])
    with pytest.raises(DataError, match="no predictions for the reference"):
        paired_table(correct, "control")


def test_paired_table_without_discordant_images_has_a_real_interval_and_no_gap():
    correct = {"hr": [1, 0, 1, 0], "bicubic": [1, 0, 1, 0], "sr": [1, 0, 1, 0]}
    row = paired_table(correct, "bicubic").set_index("input").loc["sr"]
    assert row["diff_low"] < 0 < row["diff_high"]
    assert row["gap_status"] == "no gap to close" and math.isnan(row["gap_low"]) and math.isnan(row["gap_high"])


def test_accuracy_table_gains_paired_columns_against_bicubic_and_the_control():
    import pandas as pd

    from sfsr.stats import add_paired_columns

    correct = {"hr": [1, 1, 1, 1, 1, 1], "bicubic": [0, 1, 0, 0, 1, 0], "m_semantic": [1, 1, 1, 0, 1, 0],
               "m_semantic_control": [1, 1, 0, 0, 1, 0], "m_lr_head": [0, 0, 0, 0, 1, 0]}
    table = pd.DataFrame({"input": ["hr", "bicubic", "m_semantic", "m_semantic_control", "m_lr_head", "x"]})
    out = add_paired_columns(table, correct).set_index("input")
    assert out.loc["m_semantic", ["fixed_vs_bicubic", "broken_vs_bicubic"]].tolist() == [2, 0]
    assert out.loc["m_semantic", "control"] == "m_semantic_control"
    assert out.loc["m_semantic", ["fixed_vs_control", "broken_vs_control"]].tolist() == [1, 0]
    assert out.loc["m_semantic", "p_vs_control"] == pytest.approx(1.0)  # one discordant image
    assert pd.isna(out.loc["m_semantic_control", "control"]) and np.isnan(out.loc["x", "p_vs_bicubic"])
    assert out.loc["m_lr_head", ["fixed_vs_bicubic", "broken_vs_bicubic"]].tolist() == [0, 1]
    assert out.loc["m_semantic", "gap_closed_status"] == "ok"
    # vs the control: a=3 both right, b=1 fixed, c=0 broken, d=2 both wrong
    assert out.loc["m_semantic", ["diff_vs_control_low", "diff_vs_control_high"]].tolist() == pytest.approx(
        list(_newcombe_by_formula(3, 1, 0, 2)))


def test_holm_by_hand():
    # sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # NaN stays NaN and does not count in m (m = 2): 0.02 * 2 = 0.04, 0.6 * 1 = 0.6; capped at 1
    out = holm([0.6, np.nan, 0.02])
    assert math.isnan(out[1]) and out[[0, 2]] == pytest.approx([0.6, 0.04])
    assert holm([0.3, 0.5]) == pytest.approx([0.6, 0.6])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])
    assert holm([]).size == 0


def _wilson_by_scipy(k, n):
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
    return ci.low, ci.high


def _newcombe_by_formula(a, b, c, d):
    """Newcombe (1998) method 10 written out independently: Wilson limits from scipy, the
    continuity-corrected phi."""
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n
    (l1, u1), (l2, u2) = _wilson_by_scipy(a + b, n), _wilson_by_scipy(a + c, n)
    efgh = (a + b) * (c + d) * (a + c) * (b + d)
    cross = a * d - b * c
    phi = 0.0 if efgh == 0 else ((cross - n / 2) / math.sqrt(efgh) if cross > n / 2
                                 else (cross / math.sqrt(efgh) if cross < 0 else 0.0))
    low = p1 - p2 - math.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    high = p1 - p2 + math.sqrt((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2)
    return low, high


@pytest.mark.parametrize("a, b, c, d", [(36, 12, 2, 0), (20, 12, 2, 16), (10, 3, 2, 15), (5, 0, 0, 5),
                                        (50, 0, 0, 0), (2, 10, 1, 30), (40, 3, 1, 2)])
def test_newcombe_interval_matches_the_formula(a, b, c, d):
    assert paired_diff_interval(b, c, a + b + c + d, both_right=a) == pytest.approx(_newcombe_by_formula(a, b, c, d))


def test_newcombe_worked_example_and_properties():
    # Newcombe (1998) Table II example (a): a=36, b=12, c=2, d=0, difference 0.2; method 10 gives
    # 0.0569 to 0.3404 (as recalled from the paper; the formula test above pins the computation)
    low, high = paired_diff_interval(12, 2, 50, both_right=36)
    assert (low, high) == pytest.approx((0.0569, 0.3404), abs=1e-4)
    # symmetry: swapping model and reference mirrors the interval
    assert paired_diff_interval(2, 12, 50, both_right=36) == pytest.approx((-high, -low))
    # no discordant pair: a non-degenerate interval around 0, symmetric
    low0, high0 = paired_diff_interval(0, 0, 10, both_right=7)
    assert low0 < 0 < high0 and low0 == pytest.approx(-high0)
    # all right: both Wilson intervals are [l, 1], so the interval is [-(1 - l), 1 - l]
    l, _ = _wilson_by_scipy(20, 20)
    assert paired_diff_interval(0, 0, 20, both_right=20) == pytest.approx((-(1 - l), 1 - l))
    with pytest.raises(DataError, match="impossible"):
        paired_diff_interval(5, 5, 8, both_right=1)


def test_fieller_ratio_by_a_hand_solved_quadratic():
    num = np.array([1.0, 2.0, 3.0, 6.0])
    den = np.array([2.0, 2.0, 4.0, 4.0])
    # means 3 and 3; sample variances (4+1+0+9)/3 = 14/3 and 4/3; covariance (2+1+0+3)/3 = 2; all / n=4:
    vn, vd, c = 14 / 12, 4 / 12, 2 / 4
    z2 = Z95 ** 2
    qa, qb, qc = 9 - z2 * vd, 9 - z2 * c, 9 - z2 * vn
    disc = math.sqrt(qb * qb - qa * qc)
    res = fieller_ratio(num, den)
    assert res["bounded"] is True and res["ratio"] == pytest.approx(1.0)
    assert (res["low"], res["high"]) == pytest.approx(((qb - disc) / qa, (qb + disc) / qa))
    # the limits solve (mn - R md)^2 = z^2 (vn - 2 R c + R^2 vd)
    for r in (res["low"], res["high"]):
        assert (3 - 3 * r) ** 2 == pytest.approx(z2 * (vn - 2 * r * c + r * r * vd))
    # a denominator whose mean is not significantly different from 0: unbounded, all NaN
    flat = fieller_ratio([1, 2, 3, 4], [1, -1, 1, -1])
    assert flat["bounded"] is False and all(math.isnan(flat[k]) for k in ("ratio", "low", "high"))
    # den = [0, 2]: md = 1, sample variance 2, / n = 2 -> vd = 1; md^2 / vd = 1 <= z^2 -> unbounded
    assert fieller_ratio([0, 1], [0, 2])["bounded"] is False
    # with alpha = 0.5 (z = 0.674, z^2 = 0.455 < 1) the same denominator is bounded
    assert fieller_ratio([0, 1], [0, 2], alpha=0.5)["bounded"] is True


def test_gap_closed_is_fieller_on_the_paired_differences():
    hr = np.array([1, 1, 1, 1, 1, 1, 0, 1])
    bicubic = np.array([0, 0, 0, 1, 0, 0, 0, 1])
    model = np.array([1, 0, 1, 1, 0, 1, 0, 1])
    res = gap_closed(model, hr, bicubic)
    expect = fieller_ratio(model - bicubic, hr - bicubic)
    assert res["status"] == "ok"
    assert res["gap"] == pytest.approx((5 / 8 - 2 / 8) / (7 / 8 - 2 / 8))  # 3/5
    assert (res["low"], res["high"]) == pytest.approx((expect["low"], expect["high"]))
    same = gap_closed(model, bicubic, bicubic)
    assert same["status"] == "no gap to close" and math.isnan(same["gap"])


def test_hierarchical_bootstrap_identical_inputs_and_reproducibility():
    rng = np.random.default_rng(3)
    values = {s: rng.random(6) for s in (0, 1, 2)}
    same = hierarchical_bootstrap(values, values, n_boot=50)
    assert (same["estimate"], same["low"], same["high"]) == (0.0, 0.0, 0.0) and same["n_seeds"] == 3
    other = {s: v[::-1] for s, v in values.items()}
    a = hierarchical_bootstrap(values, other, n_boot=100, seed=5)
    assert a == hierarchical_bootstrap(values, other, n_boot=100, seed=5)
    assert a != hierarchical_bootstrap(values, other, n_boot=100, seed=6)
    with pytest.raises(DataError, match="same seeds"):
        hierarchical_bootstrap({0: [1.0]}, {1: [1.0]})


def test_hierarchical_bootstrap_covers_the_spread_of_seeds():
    # per-seed constant shifts 0.1, 0.5, 0.9: image resampling changes nothing, a replicate is the mean
    # of 3 seed shifts drawn with replacement; all three draws equal to 0.1 has probability 1/27 > 2.5%,
    # so the 2.5% and 97.5% quantiles are exactly the smallest and largest shift
    reference = np.array([0.0, 1.0, 0.5, 0.2, 0.7])
    shifts = {0: 0.1, 1: 0.5, 2: 0.9}
    res = hierarchical_bootstrap({s: reference + c for s, c in shifts.items()}, {s: reference for s in shifts},
                                 n_boot=2000, seed=1)
    assert res["estimate"] == pytest.approx(0.5)
    assert res["per_seed"] == pytest.approx([0.1, 0.5, 0.9])
    assert (res["low"], res["high"]) == pytest.approx((0.1, 0.9))


def test_hierarchical_bootstrap_with_one_seed_is_the_paired_image_bootstrap():
    model = np.array([1, 1, 0, 1, 0, 1, 1], dtype=float)
    reference = np.array([0, 1, 0, 0, 1, 1, 0], dtype=float)
    res = hierarchical_bootstrap({7: model}, {7: reference}, n_boot=300, seed=4)
    rng = np.random.default_rng(4)
    diff = model - reference
    reps = [diff[rng.integers(7, size=7)].mean() for _ in range(300)]
    assert (res["low"], res["high"]) == pytest.approx(tuple(np.quantile(reps, [0.025, 0.975])))
    assert res["estimate"] == pytest.approx(2 / 7) and res["n_seeds"] == 1


def test_hierarchical_bootstrap_draw_order_with_two_seeds():
    m = {0: np.array([1.0, 0.0, 1.0]), 1: np.array([0.0, 0.0, 1.0])}
    r = {0: np.array([0.0, 0.0, 0.0]), 1: np.array([1.0, 1.0, 0.0])}
    res = hierarchical_bootstrap(m, r, n_boot=200, seed=2)
    d = [m[0] - r[0], m[1] - r[1]]
    rng = np.random.default_rng(2)
    reps = []
    for _ in range(200):
        drawn = rng.integers(2, size=2)
        reps.append(np.mean([d[s][rng.integers(3, size=3)].mean() for s in drawn]))
    assert (res["low"], res["high"]) == pytest.approx(tuple(np.quantile(reps, [0.025, 0.975])))
    assert res["estimate"] == pytest.approx((2 / 3 + (-1 / 3)) / 2)


def test_seed_test():
    from scipy.stats import t

    assert math.isnan(seed_test([0.3])) and seed_test([0.0, 0.0, 0.0]) == 1.0
    # x = [1, 2, 3]: mean 2, sd 1, t = 2 / (1 / sqrt 3) = 2 sqrt 3 on 2 degrees of freedom
    assert seed_test([1, 2, 3]) == pytest.approx(2 * t.sf(2 * math.sqrt(3), 2))


def test_paired_continuous_test():
    # differences 1, -2, 3, 4, 5 (and a zero, dropped): ranks 1, 2, 3, 4, 5; W- = 2, W+ = 13;
    # exact null distribution of W+ over 2^5 sign patterns: P(W+ <= 2) = #{0, 1, 2} = 3/32, two-sided 6/32
    x = [1.0, 0.0, 3.0, 4.0, 5.0, 7.0]
    y = [0.0, 2.0, 0.0, 0.0, 0.0, 7.0]
    assert paired_continuous_test(x, y) == pytest.approx(6 / 32)
    assert paired_continuous_test([1, 2], [1, 2]) == 1.0
