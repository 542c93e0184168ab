"""Loading and checking the study configuration.

``config.yaml`` is validated against ``config.schema.yaml`` (JSON Schema; shipped inside the package,
read through :func:`sfsr.schema.load`): first by
:func:`check_schema`, which turns the most relevant schema violation into one sentence naming the key
and its location, then :func:`fill_defaults` fills in every default as ``snakemake.utils.validate``
would. After
that :func:`check_paths` makes sure the folders the workflow writes into can be folders,
:func:`check_references` verifies what a schema cannot express (a dataset referenced by a split
must be defined, builtin photo names must exist, generator options, ...) and :func:`check_training`
resolves every trained stage's settings as its job will (values, discriminator options, batch_size
against gpus, reference_levels against the training sets). All of it happens when the Snakefile is
parsed, so a bad config fails before any job runs or anything is written.
"""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import yaml

from sfsr import schema as _schema
from sfsr.data.catalogue import with_catalogue
from sfsr.errors import ConfigError
from sfsr.training.stages import STAGES, needs_classifier

#: Top-level keys that list dataset names.
DATASET_LISTS = ("train", "valid", "test", "classification", "refsr", "refsr_train", "refsr_valid")


#: The torchvision weights file the LPIPS backbone of each evaluation.lpips value loads from the
#: torch hub cache (lpips 0.1.4 builds ``tv.alexnet/vgg16(pretrained=True)``: IMAGENET1K_V1).
#: Here without torch, for the workflow's parse; tests/test_lpips.py checks them against torchvision.
LPIPS_BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}


def lpips_backbone_path(net: str) -> Path:
    """Where torch's hub cache keeps the LPIPS backbone ``net``, computed as ``torch.hub.get_dir()``
    does (``$TORCH_HOME``, else ``$XDG_CACHE_HOME/torch``, else ``~/.cache/torch``; then
    ``hub/checkpoints``) but without importing torch."""
    import os

    home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints" / LPIPS_BACKBONE_FILES[net]


