"""The dataset catalogue (``sfsr/data/catalogue.yaml``, shipped inside the package): every data set a
study can name, with its source, layout and, for downloads, the official location and checksum.

A config names data sets in ``train``/``valid``/``test``/...; its own ``datasets:`` entries are merged
over the catalogue's by :func:`with_catalogue` (called by ``sfsr.config.validate``), key by key as
Snakemake merges config files, so a config changes only the keys it sets. Torch-free: the workflow
reads it when it is parsed.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from sfsr.errors import ConfigError

#: Name of the catalogue inside the package.
RESOURCE = "catalogue.yaml"


@lru_cache(maxsize=1)
def _read() -> dict[str, Any]:
    source = resources.files("sfsr.data") / RESOURCE
    try:
        catalogue = yaml.safe_load(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the dataset catalogue, the package resource sfsr/data/{RESOURCE} "
                          f"({type(exc).__name__}: {exc}): this sfsr installation is incomplete; reinstall "
                          "it (in a checkout: git checkout src/sfsr/data/catalogue.yaml)") from exc
    if not isinstance(catalogue, dict):
        raise ConfigError(f"the dataset catalogue sfsr/data/{RESOURCE} is not a YAML mapping of data sets")
    return catalogue


def load() -> dict[str, Any]:
    """The catalogue: data set name -> its entry (a fresh copy)."""
    return copy.deepcopy(_read())


def with_catalogue(datasets: Any) -> Any:
    """The catalogue with a config's ``datasets`` merged over it by Snakemake's own ``update_config``
    (nested mappings key by key, new names after the catalogue's). Anything but a mapping (or None)
    is returned as it is, for the schema to refuse with its message."""
    if datasets is None:
        datasets = {}
    if not isinstance(datasets, dict):
        return datasets
    from snakemake.utils import update_config  # snakemake is a dependency of the package

    merged = load()
    update_config(merged, copy.deepcopy(datasets))
    return merged
