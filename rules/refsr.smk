# Reference-based SR evaluation by reference similarity level (docs/refsr.md): every generator of
# refsr_models (stage refsr, and refsr_gan as '<model>_gan' where configured; trained by
# rules/train.smk) and bicubic on every 'refsr' test set, with each reference level, a random
# reference (SSEN) or none (the no-reference control).
# Targets: `refsr` (training, rules/train.smk), `evaluate_refsr` (tables and figures).
# Code: workflow_scripts/refsr.py -> sfsr.refsr.


rule evaluate_refsr:
    localrule: True
    input:
        refsr_targets(),


rule refsr_metrics:
    input:
        unpack(refsr_eval_inputs),
    output:
        f"{RESULTS}/refsr/per_group/{{model}}/{{dataset}}_x{{scale}}.csv",
    params:
        device=config["evaluation"]["device"],
    log:
        f"{RESULTS}/logs/refsr_metrics/{{model}}/{{dataset}}_x{{scale}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/refsr_metrics/{{model}}/{{dataset}}_x{{scale}}.tsv"
    resources:
        gpu=lambda wc: 0 if wc.model == "bicubic" else 1,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/refsr.py"


rule refsr_summary:
    input:
        tables=lambda wc: [f"{RESULTS}/refsr/per_group/{m}/{wc.dataset}_x{wc.scale}.csv"
                           for m in refsr_eval_models(int(wc.scale))],
    output:
        csv=f"{RESULTS}/refsr/{{dataset}}_x{{scale}}.csv",
        md=f"{RESULTS}/refsr/{{dataset}}_x{{scale}}.md",
        paired=f"{RESULTS}/refsr/{{dataset}}_x{{scale}}_vs_control.csv",
        png=report(f"{RESULTS}/figures/refsr_{{dataset}}_x{{scale}}.png", caption="../report/refsr.rst",
                   category="Reference-based SR"),
    params:
        pairing=refsr_pairing(),  # each run against the controls of its own stage
    log:
        f"{RESULTS}/logs/refsr_summary/{{dataset}}_x{{scale}}.log",
    conda:
        "../envs/light.yaml"
    script:
        "../workflow_scripts/refsr.py"
