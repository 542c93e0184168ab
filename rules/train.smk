# SR training stages, one rule each, generated from the stage table (sfsr.training.stages.STAGES):
# PSNR-oriented warm-up, then GAN / semantic / shared-feature fine-tuning and the budget-matched
# controls of the last two, initialised from the warm-up generator (so a new warm-up reruns them);
# the reference-based refsr stage trains refsr_models from scratch. GPU jobs; killed jobs resume
# from state/last.pt.
# Rules: `<stage>` (every model's generator of that stage) and `train_<stage>` (one model).
# Code: workflow_scripts/train.py -> sfsr.training.loop.

for stage, st in STAGES.items():

    rule:
        name: stage
        localrule: True
        input:
            [stage_checkpoint(m, stage) for m in stage_models(stage)],

    rule:
        name: f"train_{stage}"
        input:
            unpack(training_inputs(stage)),
        output:
            generator=f"{RESULTS}/models/{{model}}/{stage}/generator.pt",
            **{key: f"{RESULTS}/models/{{model}}/{stage}/{file}" for key, file in st.outputs.items()},
            log_csv=f"{RESULTS}/models/{{model}}/{stage}/train_log.csv",
            provenance=f"{RESULTS}/models/{{model}}/{stage}/provenance.json",
        params:
            cfg=training_setting(stage),
            seed=lambda wc: MODEL_SEEDS[wc.model][1],  # config key 'seeds' (else 'seed')
        log:
            f"{RESULTS}/logs/train_{stage}/{{model}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/train_{stage}/{{model}}.tsv"
        threads: training_setting(stage, "threads")
        resources:
            gpu=training_setting(stage, "gpus"),
            mem_mb=training_setting(stage, "mem_mb"),
            runtime=training_setting(stage, "runtime"),
        conda:
            "../envs/torch.yaml"
        script:
            "../workflow_scripts/train.py"
