"""Tests of sfsr.evaluation (folder evaluation, bootstrap summaries) and sfsr.classification
(classifier accuracy tables, seed summaries)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from sfsr import io
from sfsr.classification import (accuracy_table, classification_accuracy, gate_decision, mark_comparisons,
                                 per_image_predictions, summary_judge)
from sfsr.data.bicubic import imresize, modcrop
from sfsr.data.images import read_image
from sfsr.errors import DataError
from sfsr.evaluation import bootstrap_ci, evaluate_folders, mean_metrics, summarize, summary_markdown
from sfsr.metrics import CONVENTION, image_metrics


@pytest.fixture(scope="module")
def set5_pairs(shared_data, tmp_path_factory):
    """HR folder (3 Set5 images, copied to tmp) and the x2 bicubic SR folder."""
    root = tmp_path_factory.mktemp("set5")
    names = ["bird", "butterfly", "woman"]
    for name in names:
        hr = read_image(shared_data / "benchmark" / "Set5" / "HR" / f"{name}.png")
        io.save_image(root / "HR" / f"{name}.png", hr)
        io.save_image(root / "SR" / f"{name}.png", imresize(imresize(modcrop(hr, 2), 0.5), 2))
    return root / "HR", root / "SR", names


def test_evaluate_folders_matches_image_metrics(set5_pairs):
    hr_dir, sr_dir, names = set5_pairs
    table = evaluate_folders(hr_dir, sr_dir, 2, resizer="matlab_bicubic")
    assert table["image"].tolist() == sorted(names)
    assert list(table.columns[:7]) == ["image", "psnr_y", "ssim_y", "psnr_rgb", "channel",
                                       "crop_border", "convention"]
    assert (table["resizer"] == "matlab_bicubic").all() and (table["convention"] == CONVENTION).all()
    for row in table.itertuples():
        direct = image_metrics(read_image(hr_dir / f"{row.image}.png"),
                               read_image(sr_dir / f"{row.image}.png"), 2)
        assert row.psnr_y == pytest.approx(direct["psnr_y"]) and row.ssim_y == pytest.approx(direct["ssim_y"])
    means = mean_metrics(table)
    assert means["n"] == 3 and means["psnr_y"] == pytest.approx(table["psnr_y"].mean())
    assert 25 < means["psnr_y"] < 45 and 0.8 < means["ssim_y"] < 1


def test_evaluate_folders_lists_missing_stems_on_each_side(tmp_path):
    img = np.full((40, 40, 3), 128, np.uint8)
    for stem in ("a", "b", "c"):
        io.save_image(tmp_path / "hr" / f"{stem}.png", img)
    for stem in ("a", "zz"):
        io.save_image(tmp_path / "sr" / f"{stem}.png", img)
    with pytest.raises(DataError) as err:
        evaluate_folders(tmp_path / "hr", tmp_path / "sr", 2)
    msg = str(err.value)
    assert "b, c" in msg and "zz" in msg and str(tmp_path / "sr") in msg


def test_evaluation_of_some_splits_only(tmp_path):
    """A classification set's SR outputs are measured on its val and test images only: split_stems
    reads them from the manifest, evaluate_folders and upscale_path take no other image."""
    from sfsr.evaluation import split_stems
    from sfsr.inference import upscale_path

    rng = np.random.default_rng(0)
    stems = ["a", "b", "c", "d"]
    for stem in stems:
        io.save_image(tmp_path / "HR" / f"{stem}.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
        io.save_image(tmp_path / "LR" / f"{stem}.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"stem": stems, "split": ["train", "test", "val", "sr_train"]}).to_csv(manifest, index=False)
    assert split_stems(manifest, ["val", "test"]) == ["b", "c"] and split_stems(manifest, None) is None
    written = upscale_path(tmp_path / "LR", tmp_path / "SR", scale=4, stems=["b", "c"], progress=False)
    assert sorted(p.stem for p in written) == ["b", "c"]
    assert sorted(p.stem for p in (tmp_path / "SR").iterdir()) == ["b", "c"]
    table = evaluate_folders(tmp_path / "HR", tmp_path / "SR", 4, stems=["b", "c"])
    assert table["image"].tolist() == ["b", "c"]
    with pytest.raises(DataError, match="no SR image"):  # HR b, c without stems: a, d have no SR image
        evaluate_folders(tmp_path / "HR", tmp_path / "SR", 4)
    with pytest.raises(DataError, match="lacks 1 image"):
        upscale_path(tmp_path / "LR", tmp_path / "SR2", scale=4, stems=["b", "zz"], progress=False)


def test_evaluate_folders_size_mismatch_names_file_and_sizes(tmp_path):
    io.save_image(tmp_path / "hr" / "x.png", np.zeros((40, 31, 3), np.uint8))  # x2 -> 40 x 30
    io.save_image(tmp_path / "sr" / "x.png", np.zeros((40, 32, 3), np.uint8))
    with pytest.raises(DataError, match=r"x\.png.*32x40.*30x40"):
        evaluate_folders(tmp_path / "hr", tmp_path / "sr", 2)


def test_evaluate_folders_missing_folder(tmp_path):
    with pytest.raises(DataError, match="nope"):
        evaluate_folders(tmp_path / "nope", tmp_path, 2)


# ------------------------------------------------------------------------------- bootstrap -------

def test_example_stems_are_test_images_of_a_classification_set(tmp_path):
    """image_metrics keeps as examples the first n test-split stems of a classification set, the
    first n stems of any other set (no manifest, no split column, or no test image among them)."""
    from sfsr.evaluation import example_stems

    stems = ["c01", "a07", "b02", "a01", "b09"]
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"stem": ["a01", "a07", "b02", "b09", "c01"], "class_id": [0, 0, 1, 1, 2],
                  "split": ["train", "train", "test", "sr_train", "test"]}).to_csv(manifest, index=False)
    assert example_stems(stems, 3, manifest) == ["b02", "c01"]  # only two test images
    assert example_stems(stems, 1, manifest) == ["b02"]
    assert example_stems(stems, 3) == ["a01", "a07", "b02"]
    assert example_stems(stems, 3, tmp_path / "absent.csv") == ["a01", "a07", "b02"]
    pd.DataFrame({"stem": stems, "split": [None] * 5}).to_csv(manifest, index=False)  # a test set's manifest
    assert example_stems(stems, 2, manifest) == ["a01", "a07"]
    assert example_stems(stems, 0, manifest) == []


def test_bootstrap_ci_contains_mean_and_narrows_with_n():
    rng = np.random.default_rng(0)
    small = rng.normal(30, 2, 10)
    big = rng.normal(30, 2, 1000)
    lo_s, hi_s = bootstrap_ci(small)
    lo_b, hi_b = bootstrap_ci(big)
    assert lo_s < small.mean() < hi_s and lo_b < big.mean() < hi_b
    assert (hi_b - lo_b) < 0.5 * (hi_s - lo_s)
    # close to the normal-theory interval 1.96 * sd / sqrt(n)
    assert (hi_b - lo_b) == pytest.approx(2 * 1.96 * big.std() / math.sqrt(big.size), rel=0.15)
    assert bootstrap_ci(small, seed=0) == (lo_s, hi_s)  # deterministic
    assert bootstrap_ci(small, seed=1) != (lo_s, hi_s)
    assert bootstrap_ci([3.5]) == (3.5, 3.5)


def test_summarize_groups_and_markdown():
    rng = np.random.default_rng(1)
    rows = []
    for model, base in (("bicubic", 28.0), ("srresnet", 31.0)):
        for i in range(12):
            rows.append({"model": model, "dataset": "Set14", "scale": 4, "image": f"im{i}",
                         "psnr_y": base + rng.normal(), "ssim_y": 0.7 + 0.01 * rng.normal(),
                         "psnr_rgb": base - 1 + rng.normal(), "convention": CONVENTION})
    per_image = pd.DataFrame(rows)
    summary = summarize(per_image)
    assert summary["model"].tolist() == ["bicubic", "srresnet"] and (summary["n"] == 12).all()
    for r in summary.itertuples():
        sub = per_image[per_image["model"] == r.model]
        assert r.psnr_y == pytest.approx(sub["psnr_y"].mean())
        assert r.psnr_y_ci_low < r.psnr_y < r.psnr_y_ci_high
        assert r.ssim_y_ci_low < r.ssim_y < r.ssim_y_ci_high
    md = summary_markdown(summary)
    assert "| model" in md and "srresnet" in md and f"{summary['psnr_y'][1]:.2f} [" in md
    assert CONVENTION in md
    per_image.loc[0, "convention"] = "other;v0"
    with pytest.raises(DataError, match="mixes metric conventions"):
        summarize(per_image)
    with pytest.raises(DataError, match="epoch"):
        summarize(per_image, by=("model", "epoch"))


# ---------------------------------------------------------------------------- classification -----

class ChannelClassifier(nn.Module):
    """Known-confusion classifier: logit c (c < 3) = mean of input channel c; classes 3..9 get
    fixed logits 0.5, 0.4, ..., -0.1 (so they rank between a strong channel and weak ones)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("bias", torch.tensor([0.5, 0.4, 0.3, 0.2, 0.1, 0.0, -0.1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3))
        return torch.cat([pooled, self.bias.expand(x.shape[0], -1)], dim=1)


def _solid(rgb: tuple[int, int, int], size: tuple[int, int] = (40, 56)) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (*size, 3)).copy()


