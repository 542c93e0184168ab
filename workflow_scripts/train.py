"""Entry point of the SR training stages (rules/train.smk): one rule ``train_<stage>`` per stage of
``sfsr.training.stages.STAGES`` (train_warmup, train_gan, train_semantic, ...; the handlers below are
built from the table, so a new stage needs nothing here).

The work is done in ``sfsr.training.loop.train``; a killed job started again resumes from
``state/last.pt`` beside its output. A job with ``resources.gpu`` (the stage's ``gpus``) above 1
runs it on that many processes under torchrun (``sfsr.training.distributed.launch``,
docs/multi_gpu.md).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821  this checkout's sfsr

from sfsr.training.distributed import launch
from sfsr.training.loop import train
from sfsr.training.stages import STAGES
from sfsr.workflow import run_rule


def train_stage(smk):
    stage = smk.rule.removeprefix("train_")
    kwargs = dict(train_hr_dirs=list(smk.input.train), valid_hr_dirs=list(smk.input.valid),
                  out_dir=Path(smk.output.generator).parent, init_checkpoint=smk.input.get("init"),
                  classifier_checkpoint=smk.input.get("classifier"), seed=smk.params.seed)
    gpus = int(getattr(smk.resources, "gpu", 0) or 0)
    if gpus > 1:  # one job, several GPUs: DistributedDataParallel under torchrun
        launch(gpus, stage, smk.params.cfg, **kwargs)
    else:
        train(stage, smk.params.cfg, **kwargs)


run_rule(snakemake, {f"train_{stage}": train_stage for stage in STAGES})  # noqa: F821
