"""``sfsr make-lr`` and ``sfsr upscale`` never delete a user's files (issue 22, item 1).

Into an existing output folder they move only their own ``<stem>.png`` files, replacing same-named
ones and saying so; an output that is a file, the input folder's parent, or a folder inside the
input folder is refused before any work (exit 2, one line, nothing written, no temporary left); a
bad image half-way leaves the output folder exactly as it was.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from sfsr import io
from sfsr.cli import main
from sfsr.data.bicubic import imresize, modcrop
from sfsr.data.images import read_image

COMMANDS = {"make-lr": ["make-lr", "--scale", "4"],
            "upscale": ["upscale", "--scale", "2"]}


def _random_images(folder: Path, stems: list[str], seed: int = 0, size: int = 24) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = {}
    for stem in stems:
        images[stem] = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        io.save_image(folder / f"{stem}.png", images[stem])
    return images


def _expected(command: str, image: np.ndarray) -> np.ndarray:
    if command == "make-lr":
        return imresize(modcrop(image, 4), 1 / 4)
    return imresize(image, scale=2)


def _user_folder(out: Path) -> None:
    """An output folder already in use: notes, last week's x2 LR images, a subfolder."""
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("x2 run of last week\n")
    _random_images(out, ["old_x2_1", "old_x2_2"], seed=7, size=12)
    (out / "sub").mkdir()
    (out / "sub" / "keep.txt").write_text("nested\n")


