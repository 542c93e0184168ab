"""The ``manifest.csv`` of a prepared dataset (``{dataset}/manifest.csv`` beside ``{dataset}/HR``),
torch-free: :func:`manifest_path`, :func:`read_manifest` (ids kept as text) and the reference groups
of a prepared reference set, :func:`reference_levels` (with each reference's level) and
:func:`reference_groups`. Columns: docs/architecture.md ("Data layout written by the data stage").
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from sfsr.errors import DataError


def manifest_path(hr_dir: str | os.PathLike) -> Path:
    """``{dataset}/manifest.csv`` beside a prepared ``{dataset}/HR`` folder."""
    return Path(hr_dir).parent / "manifest.csv"


def read_manifest(hr_dir: str | os.PathLike) -> pd.DataFrame | None:
    """The manifest beside the prepared ``hr_dir`` (None when it has none); DataError when it has
    no ``stem`` column."""
    path = manifest_path(hr_dir)
    if not path.is_file():
        return None
    # ids as written: a group "001" or a stem "0001" must not come back as the number 1
    frame = pd.read_csv(path, dtype={"stem": str, "split": str, "group": str, "role": str})
    if "stem" not in frame.columns:
        raise DataError(f"{path} has no 'stem' column (has {list(frame.columns)}); re-run prepare")
    return frame


def reference_levels(hr_dir: str | os.PathLike) -> list[tuple[str, Path, list[tuple[int, Path]]]]:
    """``(group, target, [(level, reference), most similar first])`` of a prepared reference set, from
    its manifest (roles ``target`` and ``ref<k>``): a reference's level is the ``k`` of its role, so a
    group kept without a level (``on_bad_image: skip``) has a gap there, never renumbered references.
    Group ids are the manifest's text (``"001"``)."""
    frame = read_manifest(hr_dir)
    if frame is None or "role" not in frame.columns or not frame["role"].notna().any():
        raise DataError(f"{hr_dir} is not a prepared reference set: {manifest_path(hr_dir)} has no roles "
                        "(layouts refgroups, refpairs, builtin_refgroups make them)")
    out = []
    for group, rows in frame.groupby("group", sort=False):
        roles = dict(zip(rows["role"].astype(str), rows["stem"].astype(str)))
        refs = sorted((int(r[3:]), r) for r in roles if r.startswith("ref") and r[3:].isdigit())
        if "target" not in roles or not refs:
            raise DataError(f"group {group!r} of {manifest_path(hr_dir)} lacks its target or references")
        out.append((str(group), Path(hr_dir) / f"{roles['target']}.png",
                    [(k, Path(hr_dir) / f"{roles[r]}.png") for k, r in refs]))
    return out


def reference_groups(hr_dir: str | os.PathLike) -> list[tuple[str, Path, list[Path]]]:
    """``(group, target, [references, most similar first])`` of a prepared reference set
    (:func:`reference_levels` without the levels)."""
    return [(group, target, [path for _, path in refs]) for group, target, refs in reference_levels(hr_dir)]


def class_index(frame: pd.DataFrame) -> tuple[list[int], list[str]]:
    """How a classifier numbers its outputs for a classification manifest (columns ``class_id``,
    optional ``class_name``): ``class_ids`` (index -> class_id, the unique integer ids sorted, over
    every row) and ``class_names`` (index -> the first ``class_name`` given for that id, the id
    itself where the manifest has no ``class_name`` column)."""
    class_ids = sorted(int(c) for c in frame["class_id"].unique())
    names_by_id: dict[int, str] = {}
    if "class_name" in frame.columns:
        for cid, name in zip(frame["class_id"], frame["class_name"]):
            names_by_id.setdefault(int(cid), "" if pd.isna(name) else str(name))
    return class_ids, [names_by_id.get(c, str(c)) for c in class_ids]
