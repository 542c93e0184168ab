"""Settings of one SR training stage, torch-free (the workflow checks them when it is parsed).

* :data:`TRAINING_DEFAULTS`: the ``training`` config section's defaults, read from config.schema.yaml
  (the package's own, :mod:`sfsr.schema`).
* :func:`stage_config`: the flat settings of ``models.<model>.<stage>`` (defaults < ``training`` <
  the stage's own defaults < the model's stage section, plus the model's arch, scale and kwargs; the stages on the
  classification set take the top-level ``semantic_train_split`` as their ``train_split``).
* :func:`resolve_config`: defaults filled in, unknown keys and bad values raise ConfigError.
* :func:`stage_weights`: the loss weights of a stage (from :data:`sfsr.training.stages.STAGES`).
* :data:`RUN_NEUTRAL_KEYS`: settings a resumed state does not depend on.
"""

from __future__ import annotations

import copy
from typing import Any

from sfsr import schema as _schema
from sfsr.errors import ConfigError
from sfsr.training.stages import STAGES


def _schema_training_defaults(path=None) -> dict[str, Any]:
    """``{key: default}`` of the schema's ``training`` properties (read once, at import; ``path``:
    default the package's own schema, :func:`sfsr.schema.resource`)."""
    # ConfigError naming the file (and how to reinstall) if unreadable; the package's own is read once
    schema = _schema.own() if path is None else _schema.load(path)
    try:
        return {k: v["default"] for k, v in schema["properties"]["training"]["properties"].items()}
    except (KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"cannot read the training defaults from the configuration schema "
                          f"{path or _schema.resource()} ({type(exc).__name__}: {exc}); its "
                          "properties.training section is their one source") from exc


#: Defaults of the ``training`` config section, as config.schema.yaml gives them (its one source);
#: a model's stage section (``warmup``, ``gan``, ``semantic``, ...) overrides them (dict-valued
#: keys are merged one level deep).
TRAINING_DEFAULTS: dict[str, Any] = _schema_training_defaults()
MODEL_KEYS = ("arch", "scale", "kwargs")

#: Settings that do not change what a run computes (where and how fast it runs, how often it logs,
#: how long it goes on): a resumed state stays valid when only these differ.
RUN_NEUTRAL_KEYS = ("device", "num_workers", "threads", "gpus", "mem_mb", "runtime", "log_every",
                    "val_every", "checkpoint_every", "tensorboard", "iterations", "cache_mb")


def _merge(base: dict, override: dict | None) -> dict:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "loss_weights":
            out[key] = {**out[key], **copy.deepcopy(value)}
        else:
            out[key] = copy.deepcopy(value)
    return out


def stage_config(config: dict, model: str, stage: str) -> dict:
    """Flat settings of ``models.<model>.<stage>``: TRAINING_DEFAULTS < ``training`` < the stage's
    own defaults (:attr:`~sfsr.training.stages.Stage.settings`) < the stage section, plus the model's
    ``arch``, ``scale`` and ``kwargs``."""
    if stage not in STAGES:
        raise ConfigError(f"unknown training stage {stage!r}; valid: {', '.join(STAGES)}")
    models = config.get("models") or {}
    if model not in models:
        raise ConfigError(f"model {model!r} is not defined under 'models' (defined: "
                          f"{', '.join(sorted(models)) or 'none'})")
    entry = models[model]
    st = STAGES[stage]
    key = st.control_of or stage  # a control trains with the settings of the stage it controls
    # the stage trained from scratch (warmup) is every model's; the others are null when not wanted
    section = entry.get(key, {} if st.init is None else None)
    if section is None:
        raise ConfigError(f"config key 'models.{model}.{key}' is null: this model has no {key} "
                          "stage; give it a mapping (possibly {}) to train it")
    # the stage's own defaults (Stage.settings, e.g. refsr_gan's PatchGAN) over 'training'
    cfg = _merge(_merge(_merge(TRAINING_DEFAULTS, config.get("training")), st.settings), section)
    if st.data == "classification" and config.get("semantic_train_split") and "train_split" not in section:
        cfg["train_split"] = config["semantic_train_split"]  # images the classifier never saw
    cfg["augment"] = stage_augmentation(cfg.get("augment", "auto"), stage)
    if st.zero_terms:
        cfg["loss_weights"] = {**cfg["loss_weights"], **{t: 0.0 for t in st.zero_terms}}
    cfg.update(arch=entry["arch"], scale=int(entry["scale"]), kwargs=dict(entry.get("kwargs") or {}))
    return cfg


def stage_augmentation(augment: str, stage: str) -> str:
    """The ``augment`` setting with ``auto`` resolved: horizontal flips only for the stages on the
    classification set (what the classifier was trained with), dihedral for the others."""
    if augment != "auto":
        return augment
    return "hflip" if STAGES[stage].data == "classification" else "dihedral"


def resolve_config(cfg: dict, stage: str | None = None) -> dict:
    """``cfg`` with defaults filled in (the stage's own defaults too, :attr:`~sfsr.training.stages.
    Stage.settings`, where ``stage`` is given; ``augment: auto`` resolved for ``stage``, dihedral
    without one); unknown keys and bad values raise ConfigError."""
    missing = [k for k in ("arch", "scale") if k not in cfg]
    if missing:
        raise ConfigError(f"training settings lack {missing} (the model's arch and scale)")
    out = _merge(_merge(TRAINING_DEFAULTS, STAGES[stage].settings if stage in STAGES else None), cfg)
    out["augment"] = stage_augmentation(out["augment"], stage) if stage else \
        ("dihedral" if out["augment"] == "auto" else out["augment"])
    out.setdefault("kwargs", {})
    check_settings({k: v for k, v in out.items() if k not in MODEL_KEYS}, "#/properties/training",
                   "training setting", skip=CHECKED_WHEN_APPLIED)
    return out


