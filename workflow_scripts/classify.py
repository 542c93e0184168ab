"""Entry point of the classifier stage (rules/classify.smk): pretrain_classifier / pretrain_judge,
finetune_lr_classifier, classify / classify_judge, accuracy_table. The work is done in ``sfsr.training.classifier``, ``sfsr.classification`` and ``sfsr.evaluation``."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821  this checkout's sfsr

import pandas as pd

from sfsr import io
from sfsr.classification import judged_accuracy_table, split_accuracy
from sfsr.evaluation import mean_metrics
from sfsr.training.classifier import CLASSIFIER_RESOURCES, train_classifier
from sfsr.training.lr_head import load_lr_classifier
from sfsr.workflow import run_rule


def pretrain_classifier(smk):
    cfg = {k: v for k, v in smk.params.cfg.items() if k not in CLASSIFIER_RESOURCES}
    train_classifier(cfg, dataset_dir=Path(smk.input.manifest).parent,
                     out_dir=Path(smk.output[0]).parent, seed=smk.params.seed)


def finetune_lr_classifier(smk):
    cfg = {k: v for k, v in smk.params.cfg.items() if k not in CLASSIFIER_RESOURCES}
    train_classifier(cfg, dataset_dir=Path(smk.input.manifest).parent, out_dir=Path(smk.output[0]).parent,
                     seed=smk.params.seed, image_dir=smk.input.images, init_checkpoint=smk.input.classifier)


def classify(smk):
    if "head" in smk.input.keys():  # an LR head classifies the LR images directly
        head = load_lr_classifier(smk.input.generator, smk.input.head)
        acc = split_accuracy(smk.input.classifier, smk.input.images, smk.input.manifest,
                             device=smk.params.device, model=head, input_size=head.input_size,
                             resize_size=head.resize_size, normalize=False)
    else:
        acc = split_accuracy(smk.input.classifier, smk.input.images, smk.input.manifest,
                             device=smk.params.device)
    w = smk.wildcards
    io.write_json(smk.output[0], {"input": w.input, "judge": w.get("judge", "prior"),
                                  "dataset": w.dataset, "scale": int(w.scale), **acc})


def accuracy_table(smk):
    records = [json.loads(Path(path).read_text()) for path in smk.input.accuracies]
    manifest = pd.read_csv(smk.input.manifest, dtype={"stem": str, "split": str})
    test_stems = set(manifest.loc[manifest["split"] == "test", "stem"])
    metrics = {}
    for path in smk.input.metrics:  # PSNR/SSIM on the same test images
        per_image = pd.read_csv(path, dtype={"image": str})
        per_image = per_image[per_image["image"].isin(test_stems)]
        metrics[per_image["model"].iloc[0]] = mean_metrics(per_image)
    # every judge's table, with paired statistics vs bicubic and vs each model's control
    table = judged_accuracy_table(records, metrics)
    table.insert(0, "scale", int(smk.wildcards.scale))
    table.insert(0, "dataset", smk.wildcards.dataset)
    io.write_csv(smk.output.csv, table)
    io.write_text(smk.output.md, table.to_markdown(index=False, floatfmt=".4f") + "\n\n"
                  "judge: the classifier that judged (prior = the classifier the semantic stage "
                  "uses as its prior, so not independent of it; the others are trained on the same "
                  "split with their own seed / backbone, config key 'judges'). "
                  "top1/top5 on the test split; gap_closed = (acc - acc_bicubic) / "
                  "(acc_hr - acc_bicubic); PSNR/SSIM on the same images (Y channel). Paired on the "
                  "same images: fixed/broken = images right/wrong that bicubic (or the model's "
                  "budget-matched control) gets wrong/right, p = exact McNemar, *_low/*_high = 95% "
                  "paired-bootstrap intervals of the top-1 difference and of gap_closed.\n")


run_rule(snakemake, {"pretrain_classifier": pretrain_classifier, "pretrain_judge": pretrain_classifier,  # noqa: F821
                     "finetune_lr_classifier": finetune_lr_classifier, "classify": classify,
                     "classify_judge": classify, "accuracy_table": accuracy_table})