def _known_set():
    red, green, blue = _solid((255, 0, 0)), _solid((0, 255, 0)), _solid((0, 0, 255))
    images = [red, red, red, green, blue, np.full((50, 30), 200, np.uint8)]
    # red->class 0; rank of class 3 for red is 2 (top-5 hit), class 1 for red is last (miss);
    # gray (200) after ImageNet normalisation has all channels > 0.5 with blue the largest.
    labels = [0, 3, 1, 1, 2, 2]
    return images, labels


def test_classification_accuracy_known_confusion():
    images, labels = _known_set()
    clf = ChannelClassifier()
    clf.train()
    acc = classification_accuracy(clf, images, labels, input_size=16, batch_size=4)
    assert {k: acc[k] for k in ("top1", "top5", "n", "correct_top1", "images", "label")} == {
        "top1": pytest.approx(4 / 6), "top5": pytest.approx(5 / 6), "n": 6,
        "correct_top1": [True, False, False, True, True, True],  # per image, in order
        "images": ["0", "1", "2", "3", "4", "5"], "label": labels}
    assert [p == y for p, y in zip(acc["pred_top1"], labels)] == acc["correct_top1"]
    assert clf.training  # mode restored
    assert classification_accuracy(clf, images, labels, input_size=16, batch_size=1) == acc


