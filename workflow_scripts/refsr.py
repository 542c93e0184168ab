"""Entry point of the reference-based SR evaluation (rules/refsr.smk): refsr_metrics (one model on
one reference test set, per group and reference level) and refsr_summary (means, table, figure).
The work is done in ``sfsr.refsr``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821  this checkout's sfsr

import pandas as pd

from sfsr import io
from sfsr.workflow import run_rule


def refsr_metrics(smk):
    from sfsr.refsr import reference_table

    w = smk.wildcards
    table = reference_table(smk.input.hr, int(w.scale), model_name=w.model, dataset=w.dataset,
                            checkpoint=smk.input.get("checkpoint"), device=smk.params.device)
    io.write_csv(smk.output[0], table)


def refsr_summary(smk):
    from sfsr.plots import plot_refsr
    from sfsr.refsr import (gain_over_bicubic, paired_against_controls, paired_markdown, reference_summary,
                            summary_markdown)

    table = pd.concat([pd.read_csv(p, dtype={"group": str}) for p in smk.input.tables], ignore_index=True)
    summary = reference_summary(table)
    io.write_csv(smk.output.csv, summary)
    # each reference-based run vs the no-reference control of the same stage
    paired = paired_against_controls(table, pairing=smk.params.get("pairing"))
    io.write_csv(smk.output.paired, paired)
    io.write_text(smk.output.md, summary_markdown(summary) + "\n" + paired_markdown(paired))
    # the figure: the gain over bicubic on the same group, per reference level; the random
    # reference, the no-reference control and bicubic (0) as horizontal lines
    plot_refsr(gain_over_bicubic(table), smk.output.png, ylabel="PSNR-Y gain over bicubic (dB)")

run_rule(snakemake, {"refsr_metrics": refsr_metrics, "refsr_summary": refsr_summary})  # noqa: F821
