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

def pytest_configure(config):
    # --dist loadfile hands out files in collection order (below) only without xdist's default
    # reordering of files by how many tests they hold (pytest-xdist 3.8 here: `--loadscope-reorder`
    # is on by default), under which the hand-kept file order that stood here had no effect. Set
    # here rather than as `--no-loadscope-reorder` in addopts: an older xdist has no such option.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def _heavy_seconds(item) -> float:
    marker = item.get_closest_marker("heavy")
    return float(marker.kwargs.get("seconds", 60)) if marker else 0.0


def pytest_collection_modifyitems(config, items):
    """Files with a ``heavy(seconds=...)`` marker first, longest first (their worker-seconds on the
    quiet 2-core machine, measured with ``--durations=0`` and kept in the file's ``pytestmark``),
    then the other files, those with more tests first (xdist's own default order). So ``--dist
    loadfile`` starts the long files at once on the two workers and fills in with the short ones,
    instead of leaving a long one for last (longest-processing-time-first). xdist gives a worker its
    next file when it has two or fewer tests pending."""
    cost: dict = {}
    count: dict = {}
    for item in items:  # a file's cost: the largest of its tests' markers (a file stays on one worker)
        cost[item.path] = max(cost.get(item.path, 0.0), _heavy_seconds(item))
        count[item.path] = count.get(item.path, 0) + 1
    items.sort(key=lambda item: (-cost[item.path], -count[item.path]))  # stable: a file stays together


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


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory) -> Path:
    """The working folder of the run's one tiny whole study (``helpers.TINY_STUDY``, rule ``all``),
    run by whichever worker asks first and read by all (``helpers.tiny_study``: a file lock in the
    folder the workers share). Tests read it and may dry-run or report in it; none changes its
    outputs."""
    from helpers import tiny_study

    base = tmp_path_factory.getbasetemp()  # under xdist: <run's folder>/popen-gw<N>
    return tiny_study(base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base)


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
