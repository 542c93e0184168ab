# Classifier stage and classification evaluation: pretrain the fine-grained classifier on HR
# images (the semantic prior) and the independent judges of config key 'judges', then each one's
# top-1/top-5 on the test split of HR, bicubic and every SR output, joined with PSNR/SSIM in one
# table with the share of the bicubic-to-HR gap each model closes.
# Code: workflow_scripts/classify.py -> sfsr.training.classifier / sfsr.classification / sfsr.evaluation.


rule classifier:
    input:
        [judge_checkpoint(d, j) for d in config["classification"] for j in JUDGES],


rule classification:
    input:
        accuracy_tables(),


rule pretrain_classifier:
    input:
        hr=lambda wc: prepared_hr(wc.dataset),
        manifest=lambda wc: f"{DATA}/prepared/{wc.dataset}/manifest.csv",
    output:
        f"{RESULTS}/classifier/{{dataset}}/classifier.pt",
    params:
        cfg=config["classifier"],
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/pretrain_classifier/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain_classifier/{{dataset}}.tsv"
    threads: config["classifier"]["threads"]
    resources:
        gpu=config["classifier"]["gpus"],
        mem_mb=config["classifier"]["mem_mb"],
        runtime=config["classifier"]["runtime"],
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/classify.py"


# An independent judge (config key 'judges'): the classifier's recipe with its own seed / backbone,
# used only to measure accuracy (docs/semantic.md).
use rule pretrain_classifier as pretrain_judge with:
    output:
        f"{RESULTS}/classifier/{{dataset}}/judges/{{judge}}/classifier.pt",
    params:
        cfg=lambda wc: JUDGES[wc.judge]["cfg"],
        seed=lambda wc: JUDGES[wc.judge]["seed"],
    log:
        f"{RESULTS}/logs/pretrain_judge/{{dataset}}/{{judge}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain_judge/{{dataset}}/{{judge}}.tsv"


# The LR classification baseline (config key lr_classifier): the classifier fine-tuned on the set's
# bicubic-upscaled LR images; classified as input 'lr_classifier' on the bicubic test images.
rule finetune_lr_classifier:
    input:
        classifier=lambda wc: classifier_checkpoint(wc.dataset),
        images=f"{RESULTS}/sr/bicubic/{{dataset}}_x{{scale}}",
        manifest=lambda wc: f"{DATA}/prepared/{wc.dataset}/manifest.csv",
    output:
        f"{RESULTS}/classifier/{{dataset}}/lr_x{{scale}}/classifier.pt",
    params:
        cfg=sfsr.config.lr_classifier_settings(config),
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/finetune_lr_classifier/{{dataset}}_x{{scale}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/finetune_lr_classifier/{{dataset}}_x{{scale}}.tsv"
    threads: config["classifier"]["threads"]
    resources:
        gpu=config["classifier"]["gpus"],
        mem_mb=config["classifier"]["mem_mb"],
        runtime=config["classifier"]["runtime"],
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/classify.py"


rule classify:
    input:
        unpack(lr_head_inputs),
        classifier=classify_classifier,
        images=classify_images,
        manifest=lambda wc: f"{DATA}/prepared/{wc.dataset}/manifest.csv",
    output:
        f"{RESULTS}/classification/{{dataset}}_x{{scale}}/{{input}}.json",
    params:
        device=config["evaluation"]["device"],
    log:
        f"{RESULTS}/logs/classify/{{dataset}}_x{{scale}}/{{input}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/classify/{{dataset}}_x{{scale}}/{{input}}.tsv"
    resources:
        gpu=1,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/classify.py"


use rule classify as classify_judge with:
    input:
        classifier=lambda wc: judge_checkpoint(wc.dataset, wc.judge),
        images=classify_images,
        manifest=lambda wc: f"{DATA}/prepared/{wc.dataset}/manifest.csv",
    output:
        f"{RESULTS}/classification/{{dataset}}_x{{scale}}/judges/{{judge}}/{{input}}.json",
    log:
        f"{RESULTS}/logs/classify/{{dataset}}_x{{scale}}/judges/{{judge}}/{{input}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/classify/{{dataset}}_x{{scale}}/judges/{{judge}}/{{input}}.tsv"


rule accuracy_table:
    input:
        accuracies=lambda wc: classification_inputs(wc.dataset, int(wc.scale)),
        metrics=lambda wc: [f"{RESULTS}/metrics/{m}/{wc.dataset}_x{wc.scale}.csv"
                            for m in models_at(int(wc.scale))],
        manifest=lambda wc: f"{DATA}/prepared/{wc.dataset}/manifest.csv",
    output:
        csv=f"{RESULTS}/classification/{{dataset}}_x{{scale}}/accuracy.csv",
        md=f"{RESULTS}/classification/{{dataset}}_x{{scale}}/accuracy.md",
        # the pre-registered comparisons (config key analysis), when the study states them
        **({"analysis": f"{RESULTS}/classification/{{dataset}}_x{{scale}}/analysis.csv",
            "analysis_md": f"{RESULTS}/classification/{{dataset}}_x{{scale}}/analysis.md"}
           if config["analysis"].get("primary") else {}),
    params:
        analysis=config["analysis"],
        primary_judge=analysis_judge(),
        seed_names=seed_groups(),
        bootstrap=config["evaluation"]["bootstrap"],
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/accuracy_table/{{dataset}}_x{{scale}}.log",
    conda:
        "../envs/light.yaml"
    script:
        "../workflow_scripts/classify.py"


# The go / no-go gate of config key analysis.gate, decided on the VALIDATION split after the
# warm-up: the semantic and shared stages (and their controls) take its file as an input, so they
# train only when HR beats the warm-up generator by analysis.gate.min_gap under the gate's judge;
# otherwise this job fails saying so, and the study stops before them.
rule gate:
    input:
        classifier=lambda wc: judge_checkpoint(wc.dataset, config["analysis"]["gate"]["judge"]),
        hr=lambda wc: prepared_hr(wc.dataset),
        sr=f"{RESULTS}/sr/{{model}}/{{dataset}}_x{{scale}}",
        manifest=lambda wc: f"{DATA}/prepared/{wc.dataset}/manifest.csv",
    output:
        f"{RESULTS}/gate/{{dataset}}_x{{scale}}/{{model}}.json",
    params:
        gate=config["analysis"].get("gate"),
        device=config["evaluation"]["device"],
    log:
        f"{RESULTS}/logs/gate/{{dataset}}_x{{scale}}/{{model}}.log",
    resources:
        gpu=1,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/classify.py"