#: Settings checked where they are applied rather than here: the speed switches
#: (sfsr.training.speed.speed_flags, whose message names the device).
CHECKED_WHEN_APPLIED = ("bf16", "channels_last", "compile")

_TYPE_NAMES = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false",
               "array": "a list", "object": "a mapping", "null": "null"}


def check_settings(settings: dict, pointer: str, what: str, skip: tuple[str, ...] = ()) -> None:
    """Check merged ``settings`` against the schema section at ``pointer`` (the package's own
    config.schema.yaml, the one statement of every setting's type and range; ``skip``: keys checked
    elsewhere): :class:`ConfigError` naming the setting, its value and what it must be."""
    import jsonschema  # a dependency (also Snakemake's); imported here: the settings tables need none

    section = copy.deepcopy(_schema.resolve(_schema.own(), pointer))
    section["properties"].update({k: {} for k in skip if k in section["properties"]})
    errors = list(jsonschema.Draft202012Validator(section).iter_errors(settings))
    if errors:
        error = max(errors, key=lambda e: len(e.absolute_path))  # the deepest names the key most precisely
        raise ConfigError(_problem(error, what, section))


def _problem(error, what: str, section: dict) -> str:
    """A schema violation of a setting: its key, its value, what it must be, and (from the schema's
    description of the key) what the setting means."""
    node, about = section, ""
    for part in error.absolute_path:
        node = (node.get("items") if isinstance(part, int) else node.get("properties", {}).get(part)) or {}
        about = node.get("description", about)
    about = about.split(". ")[0].strip().rstrip(".")
    short = about and len(about) <= 110 and error.validator != "additionalProperties"
    return _violation(error, what) + (f" ({about})" if short else "")


def _violation(error, what: str) -> str:
    parts = list(error.absolute_path)
    key = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(parts))
    value, rule, kind = error.instance, error.validator_value, error.validator
    if kind == "additionalProperties":
        allowed = [k for k in error.schema.get("properties", {})]
        extra = sorted(set(value) - set(allowed))
        if not parts:
            return f"unknown {what}(s) {extra}; valid: {', '.join(sorted(allowed))}"
        return f"{what} '{key}' has unknown key(s) {extra}; valid: {', '.join(allowed)}"
    if kind == "enum":
        return f"{what} '{key}' is {value!r}; allowed: {', '.join(str(v) for v in rule)}"
    if kind == "type":
        names = " or ".join(_TYPE_NAMES.get(t, t) for t in ([rule] if isinstance(rule, str) else rule))
        hint = " (YAML 1.1 reads 2e-4 as text: write 2.0e-4)" if isinstance(value, str) and "number" in str(rule) else ""
        return f"{what} '{key}' must be {names}, got {value!r}{hint}"
    bounds = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
    if kind in bounds:
        return f"{what} '{key}' must be {bounds[kind]} {rule}, got {value!r}"
    if kind in ("minItems", "maxItems"):
        return f"{what} '{key}' must hold {'at least' if kind == 'minItems' else 'at most'} {rule} item(s), got {value!r}"
    return f"{what} '{key}' is {value!r}: {error.message}"


def stage_weights(stage: str, cfg: dict) -> dict[str, float]:
    """The loss weights of ``stage`` (terms with weight 0 left out), from its entry in
    :data:`~sfsr.training.stages.STAGES`: a pixel-only stage (warmup, refsr): the pixel weight alone;
    otherwise the ``loss_preset``'s weights where the stage uses the preset (gan, semantic,
    semantic_control), then the
    stage's ``default_weights``; ``loss_weights`` overrides any of them. ``semantic_feat`` is kept
    only when ``semantic.feature_layers`` and ``semantic.feature_weight > 0`` are set."""
    from sfsr.losses import LOSS_PRESETS  # imports torch: only the training job needs the presets

    st = STAGES[stage]
    if st.pixel_only:
        return {t: float(cfg["loss_weights"].get(t, w)) for t, w in st.default_weights.items()}
    foreign = sorted(set(cfg["loss_weights"]) - set(st.terms))
    if foreign:
        owners = {t: [s.name for s in STAGES.values() if t in s.terms and not s.pixel_only] for t in foreign}
        raise ConfigError(f"loss_weights term(s) {foreign} do not belong to the {stage} stage (they are "
                          f"terms of {owners}); set them in the model's section of that stage, or remove "
                          f"them from 'training.loss_weights'")
    if cfg["loss_preset"] not in LOSS_PRESETS:
        raise ConfigError(f"training setting 'loss_preset' is {cfg['loss_preset']!r}; allowed: "
                          f"{', '.join(LOSS_PRESETS)}")
    base: dict[str, float] = {}
    if st.preset:
        preset = LOSS_PRESETS[cfg["loss_preset"]]
        base = {"pixel": preset["pixel"][1], "perceptual": preset["perceptual"],
                "adversarial": preset["adversarial"]}
    base.update(st.default_weights)
    weights = {k: float(v) for k, v in {**base, **cfg["loss_weights"]}.items() if v}
    sem = cfg["semantic"]
    if not (sem["feature_layers"] and sem["feature_weight"] > 0):
        weights.pop("semantic_feat", None)
    return weights
