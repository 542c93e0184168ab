"""The summary table of the study report.

Part of :mod:`sfsr.plots` (its docstring has the conventions).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import pandas as pd

from sfsr.errors import DataError
from sfsr.metrics import METRICS
from sfsr.plots.accuracy import _name_column
from sfsr.plots.style import family_lookup, model_family, _canonical_order, _check_columns


def _per_model(value: Mapping[str, Any] | pd.DataFrame | None, column: str, what: str,
               value_cols: Sequence[str]) -> pd.DataFrame | None:
    """A mapping ``model -> value`` or a DataFrame with ``model`` (+ optional ``scale``) as a
    DataFrame with ``model[, scale], column``."""
    if value is None:
        return None
    if isinstance(value, pd.DataFrame):
        _check_columns(value, ["model"], f"summary_table {what}")
        src = next((c for c in (column, *value_cols) if c in value.columns), None)
        if src is None:
            raise DataError(f"summary_table {what}: table needs a {column!r} column; it has "
                            f"{list(value.columns)}")
        keep = ["model"] + (["scale"] if "scale" in value.columns else [])
        out = value[keep + [src]].rename(columns={src: column})
    else:
        out = pd.DataFrame({"model": list(value), column: list(value.values())})
    out["model"] = out["model"].astype(str)
    return out


def summary_table(summary: pd.DataFrame, accuracy: pd.DataFrame | None = None,
                  params: Mapping[str, int] | pd.DataFrame | None = None,
                  train_time: Mapping[str, float] | pd.DataFrame | None = None,
                  families: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per model x dataset x scale: PSNR-Y / SSIM-Y (/ PSNR-RGB, / LPIPS) mean and 95%
    interval (from :func:`sfsr.evaluation.summarize`, :func:`~sfsr.evaluation.add_lpips`), classifier accuracy where available (``top1, top5,
    gap_closed, gap_closed_top5``, joined on model and — when the accuracy table has it — scale;
    its classification set is kept as ``acc_dataset``), parameter count ``params``, training time
    ``train_time_s`` and the metric ``convention``.

    ``params``/``train_time``: mapping ``model -> value`` or a DataFrame with ``model`` (and
    optionally ``scale``). ``families``: each model's family, for the row order (default: guessed
    from the name, :func:`model_family`). Render with :func:`sfsr.evaluation.summary_markdown`.
    """
    _check_columns(summary, ["model", "dataset", "scale", "psnr_y", "ssim_y", "convention"],
                   "summary_table")
    if summary.duplicated(["model", "dataset", "scale"]).any():
        dup = summary[summary.duplicated(["model", "dataset", "scale"], keep=False)]
        raise DataError("summary_table: the summary has several rows for "
                        f"{dup[['model', 'dataset', 'scale']].drop_duplicates().to_dict('records')}; "
                        "summarize by model, dataset and scale")
    metric_cols = [c for c in summary.columns
                   if c.startswith((*METRICS, "lpips"))]
    out = summary[["model", "dataset", "scale"] + (["n"] if "n" in summary.columns else [])
                  + metric_cols + ["convention"]].copy()
    out["model"] = out["model"].astype(str)
    if accuracy is not None:
        name = _name_column(accuracy, "summary_table accuracy")
        acc = accuracy.rename(columns={name: "model"}).copy()
        acc["model"] = acc["model"].astype(str)
        if "dataset" in acc.columns:
            if acc["dataset"].nunique() > 1:
                raise DataError("summary_table: the accuracy table covers several classification "
                                f"sets {sorted(acc['dataset'].unique())}; pass one at a time")
            acc = acc.rename(columns={"dataset": "acc_dataset"})
        keys = ["model"] + (["scale"] if "scale" in acc.columns else [])
        acc_cols = [c for c in ("acc_dataset", "acc_judge", "top1", "top5", "gap_closed", "gap_closed_top5")
                    if c in acc.columns]
        if acc.duplicated(keys).any():
            raise DataError(f"summary_table: the accuracy table has several rows per {keys}")
        out = out.merge(acc[keys + acc_cols], on=keys, how="left")
    for value, column, what, alts in ((params, "params", "params", ("n_params", "parameters")),
                                      (train_time, "train_time_s", "train_time",
                                       ("training_time_s", "elapsed_s"))):
        extra = _per_model(value, column, what, alts)
        if extra is not None:
            keys = ["model"] + (["scale"] if "scale" in extra.columns else [])
            out = out.merge(extra, on=keys, how="left")
    family = family_lookup(families) if families is not None else model_family
    order = {m: i for i, m in enumerate(_canonical_order(out["model"].tolist(), family=family))}
    out = out.sort_values(["dataset", "scale", "model"], key=lambda s: s.map(order)
                          if s.name == "model" else s).reset_index(drop=True)
    cols = [c for c in out.columns if c != "convention"] + ["convention"]
    return out[cols]
