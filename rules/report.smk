# Figures, the study summary table and the Snakemake report. Plot rules read only result tables
# (and, for the visual grids, the generators), so changing a `plots:` setting reruns only them.
#   snakemake --cores all figures && snakemake --report results/report.html
# Code: workflow_scripts/report.py -> sfsr.plots. Each figure's files and report entry come from the
# figure table, sfsr.figures.FIGURES (torch- and matplotlib-free).

from sfsr.figures import figure_file, report_args

report: "../report/workflow.rst"


rule figures:
    input:
        figure_targets(),
        semantic_example_targets(),
        f"{RESULTS}/summary.csv",


rule plot_training:
    input:
        logs=lambda wc: [f"{RESULTS}/models/{m}/{wc.stage}/train_log.csv" for m in stage_models(wc.stage)],
    output:
        png=report(figure_file("training", RESULTS), **report_args("training")),
        pdf=figure_file("training", RESULTS, "pdf"),
    params:
        models=lambda wc: stage_models(wc.stage),
        universe=color_universe(),
        families=families(),
    log:
        f"{RESULTS}/logs/plot_training/{{stage}}.log",
    conda:
        "../envs/light.yaml"
    script:
        "../workflow_scripts/report.py"


rule plot_metrics:
    input:
        f"{RESULTS}/metrics/summary.csv",
    output:
        png=report(figure_file("metrics", RESULTS), **report_args("metrics")),
        pdf=figure_file("metrics", RESULTS, "pdf"),
    params:
        universe=color_universe(),
        families=families(),
    log:
        f"{RESULTS}/logs/plot_metrics/{{metric}}.log",
    conda:
        "../envs/light.yaml"
    script:
        "../workflow_scripts/report.py"


rule plot_accuracy:
    input:
        f"{RESULTS}/classification/{{dataset}}_x{{scale}}/accuracy.csv",
    output:
        accuracy=report(figure_file("accuracy", RESULTS), **report_args("accuracy")),
        accuracy_pdf=figure_file("accuracy", RESULTS, "pdf"),
        tradeoff=report(figure_file("tradeoff", RESULTS), **report_args("tradeoff")),
        tradeoff_pdf=figure_file("tradeoff", RESULTS, "pdf"),
    params:
        universe=color_universe(),
        families=families(),
    log:
        f"{RESULTS}/logs/plot_accuracy/{{dataset}}_x{{scale}}.log",
    conda:
        "../envs/light.yaml"
    script:
        "../workflow_scripts/report.py"


rule plot_visual:
    input:
        metrics=lambda wc: [f"{RESULTS}/metrics/{m}/{wc.dataset}_x{wc.scale}.csv"
                            for m in models_at(int(wc.scale))],
        checkpoints=lambda wc: [evaluated_generators()[m][0] for m in models_at(int(wc.scale))
                                if m != "bicubic"],
        hr=lambda wc: prepared_hr(wc.dataset),
        lr=lambda wc: prepared_lr(wc.dataset, wc.scale),
    output:
        png=report(figure_file("visual", RESULTS), **report_args("visual")),
        pdf=figure_file("visual", RESULTS, "pdf"),
    params:
        models=lambda wc: models_at(int(wc.scale)),
        checkpoints=lambda wc: {m: evaluated_generators()[m][0] for m in models_at(int(wc.scale))
                                if m != "bicubic"},
        crop_size=config["plots"]["crop_size"],
        universe=color_universe(),
        families=families(),
        device=config["evaluation"]["device"],
    log:
        f"{RESULTS}/logs/plot_visual/{{dataset}}_x{{scale}}_{{rank}}.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/report.py"


rule plot_semantic_examples:
    input:
        unpack(semantic_example_inputs),
    output:
        png=report(figure_file("semantic_examples", RESULTS), **report_args("semantic_examples")),
        pdf=figure_file("semantic_examples", RESULTS, "pdf"),
    params:
        model=semantic_example_primary().get("model"),
        against=semantic_example_primary().get("against"),
        judge=analysis_judge(),
        universe=color_universe(),
        families=families(),
    log:
        f"{RESULTS}/logs/plot_semantic_examples/{{dataset}}_x{{scale}}.log",
    conda:
        "../envs/light.yaml"
    script:
        "../workflow_scripts/report.py"


rule summary_table:
    input:
        summary=f"{RESULTS}/metrics/summary.csv",
        accuracy=accuracy_tables(),
        provenance=[f"{RESULTS}/models/{folder}/provenance.json"
                    for folder in generator_stages().values()],
        refsr=[t for t in refsr_targets() if t.endswith(".csv") and "/refsr/" in t],
    output:
        csv=report(f"{RESULTS}/summary.csv", caption="../report/summary_table.rst",
                   category="0. Summary"),
        md=f"{RESULTS}/summary.md",
    params:
        names=lambda wc: generator_stages(),
        families=families(),
    log:
        f"{RESULTS}/logs/summary_table.log",
    conda:
        "../envs/light.yaml"
    script:
        "../workflow_scripts/report.py"
