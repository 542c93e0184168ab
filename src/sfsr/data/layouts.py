"""Dataset layouts: each ``_collect_<layout>`` lists the HR images of one catalogue entry
(config ``datasets.<name>``) as :class:`_Item` s with their labels (class, split, reference group),
plus the small readers they share. :data:`LAYOUTS` is the one table of the layouts (name -> collect
function, kind, sources, use of ``hr_size``): :func:`sfsr.data.prepare.prepare_dataset` dispatches
through it and writes the images and the manifest, and the config checks derive their layout lists
from it. Torch-free. See docs/data.md for the layouts.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from PIL import Image

from sfsr.data.images import images_by_stem, list_images, read_image
from sfsr.data.sources import load_builtin
from sfsr.errors import CLI, WORKFLOW, ConfigError, DataError, ImageError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
#: Per file of a builtin_refgroups set: how its reference was made (written as references.csv).
REFERENCE_COLUMNS = ["stem", "group", "level", "photo", "top", "left", "shift", "angle", "zoom", "brightness",
                     "contrast"]


@dataclass
class _Item:
    """One HR image to write: where it comes from and its labels."""
    stem: str
    source: str                      # file path, or builtin:<name>
    load: Callable[[], np.ndarray]   # returns uint8 HxW[x3]; raises ImageError
    class_id: int | None = None
    class_name: str | None = None
    split: str | None = None
    group: str | None = None
    role: str | None = None


@dataclass
class Collected:
    """What a layout's collect function returns: the images, the splits the layout itself gives
    (classification layouts; the others are carved) and, for builtin_refgroups, how each reference
    was made (written as references.csv)."""
    items: list[_Item]
    given: set[str] = field(default_factory=set)
    references: pd.DataFrame | None = None


# ----------------------------------------------------------------------------- helpers
def _natural_key(text: str) -> tuple:
    """Sort key that orders digit runs numerically ("2" < "10")."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.split(r"(\d+)", text) if part)


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def resize_short_side_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Resize (Pillow LANCZOS on uint8) so the short side is ``size``, then centre-crop to
    ``size`` x ``size``. The long side becomes ``round(long * size / short)``."""
    h, w = image.shape[:2]
    if (h, w) != (size, size):
        factor = size / min(h, w)
        nh, nw = max(size, _round_half_up(h * factor)), max(size, _round_half_up(w * factor))
        if (nh, nw) != (h, w):
            image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.LANCZOS))
        top, left = (nh - size) // 2, (nw - size) // 2
        image = image[top:top + size, left:left + size]
    return np.ascontiguousarray(image)


def _file_item(path: Path, stem: str, **labels: Any) -> _Item:
    return _Item(stem=stem, source=str(path), load=lambda: read_image(path), **labels)


def _read_class_names(folder: Path) -> dict[str, str]:
    """Optional ``classes.json`` (class folder / label -> readable name) in ``folder``."""
    path = folder / "classes.json"
    if not path.is_file():
        return {}
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read class names ({exc}); fix or remove the file") from exc
    if not isinstance(names, dict):
        raise DataError(f"{path}: expected a JSON object mapping class folder -> name")
    return {str(k): str(v) for k, v in names.items()}


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{path} not found: the {what} is needed by this layout; check the dataset's "
                        f"files / root settings")
    return path


def _read_id_table(path: Path) -> dict[int, str]:
    """Lines ``<integer id> <value>`` (CUB-200 text files)."""
    table: dict[int, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataError(f"{path}:{number}: expected '<id> <value>', got {line!r}")
        table[int(parts[0])] = parts[1].strip()
    return table


# ----------------------------------------------------------------------------- layouts
def _collect_flat(name: str, spec: dict, root: Path | None, seed: int) -> Collected:
    if spec["source"] == "builtin":
        names = list(spec["images"])
        if not names:
            raise ConfigError(f"datasets.{name}.images: a builtin dataset needs at least one image name")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"datasets.{name}.images: {', '.join(duplicates)} listed more than once")
        return Collected([_Item(stem=n, source=f"builtin:{n}", load=lambda n=n: load_builtin(n)) for n in names])
    return Collected([_file_item(p, p.stem) for p in list_images(root, spec["extensions"])])


def _collect_class_folders(name: str, spec: dict, root: Path, seed: int) -> Collected:
    dirs: dict[str, str] = dict(spec["split"]["dirs"])
    if dirs:
        split_roots = [(root / sub, split) for sub, split in dirs.items()]
        given = set(dirs.values())
    else:
        split_roots = [(root, "train")]
        given = set()
    names = _read_class_names(root)
    found: list[tuple[str, str, Path, str]] = []  # (class folder, split, image, stem prefix)
    for split_root, split in split_roots:
        if not split_root.is_dir():
            raise DataError(f"dataset {name}: split folder {split_root} not found (split.dirs "
                            f"{dirs}); check split.dirs and root")
        classes = sorted((d for d in split_root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                         key=lambda d: _natural_key(d.name))
        if not classes:
            raise DataError(f"dataset {name}: no class folders in {split_root} (layout class_folders "
                            f"expects <root>/<class>/<image>)")
        for class_dir in classes:
            # with split folders the same file name may appear in several of them: prefix the folder
            prefix = f"{split_root.name}__{class_dir.name}__" if dirs else f"{class_dir.name}__"
            found += [(class_dir.name, split, p, prefix)
                      for p in list_images(class_dir, spec["extensions"])]
    class_ids = {c: i for i, c in enumerate(sorted({c for c, _, _, _ in found}, key=_natural_key))}
    items = [_file_item(p, f"{prefix}{p.stem}", class_id=class_ids[c], class_name=names.get(c, c),
                        split=s) for c, s, p, prefix in found]
    return Collected(items, given)


def _collect_flowers102(name: str, spec: dict, root: Path, seed: int) -> Collected:
    from scipy.io import loadmat

    labels_path = _require_file(root / "imagelabels.mat", "Oxford-102 label file imagelabels.mat")
    setid_path = _require_file(root / "setid.mat", "Oxford-102 split file setid.mat")
    try:
        labels = np.asarray(loadmat(labels_path)["labels"]).ravel().astype(int)
        setid = loadmat(setid_path)
        splits = {"train": setid["trnid"], "val": setid["valid"], "test": setid["tstid"]}
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"dataset {name}: cannot read {labels_path.name} / {setid_path.name} "
                        f"({exc!r}); expected 'labels' and 'trnid'/'valid'/'tstid'") from exc
    names = _read_class_names(root)
    items = []
    for split, ids in splits.items():
        for image_id in sorted(np.asarray(ids).ravel().astype(int)):
            if not 1 <= image_id <= labels.size:
                raise DataError(f"{setid_path}: image id {image_id} has no label in {labels_path} "
                                f"({labels.size} labels)")
            label = int(labels[image_id - 1])
            class_name = names.get(str(label), f"class_{label}")
            path = root / "jpg" / f"image_{image_id:05d}.jpg"
            items.append(_file_item(path, f"class_{label}__{path.stem}", class_id=label - 1,
                                    class_name=class_name, split=split))
    return Collected(items, set(SPLITS))


def _collect_cub200(name: str, spec: dict, root: Path, seed: int) -> Collected:
    base = root / "CUB_200_2011" if (root / "CUB_200_2011" / "images.txt").is_file() else root
    images = _read_id_table(_require_file(base / "images.txt", "CUB-200-2011 images.txt"))
    labels = _read_id_table(_require_file(base / "image_class_labels.txt",
                                          "CUB-200-2011 image_class_labels.txt"))
    is_train = _read_id_table(_require_file(base / "train_test_split.txt",
                                            "CUB-200-2011 train_test_split.txt"))
    classes = _read_id_table(_require_file(base / "classes.txt", "CUB-200-2011 classes.txt"))
    items = []
    for image_id in sorted(images):
        if image_id not in labels or image_id not in is_train:
            raise DataError(f"{base}: image id {image_id} ({images[image_id]}) has no class label or "
                            f"train/test entry; the CUB-200-2011 files are inconsistent")
        label = int(labels[image_id])
        class_name = classes.get(label, f"class_{label}")
        path = base / "images" / images[image_id]
        items.append(_file_item(path, f"{class_name}__{path.stem}", class_id=label - 1,
                                class_name=class_name,
                                split="train" if is_train[image_id].strip() == "1" else "test"))
    return Collected(items, {"train", "test"})


#: Fixes for a reference level missing from a group (refgroups layout).
MISSING_LEVEL_HINTS = {
    WORKFLOW: "restore the file, or set on_bad_image: skip in the dataset's settings to keep the group "
              "without that level",
    CLI: "restore the file",
}


def _missing_level(name: str, path: Path, group: str, level: int, have: list[int]) -> _Item:
    """A placeholder for the absent level-``level`` reference ``path`` of ``group``: loading it raises
    :class:`ImageError`, so that ``on_bad_image`` decides (fail: the job stops naming the file;
    skip: the group is kept without that level, the file listed in skipped.csv)."""
    def load() -> np.ndarray:
        raise ImageError(f"{path}: not found: group {group!r} of dataset {name} has references of levels "
                         f"{', '.join(map(str, have))} but not level {level} (a reference's level is the number "
                         f"in its file name, 1 = most similar)", hints=MISSING_LEVEL_HINTS)
    return _Item(stem=path.stem, source=str(path), load=load, group=group, role=f"ref{level}")


def _collect_refgroups(name: str, spec: dict, root: Path, seed: int) -> Collected:
    """CUFED5's naming: ``<group>_0`` the target, ``<group>_<k>`` its level-k reference (1 = most
    similar). The group id is the text before the last ``_`` (``"001"`` stays ``"001"``) and a
    reference's level is ``k`` from its name, never its rank among the group's files. A gap in a
    group's levels (``001_3`` gone while ``001_4`` is there) is reported in one warning line, and the
    absent files are listed as items that cannot be read: ``on_bad_image: fail`` stops the job naming
    the first, ``skip`` keeps the group without those levels and lists them in skipped.csv. Groups
    with fewer levels than others (``002_1..3`` beside ``001_1..5``) are allowed, with one warning
    line."""
    parsed = []
    for path in list_images(root, spec["extensions"]):
        match = re.fullmatch(r"(.+)_(\d+)", path.stem)
        if match is None:
            raise DataError(f"dataset {name}: {path} does not follow the refgroups naming "
                            f"<group>_<k> (k=0 target, 1.. references, e.g. 000_0.png, 000_1.png)")
        parsed.append((match.group(1), int(match.group(2)), path))
    parsed.sort(key=lambda t: (_natural_key(t[0]), t[1]))
    groups: dict[str, list[int]] = {}
    for group, k, _ in parsed:
        groups.setdefault(group, []).append(k)
    for group, ks in groups.items():
        if 0 not in ks:
            raise DataError(f"dataset {name}: group {group!r} in {root} has no target image "
                            f"{group}_0; add it or remove the group's references")
        if len(ks) < 2:
            raise DataError(f"dataset {name}: group {group!r} in {root} has no reference images "
                            f"({group}_1, ...)")
    top = max(k for ks in groups.values() for k in ks)
    suffix = {g: p.suffix for g, k, p in parsed if k == 0}
    items, missing, fewer = [], [], []
    for group, ks in groups.items():
        have = sorted(k for k in ks if k > 0)
        for level in range(1, have[-1]):  # a gap below the group's last level: a file is gone
            if level not in ks:
                path = root / f"{group}_{level}{suffix[group]}"
                missing.append(f"{path.name} (group {group!r} has levels {', '.join(map(str, have))})")
                items.append((group, level, _missing_level(name, path, group, level, have)))
        if have[-1] < top:
            fewer.append(f"{group!r} (up to {have[-1]})")
    if missing:
        log.warning("dataset %s: %d reference file(s) missing in %s, the levels of the others kept from "
                    "their file names: %s%s", name, len(missing), root, "; ".join(missing[:5]),
                    " ..." if len(missing) > 5 else "")
    if fewer:  # allowed (a set may rank fewer references for some targets), but said
        log.warning("dataset %s: %d of %d group(s) in %s have fewer reference levels than the set's %d, so "
                    "the means of the higher levels have fewer groups: %s%s", name, len(fewer), len(groups),
                    root, top, ", ".join(fewer[:5]), " ..." if len(fewer) > 5 else "")
    items += [(g, k, _file_item(p, p.stem, group=g, role="target" if k == 0 else f"ref{k}"))
              for g, k, p in parsed]
    items.sort(key=lambda t: (_natural_key(t[0]), t[1]))
    return Collected([item for _, _, item in items])


def _collect_refpairs(name: str, spec: dict, root: Path, seed: int) -> Collected:
    """CUFED's training layout: ``input/<name>`` and its reference ``ref/<name>`` -> group
    ``<name stem>`` with target ``<stem>_0`` and reference ``<stem>_1``."""
    folders = {role: root / sub for role, sub in (("target", "input"), ("ref1", "ref"))}
    for folder in folders.values():
        if not folder.is_dir():
            raise DataError(f"dataset {name}: layout refpairs needs the folders input/ and ref/ in {root}; "
                            f"{folder.name}/ is missing (check the dataset's 'root')")
    inputs = images_by_stem(folders["target"], spec["extensions"], "input")
    refs = images_by_stem(folders["ref1"], spec["extensions"], "reference")
    unpaired = sorted(set(inputs) ^ set(refs))
    if unpaired:
        raise DataError(f"dataset {name}: input/ and ref/ in {root} must hold the same names; unpaired: "
                        f"{', '.join(unpaired[:10])}{' ...' if len(unpaired) > 10 else ''}")
    items = []
    for stem in sorted(inputs, key=_natural_key):
        items.append(_file_item(inputs[stem], f"{stem}_0", group=stem, role="target"))
        items.append(_file_item(refs[stem], f"{stem}_1", group=stem, role="ref1"))
    return Collected(items)


def _collect_builtin_refgroups(name: str, spec: dict, root: None, seed: int) -> Collected:
    from sfsr.data.refgroups import synthetic_groups

    if spec["hr_size"] is None:
        raise ConfigError(f"datasets.{name}.hr_size: layout builtin_refgroups needs hr_size (the crop size)")
    rows = synthetic_groups(name, list(spec["images"]), int(spec["hr_size"]), int(spec["groups_per_image"]),
                            seed=seed)
    items = [_Item(stem=r["stem"], source=f"builtin:{r['photo']}", load=lambda im=r["image"]: im,
                   group=r["group"], role=r["role"]) for r in rows]
    return Collected(items, references=pd.DataFrame(rows, columns=REFERENCE_COLUMNS))


def _grid_crops(photo: np.ndarray, size: int, count: int) -> list[tuple[int, int]]:
    """Top-left corners of ``count`` non-overlapping size x size crops on a centred grid,
    spread evenly over the grid cells (row-major)."""
    h, w = photo.shape[:2]
    rows, cols = h // size, w // size
    cells = np.floor(np.linspace(0, rows * cols - 1, count) + 0.5).astype(int)
    y0, x0 = (h - rows * size) // 2, (w - cols * size) // 2
    return [(y0 + (c // cols) * size, x0 + (c % cols) * size) for c in cells]


def _collect_builtin_classes(name: str, spec: dict, root: None, seed: int) -> Collected:
    size, count = spec["hr_size"], int(spec["samples_per_class"])
    if size is None:
        raise ConfigError(f"datasets.{name}.hr_size: layout builtin_classes needs hr_size (the crop size)")
    photos = list(spec["images"])
    if len(set(photos)) != len(photos) or not photos:
        raise ConfigError(f"datasets.{name}.images: give each builtin photo once (one class per photo)")
    items = []
    for class_id, photo_name in enumerate(photos):
        photo = load_builtin(photo_name)
        h, w = photo.shape[:2]
        fits = (h // size) * (w // size)
        if fits < count:
            best = max((s for s in range(1, min(h, w) + 1) if (h // s) * (w // s) >= count), default=0)
            raise DataError(f"dataset {name}: builtin photo {photo_name!r} is {h}x{w} and fits only "
                            f"{fits} non-overlapping {size}x{size} crops, not samples_per_class={count}; "
                            f"lower samples_per_class or use hr_size <= {best}")
        for i, (y, x) in enumerate(_grid_crops(photo, size, count)):
            crop = np.ascontiguousarray(photo[y:y + size, x:x + size])
            items.append(_Item(stem=f"{photo_name}__{i:03d}", source=f"builtin:{photo_name}",
                               load=lambda crop=crop: crop, class_id=class_id,
                               class_name=photo_name, split="train"))
    return Collected(items)


# ----------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Layout:
    """One dataset layout. ``collect(name, spec, root, seed)``: its images (``root`` None for builtin
    sources); ``kind``: flat (plain HR images), classes (classification: class labels and splits),
    refgroups (reference groups with ranked levels, for reference-based SR testing) or refpairs (one
    reference per target, reference-based SR training only); ``sources``: any, builtin (photos shipped
    in the wheels) or files (an archive or folder); ``hr_size``: how the layout uses ``hr_size``:
    resize (short side resized and centre-cropped to it), crop (crops of that size cut from the
    builtin photos) or None (not used)."""
    collect: Callable[[str, dict, Path | None, int], Collected]
    kind: str
    sources: str = "files"
    hr_size: str | None = None


#: Every dataset layout, in the order of the schema's ``layout`` enum (tests/test_recipes.py checks
#: that they agree). Adding a layout: its ``_collect_<layout>`` above, one line here, the name in the
#: schema's enum (docs/architecture.md, "Adding things").
LAYOUTS: dict[str, Layout] = {
    "flat": Layout(_collect_flat, "flat", sources="any"),
    "class_folders": Layout(_collect_class_folders, "classes", hr_size="resize"),
    "flowers102": Layout(_collect_flowers102, "classes", hr_size="resize"),
    "cub200": Layout(_collect_cub200, "classes", hr_size="resize"),
    "refgroups": Layout(_collect_refgroups, "refgroups"),
    "refpairs": Layout(_collect_refpairs, "refpairs"),
    "builtin_classes": Layout(_collect_builtin_classes, "classes", sources="builtin", hr_size="crop"),
    "builtin_refgroups": Layout(_collect_builtin_refgroups, "refgroups", sources="builtin", hr_size="crop"),
}
KINDS = ("flat", "classes", "refgroups", "refpairs")
SOURCES = ("any", "builtin", "files")


def layouts_where(*, kind: str | tuple[str, ...] | None = None, sources: str | tuple[str, ...] | None = None,
                  layouts: dict[str, Layout] | None = None) -> tuple[str, ...]:
    """The names of the layouts of ``kind`` (one or several) whose ``sources`` is one of
    ``sources``, in table order (``layouts``: the table, default :data:`LAYOUTS`)."""
    table = LAYOUTS if layouts is None else layouts
    kinds = (kind,) if isinstance(kind, str) else kind
    srcs = (sources,) if isinstance(sources, str) else sources
    return tuple(n for n, lay in table.items()
                 if (kinds is None or lay.kind in kinds) and (srcs is None or lay.sources in srcs))
