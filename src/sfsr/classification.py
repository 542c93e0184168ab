"""Classification accuracy of a frozen classifier on HR, bicubic and SR images
(:func:`classification_accuracy`, :func:`split_accuracy`), the accuracy tables with the fraction of
the bicubic-to-HR gap closed (:func:`accuracy_table`) for every judge (:func:`judged_accuracy_table`,
:func:`summary_judge`), and the summary of every generator over its training seeds
(:func:`seed_summary`). The image-quality tables are :mod:`sfsr.evaluation`'s.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from sfsr.data.images import images_by_stem, read_image, to_rgb
from sfsr.errors import DataError
from sfsr.evaluation import _shorten
from sfsr.metrics import METRICS, topk_accuracy

if TYPE_CHECKING:  # torch, torchvision and the classifier are imported where a model runs, so the
    import torch    # per-image metrics and summaries (light jobs) do not pay for them
    from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------
# Classification accuracy of a frozen classifier
# --------------------------------------------------------------------------------------------

def _preprocess(image: np.ndarray, view: Callable[[torch.Tensor], torch.Tensor],
                mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 HxW[x3] -> float 3 x input_size x input_size: the classifier's evaluation ``view``
    (:func:`sfsr.models.classifier.eval_transform`: short side resized, centre crop), then
    ``(x / 255 - mean) / std``."""
    import torch

    image = to_rgb(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(f"classifier input must be uint8 HxW or HxWx3, got {image.dtype} {image.shape}")
    t = torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1)
    return (view(t).float() / 255.0 - mean) / std


def _manifest_items(folder: Path, manifest: pd.DataFrame | str | os.PathLike,
                    class_to_index: Mapping[Any, int] | None) -> tuple[list[Path], list[int]]:
    if not isinstance(manifest, pd.DataFrame):
        manifest_path = Path(manifest)
        if not manifest_path.is_file():
            raise DataError(f"manifest not found: {manifest_path}")
        manifest = pd.read_csv(manifest_path, dtype={"stem": str})
    for col in ("stem", "class_id"):
        if col not in manifest.columns:
            raise DataError(f"manifest lacks the column {col!r} (has {list(manifest.columns)})")
    by_stem = images_by_stem(folder, what="classification input")
    stems = manifest["stem"].astype(str).tolist()
    missing = [s for s in stems if s not in by_stem]
    if missing:
        raise DataError(f"{folder} lacks images for {len(missing)} manifest row(s): {_shorten(missing)}")
    labels = []
    for stem, cid in zip(stems, manifest["class_id"]):
        if class_to_index is not None:
            if cid not in class_to_index and str(cid) not in class_to_index:
                raise DataError(f"class_id {cid!r} of {stem!r} is not in class_to_index")
            labels.append(int(class_to_index[cid] if cid in class_to_index else class_to_index[str(cid)]))
        else:
            try:
                labels.append(int(cid))
            except (TypeError, ValueError):
                raise DataError(f"class_id {cid!r} of {stem!r} is not an integer class index; pass "
                                f"class_to_index to map class ids to the classifier's outputs") from None
    return [by_stem[s] for s in stems], labels


def _batches(items: Sequence[Any], batch_size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), batch_size):
        yield items[start:start + batch_size]


