# SR training stages: PSNR-oriented warm-up, then GAN fine-tuning initialised from the warm-up
# generator (so a new warm-up reruns the GAN stage). GPU jobs; killed jobs resume from state/last.pt.
# Code: workflow_scripts/train.py -> sfsr.training.loop.


rule warmup:
    input:
        [warmup_checkpoint(m) for m in MODELS],


rule gan:
    input:
        [gan_checkpoint(m) for m in models_with("gan")],


rule semantic:
    input:
        [stage_checkpoint(m, "semantic") for m in models_with("semantic")],


rule shared:
    input:
        [stage_checkpoint(m, "shared") for m in models_with("shared")],


rule train_warmup:
    input:
        train=train_inputs,
        valid=[prepared_hr(d) for d in config["valid"]],
    output:
        generator=f"{RESULTS}/models/{{model}}/warmup/generator.pt",
        log_csv=f"{RESULTS}/models/{{model}}/warmup/train_log.csv",
        provenance=f"{RESULTS}/models/{{model}}/warmup/provenance.json",
    params:
        cfg=lambda wc: stage_settings(wc.model, "warmup"),
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/train_warmup/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_warmup/{{model}}.tsv"
    threads: lambda wc: stage_settings(wc.model, "warmup")["threads"]
    resources:
        gpu=lambda wc: stage_settings(wc.model, "warmup")["gpus"],
        mem_mb=lambda wc: stage_settings(wc.model, "warmup")["mem_mb"],
        runtime=lambda wc: stage_settings(wc.model, "warmup")["runtime"],
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/train.py"


rule train_gan:
    input:
        unpack(lambda wc: perceptual_classifier(wc.model, "gan")),
        train=train_inputs,
        valid=[prepared_hr(d) for d in config["valid"]],
        init=lambda wc: warmup_checkpoint(wc.model),
    output:
        generator=f"{RESULTS}/models/{{model}}/gan/generator.pt",
        log_csv=f"{RESULTS}/models/{{model}}/gan/train_log.csv",
        provenance=f"{RESULTS}/models/{{model}}/gan/provenance.json",
    params:
        cfg=lambda wc: stage_settings(wc.model, "gan"),
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/train_gan/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_gan/{{model}}.tsv"
    threads: lambda wc: stage_settings(wc.model, "gan")["threads"]
    resources:
        gpu=lambda wc: stage_settings(wc.model, "gan")["gpus"],
        mem_mb=lambda wc: stage_settings(wc.model, "gan")["mem_mb"],
        runtime=lambda wc: stage_settings(wc.model, "gan")["runtime"],
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/train.py"


# Semantic-favorable SR and shared-feature training: on the classification set (its train split),
# from the warm-up generator, with the frozen classifier as label-free prior / pseudo-labeller.
rule train_semantic:
    input:
        train=lambda wc: [prepared_hr(semantic_dataset())],
        valid=lambda wc: [prepared_hr(semantic_dataset())],
        init=lambda wc: warmup_checkpoint(wc.model),
        classifier=lambda wc: classifier_checkpoint(semantic_dataset()),
    output:
        generator=f"{RESULTS}/models/{{model}}/semantic/generator.pt",
        log_csv=f"{RESULTS}/models/{{model}}/semantic/train_log.csv",
        provenance=f"{RESULTS}/models/{{model}}/semantic/provenance.json",
    params:
        cfg=lambda wc: stage_settings(wc.model, "semantic"),
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/train_semantic/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_semantic/{{model}}.tsv"
    threads: lambda wc: stage_settings(wc.model, "semantic")["threads"]
    resources:
        gpu=lambda wc: stage_settings(wc.model, "semantic")["gpus"],
        mem_mb=lambda wc: stage_settings(wc.model, "semantic")["mem_mb"],
        runtime=lambda wc: stage_settings(wc.model, "semantic")["runtime"],
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/train.py"


rule train_shared:
    input:
        train=lambda wc: [prepared_hr(semantic_dataset())],
        valid=lambda wc: [prepared_hr(semantic_dataset())],
        init=lambda wc: warmup_checkpoint(wc.model),
        classifier=lambda wc: classifier_checkpoint(semantic_dataset()),
    output:
        generator=f"{RESULTS}/models/{{model}}/shared/generator.pt",
        head=f"{RESULTS}/models/{{model}}/shared/lr_head.pt",
        log_csv=f"{RESULTS}/models/{{model}}/shared/train_log.csv",
        provenance=f"{RESULTS}/models/{{model}}/shared/provenance.json",
    params:
        cfg=lambda wc: stage_settings(wc.model, "shared"),
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/train_shared/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_shared/{{model}}.tsv"
    threads: lambda wc: stage_settings(wc.model, "shared")["threads"]
    resources:
        gpu=lambda wc: stage_settings(wc.model, "shared")["gpus"],
        mem_mb=lambda wc: stage_settings(wc.model, "shared")["mem_mb"],
        runtime=lambda wc: stage_settings(wc.model, "shared")["runtime"],
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/train.py"
