"""Entry point of the evaluation stage (rules/evaluate.smk): upscale, image_metrics, summarize.

Each function receives Snakemake's ``snakemake`` object; the work is done in ``sfsr.inference``
and ``sfsr.evaluation`` (the project's single metric implementation is ``sfsr.metrics``).
"""

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821  this checkout's sfsr

import pandas as pd

from sfsr import io, provenance
from sfsr.evaluation import evaluate_folders, summarize as summarize_table, summary_markdown
from sfsr.workflow import run_rule


def upscale(smk):
    from sfsr.inference import upscale_path  # torch: only where a model runs

    checkpoint = smk.input.checkpoint if smk.wildcards.model != "bicubic" else None
    upscale_path(smk.input.lr, smk.output[0], scale=int(smk.wildcards.scale), method="bicubic",
                 checkpoint=checkpoint, device=smk.params.device, tile=smk.params.tile,
                 tile_overlap=smk.params.tile_overlap, progress=True)


def image_metrics(smk):
    w = smk.wildcards
    resizer = "matlab-bicubic" if w.model == "bicubic" else f"model:{w.model}"
    table = evaluate_folders(smk.input.hr, smk.input.sr, int(w.scale), resizer=resizer)
    table.insert(0, "scale", int(w.scale))
    table.insert(0, "dataset", w.dataset)
    table.insert(0, "model", w.model)
    io.write_csv(smk.output.csv, table)
    examples = Path(smk.output.examples)
    examples.mkdir(parents=True, exist_ok=True)
    if smk.params.keep != "none":
        for stem in table["image"].head(smk.params.n_examples):
            src = next(Path(smk.input.sr).glob(f"{stem}.png"))
            shutil.copy2(src, examples / src.name)


def summarize(smk):
    per_image = pd.concat([pd.read_csv(p) for p in smk.input], ignore_index=True)
    summary = summarize_table(per_image, n_boot=smk.params.n_boot, seed=smk.params.seed)
    io.write_csv(smk.output.csv, summary)
    io.write_text(smk.output.md, summary_markdown(summary))
    provenance.write(smk.output.provenance, config=smk.params.config, seed=smk.params.seed,
                     inputs=list(map(str, smk.input)))


run_rule(snakemake, {"upscale": upscale, "image_metrics": image_metrics,  # noqa: F821
                     "summarize": summarize})