def classification_accuracy(
    classifier: nn.Module,
    images: Sequence[np.ndarray] | str | os.PathLike,
    labels: Sequence[int] | None = None,
    *,
    manifest: pd.DataFrame | str | os.PathLike | None = None,
    class_to_index: Mapping[Any, int] | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    input_size: int = 224,
    resize_size: int | None = None,
    normalize: bool | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    progress: bool = False,
) -> dict[str, Any]:
    """Top-1 / top-5 accuracy of a frozen classifier on a set of images.

    ``images`` is a list of uint8 arrays (with ``labels``: class indices) or a folder; with a
    folder, ``manifest`` (DataFrame or CSV with ``stem`` and ``class_id``) names the images and
    their classes, and files are matched by stem (so a folder of SR outputs ``<stem>.png`` works).
    Each image is resized so its short side is ``resize_size`` (default ``input_size * 256 / 224``,
    antialiased bilinear), centre-cropped to ``input_size``, scaled to [0, 1] and, when
    ``normalize``, normalised with ``mean``/``std`` (ImageNet by default). ``normalize=None``
    (default) normalises unless the classifier is a :class:`sfsr.models.classifier.Classifier`,
    which normalises inside its ``forward`` and takes [0, 1] RGB. Gray images are replicated to
    RGB. The classifier is moved to ``device`` and run in eval mode (its mode is restored).
    Returns ``{"top1", "top5", "n", "images"}`` and the per-image predictions of
    :func:`per_image_predictions` (``correct_top1``, ``label``, ``pred_top1``, ``prob_true``,
    ``logp_true``, ``topk_index``, ``topk_logit``) in the order of ``images`` (the stems), for
    paired statistics (:mod:`sfsr.stats`, :mod:`sfsr.analysis`).
    """
    import torch

    from sfsr.models.classifier import Classifier, eval_transform
    from sfsr.tensors import eval_mode

    if isinstance(images, (str, os.PathLike)):
        if manifest is None:
            raise DataError(f"classification_accuracy on the folder {images} needs a manifest "
                            "(stem, class_id) to know each image's class")
        items, labels = _manifest_items(Path(images), manifest, class_to_index)
    else:
        items = list(images)
        if labels is None or len(labels) != len(items):
            raise ValueError(f"give one label per image ({len(items)} images, "
                             f"{'no' if labels is None else len(labels)} labels)")
        labels = [int(v) for v in labels]
    if not items:
        raise DataError("classification_accuracy: no images")
    resize_size = int(resize_size or round(input_size * 256 / 224))
    if normalize is None:
        normalize = not isinstance(classifier, Classifier)
    if not normalize:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    view = eval_transform(input_size, resize_size)
    classifier.to(device)
    logits = []
    with eval_mode(classifier):
        with torch.inference_mode():
            for batch in tqdm(list(_batches(items, batch_size)), desc="classify", disable=not progress):
                arrays = [read_image(x) if isinstance(x, Path) else x for x in batch]
                x = torch.stack([_preprocess(a, view, mean_t, std_t) for a in arrays])
                logits.append(classifier(x.to(device)).float().cpu())
    all_logits = torch.cat(logits)
    target = torch.tensor(labels)
    acc = topk_accuracy(all_logits, target, ks=(1, 5))
    names = [x.stem if isinstance(x, Path) else str(i) for i, x in enumerate(items)]
    return {"top1": acc[1], "top5": acc[5], "n": len(items), "images": names,
            **per_image_predictions(all_logits, target)}


def per_image_predictions(logits: torch.Tensor, labels: torch.Tensor, k: int = 5) -> dict[str, list]:
    """Per image (in order), from N x C logits and the N true class indices: ``correct_top1``
    (the top-1 prediction is right, as ``top1``), ``label``, ``pred_top1`` (predicted class index),
    ``prob_true`` / ``logp_true`` (softmax probability and log-probability of the true class,
    float64 log-softmax), ``topk_index`` / ``topk_logit`` (the ``k`` highest logits and their
    classes). Paired analyses read them (:mod:`sfsr.analysis`): agreement with another input's
    prediction, the true-class log-probability, changed confusions."""
    import torch

    logp = torch.log_softmax(logits.double(), dim=1)
    logp_true = logp.gather(1, labels.view(-1, 1))[:, 0]
    top = logits.topk(min(k, logits.shape[1]), dim=1)
    pred = top.indices[:, 0]
    return {"correct_top1": (pred == labels).tolist(), "label": labels.tolist(), "pred_top1": pred.tolist(),
            "prob_true": [round(float(v), 6) for v in logp_true.exp()],
            "logp_true": [round(float(v), 6) for v in logp_true],
            "topk_index": top.indices.tolist(),
            "topk_logit": [[round(float(v), 4) for v in row] for row in top.values]}


def accuracy_table(accuracies: Mapping[str, Mapping[str, Any]],
                   metrics: Mapping[str, Mapping[str, Any]] | pd.DataFrame | None = None,
                   *, hr: str = "hr", bicubic: str = "bicubic") -> pd.DataFrame:
    """Join classifier accuracies per input (HR, bicubic, each SR model) with image metrics.

    ``accuracies`` maps an input name to :func:`classification_accuracy`'s dict; ``metrics`` maps a
    model name to its mean metrics (:func:`sfsr.evaluation.mean_metrics` output) or is a DataFrame with a ``model``
    column. ``gap_closed`` (and ``gap_closed_top5``) is ``(acc_model - acc_bicubic) / (acc_hr -
    acc_bicubic)``: 0 for bicubic, 1 for HR, NaN when HR and bicubic accuracies are equal.
    """
    for key in (hr, bicubic):
        if key not in accuracies:
            raise DataError(f"accuracy_table needs the {key!r} accuracy (has {sorted(accuracies)})")
    if isinstance(metrics, pd.DataFrame):
        if "model" not in metrics.columns:
            raise DataError("accuracy_table: metrics DataFrame needs a 'model' column")
        metrics = {str(r["model"]): r for r in metrics.to_dict("records")}
    metrics = metrics or {}
    rows = []
    for name, acc in accuracies.items():
        row: dict[str, Any] = {"input": name, "top1": float(acc["top1"]), "top5": float(acc["top5"]),
                               "n": int(acc["n"])}
        m = metrics.get(name, {})
        for col in METRICS:
            row[col] = float(m[col]) if col in m else float("nan")
        rows.append(row)
    table = pd.DataFrame(rows)
    for top, out in (("top1", "gap_closed"), ("top5", "gap_closed_top5")):
        a_hr = float(accuracies[hr][top])
        a_bic = float(accuracies[bicubic][top])
        denom = a_hr - a_bic
        table[out] = (table[top] - a_bic) / denom if denom != 0 else float("nan")
    return table


