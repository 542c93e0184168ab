"""Evaluation of reference-based SR by reference similarity level (docs/refsr.md).

For every group of a prepared reference test set (CUFED5: a target and references 1..5 from most
to least similar; offline ``builtin_refgroups``: four known levels of difficulty) the target's HR
image is cropped to a multiple of the scale and its LR made with the project's MATLAB-exact bicubic;
then, with the project's one metric implementation (:func:`sfsr.metrics.image_metrics`):

* a reference-based generator is run once per reference (``input`` ``ref<k>``, ``level`` k) and
  once with a **random reference**: the most similar reference of a group cut from another photo
  (``input`` ``random``; :func:`sfsr.data.refgroups.random_reference_group`);
* a generator without a reference branch (the no-reference control) and bicubic are run once
  (``input`` ``none`` / ``bicubic``, no level).

:func:`reference_table` gives one row per (group, input); :func:`reference_summary` the means with
bootstrap confidence intervals per (model, input).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from sfsr.data.bicubic import imresize, modcrop
from sfsr.data.images import read_image
from sfsr.data.manifest import reference_levels
from sfsr.data.refgroups import random_reference_group
from sfsr.errors import DataError
from sfsr.evaluation import summarize
from sfsr.memory import is_out_of_memory
from sfsr.metrics import METRICS, image_metrics

log = logging.getLogger(__name__)
#: The columns of :func:`reference_table`: every metric of :data:`sfsr.metrics.METRICS`.
TABLE_KEYS = ["model", "dataset", "scale", "group", "input", "level"]


def group_photos(hr_dir: Path, groups: list[str]) -> dict[str, str]:
    """Group -> the photo it was cut from (``references.csv`` of builtin groups); each group is its
    own scene otherwise (CUFED5)."""
    table = hr_dir.parent / "references.csv"
    if table.is_file():
        frame = pd.read_csv(table, dtype={"group": str, "photo": str})
        photos = dict(zip(frame["group"], frame["photo"]))
        return {g: photos.get(g, g) for g in groups}
    return {g: g for g in groups}


def reference_table(hr_dir: str | os.PathLike, scale: int, *, model_name: str, dataset: str,
                    checkpoint: str | os.PathLike | None = None, device: str = "cpu") -> pd.DataFrame:
    """Per-group metrics of ``model_name`` on the reference set ``hr_dir`` (a prepared ``HR``
    folder); ``checkpoint`` None: bicubic. Columns :data:`TABLE_KEYS`, the
    :data:`sfsr.metrics.METRICS` and ``convention``."""
    hr_dir = Path(hr_dir)
    groups = reference_levels(hr_dir)  # levels from the file names: a missing level is a gap
    names = [g for g, _, _ in groups]
    photos = group_photos(hr_dir, names)
    first_ref = {g: refs[0][1] for g, _, refs in groups}
    model, upscale = None, None
    if checkpoint is not None:
        upscale, model = _upscaler(checkpoint, scale, device)
    rows: list[dict[str, Any]] = []
    for group, target_path, ref_paths in groups:
        hr = modcrop(read_image(target_path), scale)
        lr = imresize(hr, scale=1.0 / scale)
        try:
            if model is None:
                runs = [("bicubic", np.nan, imresize(lr, scale=scale))]
            elif not getattr(model, "use_reference", False):
                runs = [("none", np.nan, upscale(lr, None))]
            else:
                runs = [(f"ref{k}", float(k), upscale(lr, read_image(p))) for k, p in ref_paths]
                try:
                    other = random_reference_group(names, photos, group)
                except DataError as exc:  # one photo only (e.g. a single CUFED5 group): no random control
                    log.warning("%s: no random reference for group %s (%s)", hr_dir, group, exc)
                else:
                    runs.append(("random", np.nan, upscale(lr, read_image(first_ref[other]))))
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            raise DataError(f"{target_path}: out of memory running {model_name} x{scale} on this "
                            f"{hr.shape[1]}x{hr.shape[0]} target (group {group}); free memory or leave "
                            "the image out of the reference set") from exc
        for name, level, sr in runs:
            m = image_metrics(hr, sr, scale)
            rows.append({"model": model_name, "dataset": dataset, "scale": int(scale), "group": group,
                         "input": name, "level": level, **{k: m[k] for k in METRICS},
                         "convention": m["convention"]})
    if not rows:
        raise DataError(f"no reference group in {hr_dir}")
    return pd.DataFrame(rows, columns=[*TABLE_KEYS, *METRICS, "convention"])


def _upscaler(checkpoint: str | os.PathLike, scale: int, device: str):
    import torch

    from sfsr.inference import resolve_device
    from sfsr.metrics import to_uint8
    from sfsr.models import load_generator
    from sfsr.tensors import to_float

    device = resolve_device(device)
    model, ckpt_scale = load_generator(checkpoint, device)
    if int(ckpt_scale) != int(scale):
        raise DataError(f"{checkpoint} is a x{ckpt_scale} generator, evaluated at x{scale}; fix the model's scale")

    @torch.inference_mode()
    def upscale(lr: np.ndarray, ref: np.ndarray | None) -> np.ndarray:
        out = model(to_float(lr, device)) if ref is None else model(to_float(lr, device), to_float(ref, device))
        return to_uint8(out[0])

    return upscale, model


def reference_summary(table: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Means and 95% bootstrap intervals per (model, dataset, scale, input), with the level."""
    summary = summarize(table, by=("model", "dataset", "scale", "input"), n_boot=n_boot, seed=seed)
    levels = table.drop_duplicates("input").set_index("input")["level"]
    summary.insert(4, "level", summary["input"].map(levels))
    return summary.sort_values(["dataset", "scale", "model", "level", "input"], na_position="last",
                               kind="stable").reset_index(drop=True)


