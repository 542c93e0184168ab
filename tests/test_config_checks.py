"""Settings a training job (or Snakemake) would reject stop the parse: `sfsr.config.validate`, which
the Snakefile runs, raises a one-line ConfigError naming the key, the value and the fix (issue 22).
Each test changes one key of the repo's config.yaml."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sfsr import config as cfg
from sfsr.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))


@pytest.fixture()
def base() -> dict:
    return copy.deepcopy(BASE)


def rejected(config: dict) -> str:
    """The message of the ConfigError validate raises (one line)."""
    with pytest.raises(ConfigError) as err:
        cfg.validate(config)
    message = str(err.value)
    assert "\n" not in message, message
    return message


# ------------------------------------------------------------------------- dataset layouts
@pytest.mark.parametrize("dataset", ["builtin_refgroups_train", "cufed", "builtin_test"])
def test_classification_set_needs_a_labelled_layout(base, dataset):
    """Only layouts with classes make a classification set (builtin_refgroups, refpairs and flat are
    refused when the config is parsed)."""
    base["classification"] = [dataset]
    msg = rejected(base)
    assert f"names dataset {dataset!r} whose layout is" in msg and "builtin_classes" in msg


# ------------------------------------------------------------------------- discriminator kwargs
def test_discriminator_option_typo_in_a_model_stage(base):
    base["models"]["srresnet_x4"]["gan"]["discriminator"] = {"kwargs": {"num_featurez": 16}}
    msg = rejected(base)
    assert "models.srresnet_x4.gan.discriminator.kwargs" in msg and "'num_featurez'" in msg
    assert "num_features" in msg  # the valid options are listed


def test_discriminator_option_typo_in_training(base):
    base["training"]["discriminator"]["kwargs"]["num_featurez"] = 16
    msg = rejected(base)
    assert "'training.discriminator.kwargs'" in msg and "'num_featurez'" in msg


def test_discriminator_options_of_another_arch(base):
    """training's vgg kwargs (dense_features) under a stage that switches to patchgan."""
    base["models"]["srresnet_x4"]["gan"]["discriminator"] = {"arch": "patchgan"}
    msg = rejected(base)
    assert "training.discriminator.kwargs" in msg and "'dense_features'" in msg and "'patchgan'" in msg


def test_discriminator_option_value(base):
    base["training"]["discriminator"]["kwargs"]["num_features"] = 0
    msg = rejected(base)
    assert "training.discriminator.kwargs.num_features" in msg and "got 0" in msg


def test_discriminator_table_is_the_constructors(base):
    """The torch-free table the parse checks against holds each constructor's own options and defaults."""
    import inspect

    from sfsr import models
    from sfsr.model_options import DISCRIMINATOR_KWARGS

    classes = {"vgg": models.VGGDiscriminator, "patchgan": models.PatchDiscriminator}
    assert tuple(DISCRIMINATOR_KWARGS) == models.DISCRIMINATOR_NAMES
    for name, cls in classes.items():
        params = inspect.signature(cls.__init__).parameters
        assert DISCRIMINATOR_KWARGS[name] == {k: p.default for k, p in params.items() if k != "self"}, name
        models.build_discriminator(name, **DISCRIMINATOR_KWARGS[name])


# ------------------------------------------------------------------------- gpus and batch_size
def test_batch_size_must_split_evenly_over_the_gpus(base):
    fits = copy.deepcopy(base)
    fits["training"].update(gpus=2, batch_size=4)  # the stages' own batch sizes are 8
    cfg.validate(fits)
    base["training"].update(gpus=2, batch_size=3)
    msg = rejected(base)
    assert "'training.batch_size' is 3" in msg and "'training.gpus' is 2" in msg
    assert "batch_size to 2 or 4" in msg and "gpus to 1" in msg


def test_batch_size_of_a_model_stage_names_that_section(base):
    base["training"]["gpus"] = 2  # training.batch_size 8 splits; the semantic stage's 5 does not
    base["models"]["srresnet_x4"]["semantic"]["batch_size"] = 5
    msg = rejected(base)
    assert "'models.srresnet_x4.semantic.batch_size' is 5" in msg and "'training.gpus' is 2" in msg


# ------------------------------------------------------------------------- generator kwargs
def test_ssen_num_deform_out_of_range(base):
    base["models"]["ssen_x4"]["kwargs"]["num_deform"] = 9
    msg = rejected(base)
    assert "models.ssen_x4.kwargs.num_deform" in msg and "9" in msg and "1 to 5" in msg


def test_ssen_max_deform_is_the_models_own():
    from sfsr.model_options import MAX_DEFORM
    from sfsr.models import ssen

    assert ssen.MAX_DEFORM == MAX_DEFORM
    with pytest.raises(ValueError, match="num_deform"):
        ssen.SSEN(4, num_features=4, num_blocks=1, extract_blocks=1, num_deform=MAX_DEFORM + 1)


def test_generator_true_false_option_typed(base):
    base["models"]["ssen_x4"]["kwargs"]["non_local"] = "yes"
    msg = rejected(base)
    assert "models.ssen_x4.kwargs.non_local" in msg and "'yes'" in msg and "true or false" in msg


# ------------------------------------------------------------------------- reference levels
def test_reference_levels_the_training_sets_do_not_hold(base):
    held = copy.deepcopy(base)
    held["models"]["ssen_x4"]["refsr"]["reference_levels"] = [1, 4]
    cfg.validate(held)
    base["models"]["ssen_x4"]["refsr"]["reference_levels"] = [9]
    msg = rejected(base)
    assert "'models.ssen_x4.refsr.reference_levels' is [9]" in msg and "levels 1..4" in msg
    assert "builtin_refgroups_train" in msg and "lr_patch" not in msg