def judged_accuracy_table(records: Sequence[Mapping[str, Any]],
                          metrics: Mapping[str, Mapping[str, Any]] | None = None, *,
                          primary_judge: str | None = None) -> pd.DataFrame:
    """The accuracy table of every judge: the ``classify`` records (``input``, optional ``judge``,
    default ``prior``; ``top1``/``top5``/``n`` and per-image ``correct_top1``/``images``) grouped by
    judge, each group made into :func:`accuracy_table` with the paired statistics of
    :func:`sfsr.stats.add_paired_columns` (against bicubic and each model's control, under the same
    judge). Columns ``judge`` and ``independent`` (False for the prior, whose KL the semantic stage
    minimises, so its verdict on semantic models is not independent) come first. Every judge must
    have judged the same test images (the intervals are analytic: no bootstrap). ``primary_judge``: the study's primary judge (config key; column
    ``primary_judge`` True on its rows, which the study summary shows)."""
    from sfsr.stats import add_paired_columns

    by_judge: dict[str, dict[str, Mapping[str, Any]]] = {}
    for record in records:
        by_judge.setdefault(str(record.get("judge", "prior")), {})[str(record["input"])] = record
    reference = None
    tables = []
    for judge in sorted(by_judge, key=lambda j: (j != "prior", j)):
        accuracies = by_judge[judge]
        order = {name: rec.get("images") for name, rec in accuracies.items() if "correct_top1" in rec}
        reference = reference if reference is not None else next(iter(order.values()), None)
        mismatched = sorted(n for n, images in order.items() if images != reference)
        if mismatched:
            raise DataError(f"classification records {mismatched} (judge {judge!r}) list other test "
                            "images than the rest; re-run the classify jobs of this set")
        table = add_paired_columns(accuracy_table(accuracies, metrics),
                                   {n: accuracies[n]["correct_top1"] for n in order})
        table.insert(0, "primary_judge", judge == primary_judge)
        table.insert(0, "independent", judge != "prior")
        table.insert(0, "judge", judge)
        tables.append(table)
    if not tables:
        raise DataError("judged_accuracy_table: no classification records")
    return pd.concat(tables, ignore_index=True)


def seed_summary(summary: pd.DataFrame, accuracy: pd.DataFrame | None,
                 groups: Mapping[str, Sequence[Any]]) -> pd.DataFrame:
    """Mean, sample sd and per-seed values of every generator over its training seeds (config key
    ``seeds``). ``groups``: evaluation name -> (name of its first-seed twin, seed). ``summary``: the
    metrics summary (model, dataset, scale, psnr_y, ssim_y); ``accuracy``: the accuracy tables
    (judge, input, scale, top1, gap_closed), or None. One row per (model, dataset, scale, judge,
    metric): ``n_seeds, mean, sd, seeds, values`` (sd NaN for one seed; ``judge`` empty for the
    image metrics)."""
    frames = []
    names = pd.DataFrame([{"name": n, "model": b, "seed": int(s)} for n, (b, s) in groups.items()])
    if names.empty:
        raise DataError("seed_summary: no trained generator to summarise over seeds")
    metric = summary.merge(names, left_on="model", right_on="name", suffixes=("_row", ""))
    for col in ("psnr_y", "ssim_y"):
        part = metric[["model", "dataset", "scale", "seed", col]].rename(columns={col: "value"})
        frames.append(part.assign(judge="", metric=col))
    if accuracy is not None and len(accuracy):
        acc = accuracy.merge(names, left_on="input", right_on="name")
        for col in ("top1", "gap_closed"):
            part = acc[["model", "dataset", "scale", "judge", "seed", col]].rename(columns={col: "value"})
            frames.append(part.assign(metric=col))
    long = pd.concat(frames, ignore_index=True).sort_values("seed", kind="stable")
    rows = []
    for key, group in long.groupby(["model", "dataset", "scale", "judge", "metric"], sort=True):
        values = group["value"].to_numpy(dtype=np.float64)
        rows.append({**dict(zip(["model", "dataset", "scale", "judge", "metric"], key)),
                     "n_seeds": len(values), "mean": float(values.mean()),
                     "sd": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
                     "seeds": ";".join(str(int(s)) for s in group["seed"]),
                     "values": ";".join(f"{v:.6g}" for v in values)})
    return pd.DataFrame(rows)


