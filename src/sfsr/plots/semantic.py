"""The semantic study's visual examples: test images of the classification set that the semantic
prior fixed (the semantic model right, its budget-matched control wrong, under one judge) and
those it broke (the reverse), shown whole as HR | bicubic | control | semantic.

Reads only the classify records (JSON, sfsr.classification), the manifest and PNG folders:
torch-free. Part of :mod:`sfsr.plots` (its docstring has the conventions).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
from matplotlib.figure import Figure

from sfsr.data.bicubic import modcrop
from sfsr.data.images import read_image
from sfsr.data.manifest import class_index
from sfsr.errors import DataError
from sfsr.plots.style import _colors_for, _save_and_close, _style

RECORD_KEYS = ("images", "correct_top1", "label", "pred_top1")
"""The per-image keys of a classify record this figure reads."""

RIGHT, WRONG = "#1a7f37", "#c62828"  # panel title colours: the judge right / wrong


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """One classify record (``{RESULTS}/classification/...json``), checked for the per-image keys
    :data:`RECORD_KEYS` (equal lengths). A record written before ``label``/``pred_top1`` existed
    raises :class:`DataError` naming the file and the classify job to rerun."""
    path = Path(path)
    record = json.loads(path.read_text())
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        raise DataError(f"classification record {path} lacks {missing} (per-image predictions); it was "
                        f"written by an older classify job: rerun its classify job (delete {path}, or "
                        f"snakemake --forcerun on it) to get them")
    n = len(record["images"])
    uneven = [k for k in RECORD_KEYS if len(record[k]) != n]
    if uneven:
        raise DataError(f"classification record {path}: {uneven} do not have one entry per image ({n})")
    return record


def class_names(manifest: pd.DataFrame) -> list[str]:
    """Class index -> display name, as the classifier numbers its outputs
    (:func:`sfsr.data.manifest.class_index`, which the classifier's training uses too)."""
    if "class_id" not in manifest.columns:
        raise DataError(f"manifest lacks the column class_id (has {list(manifest.columns)}); "
                        "is it a classification set?")
    return [name or str(cid) for cid, name in zip(*class_index(manifest.dropna(subset=["class_id"])))]


def pick_semantic_examples(model: Mapping[str, Any], against: Mapping[str, Any], n: int = 3,
                           ) -> tuple[list[str], list[str]]:
    """``(fixed, broken)``: the first ``n`` stems (by stem) of the images ``model`` classifies right
    and ``against`` wrong (fixed), and of those ``model`` gets wrong and ``against`` right (broken).
    The two records are paired by stem and must hold the same images with the same labels."""
    a = dict(zip(model["images"], zip(model["correct_top1"], model["label"])))
    b = dict(zip(against["images"], zip(against["correct_top1"], against["label"])))
    if set(a) != set(b):
        only = sorted(set(a) ^ set(b))[:5]
        raise DataError(f"the records of {model.get('input')!r} and {against.get('input')!r} hold "
                        f"different images (e.g. {only}); rerun their classify jobs on one manifest")
    clash = sorted(s for s in a if a[s][1] != b[s][1])[:5]
    if clash:
        raise DataError(f"the records of {model.get('input')!r} and {against.get('input')!r} give "
                        f"different true labels for {clash}")
    fixed = sorted(s for s in a if a[s][0] and not b[s][0])
    broken = sorted(s for s in a if b[s][0] and not a[s][0])
    return fixed[:int(n)], broken[:int(n)]


def _prediction(record: Mapping[str, Any], stem: str) -> tuple[int, bool]:
    i = list(record["images"]).index(stem)
    return int(record["pred_top1"][i]), bool(record["correct_top1"][i])


def _name(names: Sequence[str], index: int) -> str:
    return names[index] if 0 <= index < len(names) else f"class {index}"


def make_semantic_examples(records: Mapping[str, Mapping[str, Any]], folders: Mapping[str, str | os.PathLike],
                           manifest: pd.DataFrame, model: str, against: str, scale: int, *,
                           judge: str = "prior", n: int = 3, title: str | None = None,
                           colors: Mapping[str, str] | None = None) -> Figure:
    """One row per test image fixed by the prior (up to ``n``, see :func:`pick_semantic_examples`),
    then one per image it broke, columns HR | bicubic | ``against`` | ``model`` (whole images,
    nearest-neighbour display), each panel titled with ``judge``'s predicted class and ✓/✗, the
    row labelled fixed/broken, the true class and the stem. A text row says so where there is no
    fixed or no broken image.

    ``records``: the classify records (:func:`read_record`) of ``hr``, ``bicubic``, ``against`` and
    ``model`` under ``judge``; ``folders``: their image folders (PNG per stem; HR is shown
    modcropped to ``scale``, as the SR images are). The chosen stems are stored on the figure as
    ``fig.sfsr_examples = (fixed, broken)``."""
    columns = list(dict.fromkeys(["hr", "bicubic", against, model]))  # against may be bicubic or hr
    missing = [c for c in columns if c not in records or c not in folders]
    if missing:
        raise DataError(f"semantic examples: no record or image folder for {missing}")
    names = class_names(manifest)
    every_fixed, every_broken = pick_semantic_examples(records[model], records[against],
                                                       len(records[model]["images"]))
    fixed, broken = every_fixed[:int(n)], every_broken[:int(n)]
    n_fixed, n_broken = len(every_fixed), len(every_broken)
    rows: list[tuple[str, str | None]] = [("fixed", s) for s in fixed] or [("fixed", None)]
    rows += [("broken", s) for s in broken] or [("broken", None)]
    headers = {against: f"control\n{against}", model: f"semantic\n{model}", "hr": "HR", "bicubic": "bicubic"}
    cols = _colors_for(columns, colors)
    labels = dict(zip(records[model]["images"], records[model]["label"]))
    with _style():
        heights = [1.0 if s is not None else 0.3 for _, s in rows]
        fig = Figure(figsize=(2.3 * len(columns) + 1.3, 2.45 * sum(heights) + 1.1), layout="constrained")
        grid = fig.add_gridspec(len(rows), len(columns), height_ratios=heights)
        for r, (kind, stem) in enumerate(rows):
            if stem is None:
                ax = fig.add_subplot(grid[r, :])
                ax.set_axis_off()
                what = "right, the control wrong" if kind == "fixed" else "wrong, the control right"
                ax.text(0.5, 0.5, f"no {kind} image: no test image where the semantic model is {what}",
                        ha="center", va="center", fontsize=10, style="italic", transform=ax.transAxes)
                continue
            for c, name in enumerate(columns):
                ax = fig.add_subplot(grid[r, c])
                image = read_image(Path(folders[name]) / f"{stem}.png")
                if name == "hr":
                    image = modcrop(image, scale)
                kw = {"cmap": "gray", "vmin": 0, "vmax": 255} if image.ndim == 2 else {}
                ax.imshow(image, interpolation="nearest", **kw)
                pred, right = _prediction(records[name], stem)
                head = f"{headers[name]}\n" if r == 0 else ""
                ax.set_title(f"{head}{'✓' if right else '✗'} {_name(names, pred)}", fontsize=9,
                             color=RIGHT if right else WRONG)
                ax.set_xticks([])
                ax.set_yticks([])
                ax.grid(False)
                for spine in ax.spines.values():
                    spine.set_visible(True)
                    spine.set_edgecolor(cols[name])
                    spine.set_linewidth(2.5)
                if c == 0:
                    ax.set_ylabel(f"{kind.upper()}\ntrue: {_name(names, int(labels[stem]))}\n{stem}",
                                  fontsize=9)
        fig.suptitle(title or f"Test images the prior fixed / broke ({judge} judge): {n_fixed} fixed, "
                     f"{n_broken} broken; first {n} of each by stem", fontsize=11)
    fig.sfsr_examples = (fixed, broken)  # type: ignore[attr-defined]  # for callers and tests
    return fig


def plot_semantic_examples(records: Mapping[str, Mapping[str, Any]], folders: Mapping[str, str | os.PathLike],
                           manifest: pd.DataFrame, model: str, against: str, scale: int,
                           out_png: str | os.PathLike, *, judge: str = "prior", n: int = 3,
                           title: str | None = None, colors: Mapping[str, str] | None = None) -> list[Path]:
    """Save :func:`make_semantic_examples` as PNG + PDF; returns the two paths."""
    fig = make_semantic_examples(records, folders, manifest, model, against, scale, judge=judge, n=n,
                                 title=title, colors=colors)
    return _save_and_close(fig, out_png)
