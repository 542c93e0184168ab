"""Paired statistics of classification accuracy, against hand-computed small cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sfsr.errors import DataError
from sfsr.stats import fixed_broken, mcnemar_exact, paired_bootstrap, paired_table


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


def test_paired_bootstrap_brackets_the_difference_and_the_gap():
    rng = np.random.default_rng(1)
    bicubic = rng.random(400) < 0.5
    hr = bicubic | (rng.random(400) < 0.6)
    model = bicubic | (hr & (rng.random(400) < 0.5))  # fixes about half of the gap, breaks nothing
    boot = paired_bootstrap(model, bicubic, hr=hr, bicubic=bicubic, n_boot=500)
    diff = model.mean() - bicubic.mean()
    gap = diff / (hr.mean() - bicubic.mean())
    assert boot["diff_low"] < diff < boot["diff_high"] and boot["diff_low"] > 0
    assert boot["gap_low"] < gap < boot["gap_high"] and 0 < boot["gap_low"] and boot["gap_high"] < 1
    # identical inputs: a zero-width interval at 0
    same = paired_bootstrap(bicubic, bicubic, n_boot=100)
    assert same == {"diff_low": 0.0, "diff_high": 0.0}


def test_paired_table_against_a_reference():
    correct = {"hr": [1, 1, 1, 1], "bicubic": [0, 1, 0, 0], "sr": [1, 1, 0, 0]}
    table = paired_table(correct, "bicubic", n_boot=200).set_index("input")
    assert list(table.index) == ["hr", "sr"]
    assert table.loc["sr", ["fixed", "broken"]].tolist() == [1, 0]
    assert table.loc["sr", "top1"] == 0.5 and table.loc["sr", "top1_reference"] == 0.25
    assert table.loc["hr", "mcnemar_p"] == pytest.approx(mcnemar_exact(3, 0))
    assert not math.isnan(table.loc["sr", "gap_low"])
    with pytest.raises(DataError, match="no predictions for the reference"):
        paired_table(correct, "control")


def test_accuracy_table_gains_paired_columns_against_bicubic_and_the_control():
    import pandas as pd

    from sfsr.stats import add_paired_columns

    correct = {"hr": [1, 1, 1, 1, 1, 1], "bicubic": [0, 1, 0, 0, 1, 0], "m_semantic": [1, 1, 1, 0, 1, 0],
               "m_semantic_control": [1, 1, 0, 0, 1, 0], "m_lr_head": [0, 0, 0, 0, 1, 0]}
    table = pd.DataFrame({"input": ["hr", "bicubic", "m_semantic", "m_semantic_control", "m_lr_head", "x"]})
    out = add_paired_columns(table, correct, n_boot=100).set_index("input")
    assert out.loc["m_semantic", ["fixed_vs_bicubic", "broken_vs_bicubic"]].tolist() == [2, 0]
    assert out.loc["m_semantic", "control"] == "m_semantic_control"
    assert out.loc["m_semantic", ["fixed_vs_control", "broken_vs_control"]].tolist() == [1, 0]
    assert out.loc["m_semantic", "p_vs_control"] == pytest.approx(1.0)  # one discordant image
    assert pd.isna(out.loc["m_semantic_control", "control"]) and np.isnan(out.loc["x", "p_vs_bicubic"])
    assert out.loc["m_lr_head", ["fixed_vs_bicubic", "broken_vs_bicubic"]].tolist() == [0, 1]