def _location(path) -> str:
    parts = [str(p) if not isinstance(p, int) else f"[{p}]" for p in path]
    out = ""
    for part in parts:
        out += part if part.startswith("[") or not out else f".{part}"
    return out or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    where = _location(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        names = ", ".join(repr(k) for k in extra) or error.message
        hint = f" Allowed keys here: {', '.join(allowed)}." if allowed else ""
        return f"unknown key {names} at '{where}'.{hint}"
    if error.validator == "required":
        return f"missing key at '{where}': {error.message}."
    if error.validator == "enum":
        return f"'{where}' is {error.instance!r}; allowed values: {error.validator_value}."
    if error.validator == "minLength" and error.instance == "":
        default = error.schema.get("default")
        example = f", e.g. its default {default!r}" if isinstance(default, str) and default else ""
        return f"'{where}' is empty (''); give a path{example}."
    if error.validator == "type":
        return (f"'{where}' must be of type {error.validator_value}, "
                f"got {type(error.instance).__name__} {error.instance!r}.")
    return f"'{where}': {error.message}."


def load_schema(path: str | Path | None = None) -> dict:
    """The schema at ``path`` (default: the package's own); :class:`ConfigError` if it cannot be read."""
    return _schema.load(path)


def check_schema(config: dict, schema: dict, source: str = "config") -> None:
    """Raise :class:`ConfigError` naming the key and location of the first violation."""
    validator = jsonschema.Draft202012Validator(schema)
    errors = list(validator.iter_errors(config))
    if not errors:
        return
    best = jsonschema.exceptions.best_match(errors)
    # best_match prefers shallow errors; the deepest one names the offending key most precisely.
    deepest = max(errors, key=lambda e: len(e.absolute_path))
    chosen = deepest if len(deepest.absolute_path) > len(best.absolute_path) else best
    if chosen.context:  # an allOf/if-then failure: report the concrete sub-error
        chosen = max(chosen.context, key=lambda e: len(e.absolute_path))
    more = f" ({len(errors) - 1} more problem(s) after fixing this one may be reported)" if len(errors) > 1 else ""
    raise ConfigError(f"{source}: {_describe(chosen)}{more} See config.schema.yaml for every key, "
                      "its type, default and description.")


def download_file_name(entry: dict) -> str:
    """Name a url file is saved under: ``filename`` or the last part of the URL path."""
    return entry.get("filename") or entry["url"].split("?")[0].rstrip("/").split("/")[-1]


def check_references(config: dict) -> None:
    """Cross-checks the schema cannot express; raise :class:`ConfigError` naming the key."""
    from sfsr.data.layouts import layouts_where  # torch-free, like sources
    from sfsr.data.sources import BUILTIN_IMAGES

    builtin_only, on_builtin = layouts_where(sources="builtin"), layouts_where(sources=("any", "builtin"))
    class_layouts = layouts_where(kind="classes")

    datasets = config.get("datasets", {})
    defined = ", ".join(sorted(datasets)) or "none"
    for key in DATASET_LISTS:
        for i, name in enumerate(config.get(key, [])):
            if name not in datasets:
                raise ConfigError(f"config key '{key}[{i}]' names dataset {name!r}, which is not "
                                  f"defined under 'datasets' (defined: {defined}). Add it to "
                                  "'datasets' or fix the name.")
    for name, spec in datasets.items():
        if spec["source"] == "builtin":
            unknown = [img for img in spec.get("images", []) if img not in BUILTIN_IMAGES]
            if unknown:
                raise ConfigError(f"config key 'datasets.{name}.images' has unknown builtin photo(s) "
                                  f"{unknown}; available: {', '.join(sorted(BUILTIN_IMAGES))}.")
            if spec.get("layout", "flat") not in on_builtin:
                raise ConfigError(f"config key 'datasets.{name}.layout' is {spec['layout']!r}, but a "
                                  f"builtin source only supports {_either(repr(n) for n in on_builtin)}.")
        elif spec.get("layout") in builtin_only:
            raise ConfigError(f"config key 'datasets.{name}.layout' is {spec['layout']!r}, which "
                              "needs 'source: builtin'.")
    seen: dict[str, tuple[str, dict]] = {}
    for name, spec in datasets.items():
        for i, entry in enumerate(spec.get("files", [])):
            fname = download_file_name(entry)
            if not fname or "/" in fname or fname.startswith("."):
                raise ConfigError(f"config key 'datasets.{name}.files[{i}]': cannot derive a file "
                                  f"name from url {entry['url']!r}; set 'filename'.")
            if fname in seen and (seen[fname][1]["url"], seen[fname][1].get("sha256"),
                                  seen[fname][1].get("md5")) != (entry["url"], entry.get("sha256"),
                                                                 entry.get("md5")):
                raise ConfigError(f"config key 'datasets.{name}.files[{i}]' saves as {fname!r}, "
                                  f"like datasets.{seen[fname][0]} but with another url or "
                                  "checksum; downloads are shared by file name, so set a distinct "
                                  "'filename'.")
            seen.setdefault(fname, (name, entry))
    for name in config.get("classification", []):
        layout = datasets[name].get("layout", "flat")
        if layout not in class_layouts:
            raise ConfigError(f"config key 'classification' names dataset {name!r} whose layout is {layout!r}; "
                              f"classification sets need {_either(class_layouts)}.")
    models = config.get("models", {})
    from sfsr.model_options import REFERENCE_GENERATORS, generator_kwargs  # torch-free
    for key in ("sr_models", "refsr_models"):
        for i, name in enumerate(config.get(key, [])):
            if name not in models:
                raise ConfigError(f"config key '{key}[{i}]' names model {name!r}, which is not defined "
                                  f"under 'models' (defined: {', '.join(sorted(models)) or 'none'}).")
            if (models[name]["arch"] in REFERENCE_GENERATORS) != (key == "refsr_models"):
                raise ConfigError(f"config key '{key}[{i}]' names model {name!r} (arch "
                                  f"{models[name]['arch']!r}); reference-based generators "
                                  f"({', '.join(REFERENCE_GENERATORS)}) go under 'refsr_models', the others "
                                  "under 'sr_models'.")
    if config.get("refsr_models"):
        for key in ("refsr_train", "refsr_valid", "refsr"):
            if not config.get(key):
                raise ConfigError(f"config key 'refsr_models' lists models but '{key}' is empty; list the "
                                  "reference-based SR training, validation and test sets (e.g. "
                                  "builtin_refgroups_train / _valid / _test).")
    for name in [*config.get("sr_models", []), *config.get("refsr_models", [])] if not config.get("classification") else []:
        stages = [stage for stage in _trained_stages(config, name) if _needs_classifier(config, name, stage)]
        stages.sort(key=lambda stage: not STAGES[stage].classifier)  # name a stage built on it first
        if stages:
            section = STAGES[stages[0]].control_of or stages[0]
            raise ConfigError(f"config key 'models.{name}.{section}' needs a classification set "
                              "(the frozen classifier and its training images): list one under "
                              f"'classification', or set models.{name}.{section}: null.")
    for name in [*config.get("sr_models", []), *config.get("refsr_models", [])]:  # selected ones only
        model = models[name]
        if model["scale"] not in config.get("scales", []):
            raise ConfigError(f"config key 'models.{name}.scale' is {model['scale']}, which is not in "
                              f"'scales' {config.get('scales')}; add it there (LR images and the "
                              "evaluation are built for those scales).")
    for name in [*config.get("sr_models", []), *config.get("refsr_models", [])]:
        model = models[name]
        try:
            generator_kwargs(model["arch"], model["scale"], dict(model.get("kwargs") or {}))
        except ValueError as exc:
            option = getattr(exc, "option", None)  # one option's value at fault: name it
            raise ConfigError(f"config key 'models.{name}.kwargs{'.' + option if option else ''}': {exc}.") from None
    used = {n for key in DATASET_LISTS for n in config.get(key, [])}
    for name in sorted(used):
        spec = datasets[name]
        if spec.get("layout") == "builtin_classes":
            for key in ("hr_size", "samples_per_class"):
                value = spec.get(key)
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ConfigError(f"config key 'datasets.{name}.{key}' must be a positive integer for "
                                      f"layout 'builtin_classes' (the crops cut from each photo), got "
                                      f"{value!r}; e.g. hr_size: 64, samples_per_class: 14.")
    judge_settings(config)  # unique names
    split = config.get("semantic_train_split")
    if split not in (None, "train", "sr_train"):
        raise ConfigError(f"config key 'semantic_train_split' is {split!r}; use sr_train (images the classifier "
                          "never trained on, with datasets.<set>.split.carve_sr_from), train or null. val and "
                          "test would train the semantic and shared stages on images their model selection or "
                          "evaluation uses.")
    for name in config.get("classification", [])[:1] if split == "sr_train" else []:  # their training set
        if datasets[name].get("split", {}).get("carve_sr_from") is None:
            raise ConfigError(f"config key 'semantic_train_split' is 'sr_train' but datasets.{name}.split."
                              "carve_sr_from is null, so that set has no sr_train split; set "
                              f"datasets.{name}.split.carve_sr_from: train (or val).")
    ranked = layouts_where(kind="refgroups")  # reference levels: testable per level
    for key, layouts in (("refsr", ranked), ("refsr_valid", ranked + layouts_where(kind="refpairs")),
                         ("refsr_train", ranked + layouts_where(kind="refpairs"))):
        for name in config.get(key, []):
            if datasets[name].get("layout") not in layouts:
                raise ConfigError(f"config key '{key}' names dataset {name!r}, whose layout is "
                                  f"{datasets[name].get('layout', 'flat')!r}; it needs one of "
                                  f"{', '.join(layouts)}.")


def _either(names) -> str:
    """'a, b or c'."""
    names = list(names)
    return " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


JUDGE_KEYS = ("arch", "weights", "epochs", "lr")  # what a judge may set differently from 'classifier'


def judge_settings(config: dict) -> dict[str, dict]:
    """The classifiers whose accuracy the evaluation reports, by judge name: ``prior`` (the
    ``classifier`` section, the semantic stage's prior) and every entry of ``judges`` (the same
    section with the judge's ``arch``/``weights``/``epochs``/``lr``, trained with its own seed).
    Each value: ``{"cfg": classifier settings, "seed": int}``."""
    base = dict(config.get("classifier", {}))
    seed = int(config.get("seed", 0))
    out = {"prior": {"cfg": base, "seed": seed}}
    for i, judge in enumerate(config.get("judges") or []):
        name = judge["name"]
        if name in out:
            raise ConfigError(f"config key 'judges[{i}].name' is {name!r}, which "
                              + ("is reserved for the prior" if name == "prior" else "another judge has")
                              + "; give every judge its own name.")
        cfg = {**base, **{k: judge[k] for k in JUDGE_KEYS if k in judge}}
        out[name] = {"cfg": cfg, "seed": int(judge.get("seed", seed + 1 + i))}
    return out


def lr_classifier_settings(config: dict) -> dict:
    """Settings of the LR classification baseline's fine-tuning: the ``classifier`` section with the
    ``lr_classifier`` section's epochs (null: the same) and lr (null: a tenth), from the classifier's
    weights (so ``weights`` is unused)."""
    base = dict(config.get("classifier", {}))
    over = config.get("lr_classifier") or {}
    epochs = over.get("epochs") or base.get("epochs")
    lr = over.get("lr") or (base["lr"] / 10 if "lr" in base else None)
    return {**base, "weights": None, **({"epochs": epochs} if epochs else {}), **({"lr": lr} if lr else {})}


def expand_seeds(config: dict) -> dict[str, tuple[str, int]]:
    """Apply ``seeds`` (after :func:`validate`): every ``sr_models`` entry is copied as
    ``<name>_seed<s>`` for each seed after the first (added to ``models`` and ``sr_models``, in
    place). Returns ``{model: (base model, training seed)}`` for every model: the first of ``seeds``
    for the originals (``seed`` without ``seeds``), ``s`` for the copies."""
    seeds = [int(s) for s in config.get("seeds") or []]
    first = seeds[0] if seeds else int(config.get("seed", 0))
    out = {name: (name, first) for name in config.get("models", {})}
    for name in list(config.get("sr_models", [])):
        for s in seeds[1:]:
            twin = f"{name}_seed{s}"
            if twin in config["models"]:
                raise ConfigError(f"config key 'seeds' makes the model {twin!r} (a copy of {name!r} trained "
                                  f"with seed {s}), but 'models' already has one of that name; rename it.")
            config["models"][twin] = copy.deepcopy(config["models"][name])
            config["sr_models"].append(twin)
            out[twin] = (name, s)
    return out


def fill_defaults(config: dict, schema: dict) -> dict:
    """Set the schema's defaults in ``config`` in place, as ``snakemake.utils.validate(...,
    set_default=True)`` does (the jsonschema FAQ's validator: every object the validation visits gets
    the ``default`` of each property it lacks; a default behind a ``$ref`` is not set), but from the
    schema as :func:`sfsr.schema.load` generates it rather than from a file."""
    base = jsonschema.Draft202012Validator
    properties = base.VALIDATORS["properties"]

    def set_defaults(validator, props, instance, subschema):
        if isinstance(instance, dict):
            for key, prop in props.items():
                if "default" in prop:
                    instance.setdefault(key, copy.deepcopy(prop["default"]))
        yield from properties(validator, props, instance, subschema)

    filler = jsonschema.validators.extend(base, {"properties": set_defaults})
    filler(schema).validate(config)
    return config


def validate(config: dict, schema_path: str | Path | None = None, source: str = "config") -> dict:
    """Validate ``config`` in place (defaults filled as snakemake.utils.validate fills them) and
    return it (``schema_path``: default the package's own schema)."""
    schema = _schema.own() if schema_path is None else load_schema(schema_path)  # own: read once, shared
    config["datasets"] = with_catalogue(config.get("datasets"))  # the package's catalogue + this config's
    check_schema(config, schema, source)
    fill_defaults(config, schema)
    # defaults are filled in the objects the validation visits; nested $ref'd objects inside
    # additionalProperties that were absent (e.g. datasets.X.split) get theirs here.
    split_defaults = _schema.defaults("#/$defs/split", schema)
    for spec in config.get("datasets", {}).values():
        split = spec.setdefault("split", {})
        for key, value in split_defaults.items():
            split.setdefault(key, copy.deepcopy(value))
    check_paths(config)
    check_references(config)
    check_training(config)
    check_analysis(config)
    return config


def primary_judge(config: dict) -> str:
    """The judge of the pre-registered primary comparison and of the study summary: ``analysis.primary
    .judge``, else ``primary_judge``, else the first independent judge by name, else ``prior``."""
    primary = (config.get("analysis") or {}).get("primary") or {}
    if primary.get("judge"):
        return str(primary["judge"])
    if config.get("primary_judge"):
        return str(config["primary_judge"])
    names = sorted(j["name"] for j in config.get("judges") or [])
    return names[0] if names else "prior"


def check_analysis(config: dict) -> None:
    """``primary_judge`` names a judge (never the prior), every judge the ``analysis`` section names
    is the prior or a judge, and a gate or a comparison has a classification set to run on:
    :class:`ConfigError` naming the key otherwise. (Model names are checked by the accuracy-table job,
    which knows the evaluation names.)"""
    judges = [j["name"] for j in config.get("judges") or []]
    known = ["prior", *judges]
    if config.get("primary_judge") is not None and config["primary_judge"] not in judges:
        raise ConfigError(f"config key 'primary_judge' is {config['primary_judge']!r}, which is not a "
                          f"judges[].name (judges: {judges or 'none'}); the primary judge must be "
                          "independent of the prior: add it to 'judges' or set primary_judge: null.")
    analysis = config.get("analysis") or {}
    named = [("analysis.primary", analysis.get("primary"))]
    named += [(f"analysis.secondary[{i}]", c) for i, c in enumerate(analysis.get("secondary") or [])]
    named += [("analysis.gate", analysis.get("gate"))]
    for key, entry in named:
        if entry and entry.get("judge") is not None and entry["judge"] not in known:
            raise ConfigError(f"config key '{key}.judge' is {entry['judge']!r}; valid: {', '.join(known)} "
                              "(the prior or a judges[].name).")
    if analysis.get("secondary") and not analysis.get("primary"):
        raise ConfigError("config key 'analysis.secondary' is set without 'analysis.primary': state the "
                          "primary comparison (tested alone) before the secondary ones.")
    if any(entry for _, entry in named) and not config.get("classification"):
        raise ConfigError("config key 'analysis' compares classification accuracy, but 'classification' "
                          "lists no set; add one or set analysis: {}.")


#: Config keys naming a folder the workflow writes into (relative: to the working directory).
FOLDER_KEYS = ("data_dir", "results_dir")


def _not_a_folder(path: Path) -> str | None:
    """Why ``path`` cannot be (or become) a folder: it, or the nearest of its parents that exists,
    is a file, a dangling link or a symlink loop; None when it can."""
    from sfsr.errors import path_problem

    problem = path_problem(path)
    if problem:
        return f"{path} {problem}"
    for part in (path, *path.parents):
        if part.exists():
            return None if part.is_dir() else (f"{path} is a file, not a folder" if part == path
                                               else f"{part}, a part of it, is a file, not a folder")
    return None


def check_paths(config: dict) -> None:
    """The folders the workflow writes into (``data_dir``, ``results_dir`` and its ``experiment``
    folder) must be folders or creatable as folders: :class:`ConfigError` naming the key, the value
    and the fix, raised when the Snakefile is parsed, before anything is written. (The schema
    refuses empty values: ``data_dir: ''`` would put prepared/, logs/, ... at the file-system root.)"""
    experiment = config.get("experiment", "default")
    if experiment in (".", ".."):
        raise ConfigError(f"config key 'experiment' is {experiment!r}, which would put the study's outputs "
                          f"{'into' if experiment == '.' else 'beside'} results_dir itself instead of a "
                          "folder of their own; give the study a name (letters, digits, _ . -).")
    for key in FOLDER_KEYS:
        value = config.get(key)
        if not isinstance(value, str) or not value:  # the schema says which (run without it: tests)
            continue
        folder = Path(value)  # as the rules use it (no ~ expansion)
        problem = _not_a_folder(folder)
        if not problem and key == "results_dir":  # the study's own folder in it
            problem = _not_a_folder(folder / experiment)
        if problem:
            raise ConfigError(f"config key '{key}' is {value!r}, a folder the workflow writes into, but "
                              f"{problem}; point '{key}' at a folder, or at a path that does not exist yet.")


def check_training(config: dict) -> None:
    """Every training setting of every selected model's stages, resolved as the training job will
    resolve it (unknown keys, wrong types and values raise :class:`ConfigError` naming the key), so a
    mistake stops the run before any job starts rather than hours into it."""
    from sfsr.training.settings import resolve_config, stage_config  # torch-free

    for name in [*config.get("sr_models", []), *config.get("refsr_models", [])]:
        for stage in _trained_stages(config, name):
            st = STAGES[stage]
            try:
                cfg = resolve_config(stage_config(config, name, stage))
            except ConfigError as exc:
                raise ConfigError(f"config key 'models.{name}.{stage}' (merged over 'training'): {exc}") from None
            _check_gpus(config, name, stage, cfg)
            if not st.pixel_only:  # stages that may train a discriminator (sfsr.training.parts)
                _check_discriminator(config, name, stage, cfg)
            if st.data == "refsr":
                _check_reference_levels(config, name, stage, cfg)


def _trained_stages(config: dict, model: str) -> list[str]:
    """The stages (sfsr.training.stages.STAGES, in their order) the selected ``model`` trains: those
    of its list (sr_models / refsr_models), the optional ones where its section is not null, the
    controls when ``controls`` is on."""
    kind = "refsr_models" if model in config.get("refsr_models", []) else "sr_models"
    entry = config["models"][model]
    return [stage for stage, st in STAGES.items() if st.models == kind
            and not (st.init is not None and entry.get(st.control_of or stage) is None)
            and not (st.control_of and not config.get("controls", True))]


def _needs_classifier(config: dict, model: str, stage: str) -> bool:
    """:func:`sfsr.training.stages.needs_classifier` of the stage's merged settings (settings a
    training job would reject are left to :func:`check_training`, which names them)."""
    from sfsr.training.settings import stage_config  # torch-free

    try:
        return needs_classifier(stage, stage_config(config, model, stage))
    except (ConfigError, KeyError, TypeError, AttributeError):
        return STAGES[stage].classifier


def _setting_key(config: dict, model: str, stage: str, key: str) -> str:
    """Where the training setting ``key`` of ``models.<model>.<stage>`` comes from: the model's stage
    section (a control's: the section of the stage it controls), else ``training`` (or its default)."""
    section_name = STAGES[stage].control_of or stage
    section = config["models"][model].get(section_name) or {}
    head, _, rest = key.partition(".")
    if head in section and (not rest or rest in (section[head] or {})):
        return f"models.{model}.{section_name}.{key}"
    return f"training.{key}"


def _check_gpus(config: dict, model: str, stage: str, cfg: dict) -> None:
    """A job on several GPUs splits every batch evenly over them (sfsr.training.distributed: each
    process takes batch_size / gpus), so batch_size must be a multiple of gpus."""
    gpus, batch = cfg["gpus"], cfg["batch_size"]
    if gpus > 1 and batch % gpus:
        lower, upper = batch // gpus * gpus, (batch // gpus + 1) * gpus
        sizes = " or ".join(str(b) for b in (lower, upper) if b > 0)
        fits = [g for g in range(gpus - 1, 0, -1) if batch % g == 0]
        raise ConfigError(f"config key '{_setting_key(config, model, stage, 'batch_size')}' is {batch} but "
                          f"'{_setting_key(config, model, stage, 'gpus')}' is {gpus} (models.{model}.{stage}): "
                          f"each GPU trains batch_size / gpus samples, so batch_size must be a multiple of gpus; "
                          f"set batch_size to {sizes}, or gpus to {fits[0]}.")


def _check_discriminator(config: dict, model: str, stage: str, cfg: dict) -> None:
    """The discriminator's arch and kwargs as the gan stage will build them (sfsr.model_options)."""
    from sfsr.model_options import discriminator_kwargs

    disc = cfg.get("discriminator") or {}
    try:
        discriminator_kwargs(disc.get("arch", "vgg"), dict(disc.get("kwargs") or {}))
    except ValueError as exc:
        key = _setting_key(config, model, stage, "discriminator.kwargs")
        option = getattr(exc, "option", None)
        raise ConfigError(f"config key '{key}{'.' + option if option else ''}' (discriminator of "
                          f"models.{model}.{stage}): {exc}.") from None


#: Reference levels a prepared set of each layout holds (refpairs: CUFED's one reference per input;
#: builtin_refgroups: sfsr.data.refgroups.LEVELS, read when needed); refgroups: known once prepared.
def _layout_levels(layout: str) -> int | None:
    if layout == "refpairs":
        return 1
    if layout == "builtin_refgroups":
        from sfsr.data.refgroups import LEVELS  # imports PIL: only when reference_levels is set

        return len(LEVELS)
    return None


def _check_reference_levels(config: dict, model: str, stage: str, cfg: dict) -> None:
    """``reference_levels`` must name levels the reference-based training sets hold, where their layout
    says how many (a refgroups set's levels are known only once it is prepared)."""
    levels = cfg.get("reference_levels")
    if not levels:
        return
    names = config.get("refsr_train", [])
    held = {n: _layout_levels(config["datasets"][n].get("layout", "flat")) for n in names}
    if not held or None in held.values():
        return
    most = max(held.values())
    missing = sorted({k for k in levels if k > most})
    if missing:
        sets = ", ".join(f"{n} ({config['datasets'][n]['layout']}: levels 1..{k})" for n, k in held.items())
        raise ConfigError(f"config key '{_setting_key(config, model, stage, 'reference_levels')}' is {levels}, but "
                          f"no training set of 'refsr_train' holds level(s) {missing}: {sets}; use levels 1..{most}, "
                          "or null for every reference.")


def load(path: str | Path, schema_path: str | Path | None = None) -> dict:
    """Read a YAML config file and validate it (for scripts and tests outside Snakemake)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            config = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason}); a config file "
                          "is YAML saved as UTF-8") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a folder, not a config file") from None
    return validate(config, schema_path, source=str(path))
