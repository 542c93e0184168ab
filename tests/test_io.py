"""Atomic writes: all or nothing, with ordinary permissions."""

import os

import pytest

from sfsr import io


def test_outputs_get_normal_permissions_not_private_temp_ones(tmp_path):
    """Atomic writes go through private temporary files; the results must end up readable like
    any plainly created file (a co-author on the cluster must be able to read them)."""
    umask = os.umask(0o022)
    try:
        io.write_text(tmp_path / "a.txt", "x")
        with io.atomic_path(tmp_path / "b.png") as tmp:
            tmp.write_bytes(b"png")
        folder = io.make_temp_dir(tmp_path / "out")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.png").stat().st_mode & 0o777 == 0o644
    assert folder.stat().st_mode & 0o777 == 0o755


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "table.csv"
    io.write_text(target, "old")
    with pytest.raises(RuntimeError):
        with io.atomic_open(target, "w") as fh:
            fh.write("half of the new")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]
