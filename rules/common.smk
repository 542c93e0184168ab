# Wiring helpers shared by all rules: paths and target lists. No pipeline logic lives here.

DATA = config["data_dir"]
RESULTS = os.path.join(config["results_dir"], config["experiment"])
DATASETS = config["datasets"]
SCALES = config["scales"]
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


from sfsr.metrics import METRICS  # torch-free: the metric names (wildcard below)

wildcard_constraints:
    dataset=r"[A-Za-z0-9_]+",
    scale=r"\d+",
    filename=r"[^/]+",
    model=r"[A-Za-z0-9_]+",
    input=r"[A-Za-z0-9_]+",
    judge=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    stage="|".join(STAGES),
    metric="|".join(METRICS),
    rank=r"\d+",


DESCRIPTIVE_KEYS = ("description", "homepage", "citation")


def dataset_spec(name):
    """A dataset's settings without its descriptive text, so rewording a description reruns
    nothing (rule params are compared by Snakemake)."""
    return {k: v for k, v in DATASETS[name].items() if k not in DESCRIPTIVE_KEYS}


def used_datasets():
    """Datasets named by any stage, in config order, without repeats."""
    names = []
    for key in sfsr.config.DATASET_LISTS:
        names += [n for n in config[key] if n not in names]
    return names


file_name = sfsr.config.download_file_name


def download_entry(wildcards):
    """Downloads are stored by file name, so datasets sharing an archive (Set5/Set14/B100/Urban100
    in benchmark.tar) fetch it once; sfsr.config.check_references rejects clashing names."""
    for spec in DATASETS.values():
        for entry in spec["files"]:
            if file_name(entry) == wildcards.filename:
                return entry
    raise ValueError(f"no dataset lists a file named {wildcards.filename!r}")


def is_local_archive(spec):
    return spec["source"] == "local" and spec["path"].lower().endswith(ARCHIVE_SUFFIXES)


def extract_inputs(wildcards):
    spec = DATASETS[wildcards.dataset]
    if spec["source"] == "url":
        return [f"{DATA}/downloads/{file_name(e)}" for e in spec["files"]]
    if is_local_archive(spec):
        return [spec["path"]]
    raise ValueError(f"dataset {wildcards.dataset!r} (source {spec['source']}) has nothing to extract")


def source_root(wildcards):
    """Folder the prepare step reads: extracted archive, local folder in place, or none (builtin)."""
    spec = DATASETS[wildcards.dataset]
    if spec["source"] == "builtin":
        return []
    if spec["source"] == "local" and not is_local_archive(spec):
        return spec["path"]
    return f"{DATA}/raw/{wildcards.dataset}"


def prepared_hr(dataset):
    return f"{DATA}/prepared/{dataset}/HR"


def prepared_lr(dataset, scale):
    return f"{DATA}/prepared/{dataset}/LR_bicubic/X{scale}"


def data_targets():
    """Every used dataset prepared, and its LR images at every scale, but for the sets used only for
    reference-based SR (their LR is made with the HR patches and at evaluation)."""
    single_image = {n for key in ("train", "valid", "test", "classification") for n in config[key]}
    targets = []
    for name in used_datasets():
        targets.append(f"{DATA}/prepared/{name}/manifest.csv")
        if name in single_image:
            targets += [prepared_lr(name, s) for s in SCALES]
    return targets


# ---------------------------------------------------------------- evaluation wiring
# ---------------------------------------------------------------- training wiring
MODELS = list(config["sr_models"])


def stage_settings(model, stage):
    """Flat settings of one model's stage (training defaults < training < models.<m>.<stage>)."""
    return stage_config(config, model, stage)


def stage_checkpoint(model, stage):
    return f"{RESULTS}/models/{model}/{stage}/generator.pt"


def stage_models(stage):
    """Models that train this stage: of the stage's model list (sr_models, or refsr_models for the
    reference-based stage), every model the stages without init, the optional stages only where
    models.<m>.<stage> is not null; a control stage: the models of the stage it controls (when the
    config key 'controls' is on)."""
    st = STAGES[stage]
    if st.control_of is not None:  # budget-matched controls of the models that train the stage
        return stage_models(st.control_of) if config["controls"] else []
    return [m for m in config[st.models] if config["models"][m].get(stage, {}) is not None]


