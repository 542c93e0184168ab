"""Every experiment file, merged over config.yaml the way Snakemake merges config files, is a
valid configuration (schema and cross-checks), so a study fails here, not on the cluster."""

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config

from sfsr import config as cfg

REPO = Path(__file__).resolve().parents[1]
FILES = sorted(p for p in (REPO / "experiments").glob("*.yaml") if not p.stem.endswith("_local"))


def merged(*paths: Path) -> dict:
    out: dict = {}
    for path in (REPO / "config.yaml", *paths):
        update_config(out, yaml.safe_load(path.read_text()))
    return out


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_experiment_is_valid(path):
    config = cfg.validate(copy.deepcopy(merged(path)))
    assert config["experiment"] != "default", "an experiment writes to its own results folder"
    local = path.with_name(f"{path.stem}_local.yaml")
    if local.exists():
        cfg.validate(copy.deepcopy(merged(path, local)))


def test_there_are_experiments():
    assert {"div2k_x4", "classic291_x4"} <= {p.stem for p in FILES}
