"""Entry point of the evaluation stage (rules/evaluate.smk): upscale, image_metrics,
perceptual_metrics, summarize.

Each function receives Snakemake's ``snakemake`` object; the work is done in ``sfsr.inference``,
``sfsr.evaluation`` and ``sfsr.perceptual_metrics`` (the project's single PSNR/SSIM
implementation is ``sfsr.metrics``).
"""

import logging
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821  this checkout's sfsr

import pandas as pd

from sfsr import io, provenance
from sfsr.classification import seed_summary as seed_summary_table
from sfsr.evaluation import add_lpips, evaluate_folders, example_stems, split_stems, summary_markdown
from sfsr.evaluation import summarize as summarize_table
from sfsr.workflow import run_rule


def upscale(smk):
    from sfsr.inference import upscale_path  # torch: only where a model runs

    checkpoint = smk.input.checkpoint if smk.wildcards.model != "bicubic" else None
    manifest = Path(smk.input.lr).parents[1] / "manifest.csv"  # prepared/<set>/LR_bicubic/X<s>
    upscale_path(smk.input.lr, smk.output[0], scale=int(smk.wildcards.scale), checkpoint=checkpoint,
                 device=smk.params.device, tile=smk.params.tile, tile_overlap=smk.params.tile_overlap,
                 progress=True, stems=split_stems(manifest, smk.params.splits))


def image_metrics(smk):
    w = smk.wildcards
    resizer = "matlab-bicubic" if w.model == "bicubic" else f"model:{w.model}"
    manifest = Path(smk.input.hr).parent / "manifest.csv"  # written with HR/ by prepare
    table = evaluate_folders(smk.input.hr, smk.input.sr, int(w.scale), resizer=resizer,
                             stems=split_stems(manifest, smk.params.splits))
    table.insert(0, "scale", int(w.scale))
    table.insert(0, "dataset", w.dataset)
    table.insert(0, "model", w.model)
    io.write_csv(smk.output.csv, table)
    examples = Path(smk.output.examples)
    examples.mkdir(parents=True, exist_ok=True)
    if smk.params.keep != "none":
        for stem in example_stems(table["image"], smk.params.n_examples, manifest):  # test images first
            src = next(Path(smk.input.sr).glob(f"{stem}.png"))
            shutil.copy2(src, examples / src.name)


def perceptual_metrics(smk):
    from sfsr.perceptual_metrics import lpips_available, lpips_table, skipped_table  # torch
    from sfsr.tensors import resolve_device

    w = smk.wildcards
    net, scale = smk.params.net, int(w.scale)
    stems = split_stems(Path(smk.input.hr).parent / "manifest.csv", smk.params.splits)
    available, message = lpips_available(net)
    if available:
        logging.getLogger("sfsr").info("%s", message)
        table = lpips_table(smk.input.hr, smk.input.sr, scale, net=net,
                            device=resolve_device(smk.params.device, "evaluation.device"), stems=stems)
    else:  # offline without the backbone weights: one line, and a table that says so
        logging.getLogger("sfsr").warning("%s", message)
        print(f"[sfsr] {w.model} {w.dataset} x{scale}: {message}", file=sys.__stderr__)
        table = skipped_table(smk.input.hr, smk.input.sr, scale, message, net=net, stems=stems)
    table.insert(0, "scale", scale)
    table.insert(0, "dataset", w.dataset)
    table.insert(0, "model", w.model)
    io.write_csv(smk.output.csv, table)


def summarize(smk):
    per_image = pd.concat([pd.read_csv(p) for p in smk.input.metrics], ignore_index=True)
    summary = summarize_table(per_image, n_boot=smk.params.n_boot, seed=smk.params.seed)
    if smk.input.lpips:  # evaluation.lpips set: mean and CI columns appended (NaN where skipped)
        lpips = pd.concat([pd.read_csv(p) for p in smk.input.lpips], ignore_index=True)
        summary = add_lpips(summary, lpips, n_boot=smk.params.n_boot, seed=smk.params.seed)
    io.write_csv(smk.output.csv, summary)
    io.write_text(smk.output.md, summary_markdown(summary))
    provenance.write(smk.output.provenance, config=smk.params.config, seed=smk.params.seed,
                     inputs=list(map(str, smk.input)))


def seed_summary(smk):
    accuracy = pd.concat([pd.read_csv(p) for p in smk.input.accuracy], ignore_index=True) \
        if smk.input.accuracy else None
    table = seed_summary_table(pd.read_csv(smk.input.summary), accuracy, smk.params.groups)
    io.write_csv(smk.output.csv, table)
    io.write_text(smk.output.md, table.to_markdown(index=False, floatfmt=".4f") + "\n\n"
                  "Every generator over its training seeds (config key 'seeds'): mean and sample sd "
                  "of PSNR-Y/SSIM-Y (per dataset) and of each judge's top-1 and gap closed on the "
                  "test split; 'values' lists them in the order of 'seeds'.\n")


run_rule(snakemake, {"upscale": upscale, "image_metrics": image_metrics,  # noqa: F821
                     "perceptual_metrics": perceptual_metrics, "summarize": summarize,
                     "seed_summary": seed_summary})
