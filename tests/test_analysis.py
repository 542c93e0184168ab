"""The pre-registered comparisons table (sfsr.analysis), on tiny synthetic records whose expected
numbers are worked out by hand in the comments."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from sfsr import stats
from sfsr.analysis import changed_confusions, comparisons, markdown, null_baseline, primary_context
from sfsr.errors import ConfigError, DataError

IMAGES = ["a", "b", "c", "d", "e", "f"]
LABEL = [0, 1, 2, 3, 4, 5]
# top-1 predictions under the judge "vgg" (correct where equal to LABEL)
PRED = {
    "hr":          [0, 1, 2, 3, 4, 9],  # correct 1 1 1 1 1 0
    "bicubic":     [7, 1, 7, 3, 7, 9],  # correct 0 1 0 1 0 0
    "m_sem":       [0, 1, 2, 3, 7, 9],  # correct 1 1 1 1 0 0   (seed 0)
    "m_sem_seed1": [0, 1, 2, 3, 4, 8],  # correct 1 1 1 1 1 0   (seed 1)
    "m_ctl":       [0, 1, 7, 3, 7, 9],  # correct 1 1 0 1 0 0   (seed 0)
    "m_ctl_seed1": [7, 1, 7, 3, 4, 9],  # correct 0 1 0 1 1 0   (seed 1)
}
CTL_LOGP = np.array([-1.0, -2.0, -3.0, -1.5, -2.5, -0.5])
# m_sem - m_ctl log-probability differences: mean over the two seeds is TARGET per image
TARGET = np.array([0.5, -0.25, 1.0, 1.5, 2.0, 0.0])
SHIFT = np.array([0.1, 0.0, 0.0, 0.0, 0.0, 0.0])
SEED_NAMES = {"m_sem": ("m_sem", 0), "m_sem_seed1": ("m_sem", 1), "m_ctl": ("m_ctl", 0),
              "m_ctl_seed1": ("m_ctl", 1)}


def record(name, judge="vgg", drop=()):
    pred = PRED[name]
    logp = {"m_sem": CTL_LOGP + TARGET + SHIFT, "m_sem_seed1": CTL_LOGP + TARGET - SHIFT}.get(name, CTL_LOGP)
    correct = [p == label for p, label in zip(pred, LABEL)]
    rec = {"input": name, "judge": judge, "n": 6, "top1": float(np.mean(correct)), "top5": 1.0,
           "images": list(IMAGES), "correct_top1": correct, "label": list(LABEL), "pred_top1": list(pred),
           "prob_true": list(np.exp(logp)), "logp_true": list(logp)}
    return {k: v for k, v in rec.items() if k not in drop}


def records(drop_hr=()):
    out = [record(n, drop=drop_hr if n == "hr" else ()) for n in reversed(list(PRED))]
    return out + [record(n, judge="prior") for n in PRED]


def psnr_tables():
    # an extra non-test image "z" and a shuffled order: only the records' test images count
    bic = pd.DataFrame({"image": ["z"] + IMAGES[::-1], "psnr_y": [0.0, 25, 24, 23, 22, 21, 20],
                        "ssim_y": 0.5})
    d = np.array([1.0, 2.0, -0.5, 3.0, 4.0, 5.0])
    sem = pd.DataFrame({"image": IMAGES + ["z"], "psnr_y": list(np.arange(20.0, 26.0) + d) + [100.0],
                        "ssim_y": 0.6})
    return {"bicubic": bic, "m_sem": sem, "m_sem_seed1": sem.copy()}


SPEC = {"primary": {"model": "m_sem", "against": "m_ctl", "judge": "vgg", "metric": "top1",
                    "test": "mcnemar_exact", "alpha": 0.3},
        "secondary": [{"model": "m_sem", "against": "bicubic", "judge": "vgg", "metric": "top1"},
                      {"model": "m_sem", "against": "m_ctl", "judge": "vgg", "metric": "agreement"},
                      {"model": "m_sem", "against": "m_ctl", "judge": "vgg", "metric": "logp_true"},
                      {"model": "m_sem", "against": "bicubic", "judge": "", "metric": "psnr_y"},
                      {"model": "m_sem", "against": "m_ctl", "judge": "vgg", "metric": "gap_closed"}]}


@pytest.fixture(scope="module")
def table():
    return comparisons(SPEC, records(), metrics=psnr_tables(), seed_names=SEED_NAMES, n_boot=200, seed=0)


def test_primary_pairs_seeds_by_seed_names(table):
    row = table.iloc[0]
    assert row["role"] == "primary" and row["test"] == "mcnemar_exact"
    assert (row["n_images"], row["n_seeds"]) == (6, 2)
    # seed 0: sem 111100 vs ctl 110100 -> fixed 1 (c); seed 1: sem 111110 vs ctl 010110 -> fixed 2 (a, c);
    # pooled 3 fixed, 0 broken: exact McNemar 2 * (1/2)^3 = 0.25. (Mispaired seeds would give 4 and 1.)
    assert (row["fixed"], row["broken"]) == (3, 0)
    assert row["p"] == pytest.approx(0.25) and row["p_holm"] == pytest.approx(0.25)
    assert row["per_seed"] == "0.166667;0.333333"
    assert row["estimate"] == pytest.approx(0.25)
    # per-seed 1/6, 1/3: mean 1/4, sd (1/6)/sqrt 2, t = (1/4) / (1/12) = 3 on 1 degree of freedom
    from scipy.stats import t
    assert row["p_seeds"] == pytest.approx(2 * t.sf(3, 1))
    assert row["alpha"] == 0.3 and row["significant"] is True  # 0.25 < 0.3, tested alone
    assert row["low"] <= row["estimate"] <= row["high"]


def test_seedless_bicubic_pairs_with_every_seed(table):
    row = table.iloc[1]
    # seed 0: 111100 vs bicubic 010100 -> fixed 2; seed 1: 111110 vs 010100 -> fixed 3; pooled 5, 0
    assert (row["fixed"], row["broken"], row["n_seeds"]) == (5, 0, 2)
    assert row["p"] == pytest.approx(2 / 32)
    assert row["estimate"] == pytest.approx((2 / 6 + 3 / 6) / 2)


def test_agreement_is_against_hr_under_the_same_judge(table):
    row = table.iloc[2]
    # agreement with hr's predictions 0 1 2 3 4 9 (image f: hr is wrong, agreeing means predicting 9):
    # sem seed 0: 111101, seed 1: 111110; ctl seed 0: 110101, seed 1: 010111
    # seed 0: fixed 1 (c), broken 0; seed 1: fixed 2 (a, c), broken 1 (f): pooled 3 vs 1,
    # exact McNemar 2 * (1 + 4) / 16
    assert (row["fixed"], row["broken"]) == (3, 1)
    assert row["p"] == pytest.approx(10 / 16)
    assert row["estimate"] == pytest.approx((1 / 6 + 1 / 6) / 2)


def test_logp_uses_wilcoxon_on_the_mean_over_seeds(table):
    row = table.iloc[3]
    assert row["test"] == "wilcoxon"
    # per-image mean differences 0.5, -0.25, 1, 1.5, 2, 0: the zero dropped, ranks 2, 1, 3, 4, 5,
    # W- = 1; exact P(W <= 1) over 2^5 sign patterns = 2/32, two-sided 4/32
    assert row["p"] == pytest.approx(4 / 32)
    assert row["estimate"] == pytest.approx(TARGET.mean())
    assert row["per_seed"] == f"{TARGET.mean() + 0.1 / 6:.6g};{TARGET.mean() - 0.1 / 6:.6g}"


def test_psnr_is_restricted_to_the_records_images(table):
    row = table.iloc[4]
    # differences 1, 2, -0.5, 3, 4, 5 (image z left out): W- = 1 of ranks 1..6, p = 2 * 2/64
    assert row["judge"] == "" and row["p"] == pytest.approx(4 / 64)
    assert row["estimate"] == pytest.approx(14.5 / 6)


def test_gap_closed_relative_to_hr(table):
    row = table.iloc[5]
    # per-image means over seeds: sem 1 1 1 1 .5 0, ctl .5 1 0 1 .5 0, hr 1 1 1 1 1 0
    num = np.array([0.5, 0, 1, 0, 0, 0])
    den = np.array([0.5, 0, 1, 0, 0.5, 0])
    expect = stats.fieller_ratio(num, den, alpha=0.3)
    assert row["estimate"] == pytest.approx(0.25 / (1 / 3))
    assert (row["low"], row["high"]) == pytest.approx((expect["low"], expect["high"]))
    assert row["status"] == "ok" and math.isnan(row["p"]) and row["significant"] is None
    # seed 0: (sem - ctl) 001000 over (hr - ctl) 001010 -> 1/2; seed 1: 101000 over 101000 -> 1
    assert row["per_seed"] == "0.5;1"


def test_holm_across_the_secondaries_only(table):
    # secondary p: 1/16, 10/16, 4/32, 4/64, NaN -> m = 4: sorted 1/16 * 4 = .25, 1/16 * 3 -> .25,
    # 1/8 * 2 = .25, 10/16 * 1 = .625
    second = table[table["role"] == "secondary"]
    assert second["p_holm"].iloc[:4].tolist() == pytest.approx([0.25, 0.625, 0.25, 0.25])
    assert math.isnan(second["p_holm"].iloc[4])
    assert second["significant"].tolist() == [True, False, True, True, None]
    text = markdown(table)
    assert "tested alone" in text and "Holm" in text and "nothing else is confirmatory" in text
    assert text.count("\n| secondary |") == 5


def test_one_seed_top1_interval_is_newcombe():
    spec = {"primary": {"model": "m_sem", "against": "m_ctl", "judge": "vgg", "metric": "top1"}}
    row = comparisons(spec, records(), n_boot=50).iloc[0]
    # without seed_names every name is seedless: seed 0 only; a=3 both right (a, b, d), fixed 1, broken 0
    assert row["n_seeds"] == 1 and math.isnan(row["p_seeds"])
    assert (row["low"], row["high"]) == pytest.approx(stats.paired_diff_interval(1, 0, 6, both_right=3))
    assert row["p"] == pytest.approx(1.0) and row["significant"] is False


def test_unknown_names_raise_config_errors():
    bad = {"primary": SPEC["primary"], "secondary": [dict(SPEC["secondary"][0], model="m_nope")]}
    with pytest.raises(ConfigError, match=r"secondary\[0\]\.model.*m_nope"):
        comparisons(bad, records(), seed_names=SEED_NAMES)
    with pytest.raises(ConfigError, match=r"primary\.judge.*resnet"):
        comparisons({"primary": dict(SPEC["primary"], judge="resnet")}, records())
    with pytest.raises(ConfigError, match=r"primary\.metric.*top3"):
        comparisons({"primary": dict(SPEC["primary"], metric="top3")}, records())
    with pytest.raises(ConfigError, match=r"primary\.test"):
        comparisons({"primary": dict(SPEC["primary"], test="wilcoxon")}, records())


def test_missing_predictions_name_the_record():
    spec = {"primary": {"model": "m_sem", "against": "m_ctl", "judge": "vgg", "metric": "agreement"}}
    with pytest.raises(DataError, match=r"'hr' \(judge 'vgg'\) has no 'pred_top1'.*rerun the classify jobs"):
        comparisons(spec, records(drop_hr=("pred_top1",)), seed_names=SEED_NAMES)


def test_null_baseline_of_the_control_seeds():
    out = null_baseline(records(), "m_ctl", "vgg", SEED_NAMES)
    # seed 1 (010110) against seed 0 (110100): fixed e, broken a; predictions differ at a and e
    assert out["seeds"] == (0, 1) and (out["fixed"], out["broken"]) == (1, 1)
    assert out["p"] == pytest.approx(1.0) and out["diff"] == 0.0
    assert out["pred_differs"] == pytest.approx(2 / 6)
    # both right: b, d; both wrong: c, f
    assert (out["low"], out["high"]) == pytest.approx(stats.paired_diff_interval(1, 1, 6, both_right=2))
    with pytest.raises(DataError, match="fewer than two"):
        null_baseline(records(), "m_ctl", "vgg", {"m_ctl": ("m_ctl", 0)})


def test_changed_confusions_most_frequent_first():
    label = [1, 1, 1, 2, 2, 0, 0]
    recs = [{"input": "ctl", "judge": "vgg", "images": list("abcdefg"), "label": label,
             "pred_top1": [5, 5, 5, 2, 3, 0, 0]},
            {"input": "sem", "judge": "vgg", "images": list("abcdefg"), "label": label,
             "pred_top1": [1, 1, 5, 2, 2, 0, 4]}]
    # changed: a, b (1: 5 -> 1), e (2: 3 -> 2), g (0: 0 -> 4); ties by class
    out = changed_confusions(recs, "sem", "ctl", "vgg", top=2)
    assert out.to_dict("records") == [{"true_class": 1, "against_pred": 5, "model_pred": 1, "count": 2},
                                      {"true_class": 0, "against_pred": 0, "model_pred": 4, "count": 1}]


def test_primary_context_states_the_noise_floor_and_the_changed_confusions():
    text = primary_context(records(), SPEC["primary"], SEED_NAMES, "prior")
    # the primary names its judge (vgg): m_ctl_seed1 vs m_ctl disagree on a and e (2 of 6)
    assert "m_ctl_seed1 against m_ctl" in text and "33.3% of 6 images" in text and "1 fixed / 1 broken" in text
    # m_sem vs m_ctl (seed 0): c changed 7 -> 2 (true class 2); e is 7 on both
    assert "| 2 | 7 | 2 | 1 |" in text and text.count("\n| ") == 2
    without_seeds = primary_context(records(), SPEC["primary"], {}, "prior")
    assert "Null baseline" not in without_seeds and "Changed confusions" in without_seeds


def test_schema_names_the_metrics_and_tests_analysis_knows():
    """The config schema's comparison (config key analysis) offers exactly the metrics and tests
    sfsr.analysis computes, so a valid config never fails in the accuracy-table job on them."""
    from sfsr.analysis import METRIC_TESTS
    from sfsr.schema import own

    comparison = own()["$defs"]["comparison"]["properties"]
    assert comparison["metric"]["enum"] == list(METRIC_TESTS)
    assert sorted(comparison["test"]["enum"]) == sorted(set(METRIC_TESTS.values()))
