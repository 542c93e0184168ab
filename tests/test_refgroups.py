"""Reference-based SR data: offline groups from real photographs at known difficulty levels (and
a true second view from a stereo pair), CUFED's training pairs and CUFED5's ranked groups."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from skimage import data as skdata

from sfsr.data.prepare import prepare_dataset
from sfsr.data.refgroups import LEVELS, random_reference_group, synthetic_groups
from sfsr.errors import ConfigError, DataError
from sfsr.metrics import psnr


def test_references_get_harder_level_by_level():
    rows = synthetic_groups("t", ["astronaut", "coffee", "chelsea"], 64, 3, seed=0)
    frame = pd.DataFrame(rows)
    assert set(frame["level"]) == {0, 1, 2, 3, 4} and len(frame) == 3 * 3 * 5
    targets = {r["group"]: r["image"] for r in rows if r["level"] == 0}
    by_level = {k: np.mean([psnr(targets[r["group"]], r["image"]) for r in rows if r["level"] == k])
                for k in range(1, len(LEVELS) + 1)}
    # the mean similarity to the target falls with the level (the ranking CUFED5 has by construction)
    assert by_level[1] > by_level[2] > by_level[4], by_level
    assert all(r["image"].shape == (64, 64, 3) and r["image"].dtype == np.uint8 for r in rows)
    # deterministic for a seed
    again = synthetic_groups("t", ["astronaut", "coffee", "chelsea"], 64, 3, seed=0)
    assert all(np.array_equal(a["image"], b["image"]) for a, b in zip(rows, again))


def test_the_stereo_pair_gives_a_true_second_view():
    rows = synthetic_groups("t", ["stereo_motorcycle"], 64, 2, seed=0)
    left, right, _ = skdata.stereo_motorcycle()
    target, ref1 = rows[0], rows[1]
    assert (target["level"], ref1["level"]) == (0, 1) and ref1["shift"] == 0.0 and ref1["angle"] == 0.0
    window = (slice(target["top"], target["top"] + 64), slice(target["left"], target["left"] + 64))
    assert np.array_equal(target["image"], left[window])
    # the level-1 reference is the right camera's pixels of the same window: another view
    assert np.abs(ref1["image"].astype(int) - right[window].astype(int)).max() <= 1
    assert not np.array_equal(ref1["image"], target["image"])
    assert psnr(target["image"], ref1["image"]) > 12  # the same scene, some disparity apart


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match="hr_size"):
        synthetic_groups("mine", ["astronaut"], 8, 1)
    with pytest.raises(ConfigError, match="images"):
        synthetic_groups("mine", ["astronaut", "astronaut"], 64, 1)
    with pytest.raises(DataError, match="too small"):
        synthetic_groups("mine", ["coins"], 200, 1)


def test_random_reference_comes_from_another_photo():
    groups = ["a0", "a1", "b0", "c0"]
    photos = {"a0": "a", "a1": "a", "b0": "b", "c0": "c"}
    assert random_reference_group(groups, photos, "a0") == "b0"
    assert random_reference_group(groups, photos, "c0") == "a0"
    with pytest.raises(DataError, match="another photo"):
        random_reference_group(["a0", "a1"], {"a0": "a", "a1": "a"}, "a0")


def test_builtin_refgroups_prepare_with_a_references_table(tmp_path):
    spec = {"source": "builtin", "layout": "builtin_refgroups", "images": ["astronaut", "coffee"],
            "hr_size": 48, "groups_per_image": 2}
    frame = prepare_dataset("bref", spec, None, tmp_path / "bref")
    assert len(frame) == 2 * 2 * 5 and set(frame["role"]) == {"target", "ref1", "ref2", "ref3", "ref4"}
    refs = pd.read_csv(tmp_path / "bref" / "references.csv")
    assert list(refs["stem"]) == list(frame["stem"]) and refs.loc[refs.level == 4, "angle"].eq(25.0).all()
    assert (frame["height"] == 48).all() and (frame["width"] == 48).all()


def test_cufed_pairs_and_cufed5_groups_from_the_shared_samples(shared_data, tmp_path):
    refsr = shared_data / "refsr"
    pairs = prepare_dataset("cufed", {"source": "local", "layout": "refpairs"}, refsr / "CUFED_train_sample",
                            tmp_path / "cufed")
    assert len(pairs) == 20 and set(pairs["role"]) == {"target", "ref1"}
    assert all(sorted(roles) == ["ref1", "target"] for roles in pairs.groupby("group")["role"].apply(list))
    groups = prepare_dataset("cufed5", {"source": "local", "layout": "refgroups"}, refsr / "CUFED5_sample",
                             tmp_path / "cufed5")
    assert list(groups["role"]) == ["target", "ref1", "ref2", "ref3", "ref4", "ref5"]


def test_unpaired_cufed_files_are_named(tmp_path):
    for sub in ("input", "ref"):
        (tmp_path / "src" / sub).mkdir(parents=True)
    image = skdata.astronaut()[:32, :32]
    from PIL import Image
    Image.fromarray(image).save(tmp_path / "src" / "input" / "a.png")
    Image.fromarray(image).save(tmp_path / "src" / "input" / "b.png")
    Image.fromarray(image).save(tmp_path / "src" / "ref" / "a.png")
    with pytest.raises(DataError, match="unpaired: b"):
        prepare_dataset("mine", {"source": "local", "layout": "refpairs"}, tmp_path / "src", tmp_path / "out")
    (tmp_path / "src" / "ref" / "a.png").unlink()
    (tmp_path / "src" / "ref").rmdir()
    with pytest.raises(DataError, match="ref/ is missing"):
        prepare_dataset("mine", {"source": "local", "layout": "refpairs"}, tmp_path / "src", tmp_path / "out")