def perceptual_classifier(model, stage):
    """{'classifier': checkpoint} when the stage needs the pipeline's classifier (its own, or as the
    perceptual loss's feature network: the offline default, no ImageNet VGG19 needed), else {}."""
    if needs_classifier(stage, stage_settings(model, stage)):
        return {"classifier": classifier_checkpoint(semantic_dataset())}
    return {}


def semantic_dataset():
    """The classification set the semantic and shared stages train on (and whose classifier is
    the perceptual feature network where perceptual.net is 'classifier'): the first of
    'classification' (sfsr.config checks there is one when a model needs it)."""
    return config["classification"][0]


def train_inputs(wildcards):
    """HR folders of the training sets, plus their LR folders when patches come from them."""
    settings = stage_settings(wildcards.model, "warmup")
    inputs = [prepared_hr(d) for d in config["train"]]
    if settings["lr_source"] == "prepared":
        inputs += [prepared_lr(d, settings["scale"]) for d in config["train"]]
    return inputs


def training_inputs(stage):
    """Input function of the train_<stage> jobs, from the stage table (sfsr.training.stages): the
    training and validation folders, the generator it starts from, the frozen classifier."""
    st = STAGES[stage]

    def inputs(wildcards):
        out = {}
        if st.data == "classification":  # the classification set (its train/val splits)
            out |= {"train": [prepared_hr(semantic_dataset())], "valid": [prepared_hr(semantic_dataset())]}
        elif st.data == "refsr":  # reference groups: targets with their references
            out |= {"train": [prepared_hr(d) for d in config["refsr_train"]],
                    "valid": [prepared_hr(d) for d in config["refsr_valid"]]}
        else:
            out |= {"train": train_inputs(wildcards), "valid": [prepared_hr(d) for d in config["valid"]]}
        if st.init is not None:
            out["init"] = stage_checkpoint(wildcards.model, st.init)
        out |= perceptual_classifier(wildcards.model, stage)  # the frozen classifier, where needed
        if st.data == "classification" and config["analysis"].get("gate"):  # go only past the gate
            out["gate"] = gate_file(semantic_dataset(), config["models"][wildcards.model]["scale"],
                                    MODEL_SEEDS[wildcards.model][0])
        return out

    return inputs


def training_setting(stage, key=None):
    """Param/resource function: a model's settings of a stage, or one of them (threads, gpus, ...)."""
    if key is None:
        return lambda wildcards: stage_settings(wildcards.model, stage)
    return lambda wildcards: stage_settings(wildcards.model, stage)[key]


def trained_generators():
    """Evaluation name -> (stage, model) of every generator the study trains, in model then stage
    order; names from the stage table (warmup '<model>', gan '<model>_<loss preset>', ...)."""
    return {evaluation_name(stage, m, stage_settings(m, stage)): (stage, m)
            for m in MODELS for stage in STAGES if m in stage_models(stage) and STAGES[stage].models == "sr_models"}


def seed_groups():
    """Evaluation name -> [name of the same generator trained with the first seed, its seed], for
    the seed_summary of config key 'seeds'."""
    out = {}
    for name, (stage, m) in trained_generators().items():
        base, seed = MODEL_SEEDS[m]
        out[name] = [evaluation_name(stage, base, stage_settings(base, stage)), seed]
    return out


def evaluated_generators():
    """Evaluation name -> (checkpoint, scale) of every trained generator."""
    return {name: (stage_checkpoint(m, stage), config["models"][m]["scale"])
            for name, (stage, m) in trained_generators().items()}


def lr_heads():
    """LR classification heads (stages with an LR head): input name -> (generator, head, scale)."""
    return {f"{m}_lr_head": (stage_checkpoint(m, stage), f"{RESULTS}/models/{m}/{stage}/{st.outputs['head']}",
                             config["models"][m]["scale"])
            for stage, st in STAGES.items() if st.lr_head for m in stage_models(stage)}


