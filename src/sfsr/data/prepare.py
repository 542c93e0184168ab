"""Prepare datasets (HR PNGs + manifest) and make MATLAB-exact bicubic LR folders.

``prepare_dataset`` turns one catalogue entry (config ``datasets.<name>``) into
``out_dir/HR/<stem>.png`` + ``out_dir/manifest.csv`` (+ ``skipped.csv`` with ``on_bad_image: skip``).
``make_lr_folder`` writes ``imresize(modcrop(hr, s), 1/s)`` of every image of a folder.
Both build their output in a hidden temporary sibling folder and move it into place at the end, so
a failure leaves no half-written output. ``prepare_dataset`` replaces its (workflow-owned) output
folder; ``make_lr_folder`` writes only its own files into an existing folder and deletes nothing.
See docs/data.md for the layouts and split rules.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from sfsr import io, schema
from sfsr.data.bicubic import imresize, modcrop
from sfsr.data.images import DEFAULT_EXTENSIONS, images_by_stem, read_image
from sfsr.data.layouts import (LAYOUTS, SPLITS, _round_half_up, layouts_where,
                               resize_short_side_center_crop)  # the last: public here too
from sfsr.errors import BAD_IMAGE_HINTS, ConfigError, DataError, ImageError
from sfsr.outputs import check_output_folder, move_into_folder

MANIFEST_COLUMNS = ["stem", "file", "height", "width", "channels", "gray", "class_id", "class_name",
                    "split", "group", "role", "source_path"]
SKIPPED_COLUMNS = ["path", "reason"]
CLASS_LAYOUTS = layouts_where(kind="classes")  # class_folders, flowers102, cub200, builtin_classes

# Defaults of a dataset entry and of its split, read from config.schema.yaml ($defs.dataset /
# $defs.split, their one source), for library use without a validated config.
_SPEC_DEFAULTS: dict[str, Any] = {**schema.defaults("#/$defs/dataset"), "split": {}}
BUILTIN_LAYOUTS = layouts_where(sources=("any", "builtin"))  # flat, builtin_classes, builtin_refgroups
_SPLIT_DEFAULTS: dict[str, Any] = schema.defaults("#/$defs/split")


# ----------------------------------------------------------------------------- folder building
@contextlib.contextmanager
def build_folder(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary sibling of ``out_dir``; on success it replaces ``out_dir``
    (an existing ``out_dir`` is swapped out and deleted), on failure it is removed.

    For workflow-owned outputs only (folders under the workflow's results, which Snakemake deletes
    before it reruns a job): it deletes whatever ``out_dir`` held. Folders a user names on the
    command line go through :mod:`sfsr.outputs` instead, which deletes nothing."""
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


