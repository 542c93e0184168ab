"""Shared test fixtures.

Real data lives in ``../shared/data`` beside the clone (or wherever ``SFSR_SHARED_DATA`` points);
tests that need it skip with a clear reason when it is absent. Nothing from it is copied into git.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# The suite runs on two pytest-xdist workers (pyproject: -n 2 --dist loadfile), each on one torch /
# OpenMP thread: two workers with two threads each oversubscribe a 2-core machine, where torch's
# intra-op threads collapse (docs/PERFORMANCE.md). Set before any test module imports torch; the
# snakemake jobs the tests start do not inherit it (Snakemake sets OMP_NUM_THREADS to each job's
# `threads`). A run without xdist (-n 0, -p no:xdist) keeps the defaults.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

#: Test files that take minutes (whole studies, installs, clusters, real signals), collected first so
#: that ``--dist loadfile`` starts the two longest on the two workers at once instead of leaving one for
#: last. xdist hands a worker its next file while it has two or fewer tests pending, so the README's
#: worker (two tests) takes a third file at once: two short ones sit there, not the SLURM or signal
#: tests, which would wait behind the install.
HEAVY_FIRST = ["test_study.py", "test_readme.py", "test_bicubic.py", "test_config.py", "test_slurm.py",
               "test_faults.py", "test_ddp.py", "test_training.py", "test_refsr.py", "test_workflow.py"]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept otherwise


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


# Tiny photos: crops of scikit-image's sample photos, saved as PNG (the training and fault tests).
PHOTO_CROPS = {  # name: (rows, columns) of skimage.data.<name>()
    "astronaut": (slice(40, 168), slice(170, 298)),
    "coffee": (slice(100, 220), slice(200, 330)),
    "camera": (slice(100, 200), slice(150, 250)),  # gray
    "chelsea": (slice(60, 160), slice(120, 220)),
}


def save_photos(folder: Path, *names: str) -> Path:
    """Save the :data:`PHOTO_CROPS` crops ``names`` as ``folder/<name>.png``; returns ``folder``."""
    from PIL import Image
    from skimage import data as skdata

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        rows, cols = PHOTO_CROPS[name]
        Image.fromarray(getattr(skdata, name)()[rows, cols]).save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="session")
def photo_saver():
    """:func:`save_photos`, for test modules (they do not import conftest)."""
    return save_photos


@pytest.fixture
def one_torch_thread():
    """torch on one thread during a test (the test machine's cores are shared); use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
