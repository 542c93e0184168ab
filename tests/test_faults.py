"""Faults that a node crash, a full disk or a hostile file leave behind: a corrupt, truncated, empty
or unsafe training state never wedges a job; it resumes from the previous good state or starts
afresh, and the final weights equal an uninterrupted run's (docs/reliability.md)."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from helpers import corrupt
from sfsr.training.loop import train
from sfsr.training.state import load_state, previous_path, save_state

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.heavy(seconds=110)


@pytest.fixture(scope="module")
def photos(tmp_path_factory, photo_saver) -> Path:
    return photo_saver(tmp_path_factory.mktemp("fault_photos"), "astronaut", "coffee")


def _cfg() -> dict:
    return dict(arch="edsr_baseline", scale=2, kwargs=dict(num_blocks=1, num_features=8, base="bicubic"),
                iterations=6, batch_size=2, lr_patch=8, lr=1e-3, log_every=1, val_every=1000,
                checkpoint_every=2, num_workers=0, ema_decay=0.9)


def _train(photos: Path, out: Path, **kw) -> Path:
    return train("warmup", _cfg(), train_hr_dirs=[photos], valid_hr_dirs=[photos], out_dir=out,
                 device="cpu", seed=0, **kw)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def reference(photos, tmp_path_factory) -> dict[str, torch.Tensor]:
    return _weights(_train(photos, tmp_path_factory.mktemp("uninterrupted")))


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage", "unsafe_pickle", "not_a_dict"])
def test_corrupt_last_state_falls_back_to_prev_and_ends_identical(photos, tmp_path, reference, how, caplog):
    _train(photos, tmp_path, max_iterations=4)  # states at iterations 2 (prev.pt) and 4 (last.pt)
    last = tmp_path / "state" / "last.pt"
    assert previous_path(last).is_file()
    assert torch.load(previous_path(last), weights_only=True)["iteration"] == 2
    corrupt(last, how)
    with caplog.at_level(logging.WARNING):
        out = _train(photos, tmp_path)
    assert "resuming from the previous good state" in caplog.text and "prev.pt" in caplog.text
    assert not Path("/tmp/sfsr_pwned").exists()
    for key, value in reference.items():
        torch.testing.assert_close(_weights(out)[key], value, rtol=0, atol=0, msg=key)


def test_both_states_corrupt_start_afresh_and_stale_temporaries_are_removed(photos, tmp_path, reference,
                                                                              caplog):
    _train(photos, tmp_path, max_iterations=4)
    state_dir = tmp_path / "state"
    corrupt(state_dir / "last.pt", "truncated")
    corrupt(state_dir / "prev.pt", "empty")
    stale = state_dir / ".last.abc123.tmp.pt"  # what a write killed mid-way leaves (sfsr.io)
    stale.write_bytes(b"half a checkpoint")
    with caplog.at_level(logging.WARNING):
        out = _train(photos, tmp_path)
    assert "starting afresh" in caplog.text and "last.pt" in caplog.text
    assert not stale.exists()
    for key, value in reference.items():
        torch.testing.assert_close(_weights(out)[key], value, rtol=0, atol=0, msg=key)


def test_save_state_keeps_the_previous_file_and_load_state_never_raises(tmp_path):
    path = tmp_path / "state" / "last.pt"
    assert load_state(path) is None  # nothing yet
    save_state(path, {"iteration": 1})
    save_state(path, {"iteration": 2})
    assert load_state(path)["iteration"] == 2
    assert torch.load(previous_path(path), weights_only=True)["iteration"] == 1
    # killed between the rename and the write: only prev.pt is there
    path.unlink()
    assert load_state(path)["iteration"] == 1


# ------------------------------------------------------------------------- signals, through Snakemake
# Every case trains its own copy of one model (same settings and seed, so the same weights when not
# interrupted), is stopped once a checkpoint exists, then the same command runs again. The workflow
# profile (profiles/default: rerun-incomplete) is what a plain `snakemake` uses too.
SIGNAL_CASES = {  # model name: (what receives the signal, signal)
    "snakemake_sigterm": ("snakemake", signal.SIGTERM),  # Snakemake lets running jobs finish, exits
    "ctrl_c": ("group", signal.SIGINT),          # Ctrl-C in a terminal: snakemake and its job
    "node_crash": ("group", signal.SIGKILL),     # snakemake and its job at once, no cleanup
    "job_sigkill": ("job", signal.SIGKILL),      # the OOM killer
    "job_sigterm": ("job", signal.SIGTERM),      # SLURM preemption, `kill`
    "job_sigint": ("job", signal.SIGINT),
}
SIGNAL_MODEL = {"arch": "edsr_baseline", "scale": 2,
                "kwargs": {"num_blocks": 1, "num_features": 16, "base": "bicubic"},
                "warmup": {"iterations": 300, "checkpoint_every": 25, "val_every": 100_000,
                           "log_every": 50, "batch_size": 4, "lr_patch": 16, "lr": 1.0e-3, "threads": 1},
                "gan": None, "semantic": None, "shared": None}


def _signal_config(work: Path) -> dict:
    models = ["reference", *SIGNAL_CASES]
    return {"data_dir": str(work / "data"), "results_dir": str(work / "results"), "scales": [2],
            "train": ["builtin_valid"], "valid": ["builtin_valid"], "test": ["builtin_valid"],
            "classification": [], "sr_models": models,
            "refsr_models": [], "refsr_train": [], "refsr_valid": [], "refsr": [],
            "models": {m: copy.deepcopy(SIGNAL_MODEL) for m in models}}


def _generator(work: Path, model: str) -> Path:
    return work / "results" / "default" / "models" / model / "warmup" / "generator.pt"


def _snakemake(work: Path, model: str, *flags: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "snakemake", *flags, str(_generator(work, model)), "-s", str(REPO / "Snakefile"),
           "-d", str(work), "--cores", "2", "--configfile", str(REPO / "config.yaml"), str(work / "over.yaml")]
    # as from a terminal: SIGINT at its default even when this test runs in a background job
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _job_pid(snakemake_pid: int) -> int | None:
    import psutil

    for child in psutil.Process(snakemake_pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if any(part.endswith("train.py") for part in child.cmdline()):
                return child.pid
    return None


@pytest.fixture(scope="module")
def signal_work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("signals")
    (work / "over.yaml").write_text(yaml.safe_dump(_signal_config(work)))
    proc = _snakemake(work, "reference")
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]
    return work


@pytest.mark.slow
@pytest.mark.parametrize("model", list(SIGNAL_CASES))
def test_a_stopped_workflow_resumes_to_the_weights_of_an_uninterrupted_run(signal_work, model):
    target, signum = SIGNAL_CASES[model]
    work = signal_work
    state = work / "results" / "default" / "models" / model / "warmup" / "state" / "last.pt"
    proc = _snakemake(work, model)
    deadline = time.monotonic() + 600
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state.exists(), "no checkpoint was written"
    if target == "snakemake":
        proc.send_signal(signum)
    elif target == "group":
        os.killpg(proc.pid, signum)
    else:
        os.kill(_job_pid(proc.pid), signum)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "Traceback" not in out, out[-4000:]
    log = work / "results" / "default" / "logs" / "train_warmup" / f"{model}.log"
    if model == "snakemake_sigterm":  # the job was let finish: nothing to resume
        assert "Will exit after finishing currently running jobs" in out
        assert _generator(work, model).exists()
    else:
        assert not _generator(work, model).exists(), f"the job was not interrupted:\n{out[-3000:]}"
    if signum in (signal.SIGTERM, signal.SIGINT) and target != "snakemake":
        name = signal.Signals(signum).name
        assert f"stopped by {name}" in log.read_text() and "Traceback" not in log.read_text()
    if target == "group" and signum == signal.SIGKILL:
        # Snakemake's lock of the working folder outlives a killed Snakemake: its own message says
        # to unlock (one command, nothing is lost), then the same command runs
        again = _snakemake(work, model)
        out, _ = again.communicate(timeout=300)
        assert again.returncode != 0 and "--unlock" in out and "Traceback" not in out, out[-3000:]
        unlock = _snakemake(work, model, "--unlock")
        assert unlock.wait(timeout=300) == 0
    # the same command again: resumes from state/last.pt and ends where an uninterrupted run ends
    again = _snakemake(work, model)
    out, _ = again.communicate(timeout=900)
    assert again.returncode == 0, out[-4000:]
    if model != "snakemake_sigterm":
        assert "resuming warmup training" in log.read_text(), log.read_text()[-2000:]
    reference = _weights(_generator(work, "reference"))
    resumed = _weights(_generator(work, model))
    assert reference.keys() == resumed.keys()
    for key, value in reference.items():
        assert torch.equal(value, resumed[key]), key