def _with_defaults(spec: dict) -> dict:
    full = {**_SPEC_DEFAULTS, **spec}
    full["split"] = {**_SPLIT_DEFAULTS, **(spec.get("split") or {})}
    return full


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
    ``carve_val_from``), then test (from ``carve_test_from``), then ``sr_train`` (from
    ``carve_sr_from``, when set: images the classifier never trains on); the random choice per class uses
    ``numpy.random.default_rng([seed, split.seed])`` over the class's images sorted by stem."""
    split_spec = {**_SPLIT_DEFAULTS, **split_spec}
    frame = frame.sort_values("stem", kind="stable").reset_index(drop=True)
    rng = np.random.default_rng([int(seed), int(split_spec["seed"])])
    carves = [("val", split_spec["carve_val_from"], split_spec["val_fraction"]),
              ("test", split_spec["carve_test_from"], split_spec["test_fraction"]),
              ("sr_train", split_spec["carve_sr_from"], split_spec["sr_fraction"])]
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
    if layout not in LAYOUTS:
        raise ConfigError(f"datasets.{name}.layout: unknown layout {layout!r}")
    entry = LAYOUTS[layout]
    hr_size = spec["hr_size"]
    if hr_size is not None and entry.hr_size is None:
        users = ", ".join(n for n, e in LAYOUTS.items() if e.hr_size is not None)
        raise ConfigError(f"datasets.{name}.hr_size: only the layouts {users} use hr_size; remove it for "
                          f"layout {layout}")
    if hr_size is not None and hr_size < min_side:
        raise ConfigError(f"datasets.{name}.hr_size={hr_size} is smaller than the minimum image size "
                          f"{min_side} (min_image_size {min_size}, largest scale {max_scale})")
    if (source == "builtin" and entry.sources == "files") or (entry.sources == "builtin" and source != "builtin"):
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

    collected = entry.collect(name, spec, root, seed)
    items = collected.items

    seen: dict[str, str] = {}
    for item in items:
        if item.stem in seen:
            raise DataError(f"dataset {name}: two images give the same name {item.stem!r}: "
                            f"{seen[item.stem]} and {item.source}; rename or remove one")
        seen[item.stem] = item.source

    resize = hr_size is not None and entry.hr_size == "resize"  # builtin crops are cut at hr_size
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
        if entry.kind in ("refgroups", "refpairs") and rows:
            rows = _drop_groups_without_refs(rows, skipped, tmp)
        if not rows:
            raise DataError(f"dataset {name}: no usable image left ({len(skipped)} skipped); see the "
                            f"reasons above or in skipped.csv")
        frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
        frame["class_id"] = frame["class_id"].astype("Int64")
        if entry.kind == "classes":
            frame = carve_splits(frame, collected.given, spec["split"], seed, name)
            order = {s: i for i, s in enumerate(SPLITS)}
            frame = frame.sort_values(["split", "class_id", "stem"], key=lambda c: c.map(order)
                                      if c.name == "split" else c, kind="stable").reset_index(drop=True)
        io.write_csv(tmp / "manifest.csv", frame)
        if mode == "skip":
            io.write_csv(tmp / "skipped.csv", pd.DataFrame(skipped, columns=SKIPPED_COLUMNS))
        if collected.references is not None:
            io.write_csv(tmp / "references.csv", collected.references)
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

    ``device`` other than cpu runs the torch implementation there (same bits). Every file is built
    in a temporary sibling folder first, then moved in (:func:`sfsr.outputs.move_into_folder`): an
    existing ``output_dir`` keeps its other files, a same-named ``<stem>.png`` is replaced. An
    output that is a file, or holds or sits inside ``input_dir``, is refused before any work
    (:func:`sfsr.outputs.check_output_folder`); a bad or too small input raises an
    :class:`ImageError` naming the file and leaves ``output_dir`` as it was.
    """
    scale = int(scale)
    if scale < 1:
        raise ConfigError(f"scale must be a positive integer, got {scale}")
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    files = list(images_by_stem(input_dir, DEFAULT_EXTENSIONS, "input").values())
    names = [f"{path.stem}.png" for path in files]
    check_output_folder(input_dir, output_dir, names)
    if device == "cpu":
        dev = None
    else:
        from sfsr.tensors import resolve_device  # torch only off the CPU path

        dev = resolve_device(device)
    iterator: Any = files
    if progress:
        from tqdm import tqdm
        iterator = tqdm(files, desc=f"make LR x{scale}", unit="img")
    tmp = io.make_temp_dir(output_dir, ".tmp")
    try:
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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    move_into_folder(tmp, output_dir, names)
    return [output_dir / name for name in names]


def _imresize_on_device(hr: np.ndarray, scale: int, device: Any) -> np.ndarray:
    import torch

    tensor = torch.from_numpy(np.array(hr)).to(device)  # copy: PIL arrays are read-only
    if tensor.ndim == 3:
        tensor = tensor.permute(2, 0, 1)
    lr = imresize(tensor, 1 / scale)
    if lr.ndim == 3:
        lr = lr.permute(1, 2, 0)
    return lr.contiguous().cpu().numpy()
