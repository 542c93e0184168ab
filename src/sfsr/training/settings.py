"""Settings of one SR training stage, torch-free (the workflow checks them when it is parsed).

* :data:`TRAINING_DEFAULTS`: the ``training`` config section's defaults, read from config.schema.yaml
  (the package's own, :mod:`sfsr.schema`).
* :func:`stage_config`: the flat settings of ``models.<model>.<stage>`` (defaults < ``training`` <
  the model's stage section, plus the model's arch, scale and kwargs; the stages on the
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
from sfsr.model_options import SHARED_MODES
from sfsr.training.stages import LOSS_TERMS, STAGES


def _schema_training_defaults(path=None) -> dict[str, Any]:
    """``{key: default}`` of the schema's ``training`` properties (read once, at import; ``path``:
    default the package's own schema, :func:`sfsr.schema.resource`)."""
    schema = _schema.load(path)  # ConfigError naming the file (and how to reinstall) if unreadable
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
SEMANTIC_KEYS = ("temperature", "feature_layers", "feature_weight", "input_size", "view", "clamp")
SHARED_KEYS = ("mode", "temperature", "head_hidden")
#: Training-patch augmentations (``auto`` is resolved per stage by :func:`stage_config`).
AUGMENTATIONS = ("dihedral", "hflip", "none")

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
    """Flat settings of ``models.<model>.<stage>``: TRAINING_DEFAULTS < ``training`` < the stage
    section, plus the model's ``arch``, ``scale`` and ``kwargs``."""
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
    cfg = _merge(_merge(TRAINING_DEFAULTS, config.get("training")), section)
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
    """``cfg`` with defaults filled in (``augment: auto`` resolved for ``stage``, dihedral without
    one); unknown keys and bad values raise ConfigError."""
    unknown = sorted(set(cfg) - set(TRAINING_DEFAULTS) - set(MODEL_KEYS))
    if unknown:
        raise ConfigError(f"unknown training setting(s) {unknown}; valid: "
                          f"{', '.join(sorted([*TRAINING_DEFAULTS, *MODEL_KEYS]))}")
    missing = [k for k in ("arch", "scale") if k not in cfg]
    if missing:
        raise ConfigError(f"training settings lack {missing} (the model's arch and scale)")
    out = _merge(TRAINING_DEFAULTS, cfg)
    out["augment"] = stage_augmentation(out["augment"], stage) if stage else \
        ("dihedral" if out["augment"] == "auto" else out["augment"])
    out.setdefault("kwargs", {})
    checks = [("optimizer", ("adam", "adamw")), ("scheduler", ("multistep", "cosine", "constant")),
              ("augment", AUGMENTATIONS),
              ("lr_source", ("on_the_fly", "prepared"))]
    for key, allowed in checks:
        if out[key] not in allowed:
            raise ConfigError(f"training setting '{key}' is {out[key]!r}; allowed: {', '.join(allowed)}")
    for key in ("iterations", "batch_size", "lr_patch", "log_every", "val_every", "checkpoint_every"):
        if key == "lr_patch" and out[key] is None:
            continue
        if not isinstance(out[key], int) or isinstance(out[key], bool) or out[key] < 1:
            extra = " (lr_patch may also be null: the largest square patch all images hold)" \
                if key == "lr_patch" else ""
            raise ConfigError(f"training setting '{key}' must be a positive integer{extra}, got {out[key]!r}")
    for key in ("lr", "weight_decay", "gamma", "eta_min"):
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 \
                or (key == "lr" and value == 0):
            hint = " (YAML 1.1 reads 2e-4 as text: write 2.0e-4)" if isinstance(value, str) else ""
            raise ConfigError(f"training setting '{key}' must be a number{' > 0' if key == 'lr' else ' >= 0'}, "
                              f"got {value!r}{hint}")
    for key in ("train_split", "valid_split"):
        if out[key] is not None and not isinstance(out[key], str):
            raise ConfigError(f"training setting '{key}' must be a split name (train, val, test) or null, "
                              f"got {out[key]!r}")
    if any(not 0 < m < 1 for m in out["milestones"]):
        raise ConfigError(f"training setting 'milestones' holds fractions of the iterations in (0, 1), "
                          f"got {out['milestones']}")
    bad = sorted(set(out["loss_weights"]) - set(LOSS_TERMS))
    if bad:
        raise ConfigError(f"training setting 'loss_weights' has unknown term(s) {bad}; valid: "
                          f"{', '.join(LOSS_TERMS)}")
    for term, value in out["loss_weights"].items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"training setting 'loss_weights.{term}' must be a number >= 0, got {value!r}")
    _check_semantic(out["semantic"], out["shared"])
    levels = out["reference_levels"]
    if levels is not None and (not isinstance(levels, list) or not levels
                               or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in levels)):
        raise ConfigError(f"training setting 'reference_levels' must be null (every reference) or a list of "
                          f"reference levels >= 1 (1 = most similar), got {levels!r}")
    if out["ema_decay"] is not None and not 0 <= out["ema_decay"] < 1:
        raise ConfigError(f"training setting 'ema_decay' must be in [0, 1) or null, got {out['ema_decay']}")
    return out


def _check_semantic(sem: dict, shared: dict) -> None:
    """Validate the ``semantic`` and ``shared`` sub-settings (ConfigError naming the key)."""
    for name, section, keys in (("semantic", sem, SEMANTIC_KEYS), ("shared", shared, SHARED_KEYS)):
        if not isinstance(section, dict):
            raise ConfigError(f"training setting '{name}' must be a mapping with keys {', '.join(keys)}, "
                              f"got {section!r}")
        unknown = sorted(set(section) - set(keys))
        if unknown:
            raise ConfigError(f"training setting '{name}' has unknown key(s) {unknown}; valid: "
                              f"{', '.join(keys)}")
        t = section.get("temperature")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            raise ConfigError(f"training setting '{name}.temperature' must be a number > 0, got {t!r}")
    hidden = shared.get("head_hidden", [])
    if not isinstance(hidden, list) or not all(isinstance(h, int) and not isinstance(h, bool) and h > 0
                                                for h in hidden):
        raise ConfigError(f"training setting 'shared.head_hidden' must be a list of positive layer widths "
                          f"(e.g. [256]; [] for one linear layer), got {hidden!r}")
    layers = sem["feature_layers"]
    if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
        raise ConfigError(f"training setting 'semantic.feature_layers' must be a list of classifier stage "
                          f"names (e.g. [layer2, layer3]), got {layers!r}")
    fw = sem["feature_weight"]
    if isinstance(fw, bool) or not isinstance(fw, (int, float)) or fw < 0:
        raise ConfigError(f"training setting 'semantic.feature_weight' must be a number >= 0, got {fw!r}")
    size = sem["input_size"]
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ConfigError(f"training setting 'semantic.input_size' must be a positive integer or null (the "
                          f"classifier's own input size), got {size!r}")
    if shared["mode"] not in SHARED_MODES:
        raise ConfigError(f"training setting 'shared.mode' is {shared['mode']!r}; allowed: "
                          f"{', '.join(SHARED_MODES)}")


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
