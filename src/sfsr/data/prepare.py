"""Prepare datasets (HR PNGs + manifest) and make MATLAB-exact bicubic LR folders.

``prepare_dataset`` turns one catalogue entry (config ``datasets.<name>``) into
``out_dir/HR/<stem>.png`` + ``out_dir/manifest.csv`` (+ ``skipped.csv`` with ``on_bad_image: skip``).
``make_lr_folder`` writes ``imresize(modcrop(hr, s), 1/s)`` of every image of a folder.
Both build their output in a hidden temporary sibling folder and rename it into place at the end, so
a failure leaves no half-written output. See docs/data.md for the layouts and split rules.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
from PIL import Image

from sfsr import io
from sfsr.data.bicubic import imresize, modcrop
from sfsr.data.images import DEFAULT_EXTENSIONS, images_by_stem, list_images, read_image
from sfsr.data.sources import load_builtin
from sfsr.errors import BAD_IMAGE_HINTS, ConfigError, DataError, ImageError

MANIFEST_COLUMNS = ["stem", "file", "height", "width", "channels", "gray", "class_id", "class_name",
                    "split", "group", "role", "source_path"]
SKIPPED_COLUMNS = ["path", "reason"]
SPLITS = ("train", "val", "test")
CLASS_LAYOUTS = ("class_folders", "flowers102", "cub200", "builtin_classes")

# Defaults of the keys read here; they mirror config.schema.yaml ($defs.dataset / $defs.split).
_SPEC_DEFAULTS: dict[str, Any] = {"layout": "flat", "root": "", "images": [],
                                  "extensions": list(DEFAULT_EXTENSIONS), "hr_size": None,
                                  "samples_per_class": 12, "groups_per_image": 4, "on_bad_image": None,
                                  "split": {}}
BUILTIN_LAYOUTS = ("flat", "builtin_classes", "builtin_refgroups")
#: Per file of a builtin_refgroups set: how its reference was made (written as references.csv).
REFERENCE_COLUMNS = ["stem", "group", "level", "photo", "top", "left", "shift", "angle", "zoom", "brightness",
                     "contrast"]
_SPLIT_DEFAULTS: dict[str, Any] = {"dirs": {}, "carve_val_from": "train", "carve_test_from": "train",
                                   "val_fraction": 0.1, "test_fraction": 0.1, "seed": 0}


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


# ----------------------------------------------------------------------------- folder building
@contextlib.contextmanager
def build_folder(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary sibling of ``out_dir``; on success it replaces ``out_dir``
    (an existing ``out_dir`` is swapped out and deleted), on failure it is removed."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = io.make_temp_dir(out_dir, ".tmp")
    try:
        yield tmp
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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


def _with_defaults(spec: dict) -> dict:
    full = {**_SPEC_DEFAULTS, **spec}
    full["split"] = {**_SPLIT_DEFAULTS, **(spec.get("split") or {})}
    return full


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
def _collect_flat(name: str, spec: dict, root: Path | None) -> list[_Item]:
    if spec["source"] == "builtin":
        names = list(spec["images"])
        if not names:
            raise ConfigError(f"datasets.{name}.images: a builtin dataset needs at least one image name")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"datasets.{name}.images: {', '.join(duplicates)} listed more than once")
        return [_Item(stem=n, source=f"builtin:{n}", load=lambda n=n: load_builtin(n)) for n in names]
    return [_file_item(p, p.stem) for p in list_images(root, spec["extensions"])]


def _collect_class_folders(name: str, spec: dict, root: Path) -> tuple[list[_Item], set[str]]:
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
    return items, given


def _collect_flowers102(name: str, spec: dict, root: Path) -> tuple[list[_Item], set[str]]:
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
    return items, set(SPLITS)


def _collect_cub200(name: str, spec: dict, root: Path) -> tuple[list[_Item], set[str]]:
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
    return items, {"train", "test"}


def _collect_refgroups(name: str, spec: dict, root: Path) -> list[_Item]:
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
    return [_file_item(p, p.stem, group=g, role="target" if k == 0 else f"ref{k}")
            for g, k, p in parsed]


def _collect_refpairs(name: str, spec: dict, root: Path) -> list[_Item]:
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
    return items


def _collect_builtin_refgroups(name: str, spec: dict, seed: int) -> tuple[list[_Item], pd.DataFrame]:
    from sfsr.data.refgroups import synthetic_groups

    if spec["hr_size"] is None:
        raise ConfigError(f"datasets.{name}.hr_size: layout builtin_refgroups needs hr_size (the crop size)")
    rows = synthetic_groups(name, list(spec["images"]), int(spec["hr_size"]), int(spec["groups_per_image"]),
                            seed=seed)
    items = [_Item(stem=r["stem"], source=f"builtin:{r['photo']}", load=lambda im=r["image"]: im,
                   group=r["group"], role=r["role"]) for r in rows]
    return items, pd.DataFrame(rows, columns=REFERENCE_COLUMNS)


def _grid_crops(photo: np.ndarray, size: int, count: int) -> list[tuple[int, int]]:
    """Top-left corners of ``count`` non-overlapping size x size crops on a centred grid,
    spread evenly over the grid cells (row-major)."""
    h, w = photo.shape[:2]
    rows, cols = h // size, w // size
    cells = np.floor(np.linspace(0, rows * cols - 1, count) + 0.5).astype(int)
    y0, x0 = (h - rows * size) // 2, (w - cols * size) // 2
    return [(y0 + (c // cols) * size, x0 + (c % cols) * size) for c in cells]


def _collect_builtin_classes(name: str, spec: dict) -> list[_Item]:
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
    return items


# ----------------------------------------------------------------------------- splits
def _carve_count(n: int, fraction: float) -> int:
    """Images of one class moved by a carve: round(fraction*n), at least 1 when fraction > 0 and
    n >= 2, and always leaving at least one image behind."""
    if n < 2 or fraction <= 0:
        return 0
    return min(max(1, _round_half_up(fraction * n)), n - 1)


def carve_splits(frame: pd.DataFrame, given: set[str], split_spec: dict, seed: int,
                 dataset: str = "") -> pd.DataFrame:
    """Fill the missing val/test splits of a classification manifest, stratified by class_id.

    ``given``: the splits the layout provides (they are kept). val is carved first (from
    ``carve_val_from``), then test (from ``carve_test_from``); the random choice per class uses
    ``numpy.random.default_rng([seed, split.seed])`` over the class's images sorted by stem."""
    split_spec = {**_SPLIT_DEFAULTS, **split_spec}
    frame = frame.sort_values("stem", kind="stable").reset_index(drop=True)
    rng = np.random.default_rng([int(seed), int(split_spec["seed"])])
    carves = [("val", split_spec["carve_val_from"], split_spec["val_fraction"]),
              ("test", split_spec["carve_test_from"], split_spec["test_fraction"])]
    for target, source, fraction in carves:
        if target in given or source is None:
            continue
        if not (frame["split"] == source).any():
            raise ConfigError(f"datasets.{dataset}.split.carve_{target}_from: split {source!r} is "
                              f"empty, nothing to carve {target} from")
        for class_id in sorted(frame["class_id"].unique()):
            members = frame.index[(frame["class_id"] == class_id) & (frame["split"] == source)]
            k = _carve_count(len(members), fraction)
            if k:
                frame.loc[members[rng.permutation(len(members))[:k]], "split"] = target
    return frame


