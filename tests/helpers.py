"""Helpers shared by test files (no test file imports another test file).

* :func:`run_snakemake`: the repo's Snakefile in a folder of its own, data and results redirected there.
* :data:`TINY_STUDY` and :func:`tiny_study`: the one tiny whole study of a test run, run once and
  shared (``conftest.py``'s ``tiny_study`` fixture) by every test that reads study outputs.
* :func:`corrupt`, :func:`without_dac_override`: bad checkpoints and unwritable folders.
* :func:`merged`, :data:`EXPERIMENTS`, :data:`EXPERIMENT_FILES`, :data:`EXPERIMENT_OVERRIDES`: the
  experiment files merged over config.yaml the way Snakemake merges config files.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
#: Config overrides of a study without the default offline reference-based SR.
NO_REFSR = {"refsr_models": [], "refsr_train": [], "refsr_valid": [], "refsr": []}


# --------------------------------------------------------------------------------------- snakemake
def run_snakemake(workdir: Path, *args: str, config: dict | None = None, check: bool = True,
                  configfile: Path | None = None, env: dict | None = None,
                  cores: int = 2, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run the repo's Snakefile in ``workdir`` with data/results redirected there (``env``: extra
    environment variables of the run and its jobs).

    The overrides go to a file of their own per call (``test-overrides-*.yaml`` in ``workdir``), so
    that dry runs of two xdist workers in the shared study's folder never read each other's."""
    overrides = {"data_dir": str(workdir / "data"), "results_dir": str(workdir / "results")}
    overrides.update(config or {})
    fd, name = tempfile.mkstemp(prefix="test-overrides-", suffix=".yaml", dir=workdir)
    override_file = Path(name)
    with os.fdopen(fd, "w") as f:
        f.write(yaml.safe_dump(overrides))
    # targets and flags first: --configfile takes all the words that follow it; later config
    # files override earlier ones (the repo's config, then the dataset file, then the overrides)
    cmd = SNAKEMAKE + list(args) + ["-s", str(REPO / "Snakefile"), "-d", str(workdir),
                                    "--cores", str(cores), "--configfile", str(REPO / "config.yaml")]
    if configfile:
        cmd.append(str(configfile))
    cmd.append(str(override_file))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    finally:
        override_file.unlink(missing_ok=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-8000:]}")
    return proc


# ----------------------------------------------------------------------------- the shared tiny study
#: The tiny whole study (data -> classifier -> warm-up -> GAN -> semantic/shared + controls -> RefSR
#: and its GAN -> evaluation -> classification -> figures -> summary): the settings only shrink sizes and budgets.
TINY_STUDY = {
    "sr_models": ["srresnet_x4"], "scales": [4],
    "train": ["builtin_valid"], "valid": ["builtin_valid"], "test": ["builtin_valid"],
    "classification": ["builtin_demo_cls"],
    "classifier": {"input_size": 32, "epochs": 2, "batch_size": 8},
    "judges": [{"name": "seed1", "seed": 1, "epochs": 1}], "lr_classifier": {"epochs": 1},
    "training": {"batch_size": 2, "lr_patch": 8, "val_every": 4, "checkpoint_every": 4, "log_every": 2},
    "models": {"srresnet_x4": {"kwargs": {"num_blocks": 1, "num_features": 8},
                               "warmup": {"iterations": 6}, "gan": {"iterations": 4},
                               "semantic": {"iterations": 4, "batch_size": 4},
                               "shared": {"iterations": 4, "batch_size": 4}},
               "ssen_x4": {"kwargs": {"num_blocks": 1, "num_features": 8, "offset_features": 8},
                           "refsr": {"iterations": 4, "batch_size": 2, "val_every": 2},
                           "refsr_gan": {"iterations": 4, "batch_size": 2, "val_every": 2, "checkpoint_every": 2}},
               "ssen_x4_noref": {"kwargs": {"num_blocks": 1, "num_features": 8},
                                 "refsr": {"iterations": 4, "batch_size": 2, "val_every": 2},
                                 "refsr_gan": {"iterations": 4, "batch_size": 2, "val_every": 2,
                                               "checkpoint_every": 2}}},
    "datasets": {"builtin_demo_cls": {"images": ["brick", "grass", "gravel", "coins"],
                                      "samples_per_class": 8, "hr_size": 32},
                 "builtin_refgroups_train": {"groups_per_image": 1},
                 "builtin_refgroups_test": {"groups_per_image": 1}},
    "plots": {"visual_images": 1},
    # the pre-registered comparisons (docs/semantic.md): judged by the primary judge seed1 unless named
    "primary_judge": "seed1",
    "analysis": {"primary": {"model": "srresnet_x4_semantic", "against": "srresnet_x4_semantic_control",
                             "metric": "top1", "test": "mcnemar_exact"},
                 "secondary": [{"model": "srresnet_x4_semantic", "against": "srresnet_x4_semantic_control",
                                "judge": "prior", "metric": "agreement"},
                               {"model": "srresnet_x4", "against": "bicubic", "metric": "psnr_y"}]},
}
#: The environment of the study's jobs: as on a CPU with native bf16 (config.yaml's ``bf16: true``
#: then turns CPU autocast on in every training job), whatever CPU runs the suite.
TINY_STUDY_ENV = {"SFSR_CPU_BF16": "native"}
#: Cores of the shared study's Snakemake run (each job's threads are capped at this).
TINY_STUDY_CORES = 2
#: The shared study's time limit: 83 jobs took 4-6 min on the quiet 2-core machine, and more than
#: 15 min (the limit of other runs) with the machine's load at 12-14 beside other test suites.
TINY_STUDY_TIMEOUT_S = 2400