def summary_judge(judges: Sequence[str], primary: Sequence[bool] | None = None) -> str:
    """The judge whose accuracy the study summary shows: the study's primary judge (``primary``: the
    accuracy table's ``primary_judge`` column, beside ``judges``) when one is marked, else the first
    independent one (by name), else the prior."""
    if primary is not None:
        marked = sorted({str(j) for j, p in zip(judges, primary) if bool(p)})
        if marked:
            return marked[0]
    independent = sorted({str(j) for j in judges} - {"prior"})
    return independent[0] if independent else "prior"


def mark_comparisons(table: pd.DataFrame, comparisons: pd.DataFrame) -> pd.DataFrame:
    """The accuracy table with the pre-registered comparisons' marks (:func:`sfsr.analysis.comparisons`):
    ``role`` (primary / secondary; descriptive for every other row), ``compared_with`` and ``p_holm``
    on the row (judge, input) of each top-1 comparison's model (its first seed); a row named by two
    comparisons keeps the primary's, else the first secondary's."""
    out = table.copy()
    out["role"], out["compared_with"], out["p_holm"] = "descriptive", "", np.nan
    top1 = comparisons[comparisons["metric"] == "top1"]
    for _, c in top1.sort_values("role", key=lambda r: r != "primary", kind="stable").iloc[::-1].iterrows():
        at = (out["judge"] == c["judge"]) & (out["input"] == c["model"])
        out.loc[at, ["role", "compared_with", "p_holm"]] = [c["role"], c["against"], c["p_holm"]]
    return out


def gate_decision(hr: Mapping[str, Any], model: Mapping[str, Any], *, min_gap: float, judge: str,
                  name: str) -> dict[str, Any]:
    """The go / no-go of config key analysis.gate from two :func:`split_accuracy` results on the
    validation split: go when ``top1(hr) - top1(model) >= min_gap`` (a gap worth closing)."""
    gap = float(hr["top1"]) - float(model["top1"])
    return {"judge": judge, "model": name, "split": hr.get("split", "val"), "n": int(hr["n"]),
            "top1_hr": float(hr["top1"]), "top1_model": float(model["top1"]), "gap": gap,
            "min_gap": float(min_gap), "go": bool(gap >= float(min_gap) - 1e-12)}


def split_accuracy(classifier_checkpoint: str | os.PathLike, images: str | os.PathLike,
                   manifest: str | os.PathLike, *, split: str = "test", device: str = "auto",
                   batch_size: int = 32, model: nn.Module | None = None,
                   input_size: int | None = None, resize_size: int | None = None,
                   normalize: bool | None = None) -> dict[str, Any]:
    """Accuracy on one split of a prepared classification set, for a folder of images matched by
    stem (HR, bicubic-upscaled LR or SR outputs). The classifier (or ``model``, e.g. an LR head,
    with the class mapping of ``classifier_checkpoint``) is evaluated with the preprocessing the
    classifier was trained with, unless ``input_size``/``resize_size`` are given."""
    from sfsr.tensors import resolve_device
    from sfsr.models.classifier import load_classifier

    classifier, meta = load_classifier(classifier_checkpoint)
    frame = pd.read_csv(manifest, dtype={"stem": str, "split": str})
    if "split" not in frame.columns or not (frame["split"] == split).any():
        raise DataError(f"{manifest} has no images in split {split!r}; is it a prepared "
                        "classification set?")
    frame = frame[frame["split"] == split]
    acc = classification_accuracy(
        model if model is not None else classifier, images, manifest=frame,
        class_to_index=meta["class_to_index"], device=resolve_device(device), batch_size=batch_size,
        input_size=input_size or int(meta["arch"]["input_size"]),
        resize_size=resize_size or meta.get("resize_size"), normalize=normalize)
    return {**acc, "split": split}