# ----------------------------------------------------------------------------- prepare
def prepare_dataset(name: str, spec: dict, source_root: Path | None, out_dir: Path, *,
                    on_bad_image: str = "fail", min_size: int = 16, max_scale: int = 4,
                    seed: int = 0, progress: bool = False) -> pd.DataFrame:
    """Build ``out_dir/HR/<stem>.png`` and ``out_dir/manifest.csv`` for dataset ``name``.

    ``spec``: the validated catalogue entry (missing keys take the schema defaults);
    ``spec['on_bad_image']``, when set, overrides ``on_bad_image``. ``source_root``: the folder
    with the data (extracted archive or local folder; ``spec['root']`` is applied under it), None
    for builtin sources. Images with a side smaller than ``max(min_size, max_scale)`` and unreadable
    images fail the job naming the file, or with 'skip' are left out and listed in skipped.csv.
    Returns the manifest (columns :data:`MANIFEST_COLUMNS`).
    """
    spec = _with_defaults(spec)
    layout, source = spec["layout"], spec["source"]
    mode = spec["on_bad_image"] or on_bad_image
    if mode not in ("fail", "skip"):
        raise ConfigError(f"on_bad_image must be 'fail' or 'skip', got {mode!r} (dataset {name})")
    min_side = max(int(min_size), int(max_scale))
    hr_size = spec["hr_size"]
    if hr_size is not None and layout not in (*CLASS_LAYOUTS, "builtin_refgroups"):
        raise ConfigError(f"datasets.{name}.hr_size: only classification layouts "
                          f"({', '.join(CLASS_LAYOUTS)}) use hr_size; remove it for layout {layout}")
    if hr_size is not None and hr_size < min_side:
        raise ConfigError(f"datasets.{name}.hr_size={hr_size} is smaller than the minimum image size "
                          f"{min_side} (min_image_size {min_size}, largest scale {max_scale})")
    if (source == "builtin" and layout not in BUILTIN_LAYOUTS) or \
            (layout in BUILTIN_LAYOUTS and layout != "flat" and source != "builtin"):
        raise ConfigError(f"datasets.{name}: source {source!r} cannot use layout {layout!r} "
                          f"(builtin sources use layout {', '.join(BUILTIN_LAYOUTS)})")

    root: Path | None = None
    if source != "builtin":
        if source_root is None:
            raise ConfigError(f"dataset {name}: source {source!r} needs a source folder")
        root = Path(source_root) / spec["root"] if spec["root"] else Path(source_root)
        if not root.is_dir():
            raise DataError(f"dataset {name}: folder {root} does not exist; check the dataset's "
                            f"'root' ({spec['root']!r}) and 'path' settings")
        out_abs, root_abs = Path(out_dir).resolve(), root.resolve()
        if out_abs == root_abs or root_abs in out_abs.parents:
            raise ConfigError(f"dataset {name}: output folder {out_dir} is inside the source folder "
                              f"{root}; sources are never written to, choose another data_dir")

    given: set[str] = set()
    if layout == "flat":
        items = _collect_flat(name, spec, root)
    elif layout == "class_folders":
        items, given = _collect_class_folders(name, spec, root)
    elif layout == "flowers102":
        items, given = _collect_flowers102(name, spec, root)
    elif layout == "cub200":
        items, given = _collect_cub200(name, spec, root)
    elif layout == "refgroups":
        items = _collect_refgroups(name, spec, root)
    elif layout == "refpairs":
        items = _collect_refpairs(name, spec, root)
    elif layout == "builtin_classes":
        items = _collect_builtin_classes(name, spec)
    elif layout == "builtin_refgroups":
        items, references = _collect_builtin_refgroups(name, spec, seed)
    else:
        raise ConfigError(f"datasets.{name}.layout: unknown layout {layout!r}")

    seen: dict[str, str] = {}
    for item in items:
        if item.stem in seen:
            raise DataError(f"dataset {name}: two images give the same name {item.stem!r}: "
                            f"{seen[item.stem]} and {item.source}; rename or remove one")
        seen[item.stem] = item.source

    resize = hr_size is not None and layout not in ("builtin_classes", "builtin_refgroups")  # cut to size
    rows: list[dict] = []
    skipped: list[dict] = []
    skipped_groups: set[str] = set()
    iterator: Any = items
    if progress:
        from tqdm import tqdm
        iterator = tqdm(items, desc=f"prepare {name}", unit="img")
    with build_folder(out_dir) as tmp:
        for item in iterator:
            try:
                if item.group in skipped_groups:
                    raise ImageError(f"{item.source}: target image of group {item.group!r} was skipped")
                image = item.load()
                h, w = image.shape[:2]
                if min(h, w) < min_side:
                    raise ImageError(f"{item.source}: image is {h}x{w} pixels, smaller than the minimum "
                                     f"side {min_side} (min_image_size {min_size}, largest scale "
                                     f"{max_scale})", hints=BAD_IMAGE_HINTS)
                if resize:
                    image = resize_short_side_center_crop(image, hr_size)
            except ImageError as exc:
                if mode == "fail":
                    raise
                skipped.append({"path": item.source, "reason": str(exc)})
                if item.role == "target":
                    skipped_groups.add(item.group)
                continue
            io.save_image(tmp / "HR" / f"{item.stem}.png", image)
            channels = 1 if image.ndim == 2 else image.shape[2]
            gray = channels == 1 or bool(np.all(image == image[..., :1]))
            rows.append({"stem": item.stem, "file": f"HR/{item.stem}.png", "height": image.shape[0],
                         "width": image.shape[1], "channels": channels, "gray": gray,
                         "class_id": item.class_id, "class_name": item.class_name,
                         "split": item.split, "group": item.group, "role": item.role,
                         "source_path": item.source})
        if layout in ("refgroups", "refpairs") and rows:
            rows = _drop_groups_without_refs(rows, skipped, tmp)
        if not rows:
            raise DataError(f"dataset {name}: no usable image left ({len(skipped)} skipped); see the "
                            f"reasons above or in skipped.csv")
        frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
        frame["class_id"] = frame["class_id"].astype("Int64")
        if layout in CLASS_LAYOUTS:
            frame = carve_splits(frame, given, spec["split"], seed, name)
            order = {s: i for i, s in enumerate(SPLITS)}
            frame = frame.sort_values(["split", "class_id", "stem"], key=lambda c: c.map(order)
                                      if c.name == "split" else c, kind="stable").reset_index(drop=True)
        io.write_csv(tmp / "manifest.csv", frame)
        if mode == "skip":
            io.write_csv(tmp / "skipped.csv", pd.DataFrame(skipped, columns=SKIPPED_COLUMNS))
        if layout == "builtin_refgroups":
            io.write_csv(tmp / "references.csv", references)
    return frame


