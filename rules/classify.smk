# Classifier stage and classification evaluation: pretrain the fine-grained classifier on HR
# images, then its top-1/top-5 on the test split of HR, bicubic and every SR output, joined with
# PSNR/SSIM in one table with the share of the bicubic-to-HR gap each model closes.
# Code: workflow_scripts/classify.py -> sfsr.training.classifier / sfsr.evaluation.


rule classifier:
    input:
        [classifier_checkpoint(d) for d in config["classification"]],


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


rule classify:
    input:
        unpack(lr_head_inputs),
        classifier=lambda wc: classifier_checkpoint(wc.dataset),
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


rule accuracy_table:
    input:
        accuracies=lambda wc: classification_inputs(wc.dataset, int(wc.scale)),
        metrics=lambda wc: [f"{RESULTS}/metrics/{m}/{wc.dataset}_x{wc.scale}.csv"
                            for m in models_at(int(wc.scale))],
        manifest=lambda wc: f"{DATA}/prepared/{wc.dataset}/manifest.csv",
    output:
        csv=f"{RESULTS}/classification/{{dataset}}_x{{scale}}/accuracy.csv",
        md=f"{RESULTS}/classification/{{dataset}}_x{{scale}}/accuracy.md",
    log:
        f"{RESULTS}/logs/accuracy_table/{{dataset}}_x{{scale}}.log",
    conda:
        "../envs/light.yaml"
    script:
        "../workflow_scripts/classify.py"
