"""Entry point of the SR training stages (rules/train.smk): train_warmup, train_gan.

The work is done in ``sfsr.training.loop.train``; a killed job started again resumes from
``state/last.pt`` beside its output.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821  this checkout's sfsr

from sfsr.training.loop import train
from sfsr.workflow import run_rule


def train_stage(smk):
    stage = {"train_warmup": "warmup", "train_gan": "gan"}[smk.rule]
    train(stage, smk.params.cfg, train_hr_dirs=list(smk.input.train),
          valid_hr_dirs=list(smk.input.valid), out_dir=Path(smk.output.generator).parent,
          init_checkpoint=smk.input.get("init"), seed=smk.params.seed)


run_rule(snakemake, {"train_warmup": train_stage, "train_gan": train_stage})  # noqa: F821