def test_classification_accuracy_normalisation_is_configurable():
    images, labels = _known_set()
    # Subtracting 1 from red makes a pure-red image all zeros: bias classes 3..7 (0.5..0.1) rank
    # first, so class 0 is in neither the top-1 nor the top-5.
    acc = classification_accuracy(ChannelClassifier(), images[:1], labels[:1], input_size=16,
                                  mean=(1.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert acc["top1"] == 0.0 and acc["top5"] == 0.0
    # Without normalisation a pure-red image has red = 1 > 0.5: class 0 again.
    acc = classification_accuracy(ChannelClassifier(), images[:1], labels[:1], input_size=16,
                                  normalize=False)
    assert acc["top1"] == 1.0


def test_classification_accuracy_from_folder_and_manifest(tmp_path):
    images, labels = _known_set()
    stems = [f"img{i}" for i in range(len(images))]
    for stem, img in zip(stems, images):
        io.save_image(tmp_path / "sr" / f"{stem}.png", img)
    manifest = pd.DataFrame({"stem": stems, "class_id": [f"c{v}" for v in labels]})
    mapping = {f"c{k}": k for k in range(10)}
    acc = classification_accuracy(ChannelClassifier(), tmp_path / "sr", manifest=manifest,
                                  class_to_index=mapping, input_size=16)
    assert {k: acc[k] for k in ("top1", "top5", "n", "correct_top1", "images")} == {
        "top1": pytest.approx(4 / 6), "top5": pytest.approx(5 / 6), "n": 6,
        "correct_top1": [True, False, False, True, True, True], "images": stems}
    with pytest.raises(DataError, match="class_to_index"):
        classification_accuracy(ChannelClassifier(), tmp_path / "sr", manifest=manifest, input_size=16)
    manifest.loc[len(manifest)] = {"stem": "ghost", "class_id": "c0"}
    with pytest.raises(DataError, match="ghost"):
        classification_accuracy(ChannelClassifier(), tmp_path / "sr", manifest=manifest,
                                class_to_index=mapping, input_size=16)


def test_per_image_predictions_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    out = per_image_predictions(logits, torch.tensor([0, 1]), k=2)
    assert out["pred_top1"] == [0, 2] and out["correct_top1"] == [True, False] and out["label"] == [0, 1]
    logp = [2 - math.log(math.exp(2) + 2), 1 - math.log(1 + math.e + math.exp(3))]
    assert out["logp_true"] == pytest.approx(logp, abs=1e-6)
    assert out["prob_true"] == pytest.approx([math.exp(v) for v in logp], abs=1e-6)
    assert out["topk_index"][1] == [2, 1] and out["topk_logit"][1] == [3.0, 1.0]


def test_gate_goes_only_with_a_gap_worth_closing():
    hr, warm = {"top1": 0.60, "n": 300, "split": "val"}, {"top1": 0.52, "n": 300, "split": "val"}
    go = gate_decision(hr, warm, min_gap=0.05, judge="prior", name="srresnet_x8")
    assert go["go"] and go["gap"] == pytest.approx(0.08) and go["split"] == "val"
    assert not gate_decision(hr, warm, min_gap=0.1, judge="prior", name="srresnet_x8")["go"]
    assert gate_decision(hr, {"top1": 0.55, "n": 300}, min_gap=0.05, judge="prior", name="m")["go"]  # equal


def test_comparison_marks_on_the_accuracy_table():
    table = pd.DataFrame({"judge": ["prior", "prior", "j", "j"], "input": ["sem", "warm", "sem", "warm"]})
    comps = pd.DataFrame([
        {"role": "secondary", "model": "sem", "against": "ctl", "judge": "prior", "metric": "top1", "p_holm": 0.2},
        {"role": "primary", "model": "sem", "against": "ctl", "judge": "j", "metric": "top1", "p_holm": 0.01},
        {"role": "secondary", "model": "sem", "against": "bicubic", "judge": "j", "metric": "top1", "p_holm": 0.5},
        {"role": "secondary", "model": "warm", "against": "bicubic", "judge": "j", "metric": "psnr_y", "p_holm": 0.03}])
    out = mark_comparisons(table, comps)
    assert out["role"].tolist() == ["secondary", "descriptive", "primary", "descriptive"]
    assert out["compared_with"].tolist() == ["ctl", "", "ctl", ""]  # the primary's mark wins on its row
    assert out["p_holm"].tolist()[0] == 0.2 and out["p_holm"].tolist()[2] == 0.01
    assert np.isnan(out["p_holm"].tolist()[1])


def test_summary_judge_prefers_the_marked_primary_judge():
    assert summary_judge(["prior", "b", "a"]) == "a"
    assert summary_judge(["prior", "b", "a"], [False, True, False]) == "b"
    assert summary_judge(["prior", "b"], [False, False]) == "b"


def test_accuracy_table_gap_closed():
    accs = {"hr": {"top1": 0.9, "top5": 0.99, "n": 10}, "bicubic": {"top1": 0.5, "top5": 0.8, "n": 10},
            "srresnet": {"top1": 0.7, "top5": 0.97, "n": 10}, "worse": {"top1": 0.4, "top5": 0.8, "n": 10}}
    metrics = {"bicubic": {"psnr_y": 26.0, "ssim_y": 0.70, "psnr_rgb": 24.5},
               "srresnet": {"psnr_y": 28.5, "ssim_y": 0.80, "psnr_rgb": 27.0}}
    table = accuracy_table(accs, metrics).set_index("input")
    assert table.loc["hr", "gap_closed"] == pytest.approx(1.0)
    assert table.loc["bicubic", "gap_closed"] == pytest.approx(0.0)
    assert table.loc["srresnet", "gap_closed"] == pytest.approx((0.7 - 0.5) / (0.9 - 0.5))
    assert table.loc["worse", "gap_closed"] == pytest.approx(-0.25)
    assert table.loc["srresnet", "gap_closed_top5"] == pytest.approx((0.97 - 0.8) / (0.99 - 0.8))
    assert table.loc["srresnet", "psnr_y"] == 28.5 and math.isnan(table.loc["hr", "psnr_y"])
    frame = pd.DataFrame([{"model": "srresnet", **metrics["srresnet"]}])
    assert accuracy_table(accs, frame).set_index("input").loc["srresnet", "ssim_y"] == 0.80
    same = accuracy_table({"hr": accs["bicubic"], "bicubic": accs["bicubic"]})
    assert same["gap_closed"].isna().all()
    with pytest.raises(DataError, match="'hr'"):
        accuracy_table({"bicubic": accs["bicubic"]})


def test_seed_summary_gives_mean_sd_and_values_per_model_and_judge():
    from sfsr.classification import seed_summary

    groups = {"m": ["m", 0], "m_seed1": ["m", 1], "m_seed2": ["m", 2], "m_gan": ["m_gan", 0]}
    summary = pd.DataFrame({"model": ["bicubic", "m", "m_seed1", "m_seed2", "m_gan"], "dataset": "set5",
                            "scale": 4, "psnr_y": [28.0, 30.0, 31.0, 32.5, 29.0],
                            "ssim_y": [0.8, 0.85, 0.86, 0.87, 0.84]})
    accuracy = pd.DataFrame({"dataset": "cls", "scale": 4, "judge": ["prior"] * 3 + ["j1"] * 3,
                             "input": ["m", "m_seed1", "m_seed2"] * 2,
                             "top1": [0.5, 0.6, 0.7, 0.4, 0.4, 0.4], "gap_closed": [0.1, 0.2, 0.3, 0, 0, 0]})
    table = seed_summary(summary, accuracy, groups).set_index(["model", "dataset", "judge", "metric"])
    psnr = table.loc[("m", "set5", "", "psnr_y")]
    assert psnr["n_seeds"] == 3 and psnr["mean"] == pytest.approx(31.166666, abs=1e-5)
    assert psnr["sd"] == pytest.approx(np.std([30.0, 31.0, 32.5], ddof=1))
    assert psnr["seeds"] == "0;1;2" and psnr["values"] == "30;31;32.5"
    top1 = table.loc[("m", "cls", "prior", "top1")]
    assert top1["mean"] == pytest.approx(0.6) and top1["sd"] == pytest.approx(0.1)
    assert table.loc[("m", "cls", "j1", "top1")]["sd"] == pytest.approx(0.0, abs=1e-12)
    single = table.loc[("m_gan", "set5", "", "psnr_y")]
    assert single["n_seeds"] == 1 and np.isnan(single["sd"])
    assert "bicubic" not in table.index.get_level_values("model")  # not trained, not summarised
