"""CUFED5-style reference groups with a file missing (issue 22, item 8): a reference's level is the
number in its file name, the group id keeps its padding, and a missing level is never silent
(docs/refsr.md, docs/reliability.md). Runs on a temporary copy of the real CUFED5 sample in the shared
data (skipped, saying why, where it is absent)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sfsr.data.images import read_image
from sfsr.data.manifest import reference_groups, reference_levels
from sfsr.data.prepare import prepare_dataset
from sfsr.errors import WORKFLOW, ConfigError, ImageError
from sfsr.training.data import RefPairDataset, fit_reference

SPEC = {"source": "local", "layout": "refgroups"}


@pytest.fixture
def cufed5(shared_data, tmp_path) -> Path:
    """A copy of the CUFED5 sample group ``001`` (target ``001_0``, references ``001_1..5``) without
    ``001_3``."""
    src = tmp_path / "CUFED5"
    shutil.copytree(shared_data / "refsr" / "CUFED5_sample", src)
    (src / "001_3.png").unlink()
    return src


def test_the_complete_sample_keeps_the_group_id_and_its_five_levels(shared_data, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        prepare_dataset("cufed5", SPEC, shared_data / "refsr" / "CUFED5_sample", tmp_path / "cufed5")
    assert not caplog.records
    [(group, target, refs)] = reference_groups(tmp_path / "cufed5" / "HR")
    assert group == "001" and target.name == "001_0.png"  # not the number 1
    assert [p.name for p in refs] == [f"001_{k}.png" for k in range(1, 6)]


def test_a_missing_level_stops_the_data_job_naming_the_file(cufed5, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="sfsr.data"), pytest.raises(ImageError) as err:
        prepare_dataset("cufed5", SPEC, cufed5, tmp_path / "prepared")
    assert err.value.message(WORKFLOW) == (
        f"{cufed5}/001_3.png: not found: group '001' of dataset cufed5 has references of levels 1, 2, 4, 5 "
        f"but not level 3 (a reference's level is the number in its file name, 1 = most similar); restore "
        f"the file, or set on_bad_image: skip in the dataset's settings to keep the group without that level")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"dataset cufed5: 1 reference file(s) missing in {cufed5}, the levels of the others "
                        f"kept from their file names: 001_3.png (group '001' has levels 1, 2, 4, 5)"]
    assert not (tmp_path / "prepared").exists()


def test_with_skip_the_group_keeps_its_levels_from_the_file_names(cufed5, tmp_path):
    out = tmp_path / "prepared"
    prepare_dataset("cufed5", {**SPEC, "on_bad_image": "skip"}, cufed5, out)
    manifest = pd.read_csv(out / "manifest.csv", dtype=str)
    assert manifest["role"].tolist() == ["target", "ref1", "ref2", "ref4", "ref5"]
    assert set(manifest["group"]) == {"001"}
    skipped = pd.read_csv(out / "skipped.csv")
    assert skipped["path"].tolist() == [str(cufed5 / "001_3.png")]
    assert "not level 3" in skipped["reason"].iloc[0]

    # training on level 4 draws 001_4, not the fourth file left (001_5)
    data = RefPairDataset([out / "HR"], 4, 8, length=2, seed=0, levels=[4])
    [(_, [ref])] = data.groups
    assert np.array_equal(ref, fit_reference(read_image(out / "HR" / "001_4.png"), ref.shape[:2]))
    [(group, _, refs)] = reference_levels(out / "HR")
    assert group == "001" and [(k, p.name) for k, p in refs] == [(1, "001_1.png"), (2, "001_2.png"),
                                                                 (4, "001_4.png"), (5, "001_5.png")]
    # a level the data does not hold is named with the levels it does (was: "lower lr_patch")
    with pytest.raises(ConfigError) as info:
        RefPairDataset([out / "HR"], 4, 8, length=2, seed=0, levels=[3, 9])
    assert str(info.value) == (f"training setting 'reference_levels' is [3, 9], but the reference groups in "
                               f"{out / 'HR'} hold level(s) 1, 2, 4, 5; choose among those, or null for "
                               f"every reference")


def test_the_evaluation_table_reports_the_levels_of_the_file_names(cufed5, tmp_path):
    """reference_table of a reference-based generator (untrained: only the rows matter here)."""
    from sfsr.models import build_generator, generator_spec, save_generator
    from sfsr.refsr import reference_table

    out = tmp_path / "prepared"
    prepare_dataset("cufed5", {**SPEC, "on_bad_image": "skip"}, cufed5, out)
    tiny = dict(num_features=8, num_blocks=1, extract_blocks=1, offset_features=8, base="bicubic")
    save_generator(tmp_path / "ssen.pt", build_generator("ssen", 4, **tiny), generator_spec("ssen", 4, **tiny))
    table = reference_table(out / "HR", 4, model_name="ssen", dataset="cufed5", checkpoint=tmp_path / "ssen.pt")
    assert table["input"].tolist() == ["ref1", "ref2", "ref4", "ref5"]
    assert table["level"].tolist() == [1.0, 2.0, 4.0, 5.0] and set(table["group"]) == {"001"}


def test_a_group_with_fewer_levels_is_kept_and_said(shared_data, tmp_path, caplog):
    """002 ranks three references where 001 ranks five: allowed (no level is renumbered), one line."""
    src = tmp_path / "CUFED5"
    shutil.copytree(shared_data / "refsr" / "CUFED5_sample", src)
    for k in range(3):
        shutil.copy(src / f"001_{k}.png", src / f"002_{k}.png")
    with caplog.at_level(logging.WARNING, logger="sfsr.data"):
        prepare_dataset("cufed5", SPEC, src, tmp_path / "prepared")
    assert [r.getMessage() for r in caplog.records] == [
        f"dataset cufed5: 1 of 2 group(s) in {src} have fewer reference levels than the set's 5, so the means "
        f"of the higher levels have fewer groups: '002' (up to 2)"]
    levels = {g: [k for k, _ in refs] for g, _, refs in reference_levels(tmp_path / "prepared" / "HR")}
    assert levels == {"001": [1, 2, 3, 4, 5], "002": [1, 2]}