def families():
    """Figure family of every name a figure can show: hr, bicubic, lr_head (the LR heads and the LR
    classification baseline) and each trained generator's stage family (from the stage table, never
    guessed from the name)."""
    out = {"hr": "hr", "bicubic": "bicubic"}
    out |= {name: STAGES[stage].family for name, (stage, _) in trained_generators().items()}
    out |= {refsr_row_name(name, i): STAGES[stage].family for name, (stage, _) in refsr_generators().items()
            for i in ("none", "random", *[f"ref{k}" for k in range(1, 10)])}
    return out | {name: "lr_head" for name in [*lr_heads(), LR_CLASSIFIER]}


def refsr_row_name(model, run):
    """Name of a RefSR evaluation row in the study summary (sfsr.refsr.row_name, repeated here so the
    workflow parse stays free of pandas): '<model> @ ref<k>' / '@ random', or the model itself."""
    return model if run in ("none", "bicubic") else f"{model} @ {run}"


def eval_models():
    """Bicubic always, then every trained generator."""
    return ["bicubic"] + list(evaluated_generators())


def model_checkpoint(wildcards):
    """Generator checkpoint a model is evaluated from ([] for bicubic)."""
    if wildcards.model == "bicubic":
        return []
    return evaluated_generators()[wildcards.model][0]


def sr_output(path):
    """SR images are kept when evaluation.save_sr is 'all'; otherwise they are temporary and the
    image_metrics rule keeps n_examples of them under examples/."""
    return directory(path) if config["evaluation"]["save_sr"] == "all" else temp(directory(path))


def evaluation_provenance():
    """The settings the evaluation results depend on (recorded next to them). Plot settings are
    not among them, so changing a plot setting reruns only the plots."""
    keys = ("experiment", "seed", "scales", "test", "classification", "evaluation", "sr_models")
    return {k: config[k] for k in keys} | {"datasets": {d: dataset_spec(d) for d in used_datasets()}}


EVALUATION_SPLITS = ["val", "test"]  # a classification set's images that SR outputs are made of


def evaluation_splits(dataset):
    """The splits whose images are upscaled and measured: a classification set's val and test
    splits (never the images models and classifiers trained on); every image of other sets (None)."""
    return EVALUATION_SPLITS if dataset in config["classification"] else None


def upscale_splits(model, dataset):
    """As evaluation_splits, but bicubic upscales every image: the LR classification baseline
    fine-tunes on the bicubic images of the training split."""
    return None if model == "bicubic" else evaluation_splits(dataset)


def metric_tables():
    """Bicubic at every scale; a trained generator at its own scale."""
    gens = evaluated_generators()
    sets = config["test"] + [d for d in config["classification"] if d not in config["test"]]
    return [f"{RESULTS}/metrics/{m}/{d}_x{s}.csv" for m in eval_models() for d in sets
            for s in SCALES if m == "bicubic" or gens[m][1] == s]


def lpips_tables():
    """The per-image LPIPS table beside every per-image metric table; none when evaluation.lpips
    is null."""
    if config["evaluation"]["lpips"] is None:
        return []
    return [path[:-len(".csv")] + "_lpips.csv" for path in metric_tables()]


def lpips_backbone(wildcards):
    """The LPIPS backbone weights file in the torch hub cache, as an input where it exists (so
    placing it there later reruns the skipped perceptual_metrics jobs); [] where it does not."""
    if config["evaluation"]["lpips"] is None:
        return []
    path = sfsr.config.lpips_backbone_path(config["evaluation"]["lpips"])
    return [str(path)] if path.is_file() else []


# ---------------------------------------------------------------- classification wiring
def classifier_checkpoint(dataset):
    return f"{RESULTS}/classifier/{dataset}/classifier.pt"


# Judges of the classification evaluation: 'prior' (the classifier above, also the semantic prior)
# and the independent ones of config key 'judges' (sfsr.config.judge_settings).
JUDGES = sfsr.config.judge_settings(config)


