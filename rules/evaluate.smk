# Evaluation stage: upscale every test set with every model (bicubic always included), compute
# per-image PSNR/SSIM (Y channel, paper convention) and, unless evaluation.lpips is null, LPIPS
# (perceptual_metrics: a second consumer of the temporary SR folder; skipped with one log line
# where the backbone weights are not in the torch cache), then one summary with bootstrap 95% CIs.
# Code: workflow_scripts/evaluate.py -> sfsr.inference / sfsr.evaluation / sfsr.metrics /
# sfsr.perceptual_metrics.


rule evaluate:
    input:
        f"{RESULTS}/metrics/summary.csv",
        f"{RESULTS}/metrics/summary.md",


rule upscale:
    input:
        lr=lambda wc: prepared_lr(wc.dataset, wc.scale),
        checkpoint=model_checkpoint,
    output:
        sr_output(f"{RESULTS}/sr/{{model}}/{{dataset}}_x{{scale}}"),
    params:
        splits=lambda wc: upscale_splits(wc.model, wc.dataset),
        tile=config["evaluation"]["tile"],
        tile_overlap=config["evaluation"]["tile_overlap"],
        device=config["evaluation"]["device"],
    log:
        f"{RESULTS}/logs/upscale/{{model}}/{{dataset}}_x{{scale}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/upscale/{{model}}/{{dataset}}_x{{scale}}.tsv"
    resources:
        gpu=lambda wc: 0 if wc.model == "bicubic" else 1,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/evaluate.py"


rule image_metrics:
    input:
        hr=lambda wc: prepared_hr(wc.dataset),
        sr=f"{RESULTS}/sr/{{model}}/{{dataset}}_x{{scale}}",
    output:
        csv=f"{RESULTS}/metrics/{{model}}/{{dataset}}_x{{scale}}.csv",
        examples=directory(f"{RESULTS}/examples/{{model}}/{{dataset}}_x{{scale}}"),
    params:
        splits=lambda wc: evaluation_splits(wc.dataset),
        keep=config["evaluation"]["save_sr"],
        n_examples=config["evaluation"]["n_examples"],
    log:
        f"{RESULTS}/logs/image_metrics/{{model}}/{{dataset}}_x{{scale}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/image_metrics/{{model}}/{{dataset}}_x{{scale}}.tsv"
    conda:
        "../envs/light.yaml"
    script:
        "../workflow_scripts/evaluate.py"


rule perceptual_metrics:
    input:
        hr=lambda wc: prepared_hr(wc.dataset),
        sr=f"{RESULTS}/sr/{{model}}/{{dataset}}_x{{scale}}",
        backbone=lpips_backbone,
    output:
        csv=f"{RESULTS}/metrics/{{model}}/{{dataset}}_x{{scale}}_lpips.csv",
    params:
        splits=lambda wc: evaluation_splits(wc.dataset),
        net=config["evaluation"]["lpips"],
        device=config["evaluation"]["device"],
    log:
        f"{RESULTS}/logs/perceptual_metrics/{{model}}/{{dataset}}_x{{scale}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/perceptual_metrics/{{model}}/{{dataset}}_x{{scale}}.tsv"
    resources:
        gpu=1,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/evaluate.py"


rule summarize:
    input:
        metrics=metric_tables(),
        lpips=lpips_tables(),
    output:
        csv=f"{RESULTS}/metrics/summary.csv",
        md=f"{RESULTS}/metrics/summary.md",
        provenance=f"{RESULTS}/metrics/provenance.json",
    params:
        n_boot=config["evaluation"]["bootstrap"],
        seed=config["seed"],
        config=evaluation_provenance(),
    log:
        f"{RESULTS}/logs/summarize.log",
    conda:
        "../envs/light.yaml"
    script:
        "../workflow_scripts/evaluate.py"


# config key 'seeds': mean, sd and the per-seed values of every model over its training seeds
rule seed_summary:
    input:
        summary=f"{RESULTS}/metrics/summary.csv",
        accuracy=accuracy_tables(),
    output:
        csv=f"{RESULTS}/seeds.csv",
        md=f"{RESULTS}/seeds.md",
    params:
        groups=seed_groups(),
    log:
        f"{RESULTS}/logs/seed_summary.log",
    conda:
        "../envs/light.yaml"
    script:
        "../workflow_scripts/evaluate.py"
