"""Every experiment file, merged over config.yaml the way Snakemake merges config files, is a
valid configuration (schema and cross-checks), so a study fails here, not on the cluster."""

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config

from sfsr import config as cfg

REPO = Path(__file__).resolve().parents[1]
ALL = sorted((REPO / "experiments").glob("*.yaml"))


def _base_of(path: Path) -> Path | None:
    """The experiment an override file goes on top of: ``<base>_<what>.yaml`` (e.g.
    ``classic291_x4_local.yaml`` over ``classic291_x4.yaml``); None for a standalone experiment."""
    return next((q for q in ALL if q != path and path.stem.startswith(q.stem + "_")), None)


#: Standalone experiments, and the override files that go on top of each.
FILES = [p for p in ALL if _base_of(p) is None]
OVERRIDES = {p: [q for q in ALL if _base_of(q) == p] for p in FILES}


def merged(*paths: Path) -> dict:
    out: dict = {}
    for path in (REPO / "config.yaml", *paths):
        update_config(out, yaml.safe_load(path.read_text()))
    return out


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
    (sfsr.model_options); the CPU overrides (*_local.yaml): bicubic."""
    from sfsr.model_options import GENERATOR_KWARGS
    config = merged(path)
    for name in config["sr_models"]:
        model = config["models"][name]
        base = (model.get("kwargs") or {}).get("base", GENERATOR_KWARGS[model["arch"]]["base"])
        assert base == GENERATOR_KWARGS[model["arch"]]["base"], (path.name, name, base)
    local = path.with_name(f"{path.stem}_local.yaml")
    if local.exists():
        config = merged(path, local)
        for name in config["sr_models"]:
            assert config["models"][name]["kwargs"].get("base") == "bicubic", (local.name, name)