def _snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (hidden ones too): relative path -> sha256, 'dir' or the link."""
    listing = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            listing[rel] = f"-> {path.readlink()}"
        else:
            listing[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return listing


def _run(argv: list[str], capsys) -> tuple[int, str]:
    rc = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return rc, err


def _refused(argv: list[str], capsys) -> str:
    """Run ``argv`` with --quiet; assert exit 2 with one error line and return that line."""
    rc, err = _run(argv[:1] + ["--quiet"] + argv[1:], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(f"sfsr {argv[0]}: error: "), err
    return lines[0]


# ------------------------------------------------------------------------------ merging
@pytest.mark.parametrize("command", list(COMMANDS))
def test_existing_folder_keeps_other_files(tmp_path, capsys, command):
    hr = _random_images(tmp_path / "HR", ["a", "b", "c"])
    out = tmp_path / "out"
    _user_folder(out)
    before = _snapshot(out)
    rc, err = _run(COMMANDS[command] + [str(tmp_path / "HR"), str(out)], capsys)
    assert rc == 0, err
    after = _snapshot(out)
    assert {k: v for k, v in after.items() if k in before} == before  # byte-identical
    assert sorted(set(after) - set(before)) == ["a.png", "b.png", "c.png"]
    for stem, image in hr.items():
        assert np.array_equal(read_image(out / f"{stem}.png"), _expected(command, image))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["HR", "out"]  # no temporary left
    last = err.strip().splitlines()[-1]
    assert last.endswith(f"to {out} (3 new, 0 replaced; 3 other files and 1 other folder there left "
                         f"as they were)"), last


@pytest.mark.parametrize("command", list(COMMANDS))
def test_same_name_png_is_replaced_and_reported(tmp_path, capsys, command):
    hr = _random_images(tmp_path / "HR", ["a", "b", "c"])
    out = tmp_path / "out"
    out.mkdir()
    _random_images(out, ["b"], seed=9, size=6)  # an older b.png
    (out / "notes.txt").write_text("mine\n")
    rc, err = _run(COMMANDS[command] + [str(tmp_path / "HR"), str(out)], capsys)
    assert rc == 0, err
    assert np.array_equal(read_image(out / "b.png"), _expected(command, hr["b"]))
    assert (out / "notes.txt").read_text() == "mine\n"
    last = err.strip().splitlines()[-1]
    assert last.endswith(f"to {out} (2 new, 1 replaced; 1 other file there left as it was)"), last


def test_make_lr_into_a_new_folder_says_so(tmp_path, capsys):
    _random_images(tmp_path / "HR", ["a", "b"])
    rc, err = _run(COMMANDS["make-lr"] + [str(tmp_path / "HR"), str(tmp_path / "lr" / "X4")], capsys)
    assert rc == 0 and err.strip().splitlines()[-1] == \
        f"wrote 2 LR images (x4) to {tmp_path / 'lr' / 'X4'} (a new folder)"
    assert sorted(p.name for p in (tmp_path / "lr" / "X4").iterdir()) == ["a.png", "b.png"]


# ------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("through_symlink", [False, True])
def test_output_containing_the_input_is_refused(tmp_path, capsys, command, through_symlink):
    parent = tmp_path / "parent"
    _random_images(parent / "HR", ["a", "b"])
    (parent / "notes.txt").write_text("mine\n")
    out = parent
    if through_symlink:
        out = tmp_path / "link"
        out.symlink_to(parent)
    before = _snapshot(tmp_path)
    line = _refused(COMMANDS[command] + [str(parent / "HR"), str(out)], capsys)
    assert f"output folder {out}" in line and f"contains the input folder {parent / 'HR'}" in line
    assert line.endswith(f"choose an output folder outside {parent / 'HR'}")
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("command", list(COMMANDS))
def test_output_inside_the_input_is_refused(tmp_path, capsys, command):
    _random_images(tmp_path / "HR", ["a", "b"])
    before = _snapshot(tmp_path)
    out = tmp_path / "HR" / "lr"
    line = _refused(COMMANDS[command] + [str(tmp_path / "HR"), str(out)], capsys)
    assert f"output folder {out} is inside the input folder {tmp_path / 'HR'}" in line
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("command", list(COMMANDS))
def test_output_that_is_a_file_is_refused(tmp_path, capsys, command):
    _random_images(tmp_path / "HR", ["a", "b"])
    report = tmp_path / "report.txt"
    report.write_text("results of last week\n")
    before = _snapshot(tmp_path)
    line = _refused(COMMANDS[command] + [str(tmp_path / "HR"), str(report)], capsys)
    assert str(report) in line and "file" in line and "give a" in line and "folder" in line
    assert _snapshot(tmp_path) == before  # the file as it was; no .old- or .tmp sibling


@pytest.mark.parametrize("command", list(COMMANDS))
def test_folder_where_an_output_file_goes_is_refused(tmp_path, capsys, command):
    _random_images(tmp_path / "HR", ["a", "b"])
    (tmp_path / "out" / "b.png").mkdir(parents=True)
    (tmp_path / "out" / "b.png" / "inside.txt").write_text("mine\n")
    before = _snapshot(tmp_path)
    line = _refused(COMMANDS[command] + [str(tmp_path / "HR"), str(tmp_path / "out")], capsys)
    assert "holds a folder b.png where an output file goes" in line
    assert _snapshot(tmp_path) == before


# ------------------------------------------------------------------------------ failure half-way
@pytest.mark.parametrize("command", list(COMMANDS))
def test_bad_image_half_way_leaves_the_folder_as_it_was(tmp_path, capsys, command):
    _random_images(tmp_path / "HR", ["a", "b", "z"])
    bad = tmp_path / "HR" / "m_truncated.png"
    _random_images(tmp_path, ["whole"], seed=3, size=64)
    bad.write_bytes((tmp_path / "whole.png").read_bytes()[:200])
    (tmp_path / "whole.png").unlink()
    out = tmp_path / "out"
    _user_folder(out)
    _random_images(out, ["a"], seed=5, size=6)  # a same-named file that must not be replaced
    before = _snapshot(tmp_path)
    line = _refused(COMMANDS[command] + [str(tmp_path / "HR"), str(out)], capsys)
    assert str(bad) in line
    assert _snapshot(tmp_path) == before


def test_upscale_one_image_over_an_existing_file_says_replaced(tmp_path, capsys):
    _random_images(tmp_path / "HR", ["a"])
    target = tmp_path / "sr.png"
    for note in ("", " (replaced)"):
        rc, err = _run(COMMANDS["upscale"] + [str(tmp_path / "HR" / "a.png"), str(target)], capsys)
        assert rc == 0 and err.strip().splitlines()[-1] == f"wrote 1 image(s) to {target}{note}"


def test_make_lr_into_a_dangling_symlink_is_refused(tmp_path, capsys):
    _random_images(tmp_path / "HR", ["a"])
    (tmp_path / "out").symlink_to(tmp_path / "gone")
    before = _snapshot(tmp_path)
    line = _refused(COMMANDS["make-lr"] + [str(tmp_path / "HR"), str(tmp_path / "out")], capsys)
    assert f"output folder {tmp_path / 'out'} is a dangling symlink" in line
    assert _snapshot(tmp_path) == before
