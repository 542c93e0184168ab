"""Entry point of the figures and summary rules (rules/report.smk). The work is done in
``sfsr.plots``; every figure gets the same colour per model (``color_universe``), ordered and marked
by the family the workflow gives each name (``families``: from the stage table, never guessed)."""

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821  this checkout's sfsr

import pandas as pd

from sfsr import io, plots
from sfsr.classification import summary_judge
from sfsr.evaluation import summary_markdown
from sfsr.workflow import run_rule


def _colors(smk):
    return plots.model_colors(smk.params.universe, families=smk.params.families)


def plot_training(smk):
    logs = {m: pd.read_csv(p) for m, p in zip(smk.params.models, smk.input.logs)}
    plots.plot_training_curves(logs, smk.output.png, title=f"{smk.wildcards.stage} stage",
                               colors=_colors(smk))


def plot_metrics(smk):
    plots.plot_metric_bars(pd.read_csv(smk.input[0]), smk.output.png, metric=smk.wildcards.metric,
                           colors=_colors(smk))


def plot_accuracy(smk):
    table = pd.read_csv(smk.input[0])
    plots.plot_accuracy(table, smk.output.accuracy, colors=_colors(smk))
    plots.plot_tradeoff(table, smk.output.tradeoff, colors=_colors(smk),
                        family=plots.family_lookup(smk.params.families))


def plot_visual(smk):
    from sfsr.inference import upscale_path  # torch: only where a model runs

    w = smk.wildcards
    per_image = pd.concat([pd.read_csv(p) for p in smk.input.metrics], ignore_index=True)
    chosen = plots.pick_images(per_image, n=int(w.rank))
    if len(chosen) < int(w.rank):
        raise SystemExit(f"{w.dataset} has only {len(chosen)} images; lower plots.visual_images")
    stem = chosen["image"].iloc[int(w.rank) - 1]
    hr = next(Path(smk.input.hr).glob(f"{stem}.png"))
    lr = next(Path(smk.input.lr).glob(f"{stem}.png"))
    with tempfile.TemporaryDirectory() as tmp:
        sr_paths = {}
        for model, ckpt in smk.params.checkpoints.items():  # the same inference code as evaluation
            sr_paths[model] = upscale_path(lr, Path(tmp) / model / f"{stem}.png", checkpoint=ckpt,
                                           device=smk.params.device, progress=False)[0]
        plots.plot_visual_grid(hr, sr_paths, smk.output.png, int(w.scale), lr_path=lr,
                               size=smk.params.crop_size, colors=_colors(smk))


def plot_semantic_examples(smk):
    from sfsr.plots.semantic import read_record

    p, i = smk.params, smk.input
    records = {"hr": read_record(i.record_hr), "bicubic": read_record(i.record_bicubic),
               p.against: read_record(i.record_against), p.model: read_record(i.record_model)}
    folders = {"hr": i.hr, "bicubic": i.sr_bicubic, p.against: i.sr_against, p.model: i.sr_model}
    manifest = pd.read_csv(i.manifest, dtype={"stem": str, "split": str})
    plots.plot_semantic_examples(records, folders, manifest, p.model, p.against, int(smk.wildcards.scale),
                                 smk.output.png, judge=p.judge, colors=_colors(smk))


def summary_table(smk):
    summary = pd.read_csv(smk.input.summary)
    if smk.input.refsr:  # RefSR per reference level: rows '<model> @ ref<k>' (docs/refsr.md)
        from sfsr.refsr import row_name

        refsr = pd.concat([pd.read_csv(p) for p in smk.input.refsr], ignore_index=True)
        refsr["model"] = [row_name(m, i) for m, i in zip(refsr["model"], refsr["input"])]
        summary = pd.concat([summary, refsr[[c for c in summary.columns if c in refsr.columns]]],
                            ignore_index=True)
    accuracy = pd.concat([pd.read_csv(p) for p in smk.input.accuracy], ignore_index=True) \
        if smk.input.accuracy else None
    if accuracy is not None:
        accuracy = accuracy.rename(columns={"input": "model"})
        if "judge" in accuracy.columns:  # the summary shows one judge: the primary judge
            primary = accuracy["primary_judge"] if "primary_judge" in accuracy.columns else None
            accuracy = accuracy[accuracy["judge"] == summary_judge(accuracy["judge"], primary)]
            accuracy = accuracy.drop(columns=[c for c in ("independent", "primary_judge") if c in accuracy.columns])
            accuracy = accuracy.rename(columns={"judge": "acc_judge"})
    params, train_time = {}, {}
    for name, path in zip(smk.params.names, smk.input.provenance):
        record = json.loads(Path(path).read_text())
        params[name] = record.get("parameters")
        train_time[name] = record.get("training_time_s")
    table = plots.summary_table(summary, accuracy=accuracy, params=params, train_time=train_time,
                                families=smk.params.families)
    if "acc_dataset" in table.columns:  # accuracy belongs to the classification set's rows only
        other = table["dataset"] != table["acc_dataset"]
        acc_cols = [c for c in ("acc_dataset", "acc_judge", "top1", "top5", "gap_closed", "gap_closed_top5")
                    if c in table.columns]
        table[acc_cols] = table[acc_cols].astype(object)
        table.loc[other, acc_cols] = None
    io.write_csv(smk.output.csv, table)
    io.write_text(smk.output.md, summary_markdown(table))


run_rule(snakemake, {"plot_training": plot_training, "plot_metrics": plot_metrics,  # noqa: F821
                     "plot_accuracy": plot_accuracy, "plot_visual": plot_visual,
                     "plot_semantic_examples": plot_semantic_examples, "summary_table": summary_table})
