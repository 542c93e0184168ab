"""The bad-input matrix (docs/reliability.md): every bad image, checkpoint, path and config value
stops with one message that names the file or key and says what happened, with the fix that fits
where the user stands (command line or workflow); nothing half-made is left behind."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from skimage import data as skdata

from helpers import corrupt, without_dac_override
from sfsr.cli import main
from sfsr.config import validate
from sfsr.data.images import DEFAULT_MAX_IMAGE_PIXELS, read_image, set_max_image_pixels
from sfsr.data.prepare import prepare_dataset
from sfsr.errors import CLI, WORKFLOW, ConfigError, DataError, ImageError
from sfsr.evaluation import PSNR_CAP_DB, mean_metrics, summarize

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 1_000_000  # the pixel limit of these tests: the good images are far below it


def _good(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(skdata.astronaut()[100:196, 150:246]).save(folder / "astronaut.png")
    Image.fromarray(skdata.coffee()[100:196, 200:296]).save(folder / "coffee.png")


def _make_bad(folder: Path, case: str) -> Path:
    """Put one bad entry named ``bad.png`` into ``folder``; return its path."""
    bad = folder / "bad.png"
    if case == "truncated":
        Image.fromarray(skdata.chelsea()).save(bad)
        bad.write_bytes(bad.read_bytes()[:3000])
    elif case == "not_an_image":
        bad.write_text("these are not the pixels you are looking for\n")
    elif case == "empty":
        bad.write_bytes(b"")
    elif case == "dangling_symlink":
        bad.symlink_to(folder / "gone.png")
    elif case == "symlink_loop":
        bad.symlink_to(bad)
    elif case == "too_many_pixels":  # a small file of many pixels: what a decompression bomb is
        Image.new("L", (1200, 1000)).save(bad)
    else:
        raise ValueError(case)
    return bad


#: What each message must say (and must not: a bomb is not "truncated").
SAYS = {
    "truncated": "truncated or corrupt",
    "not_an_image": "not a readable image",
    "empty": "not a readable image",
    "dangling_symlink": "is a dangling symlink",
    "symlink_loop": "is a symlink loop",
    "too_many_pixels": "more than the limit of 1,000,000",
}
CASES = sorted(SAYS)


@pytest.fixture
def pixel_limit():
    set_max_image_pixels(LIMIT)
    yield LIMIT
    set_max_image_pixels(None)


def _leftovers(parent: Path, name: str) -> list[str]:
    """The output and any hidden temporary sibling of it."""
    return sorted(p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}."))


@pytest.mark.parametrize("case", CASES)
def test_read_image_says_what_happened(tmp_path, case, pixel_limit):
    bad = _make_bad(tmp_path, case)
    with pytest.raises(ImageError) as err:
        read_image(bad)
    text = str(err.value)
    assert text.startswith(f"{bad}: ") and SAYS[case] in text
    if case == "too_many_pixels":
        assert "truncated" not in text and "corrupt" not in text
        assert "max_image_pixels" in err.value.message(WORKFLOW)
        assert "--max-image-pixels" in err.value.message(CLI)
    else:
        assert "on_bad_image: skip" in err.value.message(WORKFLOW)
        assert "on_bad_image" not in err.value.message(CLI)  # no config key on the command line


def test_the_pixel_limit_refuses_before_decoding_and_can_be_raised(tmp_path):
    bad = _make_bad(tmp_path, "too_many_pixels")
    assert read_image(bad).shape == (1000, 1200)  # under the default limit
    with pytest.raises(ImageError, match="1,200,000 pixels"):
        read_image(bad, max_pixels=LIMIT)
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_IMAGE_PIXELS  # Pillow's own setting is restored
    with pytest.raises(DataError, match="max_image_pixels must be a positive integer, got 0"):
        set_max_image_pixels(0)


@pytest.mark.parametrize("case", CASES)
def test_cli_make_lr_names_the_file_and_leaves_nothing(tmp_path, case, capsys):
    _good(tmp_path / "in")
    bad = _make_bad(tmp_path / "in", case)
    rc = main(["make-lr", "--scale", "2", "--quiet", "--max-image-pixels", str(LIMIT),
               str(tmp_path / "in"), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and str(bad) in err and SAYS[case] in err
    assert "Traceback" not in err and "on_bad_image" not in err
    assert _leftovers(tmp_path, "out") == []
    set_max_image_pixels(None)


@pytest.mark.parametrize("case", CASES)
def test_prepare_skips_and_lists_the_bad_image_or_fails_naming_it(tmp_path, case, pixel_limit):
    _good(tmp_path / "in")
    bad = _make_bad(tmp_path / "in", case)
    spec = {"source": "local", "path": str(tmp_path / "in"), "layout": "flat"}
    with pytest.raises(ImageError) as err:
        prepare_dataset("mine", spec, tmp_path / "in", tmp_path / "prepared")
    assert str(bad) in str(err.value) and SAYS[case] in str(err.value)
    assert _leftovers(tmp_path, "prepared") == []
    frame = prepare_dataset("mine", spec, tmp_path / "in", tmp_path / "prepared", on_bad_image="skip")
    assert sorted(frame["stem"]) == ["astronaut", "coffee"]
    skipped = pd.read_csv(tmp_path / "prepared" / "skipped.csv")
    assert skipped["path"].tolist() == [str(bad)] and SAYS[case] in skipped["reason"].iloc[0]
    assert sorted(p.name for p in (tmp_path / "prepared" / "HR").iterdir()) == ["astronaut.png", "coffee.png"]


# ------------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("case", ["truncated", "empty", "garbage", "unsafe_pickle", "not_a_generator"])
def test_cli_upscale_refuses_a_bad_checkpoint_by_name(tmp_path, case, capsys):
    from sfsr.models import build_generator, save_generator

    _good(tmp_path / "in")
    ckpt = tmp_path / "generator.pt"
    save_generator(ckpt, build_generator("edsr_baseline", 2, num_blocks=1, num_features=8),
                   {"arch": "edsr_baseline", "scale": 2, "kwargs": {"num_blocks": 1, "num_features": 8}})
    if case == "not_a_generator":
        torch.save({"weights": torch.zeros(3)}, ckpt)
    else:
        corrupt(ckpt, case)  # the corruptions of training states (tests/test_faults.py)
    rc = main(["upscale", "--checkpoint", str(ckpt), "--device", "cpu", "--quiet",
               str(tmp_path / "in"), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and str(ckpt) in err and "Traceback" not in err
    assert _leftovers(tmp_path, "out") == []
    assert not Path("/tmp/sfsr_pwned").exists()


# --------------------------------------------------------------------------------------- archives
ARCHIVE_SAYS = {"truncated_tar_gz": "is truncated or corrupt", "zip_bad_crc": "truncated or corrupt (member",
                "plain_file_named_zip": "is not an archive"}


def _bad_archive(folder: Path, case: str) -> Path:
    """One bad archive source as the data stage meets it (a local archive path)."""
    import io as _io
    import tarfile
    import zipfile

    payload = np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    if case == "truncated_tar_gz":
        path = folder / "set.tar.gz"
        with tarfile.open(path, "w:gz") as tf:
            info = tarfile.TarInfo("HR/0001.png")
            info.size = len(payload)
            tf.addfile(info, _io.BytesIO(payload))
        path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    elif case == "zip_bad_crc":
        path = folder / "set.zip"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr("HR/0001.png", payload)
        raw = bytearray(path.read_bytes())
        raw[1000] ^= 0xFF  # inside the member's data: its CRC no longer matches
        path.write_bytes(bytes(raw))
    else:
        path = folder / "set.zip"
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + payload[:1000])
    return path


@pytest.mark.parametrize("case", sorted(ARCHIVE_SAYS))
def test_bad_archives_name_the_archive_and_extract_nothing(tmp_path, case):
    from sfsr.data.raw import assemble_raw

    archive = _bad_archive(tmp_path, case)
    with pytest.raises(DataError) as err:
        assemble_raw([archive], tmp_path / "raw" / "set")
    assert archive.name in str(err.value) and ARCHIVE_SAYS[case] in str(err.value), str(err.value)
    assert not (tmp_path / "raw").exists() or list((tmp_path / "raw").iterdir()) == []


# ------------------------------------------------------------------------------------------ paths
def test_symlink_loops_as_input_or_output_are_one_line_errors(tmp_path, capsys):
    _good(tmp_path / "in")
    (tmp_path / "loop_a").symlink_to(tmp_path / "loop_b")
    (tmp_path / "loop_b").symlink_to(tmp_path / "loop_a")
    for args, says in (
            (["upscale", "--scale", "2", str(tmp_path / "loop_a"), str(tmp_path / "out")], "input"),
            (["upscale", "--scale", "2", str(tmp_path / "in"), str(tmp_path / "loop_a")], "output"),
            (["upscale", "--scale", "2", str(tmp_path / "in"), str(tmp_path / "loop_a" / "x")],
             "runs through"),
            (["make-lr", "--scale", "2", str(tmp_path / "loop_a"), str(tmp_path / "out")], "input folder"),
            (["evaluate", "--scale", "2", "--hr", str(tmp_path / "in"), "--sr", str(tmp_path / "loop_b")],
             "SR folder")):
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert "symlink loop" in err and says in err and "Traceback" not in err, (args, err)
    assert _leftovers(tmp_path, "out") == []


def test_csv_pointing_at_a_folder_is_refused_before_the_work(tmp_path, capsys):
    _good(tmp_path / "hr")
    (tmp_path / "table").mkdir()
    rc = main(["evaluate", "--scale", "2", "--hr", str(tmp_path / "hr"), "--sr", str(tmp_path / "hr"),
               "--csv", str(tmp_path / "table")])
    err = capsys.readouterr().err
    assert rc == 2 and f"--csv {tmp_path / 'table'} is a folder" in err
    assert list((tmp_path / "table").iterdir()) == []


def test_unwritable_output_and_unreadable_image_are_one_line_errors(tmp_path):
    _good(tmp_path / "in")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    prefix = without_dac_override(locked)
    cli = prefix + [sys.executable, "-m", "sfsr.cli"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    run = subprocess.run(cli + ["make-lr", "--scale", "2", "--quiet", str(tmp_path / "in"),
                                str(locked / "lr")], capture_output=True, text=True, env=env)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert f"cannot write {locked / 'lr'}: Permission denied; check the permissions" in run.stderr
    assert list(locked.iterdir()) == []
    secret = tmp_path / "in" / "coffee.png"
    secret.chmod(0)
    run = subprocess.run(cli + ["make-lr", "--scale", "2", "--quiet", str(tmp_path / "in"),
                                str(tmp_path / "lr")], capture_output=True, text=True, env=env)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert f"{secret}: cannot read the image, permission denied" in run.stderr
    assert "corrupt" not in run.stderr and _leftovers(tmp_path, "lr") == []


# ----------------------------------------------------------------------------------------- config
def _config() -> dict:
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def _set(cfg: dict, dotted: str, value) -> dict:
    node = cfg
    *parents, last = dotted.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    return cfg


@pytest.mark.parametrize("key, value, says", [
    ("max_image_pixels", 0, "max_image_pixels"),
    ("max_image_pixels", "many", "max_image_pixels"),
    ("on_bad_image", "ignore", "on_bad_image"),
    ("training.lr", "2e-4", "2e-4"),
    ("training.iterationz", 10, "iterationz"),
    ("models.srresnet_x4.kwargs.num_blockz", 4, "num_blockz"),
    ("sr_models", ["srresnet_x4", "no_such_model"], "no_such_model"),
    ("train", ["no_such_dataset"], "no_such_dataset"),
])
def test_bad_config_values_name_the_key(key, value, says):
    cfg = _set(_config(), key, value)
    with pytest.raises(ConfigError) as err:
        validate(copy.deepcopy(cfg), ROOT / "config.schema.yaml")
    assert says in str(err.value), str(err.value)
    assert "Traceback" not in str(err.value)


# --------------------------------------------------------------------------------- identical images
def test_identical_images_have_infinite_psnr_and_a_capped_counted_mean(tmp_path):
    rows = pd.DataFrame({"image": ["a", "b"], "psnr_y": [np.inf, 30.0], "ssim_y": [1.0, 0.9],
                         "psnr_rgb": [np.inf, 29.0], "model": "m", "dataset": "d", "scale": 2,
                         "convention": "y"})
    means = mean_metrics(rows)
    assert means["psnr_y"] == pytest.approx((PSNR_CAP_DB + 30.0) / 2) and means["n_psnr_capped"] == 1
    summary = summarize(rows, n_boot=50)
    assert np.isfinite(summary.loc[0, ["psnr_y", "psnr_y_ci_low", "psnr_y_ci_high"]].astype(float)).all()
    assert summary.loc[0, "n_psnr_capped"] == 1
