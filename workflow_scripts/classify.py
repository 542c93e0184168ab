"""Entry point of the classifier stage (rules/classify.smk): pretrain_classifier / pretrain_judge,
finetune_lr_classifier, classify / classify_judge, accuracy_table, gate. The work is done in ``sfsr.training.classifier``, ``sfsr.classification`` and ``sfsr.evaluation``."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821  this checkout's sfsr

import pandas as pd

from sfsr import io
from sfsr.analysis import comparisons, markdown as analysis_markdown, primary_context
from sfsr.classification import gate_decision, judged_accuracy_table, mark_comparisons, split_accuracy
from sfsr.errors import SfsrError
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


def gate(smk):
    spec = smk.params.gate
    hr = split_accuracy(smk.input.classifier, smk.input.hr, smk.input.manifest, split="val",
                        device=smk.params.device)
    sr = split_accuracy(smk.input.classifier, smk.input.sr, smk.input.manifest, split="val",
                        device=smk.params.device)
    decision = gate_decision(hr, sr, min_gap=spec["min_gap"], judge=spec.get("judge", "prior"),
                             name=smk.wildcards.model)
    print(json.dumps(decision))
    if not decision["go"]:
        raise SfsrError(f"analysis.gate: on the val split HR beats the warm-up {smk.wildcards.model!r} by "
                        f"{decision['gap']:+.3f} top-1 under the judge {decision['judge']!r} "
                        f"({decision['top1_hr']:.3f} vs {decision['top1_model']:.3f}), less than min_gap "
                        f"{decision['min_gap']}: there is no gap worth closing, so the semantic stages do not "
                        "train. Make the task harder (a larger scale, smaller images) or set analysis.gate: "
                        "null to train them anyway.")
    io.write_json(smk.output[0], decision)


def accuracy_table(smk):
    records = [json.loads(Path(path).read_text()) for path in smk.input.accuracies]
    manifest = pd.read_csv(smk.input.manifest, dtype={"stem": str, "split": str})
    test_stems = set(manifest.loc[manifest["split"] == "test", "stem"])
    per_image = {}
    for path in smk.input.metrics:  # PSNR/SSIM on the same test images
        frame = pd.read_csv(path, dtype={"image": str})
        per_image[frame["model"].iloc[0]] = frame[frame["image"].isin(test_stems)]
    metrics = {name: mean_metrics(frame) for name, frame in per_image.items()}
    # every judge's table, with paired statistics vs bicubic and vs each model's control
    table = judged_accuracy_table(records, metrics, primary_judge=smk.params.primary_judge)
    if "analysis" in smk.output.keys():  # the pre-registered comparisons (config key analysis)
        found = comparisons(smk.params.analysis, records, metrics=per_image, seed_names=smk.params.seed_names,
                            n_boot=smk.params.bootstrap, seed=smk.params.seed,
                            default_judge=smk.params.primary_judge)
        table = mark_comparisons(table, found)
        io.write_csv(smk.output.analysis, found)
        context = primary_context(records, smk.params.analysis["primary"], smk.params.seed_names,
                                  smk.params.primary_judge)
        io.write_text(smk.output.analysis_md, analysis_markdown(found) + "\n" + context)
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
                  "intervals of the top-1 difference (Newcombe) and of gap_closed (Fieller; "
                  "gap_closed_status 'no gap to close' when HR and bicubic do not differ).\n")


run_rule(snakemake, {"pretrain_classifier": pretrain_classifier, "pretrain_judge": pretrain_classifier,  # noqa: F821
                     "finetune_lr_classifier": finetune_lr_classifier, "classify": classify,
                     "classify_judge": classify, "accuracy_table": accuracy_table, "gate": gate})
