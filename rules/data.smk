# Data stage: download (url sources, checksummed) -> extract -> prepare HR -> MATLAB-exact LR.
# Code: workflow_scripts/data.py -> sfsr.data.download / sfsr.data.prepare.


rule data:
    input:
        data_targets(),


rule download:
    output:
        f"{DATA}/downloads/{{filename}}",
    params:
        entry=download_entry,
        lock=f"{DATA}/downloads/checksums.lock.json",
    log:
        f"{DATA}/logs/download/{{filename}}.log",
    benchmark:
        f"{DATA}/benchmarks/download/{{filename}}.tsv"
    retries: 2
    conda:
        "../envs/light.yaml"
    script:
        "../workflow_scripts/data.py"


rule extract:
    input:
        extract_inputs,
    output:
        directory(f"{DATA}/raw/{{dataset}}"),
    params:
        spec=lambda wc: dataset_spec(wc.dataset),
    log:
        f"{DATA}/logs/extract/{{dataset}}.log",
    benchmark:
        f"{DATA}/benchmarks/extract/{{dataset}}.tsv"
    conda:
        "../envs/light.yaml"
    script:
        "../workflow_scripts/data.py"


rule prepare:
    input:
        source_root,
    output:
        hr=directory(f"{DATA}/prepared/{{dataset}}/HR"),
        manifest=f"{DATA}/prepared/{{dataset}}/manifest.csv",
    params:
        spec=lambda wc: dataset_spec(wc.dataset),
        on_bad_image=config["on_bad_image"],
        min_size=config["min_image_size"],
        max_scale=max(SCALES),
        seed=config["seed"],
    log:
        f"{DATA}/logs/prepare/{{dataset}}.log",
    benchmark:
        f"{DATA}/benchmarks/prepare/{{dataset}}.tsv"
    conda:
        "../envs/light.yaml"
    script:
        "../workflow_scripts/data.py"


rule make_lr:
    input:
        hr=f"{DATA}/prepared/{{dataset}}/HR",
    output:
        directory(f"{DATA}/prepared/{{dataset}}/LR_bicubic/X{{scale}}"),
    log:
        f"{DATA}/logs/make_lr/{{dataset}}_x{{scale}}.log",
    benchmark:
        f"{DATA}/benchmarks/make_lr/{{dataset}}_x{{scale}}.tsv"
    conda:
        "../envs/light.yaml"
    script:
        "../workflow_scripts/data.py"