def summary_markdown(summary: pd.DataFrame) -> str:
    """PSNR-Y / SSIM-Y by model (rows) and input (columns: ref1.., random, none, bicubic)."""
    inputs = sorted(summary["input"].unique(), key=lambda s: (not s.startswith("ref"), len(s), s))
    lines = []
    for (dataset, scale), block in summary.groupby(["dataset", "scale"], sort=True):
        lines += [f"### {dataset} x{scale}", "", "| model | " + " | ".join(inputs) + " |",
                  "|---|" + "---|" * len(inputs)]
        for model, rows in block.groupby("model", sort=False):
            cells = []
            for name in inputs:
                hit = rows[rows["input"] == name]
                cells.append(f"{hit['psnr_y'].iloc[0]:.2f} / {hit['ssim_y'].iloc[0]:.4f}" if len(hit) else "")
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def row_name(model: str, run: str) -> str:
    """Name of one RefSR run in tables and figures: ``<model> @ ref<k>`` / ``<model> @ random``, or
    the model itself for a run without a reference (the no-reference control, bicubic). (The
    workflow's ``refsr_row_name`` in rules/common.smk names the same rows for figure families.)"""
    return model if run in ("none", "bicubic") else f"{model} @ {run}"


def gain_over_bicubic(table: pd.DataFrame) -> pd.DataFrame:
    """Per group and input, PSNR-Y minus bicubic's PSNR-Y on the same group (paired: the spread
    between images cancels, so confidence bands show the uncertainty of the gain). The rows of the
    reference-based models' random-reference runs are renamed ``<model> @ random`` (:func:`row_name`);
    bicubic is 0."""
    base = table[table["input"] == "bicubic"].set_index(["dataset", "scale", "group"])["psnr_y"]
    if base.empty:
        raise DataError("gain_over_bicubic: the table has no bicubic rows")
    out = table.copy()
    key = list(zip(out["dataset"], out["scale"], out["group"]))
    out["psnr_y"] = out["psnr_y"].to_numpy() - base.reindex(key).to_numpy()
    out["model"] = [row_name(m, i) if i == "random" else m for m, i in zip(out["model"], out["input"])]
    out["level"] = [f"ref{int(v)}" if pd.notna(v) else None for v in out["level"]]
    return out


def paired_against_controls(table: pd.DataFrame, n_boot: int = 2000, seed: int = 0,
                            pairing: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Every reference-based run (``ref<k>``, ``random``) against every no-reference model of the same
    dataset and scale (``input`` ``none``: the control), paired per group: mean PSNR-Y difference,
    its 95% paired-bootstrap interval and the number of groups where the run wins. ``pairing``: model
    -> its comparison group (the workflow's: the stage that trained it, refsr or refsr_gan), so that
    a run is paired only with the controls of its group (the GAN SSEN with the GAN control); a model
    it does not name is paired with every control; None: every run with every control. Columns
    ``model, input, level, control, dataset, scale, n, diff_psnr_y, diff_low, diff_high, wins``."""
    pairing = dict(pairing or {})

    def comparable(model: str, control: str) -> bool:
        return model not in pairing or control not in pairing or pairing[model] == pairing[control]

    rows = []
    for (dataset, scale), block in table.groupby(["dataset", "scale"], sort=True):
        by_group = block.pivot_table(index="group", columns=["model", "input"], values="psnr_y")
        controls = [m for m, i in by_group.columns if i == "none"]
        runs = [(m, i) for m, i in by_group.columns if i.startswith("ref") or i == "random"]
        for control in controls:
            base = by_group[(control, "none")]
            for model, name in runs:
                if not comparable(model, control):
                    continue
                diff = (by_group[(model, name)] - base).dropna().to_numpy()
                if diff.size == 0:
                    continue
                idx = np.random.default_rng(seed).integers(diff.size, size=(int(n_boot), diff.size))
                low, high = np.quantile(diff[idx].mean(axis=1), [0.025, 0.975])
                level = block.loc[block["input"] == name, "level"].iloc[0]
                rows.append({"model": model, "input": name, "level": level, "control": control,
                             "dataset": dataset, "scale": int(scale), "n": int(diff.size),
                             "diff_psnr_y": float(diff.mean()), "diff_low": float(low), "diff_high": float(high),
                             "wins": int((diff > 0).sum())})
    out = pd.DataFrame(rows, columns=["model", "input", "level", "control", "dataset", "scale", "n",
                                      "diff_psnr_y", "diff_low", "diff_high", "wins"])
    return out.sort_values(["dataset", "scale", "control", "model", "level"], na_position="last",
                           kind="stable").reset_index(drop=True)


def paired_markdown(paired: pd.DataFrame) -> str:
    """The paired comparison with the no-reference control as a markdown table."""
    if paired.empty:
        return ""
    lines = ["Paired per group against the no-reference control (PSNR-Y difference, 95% paired bootstrap, "
             "groups won):", "", "| model | input | control | diff (dB) | 95% CI | wins |", "|---|---|---|---|---|---|"]
    for r in paired.itertuples():
        lines.append(f"| {r.model} | {r.input} | {r.control} | {r.diff_psnr_y:+.3f} | "
                     f"[{r.diff_low:+.3f}, {r.diff_high:+.3f}] | {r.wins}/{r.n} |")
    return "\n".join(lines) + "\n"
