"""The configuration schema (JSON Schema of ``config.yaml``, in YAML), shipped inside the package.

Its one source is ``src/sfsr/config.schema.yaml``, a package resource (pyproject's package-data), so
an installed wheel reads the same schema a checkout does; the checkout's top-level
``config.schema.yaml`` is a link to it, for the Snakefile and the readers of ``config.yaml``. Torch-
and jsonschema-free: :mod:`sfsr.training.settings` reads the training defaults from it at import.
"""

from __future__ import annotations

import os
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from sfsr.errors import ConfigError

#: Name of the schema inside the package.
RESOURCE = "config.schema.yaml"


def resource() -> Traversable:
    """The schema shipped with the imported ``sfsr`` (a plain file for a checkout or a wheel install)."""
    return resources.files("sfsr") / RESOURCE


def load(path: str | os.PathLike | Traversable | None = None) -> dict[str, Any]:
    """The schema at ``path`` (default: :func:`resource`) as a dict; :class:`ConfigError` names the
    file and, for the package's own schema, how to get it back."""
    own = path is None
    source = resource() if own else path if isinstance(path, Traversable) else Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        if own:
            raise ConfigError(f"cannot read the configuration schema, the package resource sfsr/{RESOURCE} "
                              f"({source}; {type(exc).__name__}: {exc}): this sfsr installation is "
                              "incomplete. Reinstall it (pip install --force-reinstall <the sfsr wheel or "
                              "checkout>; in a checkout, git checkout src/sfsr/config.schema.yaml)") from exc
        raise ConfigError(f"cannot read the configuration schema {source} ({type(exc).__name__}: {exc})") from exc
    try:
        schema = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"the configuration schema {source} is not valid YAML: {exc}") from exc
    if not isinstance(schema, dict):
        raise ConfigError(f"the configuration schema {source} is not a YAML mapping")
    return schema
