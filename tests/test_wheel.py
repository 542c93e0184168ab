"""sfsr installs as a wheel (``pip install .``, not editable) and trains from it: what the library
reads at run time (the configuration schema, :mod:`sfsr.schema`) ships inside the package.

The wheel is built from the checkout's packaging files (pyproject.toml, README.md, src/, copied to a
temporary folder so that the build leaves no build/ in the checkout), installed with
``pip install --target`` and imported, with that folder first on PYTHONPATH, in a fresh interpreter
whose working directory is neither the checkout nor inside it; the test checks that ``sfsr`` really
comes from the wheel (the test venv also holds an editable install of a checkout). The build runs
offline (``--no-build-isolation``) where setuptools>=68 is installed, else it fetches setuptools from
the package index; a build that cannot run fails the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from sfsr import schema
from sfsr.config import load_schema
from sfsr.errors import ConfigError
from sfsr.training import distributed, settings

REPO = Path(__file__).resolve().parents[1]


def _setuptools_here() -> bool:
    try:
        return int(metadata.version("setuptools").split(".")[0]) >= 68
    except (metadata.PackageNotFoundError, ValueError):
        return False


def _pip(*args: str, cwd: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"pip {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    tree = root / "checkout"
    shutil.copytree(REPO / "src", tree / "src", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, tree / name)
    offline = ["--no-build-isolation", "--no-index"] if _setuptools_here() else []
    _pip("wheel", "--no-deps", *offline, "-w", str(root / "dist"), str(tree), cwd=root)
    (built,) = (root / "dist").glob("sfsr-*.whl")
    return built


@pytest.mark.slow
def test_the_wheel_holds_the_package_its_schema_and_catalogue_only(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "sfsr/config.schema.yaml" in names
    assert "sfsr/training/loop.py" in names and "sfsr/schema.py" in names
    tops = {n.split("/")[0] for n in names}
    assert tops == {"sfsr", "sfsr-0.1.0.dist-info"}, tops  # no tests/, results/, docs/, config.yaml
    for resource in ("config.schema.yaml", "data/catalogue.yaml"):  # read at run time
        shipped = zipfile.ZipFile(wheel).read(f"sfsr/{resource}").decode()
        assert shipped == (REPO / "src" / "sfsr" / resource).read_text(encoding="utf-8")


TRAIN = """
import json, sys
from pathlib import Path
import torch
import sfsr
import sfsr.training.loop
from sfsr.training.distributed import launch
from sfsr.training.settings import TRAINING_DEFAULTS

cfg = dict(arch="edsr_baseline", scale=2, kwargs=dict(num_blocks=1, num_features=8), iterations=4,
           batch_size=2, lr_patch=12, lr=1e-3, log_every=1, val_every=1000, checkpoint_every=1000,
           num_workers=0, ema_decay=None, compile=False)
args = dict(train_hr_dirs=[{photos!r}], valid_hr_dirs=[], device="cpu", seed=0)
out = Path({out!r})
one = sfsr.training.loop.train("warmup", cfg, out_dir=out / "one", **args)
two = launch(2, "warmup", cfg, out_dir=out / "two", **args)  # torchrun workers import this sfsr too
for gen in (one, two):
    assert set(torch.load(gen, weights_only=True)["state_dict"])
print(json.dumps(dict(sfsr=sfsr.__file__, loop=sfsr.training.loop.__file__, one=str(one), two=str(two),
                      defaults=len(TRAINING_DEFAULTS))))
"""


@pytest.mark.slow
def test_an_installed_wheel_trains_a_model(wheel, tmp_path, photo_saver):
    """The wheel, installed where no checkout is, imports from its own folder, reads its training
    defaults from the shipped schema and trains a tiny model (in-process and on 2 torchrun workers);
    without the schema the import fails with a ConfigError that says to reinstall."""
    site = tmp_path / "site"
    _pip("install", "--no-deps", "--no-index", "--target", str(site), str(wheel), cwd=tmp_path)
    photos = photo_saver(tmp_path / "photos", "astronaut", "coffee")
    out, work = tmp_path / "out", tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}  # the wheel first
    proc = subprocess.run([sys.executable, "-c", TRAIN.format(photos=str(photos), out=str(out))], cwd=work,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(got["sfsr"]).is_relative_to(site), got  # the wheel, not an editable checkout
    assert Path(got["loop"]).is_relative_to(site), got
    assert got["defaults"] == len(settings.TRAINING_DEFAULTS)
    for run in ("one", "two"):
        assert Path(got[run]) == out / run / "generator.pt"
        log = (out / run / "train_log.csv").read_text().splitlines()
        assert log[0].startswith("iteration,pixel,lr,")
        assert [int(line.split(",")[0]) for line in log[1:]] == [1, 2, 3, 4], log

    (site / "sfsr" / "config.schema.yaml").unlink()
    proc = subprocess.run([sys.executable, "-c", "import sfsr.training.settings"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "ConfigError: cannot read the configuration schema, the package resource sfsr/config.schema.yaml" \
        in last and "Reinstall it" in last and "repository root" not in last, last


def test_a_missing_schema_names_the_package_resource_and_the_fix(monkeypatch, tmp_path, request):
    monkeypatch.setattr(schema, "resource", lambda: tmp_path / "gone" / schema.RESOURCE)
    schema.own.cache_clear()  # the package's schema is read once per process: read it afresh here,
    request.addfinalizer(schema.own.cache_clear)  # and again (the real one) after the test
    for read in (schema.load, load_schema, settings._schema_training_defaults):
        with pytest.raises(ConfigError, match=r"package resource sfsr/config\.schema\.yaml .*Reinstall it"):
            read()
    with pytest.raises(ConfigError, match=r"cannot read the configuration schema .*nope\.yaml \(FileNotFound"):
        load_schema(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("properties: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_schema(tmp_path / "bad.yaml")
    (tmp_path / "empty.yaml").write_text("properties: {}\n")
    with pytest.raises(ConfigError, match="properties.training section is their one source"):
        settings._schema_training_defaults(tmp_path / "empty.yaml")


def test_the_checkout_schema_is_the_package_resource():
    """One source: the top-level config.schema.yaml (Snakefile, docs) links to the package's."""
    top = REPO / "config.schema.yaml"
    assert top.is_symlink() and top.resolve() == (REPO / "src" / "sfsr" / "config.schema.yaml").resolve()


def test_torchrun_workers_import_the_same_sfsr(monkeypatch):
    """launch() puts the folder holding this sfsr first on the workers' PYTHONPATH (a checkout's
    src/, a --target folder), but not an interpreter's site-packages, which would then come before
    the standard library (the workers find an installed sfsr there anyway)."""
    import site

    here = Path(distributed.__file__).resolve().parents[2]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/elsewhere", ""]))
    monkeypatch.setattr(site, "getsitepackages", lambda: ["/usr/lib/python3/site-packages"])
    assert distributed._worker_path() == [str(here), "/elsewhere"]
    monkeypatch.setattr(site, "getsitepackages", lambda: [str(here)])
    assert distributed._worker_path() == ["/elsewhere"]
    monkeypatch.delenv("PYTHONPATH")
    assert distributed._worker_path() == []
