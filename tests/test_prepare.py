"""Dataset preparation (layouts, splits, bad images, atomic output) and LR folders (make-lr CLI)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.io
from PIL import Image

from sfsr.cli import main as cli_main
from sfsr.data.images import read_image
from sfsr.data.prepare import MANIFEST_COLUMNS, make_lr_folder, prepare_dataset
from sfsr.data.sources import load_builtin
from sfsr.errors import ConfigError, DataError, ImageError


def _save(path, h=24, w=32, seed=0, gray=False):
    rng = np.random.default_rng(seed)
    shape = (h, w) if gray else (h, w, 3)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return image


def _leftovers(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------------------- flat
def test_flat_local_folder(tmp_path):
    src = tmp_path / "src" / "images"
    a = _save(src / "a.png", seed=1)
    g = _save(src / "b_gray.PNG", seed=2, gray=True)
    _save(src / "c.jpg", h=30, w=20, seed=3)
    (src / "readme.txt").write_text("ignored")
    out = tmp_path / "prepared" / "flat"
    frame = prepare_dataset("flat", {"source": "local", "path": "x", "root": "images"},
                            tmp_path / "src", out)
    assert list(frame.columns) == MANIFEST_COLUMNS
    assert frame["stem"].tolist() == ["a", "b_gray", "c"]
    on_disk = pd.read_csv(out / "manifest.csv")
    assert list(on_disk.columns) == MANIFEST_COLUMNS and len(on_disk) == 3
    assert np.array_equal(read_image(out / "HR" / "a.png"), a)
    assert np.array_equal(read_image(out / "HR" / "b_gray.png"), g)
    assert np.array_equal(read_image(out / "HR" / "c.png"), read_image(src / "c.jpg"))
    row = frame.set_index("stem").loc["b_gray"]
    assert (row["channels"], bool(row["gray"]), row["height"], row["width"]) == (1, True, 24, 32)
    assert frame.set_index("stem").loc["c", ["height", "width"]].tolist() == [30, 20]
    assert not (out / "skipped.csv").exists()
    assert _leftovers(out.parent) == []


def test_flat_builtin_source(tmp_path):
    out = tmp_path / "builtin"
    frame = prepare_dataset("b", {"source": "builtin", "images": ["camera", "coins"]}, None, out)
    assert frame["stem"].tolist() == ["camera", "coins"]
    assert frame["source_path"].tolist() == ["builtin:camera", "builtin:coins"]
    assert np.array_equal(read_image(out / "HR" / "coins.png"), load_builtin("coins"))
    assert frame["gray"].tolist() == [True, True] and frame["channels"].tolist() == [1, 1]


def test_unknown_builtin_name_lists_valid_ones(tmp_path):
    with pytest.raises(DataError, match="'nosuch'.*astronaut"):
        prepare_dataset("b", {"source": "builtin", "images": ["nosuch"]}, None, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_rerun_replaces_output(tmp_path):
    src = tmp_path / "src"
    _save(src / "a.png")
    _save(src / "b.png", seed=5)
    out = tmp_path / "out"
    prepare_dataset("d", {"source": "local", "path": "x"}, src, out)
    (src / "b.png").unlink()
    frame = prepare_dataset("d", {"source": "local", "path": "x"}, src, out)
    assert frame["stem"].tolist() == ["a"] and sorted(p.name for p in (out / "HR").iterdir()) == ["a.png"]
    assert _leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- bad images
def _bad_folder(tmp_path):
    src = tmp_path / "src"
    _save(src / "good.png")
    (src / "broken.png").write_text("this is text")
    _save(src / "tiny.png", h=8, w=40)
    return src


def test_bad_image_fail_leaves_nothing(tmp_path):
    src = _bad_folder(tmp_path)
    out = tmp_path / "prepared" / "bad"
    with pytest.raises(ImageError, match="broken.png"):
        prepare_dataset("bad", {"source": "local", "path": "x"}, src, out)
    assert not out.exists() and _leftovers(out.parent) == []
    (src / "broken.png").unlink()
    with pytest.raises(ImageError, match=r"tiny.png: image is 8x40 pixels.*minimum side 16"):
        prepare_dataset("bad", {"source": "local", "path": "x"}, src, out)
    assert not out.exists() and _leftovers(out.parent) == []


def test_bad_image_skip_lists_them(tmp_path):
    src = _bad_folder(tmp_path)
    out = tmp_path / "bad"
    frame = prepare_dataset("bad", {"source": "local", "path": "x"}, src, out, on_bad_image="skip")
    assert frame["stem"].tolist() == ["good"]
    skipped = pd.read_csv(out / "skipped.csv")
    assert list(skipped.columns) == ["path", "reason"]
    assert sorted(p.rsplit("/", 1)[-1] for p in skipped["path"]) == ["broken.png", "tiny.png"]
    assert sorted(p.name for p in (out / "HR").iterdir()) == ["good.png"]


def test_spec_on_bad_image_overrides_and_max_scale_counts(tmp_path):
    src = tmp_path / "src"
    _save(src / "a.png", h=20, w=20)
    _save(src / "b.png", h=40, w=40)
    spec = {"source": "local", "path": "x", "on_bad_image": "skip"}
    frame = prepare_dataset("d", spec, src, tmp_path / "o", min_size=8, max_scale=32)
    assert frame["stem"].tolist() == ["b"]


def test_output_inside_source_refused(tmp_path):
    _save(tmp_path / "a.png")
    with pytest.raises(ConfigError, match="inside the source folder"):
        prepare_dataset("d", {"source": "local", "path": "x"}, tmp_path, tmp_path / "prepared")


# ----------------------------------------------------------------------------- class folders
def _class_tree(root, counts_train, counts_val):
    for split, counts in (("training", counts_train), ("validation", counts_val)):
        for cls, n in counts.items():
            for i in range(n):
                _save(root / split / cls / f"img{i:02d}.jpg", h=20, w=28, seed=hash((split, cls, i)) % 1000)


def _expected_carve(n, fraction):
    return 0 if n < 2 else min(max(1, math.floor(fraction * n + 0.5)), n - 1)


def test_class_folders_dirs_and_carve(tmp_path):
    counts = {"2": 10, "10": 5, "1": 7}
    _class_tree(tmp_path / "src", counts, {"2": 2, "10": 1, "1": 2})
    spec = {"source": "local", "path": "x", "layout": "class_folders", "hr_size": 16,
            "split": {"dirs": {"training": "train", "validation": "val"}, "test_fraction": 0.2}}
    first = prepare_dataset("cls", spec, tmp_path / "src", tmp_path / "a", seed=3)
    second = prepare_dataset("cls", spec, tmp_path / "src", tmp_path / "b", seed=3)
    pd.testing.assert_frame_equal(first, second)
    assert (tmp_path / "a" / "manifest.csv").read_bytes() == (tmp_path / "b" / "manifest.csv").read_bytes()
    # class ids follow natural order of the folder names
    ids = first.drop_duplicates("class_name").set_index("class_name")["class_id"].to_dict()
    assert ids == {"1": 0, "2": 1, "10": 2}
    table = first.groupby(["class_name", "split"]).size().unstack(fill_value=0)
    for cls, n in counts.items():
        k = _expected_carve(n, 0.2)
        assert table.loc[cls, "test"] == k and table.loc[cls, "train"] == n - k
    assert table["val"].to_dict() == {"1": 2, "10": 1, "2": 2}
    assert all(s.startswith(("training__", "validation__")) and f"__{c}__img" in s
               for s, c in zip(first["stem"], first["class_name"]))
    assert set(first["height"]) == {16} and set(first["width"]) == {16}
    assert read_image(tmp_path / "a" / first["file"][0]).shape == (16, 16, 3)
    # another seed picks other test images (same counts)
    other = prepare_dataset("cls", spec, tmp_path / "src", tmp_path / "c", seed=4)
    assert other.groupby("split").size().equals(first.groupby("split").size())
    assert set(other.loc[other["split"] == "test", "stem"]) != set(first.loc[first["split"] == "test", "stem"])


def test_class_folders_single_pool_carves_val_and_test(tmp_path):
    for cls in ("cat", "dog"):
        for i in range(10):
            _save(tmp_path / "pool" / cls / f"{i}.png", h=16, w=16, seed=i)
    spec = {"source": "local", "path": "x", "layout": "class_folders",
            "split": {"val_fraction": 0.2, "test_fraction": 0.3}}
    frame = prepare_dataset("pool", spec, tmp_path / "pool", tmp_path / "out")
    table = frame.groupby(["class_name", "split"]).size().unstack()
    assert table.loc["cat"].to_dict() == {"test": 2, "train": 6, "val": 2}  # test from the 8 left
    assert table.loc["dog"].to_dict() == {"test": 2, "train": 6, "val": 2}


def test_sr_train_split_holds_images_the_classifier_never_sees(tmp_path):
    """carve_sr_from: a per-class share of train becomes sr_train (the semantic stages' images);
    the classifier trains on split 'train' only, so the two are disjoint, and val/test stay as
    they were carved without it."""
    for cls in ("cat", "dog"):
        for i in range(10):
            _save(tmp_path / "pool" / cls / f"{i}.png", h=16, w=16, seed=i)
    split = {"val_fraction": 0.2, "test_fraction": 0.3}
    spec = {"source": "local", "path": "x", "layout": "class_folders", "split": split}
    without = prepare_dataset("pool", spec, tmp_path / "pool", tmp_path / "a")
    spec["split"] = {**split, "carve_sr_from": "train", "sr_fraction": 0.5}
    frame = prepare_dataset("pool", spec, tmp_path / "pool", tmp_path / "b")
    table = frame.groupby(["class_name", "split"]).size().unstack()
    assert table.loc["cat"].to_dict() == {"sr_train": 3, "test": 2, "train": 3, "val": 2}
    assert table.loc["dog"].to_dict() == {"sr_train": 3, "test": 2, "train": 3, "val": 2}
    for name in ("val", "test"):  # untouched by the sr carve
        assert set(frame.loc[frame.split == name, "stem"]) == set(without.loc[without.split == name, "stem"])
    sr = set(frame.loc[frame.split == "sr_train", "stem"])
    assert sr <= set(without.loc[without.split == "train", "stem"])
    assert not sr & set(frame.loc[frame.split == "train", "stem"])


# ----------------------------------------------------------------------------- official split files
def test_flowers102_official_files(tmp_path):
    root = tmp_path / "raw"
    labels = np.array([[1, 1, 2, 2, 1, 2]], dtype=np.uint8)
    for i in range(1, 7):
        _save(root / "jpg" / f"image_{i:05d}.jpg", h=20, w=20, seed=i)
    scipy.io.savemat(root / "imagelabels.mat", {"labels": labels})
    scipy.io.savemat(root / "setid.mat", {"trnid": np.array([[1, 3]]), "valid": np.array([[2, 4]]),
                                          "tstid": np.array([[5, 6]])})
    frame = prepare_dataset("fl", {"source": "local", "path": "x", "layout": "flowers102"},
                            root, tmp_path / "out")
    got = {s: (sp, c, n) for s, sp, c, n in
           frame[["stem", "split", "class_id", "class_name"]].itertuples(index=False)}
    assert got == {"class_1__image_00001": ("train", 0, "class_1"),
                   "class_2__image_00003": ("train", 1, "class_2"),
                   "class_1__image_00002": ("val", 0, "class_1"),
                   "class_2__image_00004": ("val", 1, "class_2"),
                   "class_1__image_00005": ("test", 0, "class_1"),
                   "class_2__image_00006": ("test", 1, "class_2")}


def test_flowers102_missing_labels_named(tmp_path):
    (tmp_path / "jpg").mkdir()
    with pytest.raises(DataError, match="imagelabels.mat not found"):
        prepare_dataset("fl", {"source": "local", "path": "x", "layout": "flowers102"},
                        tmp_path, tmp_path.parent / "out_fl")


def test_cub200_official_files(tmp_path):
    base = tmp_path / "raw" / "CUB_200_2011"
    classes = {1: "001.Albatross", 2: "002.Auklet"}
    lines = {"images": [], "labels": [], "split": []}
    image_id = 0
    for label, cname in classes.items():
        for j in range(6):
            image_id += 1
            rel = f"{cname}/{cname[4:]}_{j:04d}.jpg"
            _save(base / "images" / rel, h=18, w=22, seed=image_id)
            lines["images"].append(f"{image_id} {rel}")
            lines["labels"].append(f"{image_id} {label}")
            lines["split"].append(f"{image_id} {1 if j < 4 else 0}")
    (base / "images.txt").write_text("\n".join(lines["images"]) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(lines["labels"]) + "\n")
    (base / "train_test_split.txt").write_text("\n".join(lines["split"]) + "\n")
    (base / "classes.txt").write_text("".join(f"{k} {v}\n" for k, v in classes.items()))
    spec = {"source": "url", "files": [{"url": "x"}], "layout": "cub200",
            "split": {"val_fraction": 0.25}}
    frame = prepare_dataset("cub", spec, tmp_path / "raw", tmp_path / "out")
    table = frame.groupby(["class_name", "split"]).size().unstack()
    for cname in classes.values():  # official test kept, val carved from the 4 train images
        assert table.loc[cname].to_dict() == {"test": 2, "train": 3, "val": 1}
    assert frame.set_index("stem").loc["002.Auklet__Auklet_0005", "split"] == "test"
    assert sorted(frame["class_id"].unique()) == [0, 1]


# ----------------------------------------------------------------------------- refgroups, builtin classes
def test_refgroups_naming(tmp_path):
    for name in ["000_0", "000_1", "000_2", "001_0", "001_1"]:
        _save(tmp_path / "cufed" / f"{name}.png", seed=len(name))
    frame = prepare_dataset("ref", {"source": "local", "path": "x", "layout": "refgroups"},
                            tmp_path / "cufed", tmp_path / "out")
    got = list(frame[["stem", "group", "role"]].itertuples(index=False, name=None))
    assert got == [("000_0", "000", "target"), ("000_1", "000", "ref1"), ("000_2", "000", "ref2"),
                   ("001_0", "001", "target"), ("001_1", "001", "ref1")]
    back = pd.read_csv(tmp_path / "out" / "manifest.csv", dtype={"group": str})
    assert back["group"].tolist() == ["000", "000", "000", "001", "001"]


def test_refgroups_missing_target_and_bad_name(tmp_path):
    _save(tmp_path / "a" / "005_1.png")
    with pytest.raises(DataError, match="group '005'.*no target"):
        prepare_dataset("ref", {"source": "local", "path": "x", "layout": "refgroups"},
                        tmp_path / "a", tmp_path / "out")
    _save(tmp_path / "b" / "target.png")
    with pytest.raises(DataError, match="target.png does not follow"):
        prepare_dataset("ref", {"source": "local", "path": "x", "layout": "refgroups"},
                        tmp_path / "b", tmp_path / "out")


def test_builtin_classes(tmp_path):
    spec = {"source": "builtin", "layout": "builtin_classes", "images": ["coins", "camera"],
            "hr_size": 64, "samples_per_class": 5, "split": {"val_fraction": 0.2, "test_fraction": 0.2}}
    frame = prepare_dataset("bc", spec, None, tmp_path / "out")
    assert len(frame) == 10 and set(frame["height"]) == {64}
    assert frame.groupby("class_name")["class_id"].first().to_dict() == {"camera": 1, "coins": 0}
    assert frame.groupby("split").size().to_dict() == {"test": 2, "train": 6, "val": 2}
    coins = load_builtin("coins")
    crops = [read_image(tmp_path / "out" / f) for f in frame.loc[frame["class_name"] == "coins", "file"]]
    # every crop is a 64x64 window of the photo, and no two crops overlap
    corners = []
    for crop in crops:
        hits = [(y, x) for y in range(coins.shape[0] - 63) for x in range(0, coins.shape[1] - 63)
                if coins[y, x] == crop[0, 0] and np.array_equal(coins[y:y + 64, x:x + 64], crop)]
        assert hits
        corners.append(hits[0])
    for i, (y1, x1) in enumerate(corners):
        for y2, x2 in corners[i + 1:]:
            assert abs(y1 - y2) >= 64 or abs(x1 - x2) >= 64


def test_builtin_classes_too_many_crops_named(tmp_path):
    spec = {"source": "builtin", "layout": "builtin_classes", "images": ["text"], "hr_size": 64,
            "samples_per_class": 50}
    with pytest.raises(DataError, match=r"'text' is 172x448 and fits only 14 .*hr_size <= "):
        prepare_dataset("bc", spec, None, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- LR folders / CLI
def test_cli_make_lr_matches_matlab(shared_data, tmp_path, capsys):
    set5 = shared_data / "benchmark" / "Set5"
    out = tmp_path / "lr" / "X3"
    assert cli_main(["make-lr", "--scale", "3", "--quiet", str(set5 / "HR"), str(out)]) == 0
    golden = sorted((set5 / "LR_bicubic_matlab" / "X3").glob("*.png"))
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in golden]
    for path in golden:
        ours, theirs = read_image(out / path.name), read_image(path)
        assert ours.shape == theirs.shape and int(np.count_nonzero(ours != theirs)) == 0


def test_cli_make_lr_bad_input_exits_2(tmp_path, capsys):
    _save(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "zz_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "out"
    assert cli_main(["make-lr", "--scale", "2", "--quiet", str(tmp_path / "in"), str(out)]) == 2
    err = capsys.readouterr().err
    assert "zz_bad.png" in err and "make-lr: error" in err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_make_lr_too_small_named(tmp_path):
    _save(tmp_path / "in" / "small.png", h=3, w=30)
    with pytest.raises(ImageError, match="small.png.*3x30.*smaller than the scale 4"):
        make_lr_folder(tmp_path / "in", tmp_path / "out", 4, progress=False)
    assert not (tmp_path / "out").exists()


def test_make_lr_gray_and_rgb(tmp_path):
    _save(tmp_path / "in" / "g.png", h=17, w=22, gray=True)
    _save(tmp_path / "in" / "c.jpg", h=17, w=22)
    written = make_lr_folder(tmp_path / "in", tmp_path / "out", 2, progress=False)
    assert [p.name for p in written] == ["c.png", "g.png"]
    assert read_image(written[0]).shape == (8, 11, 3) and read_image(written[1]).shape == (8, 11)