def judge_checkpoint(dataset, judge):
    if judge == "prior":
        return classifier_checkpoint(dataset)
    return f"{RESULTS}/classifier/{dataset}/judges/{judge}/classifier.pt"


LR_CLASSIFIER = "lr_classifier"  # the accuracy table's name of the LR classification baseline


def lr_classifier_checkpoint(dataset, scale):
    """The classifier fine-tuned on the set's bicubic-upscaled LR images (config key lr_classifier)."""
    return f"{RESULTS}/classifier/{dataset}/lr_x{scale}/classifier.pt"


def classify_classifier(wildcards):
    """The classifier a classify job runs: the prior, or the LR baseline on the bicubic images."""
    if wildcards.input == LR_CLASSIFIER:
        return lr_classifier_checkpoint(wildcards.dataset, wildcards.scale)
    return classifier_checkpoint(wildcards.dataset)


def accuracy_record(dataset, scale, judge, name):
    """The classify output of one input as judged by one judge."""
    folder = f"{RESULTS}/classification/{dataset}_x{scale}"
    return f"{folder}/{name}.json" if judge == "prior" else f"{folder}/judges/{judge}/{name}.json"


def models_at(scale):
    """Evaluated models at one scale: bicubic, then the trained generators of that scale."""
    return ["bicubic"] + [m for m, (_, s) in evaluated_generators().items() if s == scale]


def classify_images(wildcards):
    """Folder of images the classifier sees: HR, the SR output of a model (bicubic included), or
    the LR images themselves for an LR head."""
    if wildcards.input == "hr":
        return prepared_hr(wildcards.dataset)
    if wildcards.input in lr_heads():
        return prepared_lr(wildcards.dataset, wildcards.scale)
    if wildcards.input == LR_CLASSIFIER:
        return f"{RESULTS}/sr/bicubic/{wildcards.dataset}_x{wildcards.scale}"
    return f"{RESULTS}/sr/{wildcards.input}/{wildcards.dataset}_x{wildcards.scale}"


def lr_head_inputs(wildcards):
    if wildcards.input not in lr_heads():
        return {}
    generator, head, _ = lr_heads()[wildcards.input]
    return {"generator": generator, "head": head}


def classification_inputs(dataset, scale):
    """Every judge's verdict on HR, bicubic and each model; the LR heads and the LR baseline are
    classifiers of their own (reported once, under the prior whose classes they predict)."""
    heads = [h for h, (_, _, s) in lr_heads().items() if s == scale]
    heads += [LR_CLASSIFIER] if config["lr_classifier"]["enabled"] else []
    return [accuracy_record(dataset, scale, judge, name) for judge in JUDGES
            for name in ["hr"] + models_at(scale) + (heads if judge == "prior" else [])]


def gate_file(dataset, scale, model):
    """The go / no-go decision of config key analysis.gate for a model's first-seed warm-up."""
    return f"{RESULTS}/gate/{dataset}_x{scale}/{model}.json"


def analysis_judge():
    """The judge of the pre-registered primary comparison (config keys analysis.primary.judge,
    primary_judge), resolved by sfsr.config.primary_judge."""
    return sfsr.config.primary_judge(config)


def accuracy_tables():
    return [f"{RESULTS}/classification/{d}_x{s}/accuracy.csv"
            for d in config["classification"] for s in SCALES]


# ---------------------------------------------------------------- figures / report wiring
def color_universe():
    """Every name a figure can show, so each model keeps its colour across all figures."""
    return ["hr", "bicubic"] + list(evaluated_generators()) + list(lr_heads()) + [LR_CLASSIFIER]


def generator_stages():
    """Evaluation name -> '<model>/<stage>', the folder of its training outputs under models/."""
    models_dir = os.path.join(RESULTS, "models")
    return {name: os.path.relpath(os.path.dirname(path), models_dir)
            for name, (path, _) in evaluated_generators().items()}


def visual_scales():
    trained = sorted({s for _, s in evaluated_generators().values()})
    return trained or SCALES


