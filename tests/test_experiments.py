"""Every experiment file, merged over config.yaml the way Snakemake merges config files, is a
valid configuration (schema and cross-checks), so a study fails here, not on the cluster."""

import copy

import pytest

from helpers import EXPERIMENT_FILES as FILES, EXPERIMENT_OVERRIDES as OVERRIDES, EXPERIMENTS as ALL, merged
from sfsr import config as cfg


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_experiment_is_valid(path):
    config = cfg.validate(copy.deepcopy(merged(path)))
    assert config["experiment"] != "default", "an experiment writes to its own results folder"
    for override in OVERRIDES[path]:
        config = cfg.validate(copy.deepcopy(merged(path, override)))
        assert config["experiment"] != "default", override.name


def test_there_are_experiments():
    assert {"div2k_x4", "classic291_x4", "refsr_builtin_x4_local", "cufed5_refsr_x4"} <= {p.stem for p in FILES}
    assert {q.stem for qs in OVERRIDES.values() for q in qs} == {p.stem for p in ALL} - {p.stem for p in FILES}


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_paper_presets_keep_their_papers_base_and_cpu_overrides_use_bicubic(path):
    """config.yaml's tiny models use the bicubic base; an experiment that reuses a model name must not
    inherit it silently (Snakemake merges kwargs key by key). Paper presets: the paper's base
    (sfsr.model_options); the CPU overrides and CPU studies (*_local.yaml): bicubic."""
    from sfsr.model_options import GENERATOR_KWARGS
    config = merged(path)
    for name in config["sr_models"]:
        model = config["models"][name]
        base = (model.get("kwargs") or {}).get("base", GENERATOR_KWARGS[model["arch"]]["base"])
        wanted = "bicubic" if path.stem.endswith("_local") else GENERATOR_KWARGS[model["arch"]]["base"]
        assert base == wanted, (path.name, name, base)
    local = path.with_name(f"{path.stem}_local.yaml")
    if local.exists():
        config = merged(path, local)
        for name in config["sr_models"]:
            assert config["models"][name]["kwargs"].get("base") == "bicubic", (local.name, name)