def _drop_groups_without_refs(rows: list[dict], skipped: list[dict], folder: Path) -> list[dict]:
    """With 'skip': a reference group whose references were all skipped loses its target too."""
    with_refs = {r["group"] for r in rows if r["role"] != "target"}
    kept = []
    for row in rows:
        if row["group"] in with_refs:
            kept.append(row)
        else:
            (folder / row["file"]).unlink()
            skipped.append({"path": row["source_path"],
                            "reason": f"all references of group {row['group']!r} were skipped"})
    return kept


# ----------------------------------------------------------------------------- LR folders
def make_lr_folder(input_dir: str | os.PathLike, output_dir: str | os.PathLike, scale: int, *,
                   device: str = "cpu", progress: bool = True) -> list[Path]:
    """Write ``imresize(modcrop(hr, scale), 1/scale)`` (MATLAB-exact bicubic, uint8) of every image
    in ``input_dir`` to ``output_dir/<stem>.png``; returns the written paths.

    ``device`` other than cpu runs the torch implementation there (same bits). The folder is built
    in a temporary sibling and renamed into place; a bad or too small input raises an
    :class:`ImageError` naming the file and leaves ``output_dir`` untouched.
    """
    scale = int(scale)
    if scale < 1:
        raise ConfigError(f"scale must be a positive integer, got {scale}")
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if os.path.realpath(input_dir) == os.path.realpath(output_dir):
        raise ConfigError(f"output folder {output_dir} is the input folder; choose another one")
    files = list(images_by_stem(input_dir, DEFAULT_EXTENSIONS, "input").values())
    if device == "cpu":
        dev = None
    else:
        from sfsr.tensors import resolve_device  # torch only off the CPU path

        dev = resolve_device(device)
    iterator: Any = files
    if progress:
        from tqdm import tqdm
        iterator = tqdm(files, desc=f"make LR x{scale}", unit="img")
    written = []
    with build_folder(output_dir) as tmp:
        for path in iterator:
            hr = read_image(path)
            if min(hr.shape[:2]) < scale:
                raise ImageError(f"{path}: image is {hr.shape[0]}x{hr.shape[1]} pixels, smaller than "
                                 f"the scale {scale}", hints=BAD_IMAGE_HINTS)
            hr = modcrop(hr, scale)
            if dev is None:
                lr = imresize(hr, 1 / scale)
            else:
                lr = _imresize_on_device(hr, scale, dev)
            io.save_image(tmp / f"{path.stem}.png", lr)
            written.append(output_dir / f"{path.stem}.png")
    return written


def _imresize_on_device(hr: np.ndarray, scale: int, device: Any) -> np.ndarray:
    import torch

    tensor = torch.from_numpy(np.array(hr)).to(device)  # copy: PIL arrays are read-only
    if tensor.ndim == 3:
        tensor = tensor.permute(2, 0, 1)
    lr = imresize(tensor, 1 / scale)
    if lr.ndim == 3:
        lr = lr.permute(1, 2, 0)
    return lr.contiguous().cpu().numpy()