def figure_targets():
    out = [f"{RESULTS}/figures/training_{st}.png" for st in STAGES if stage_models(st)]
    out += [f"{RESULTS}/figures/metrics_{m}.png" for m in config["plots"]["metrics"]]
    out += [f"{RESULTS}/figures/accuracy_{d}_x{s}.png" for d in config["classification"] for s in SCALES]
    out += [f"{RESULTS}/figures/visual_{d}_x{s}_{r}.png" for d in config["test"]
            for s in visual_scales() for r in range(1, config["plots"]["visual_images"] + 1)]
    return out


# ---------------------------------------------------------------- reference-based SR wiring
def refsr_generators():
    """Evaluation name -> (stage, model) of every generator the reference-based stages train (refsr:
    '<model>'; refsr_gan: '<model>_gan'), in stage then model order; names from the stage table."""
    return {evaluation_name(stage, m, stage_settings(m, stage)): (stage, m)
            for stage, st in STAGES.items() if st.models == "refsr_models" for m in stage_models(stage)}


def refsr_eval_models(scale):
    """Bicubic and every reference-based generator at ``scale`` (refsr_generators), evaluated on the
    refsr test sets."""
    names = [n for n, (_, m) in refsr_generators().items() if config["models"][m]["scale"] == scale]
    return ["bicubic", *names] if names else []


def refsr_eval_inputs(wildcards):
    """The test set's HR folder and, but for bicubic, the generator of that evaluation name."""
    out = {"hr": prepared_hr(wildcards.dataset)}
    if wildcards.model != "bicubic":
        stage, model = refsr_generators()[wildcards.model]
        out["checkpoint"] = stage_checkpoint(model, stage)
    return out


def refsr_pairing():
    """Evaluation name -> the stage that trained it: sfsr.refsr.paired_against_controls pairs each
    reference-based run with the no-reference controls of the same stage (SSEN with the control,
    the GAN SSEN with the GAN control)."""
    return {name: stage for name, (stage, _) in refsr_generators().items()}


def refsr_targets():
    """Summary table, markdown and figure of every refsr test set at every scale of refsr_models,
    and the learning curves of the reference-based stages."""
    scales = sorted({config["models"][m]["scale"] for m in stage_models("refsr")})
    curves = [f"{RESULTS}/figures/training_{stage}.png" for stage, st in STAGES.items()
              if st.models == "refsr_models" and stage_models(stage)] if scales else []
    return curves + [f"{RESULTS}/{kind}" for d in config["refsr"] for s in scales
                     for kind in (f"refsr/{d}_x{s}.csv", f"refsr/{d}_x{s}.md", f"figures/refsr_{d}_x{s}.png")]


# ---- semantic examples figure
def semantic_example_primary():
    """Config key analysis.primary (the pre-registered comparison: model, against, judge), or {}."""
    return config["analysis"].get("primary") or {}


def semantic_example_targets():
    """The figure of test images the prior fixed / broke, per classification set at the primary
    model's scale; none without an analysis.primary entry."""
    primary = semantic_example_primary()
    if not primary:
        return []
    gens = evaluated_generators()
    scales = [gens[m][1] for m in (primary["model"], primary["against"]) if m in gens][:1] or SCALES
    return [f"{RESULTS}/figures/semantic_examples_{d}_x{s}.png" for d in config["classification"] for s in scales]


def semantic_example_inputs(wildcards):
    """Records of HR, bicubic, the primary model and its reference under the judge; their images."""
    primary, judge = semantic_example_primary(), analysis_judge()
    d, s = wildcards.dataset, wildcards.scale
    out = {"manifest": f"{DATA}/prepared/{d}/manifest.csv", "hr": prepared_hr(d)}
    for key, name in (("record_hr", "hr"), ("record_bicubic", "bicubic"),
                      ("record_against", primary["against"]), ("record_model", primary["model"])):
        out[key] = accuracy_record(d, s, judge, name)
    for key, name in (("sr_bicubic", "bicubic"), ("sr_against", primary["against"]),
                      ("sr_model", primary["model"])):
        out[key] = prepared_hr(d) if name == "hr" else f"{RESULTS}/sr/{name}/{d}_x{s}"  # as classify reads
    return out