def tiny_study(shared_root: Path) -> Path:
    """The working folder of the tiny study, run once under ``shared_root`` for all processes.

    ``shared_root`` is a folder that every pytest-xdist worker of this run sees and no other run
    does (conftest: the parent of the workers' base temporary folders; a run without xdist: its own
    base temporary folder). The first worker to ask runs the study while holding an exclusive
    ``fcntl`` lock on ``<root>/tiny-study.lock``; the others block on that lock, then find ``.done``
    and read the same folder (or ``.failed``, holding the first run's error, which they raise too
    rather than run a second study). A lock rather than ``--dist loadgroup``: the files that read
    the study keep their own fixtures and run on either worker, and the study runs once, for
    whichever file asks first. An flock dies with its process: a crashed worker leaves no stale lock."""
    work = shared_root / "tiny-study"
    done, failed = work / ".done", work / ".failed"
    shared_root.mkdir(parents=True, exist_ok=True)
    with open(shared_root / "tiny-study.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if done.is_file():
                return work
            if failed.is_file():
                raise AssertionError(f"the shared tiny study failed in another worker:\n{failed.read_text()}")
            if work.exists():  # a run that died with its worker: start afresh
                shutil.rmtree(work)
            work.mkdir()
            try:
                run_snakemake(work, config=TINY_STUDY, env=TINY_STUDY_ENV, cores=TINY_STUDY_CORES,  # rule all
                              timeout=TINY_STUDY_TIMEOUT_S)
            except BaseException:
                failed.write_text(traceback.format_exc()[-12000:])
                raise
            done.write_text("")
            return work
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------- bad files, folders
class _Evil:
    """A pickle that would run a shell command when unpickled without weights_only."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/sfsr_pwned",))


def corrupt(path: Path, how: str) -> None:
    """Corrupt a checkpoint or training state in place: ``truncated``, ``empty``, ``garbage``,
    ``unsafe_pickle`` (would run a command if unpickled unsafely) or ``not_a_dict``."""
    raw = path.read_bytes()
    if how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(os.urandom(4096))
    elif how == "unsafe_pickle":
        path.write_bytes(pickle.dumps({"format": 1, "evil": _Evil()}))
    elif how == "not_a_dict":
        import torch

        torch.save([1, 2, 3], path)
    else:
        raise AssertionError(how)


def without_dac_override(folder: Path) -> list[str]:
    """A command prefix that runs without root's permission override (or nothing when not root);
    skips when the override cannot be dropped here."""
    import pytest

    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and util-linux's setpriv is missing: cannot drop the "
                    "permission override to test unwritable folders")
    prefix = [setpriv, "--inh-caps=-dac_override,-dac_read_search",
              "--bounding-set=-dac_override,-dac_read_search", "--"]
    probe = subprocess.run(prefix + ["touch", str(folder / "probe")], capture_output=True)
    if probe.returncode == 0:
        pytest.skip("setpriv did not drop the permission override here (the write succeeded)")
    return prefix


# ------------------------------------------------------------------------------------ experiments
#: Every experiment file.
EXPERIMENTS = sorted((REPO / "experiments").glob("*.yaml"))


def _base_of(path: Path) -> Path | None:
    """The experiment an override file goes on top of: ``<base>_<what>.yaml`` (e.g.
    ``classic291_x4_local.yaml`` over ``classic291_x4.yaml``); None for a standalone experiment."""
    return next((q for q in EXPERIMENTS if q != path and path.stem.startswith(q.stem + "_")), None)


#: Standalone experiments, and the override files that go on top of each.
EXPERIMENT_FILES = [p for p in EXPERIMENTS if _base_of(p) is None]
EXPERIMENT_OVERRIDES = {p: [q for q in EXPERIMENTS if _base_of(q) == p] for p in EXPERIMENT_FILES}


def merged(*paths: Path) -> dict:
    """config.yaml with ``paths`` merged over it, key by key (Snakemake's ``update_config``), its
    ``datasets`` over the package's dataset catalogue (as ``sfsr.config.validate`` merges them)."""
    from snakemake.utils import update_config

    from sfsr.data.catalogue import with_catalogue

    out: dict = {}
    for path in (REPO / "config.yaml", *paths):
        update_config(out, yaml.safe_load(path.read_text()))
    out["datasets"] = with_catalogue(out.get("datasets"))
    return out
