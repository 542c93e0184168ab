"""Faults that a node crash, a full disk or a hostile file leave behind: a corrupt, truncated, empty
or unsafe training state never wedges a job; it resumes from the previous good state or starts
afresh, and the final weights equal an uninterrupted run's (docs/reliability.md)."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image
from skimage import data as skdata

from sfsr.training.loop import train
from sfsr.training.state import load_state, previous_path, save_state


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fault_photos")
    Image.fromarray(skdata.astronaut()[40:168, 170:298]).save(root / "astronaut.png")
    Image.fromarray(skdata.coffee()[100:220, 200:330]).save(root / "coffee.png")
    return root


def _cfg() -> dict:
    return dict(arch="edsr_baseline", scale=2, kwargs=dict(num_blocks=1, num_features=8, base="bicubic"),
                iterations=6, batch_size=2, lr_patch=8, lr=1e-3, log_every=1, val_every=1000,
                checkpoint_every=2, num_workers=0, ema_decay=0.9)


def _train(photos: Path, out: Path, **kw) -> Path:
    return train("warmup", _cfg(), train_hr_dirs=[photos], valid_hr_dirs=[photos], out_dir=out,
                 device="cpu", seed=0, **kw)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


class _Evil:
    """A pickle that would run a shell command when unpickled without weights_only."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/sfsr_pwned",))


def _corrupt(path: Path, how: str) -> None:
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
        torch.save([1, 2, 3], path)
    else:
        raise AssertionError(how)


@pytest.fixture(scope="module")
def reference(photos, tmp_path_factory) -> dict[str, torch.Tensor]:
    return _weights(_train(photos, tmp_path_factory.mktemp("uninterrupted")))


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage", "unsafe_pickle", "not_a_dict"])
def test_corrupt_last_state_falls_back_to_prev_and_ends_identical(photos, tmp_path, reference, how, caplog):
    _train(photos, tmp_path, max_iterations=4)  # states at iterations 2 (prev.pt) and 4 (last.pt)
    last = tmp_path / "state" / "last.pt"
    assert previous_path(last).is_file()
    assert torch.load(previous_path(last), weights_only=True)["iteration"] == 2
    _corrupt(last, how)
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
    _corrupt(state_dir / "last.pt", "truncated")
    _corrupt(state_dir / "prev.pt", "empty")
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
