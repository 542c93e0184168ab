# sfsr: one DAG for the whole super-resolution study.
#   snakemake --cores all --resources gpu=1      # everything (rule `all`)
#   snakemake --cores all data                   # one stage (data, evaluate, ...)
# The logic lives in src/sfsr; rules/*.smk only wire it: rules/<stage>.smk -> workflow_scripts/<stage>.py.

import os
import sys

# The Snakefile and the workflow scripts import the library from this checkout's src/ (first on
# sys.path, also inside conda envs and cluster jobs), so the code that runs is this commit's code.
sys.path.insert(0, os.path.join(workflow.basedir, "src"))

# Only torch-free modules are imported here (tests/test_workflow.py checks it): parsing stays fast.
import sfsr.config
from sfsr.training.settings import stage_config
from sfsr.training.stages import STAGES, evaluation_name, needs_classifier

configfile: "config.yaml"

# A bad config stops the parse with one line naming the key, the value and the fix (no traceback:
# the message is the whole story, docs/reliability.md).
try:
    sfsr.config.validate(config)  # the schema of this checkout's src/sfsr (sfsr.schema.load)
    # config key 'seeds': one copy of every sr_models entry per extra training seed ({model: (base, seed)})
    MODEL_SEEDS = sfsr.config.expand_seeds(config)
except sfsr.config.ConfigError as exc:
    sys.exit(f"ConfigError: {exc}")

# `snakemake --report results/report.html` (the README's) writes into results/, which Snakemake does
# not create; after a data-only run it would not exist yet.
if os.path.exists("results") and not os.path.isdir("results"):
    sys.exit("ConfigError: ./results is a file; the report (snakemake --report results/report.html) "
             "is written into the folder results/; move the file away")
os.makedirs("results", exist_ok=True)

include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/classify.smk"
include: "rules/report.smk"
include: "rules/refsr.smk"


rule all:
    default_target: True
    input:
        rules.data.input,
        rules.evaluate.input,
        rules.classification.input,
        rules.figures.input,
        rules.evaluate_refsr.input,
        rules.seed_summary.output if len(config["seeds"]) > 1 else [],


# What exists of `all`: `snakemake --report results/report.html finished` reports a partial run
# (a plain --report needs every output of `all`, and stops at the first missing one).
rule finished:
    input:
        [path for path in rules.all.input if os.path.exists(path)],


# (the training stage targets warmup, gan, ... are local too: rules/train.smk marks them)
localrules: all, finished, data, evaluate, classifier, classification, figures
