"""Shared test fixtures.

Real data lives in ``../shared/data`` beside the clone (or wherever ``SFSR_SHARED_DATA`` points);
tests that need it skip with a clear reason when it is absent. Nothing from it is copied into git.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    env = os.environ.get("SFSR_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "data")
    for path in candidates:
        if (path / "README.md").is_file():
            return path
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("real data not found: set SFSR_SHARED_DATA or place shared/data beside the clone "
                    "(../shared/data); see README 'Tests'")
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