def test_reference_levels_in_training_are_named_there(base):
    base["training"]["reference_levels"] = [1, 5]
    msg = rejected(base)
    assert "'training.reference_levels' is [1, 5]" in msg and "[5]" in msg


# ------------------------------------------------------------------------- seeds
def test_negative_seed_in_seeds(base):
    base["seeds"] = [0, -1]
    msg = rejected(base)
    assert "'seeds[1]'" in msg and "-1" in msg and "minimum of 0" in msg


# ------------------------------------------------------------------------- the pre-registered analysis
def test_primary_judge_must_be_an_independent_judge(base):
    base["primary_judge"] = "prior"
    msg = rejected(base)
    assert "'primary_judge' is 'prior'" in msg and "seed1" in msg


def test_analysis_judge_must_exist(base):
    base["analysis"] = {"primary": {"model": "srresnet_x4_semantic", "against": "srresnet_x4_semantic_control",
                                    "judge": "resnet99", "metric": "top1"}}
    msg = rejected(base)
    assert "'analysis.primary.judge' is 'resnet99'" in msg and "prior, seed1" in msg


def test_secondary_comparisons_need_a_primary(base):
    base["analysis"] = {"secondary": [{"model": "srresnet_x4", "against": "bicubic", "metric": "top1"}]}
    assert "'analysis.secondary' is set without 'analysis.primary'" in rejected(base)


def test_primary_judge_resolution(base):
    base["judges"] = [{"name": "zeta"}, {"name": "alpha"}]
    assert cfg.primary_judge(base) == "alpha"  # the first independent judge by name
    base["primary_judge"] = "zeta"
    assert cfg.primary_judge(base) == "zeta"
    base["analysis"] = {"primary": {"model": "m", "against": "c", "metric": "top1", "judge": "prior"}}
    assert cfg.primary_judge(base) == "prior"  # the comparison's own judge wins
    assert cfg.primary_judge({"judges": []}) == "prior"


# ------------------------------------------------------------------------- paths
def test_empty_data_dir(base):
    base["data_dir"] = ""
    msg = rejected(base)
    assert "'data_dir' is empty ('')" in msg and "resources/data" in msg


def test_results_dir_that_is_a_file(base, tmp_path):
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    base["results_dir"] = str(afile)
    msg = rejected(base)
    assert f"'results_dir' is '{afile}'" in msg and "is a file, not a folder" in msg


def test_data_dir_inside_a_file(base, tmp_path):
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    base["data_dir"] = str(afile / "data")
    msg = rejected(base)
    assert "'data_dir'" in msg and f"{afile}, a part of it, is a file" in msg


def test_experiment_that_leaves_results_dir(base):
    base["experiment"] = ".."
    msg = rejected(base)
    assert "'experiment' is '..'" in msg


# ------------------------------------------------------------------------- through snakemake
ROOT_FOLDERS = ("prepared", "raw", "downloads", "logs", "benchmarks")


@pytest.mark.parametrize("override, says", [
    ({"data_dir": ""}, "'data_dir' is empty ('')"),
    ({"training": {"gpus": 2, "batch_size": 3}}, "'training.batch_size' is 3 but 'training.gpus' is 2"),
], ids=["empty-data_dir", "batch-over-gpus"])
def test_snakemake_dry_run_stops_at_the_parse_with_one_line(tmp_path, override, says):
    """`snakemake -n --configfile`: the message on one line, no Python traceback, nothing written at
    the file-system root (data_dir '' would put prepared/, logs/, ... there) or in the work folder."""
    before = {name: os.path.lexists(f"/{name}") for name in ROOT_FOLDERS}
    overrides = {"data_dir": str(tmp_path / "data"), "results_dir": str(tmp_path / "results"), **override}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(overrides))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"),
                           "-d", str(tmp_path), "--cores", "1", "--configfile", str(REPO / "config.yaml"),
                           str(tmp_path / "bad.yaml")], capture_output=True, text=True, timeout=300)
    err = proc.stdout + proc.stderr
    assert proc.returncode != 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if says in line]
    assert len(lines) == 1 and ("give a path" in lines[0] or "set batch_size to" in lines[0]), err[-3000:]
    assert {name: os.path.lexists(f"/{name}") for name in ROOT_FOLDERS} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".snakemake") == ["bad.yaml"]


# ------------------------------------------------------------------------- the refsr_gan stage
def test_refsr_gan_is_checked_like_the_other_stages(base):
    """refsr_gan's settings are checked before any job: its discriminator (the stage's PatchGAN)
    with the options of that arch, and a perceptual term on the pipeline's classifier needs a
    classification set (the check covers refsr_models too)."""
    base["models"]["ssen_x4"]["refsr_gan"]["discriminator"] = {"kwargs": {"dense_features": 8}}
    msg = rejected(copy.deepcopy(base))
    assert "models.ssen_x4.refsr_gan.discriminator.kwargs" in msg and "dense_features" in msg
    base["models"]["ssen_x4"]["refsr_gan"]["discriminator"] = {"kwargs": {"n_layers": 2}}
    cfg.validate(copy.deepcopy(base))
    base["models"]["ssen_x4"]["refsr_gan"].update(perceptual={"net": "classifier", "layer": "layer3"},
                                                  loss_weights={"perceptual": 0.1})
    cfg.validate(copy.deepcopy(base))  # the study has a classification set: wired as the gan stage's
    base.update(sr_models=[], classification=[])
    assert "'models.ssen_x4.refsr_gan' needs a classification set" in rejected(base)
