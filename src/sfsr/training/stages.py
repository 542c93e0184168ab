"""The SR training stages, each declared once (torch-free: the workflow reads this table when it is
parsed).

Everything that differs between stages is a field of :class:`Stage`; the training loop
(:mod:`sfsr.training.loop`), the settings checks (:mod:`sfsr.training.settings`), the training rules
(``rules/train.smk`` generates one rule per entry), the result names and report families
(``rules/common.smk``) and the workflow script (``workflow_scripts/train.py``) all read
:data:`STAGES`. Adding a stage: one entry here plus its loss term (docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Stage:
    """One SR training stage.

    ``init``: the stage whose ``generator.pt`` the generator starts from (None: from scratch).
    ``classifier``: needs the frozen fine-grained classifier (``classifier_checkpoint``).
    ``data``: ``"sr"`` trains on the ``train``/``valid`` sets, ``"classification"`` on the first
    ``classification`` set (its train split; validation on its val split).
    ``pixel_only``: the loss is the pixel term alone (``loss_weights`` other than ``pixel`` are
    ignored, so ``training.loss_weights`` can hold the fine-tuning stages' terms).
    ``preset``: the ``loss_preset``'s weights (pixel, perceptual, adversarial) are the base weights.
    ``terms``: the ``loss_weights`` terms the stage accepts (others raise ConfigError).
    ``default_weights``: weights of terms the stage adds (after the preset's), overridable.
    ``discriminator``: always trains a discriminator (other stages train one only when the
    adversarial term has a weight > 0).
    ``lr_head``: trains an LR classification head on the generator's encoder (also written as
    ``lr_head.pt``, see ``outputs``).
    ``outputs``: extra output files beside ``generator.pt``, by rule output name.
    ``eval_name``: the evaluation name of its generator, a format string of ``model`` and the
    stage's settings (e.g. ``{model}_{loss_preset}``).
    ``family``: the family of its generator in figures (psnr, gan, semantic, shared, refsr).
    ``models``: the config list of the models that train it (``sr_models``; ``refsr_models`` for
    the reference-based stage, whose generators take ``forward(lr, ref)``).
    ``data`` ``"refsr"``: trains on ``refsr_train`` (a target and a reference per sample),
    validates on ``refsr_valid`` (each target with its most similar reference).
    ``control_of``: a budget-matched control of that stage: the same settings (the controlled
    stage's section of each model), initialisation, images, iterations and losses, except the
    ``zero_terms`` weighted 0 (and no LR head). Trained for every model that trains the controlled
    stage when the config key ``controls`` is on.
    ``settings``: the stage's own defaults of training settings, over ``training`` and under the
    model's section of the stage (:func:`sfsr.training.settings.stage_config`; dict-valued keys
    merged one level deep), e.g. refsr_gan's PatchGAN discriminator: ``training.discriminator``'s
    ``kwargs`` belong to the discriminator of the other stages, so a stage that changes the ``arch``
    gives its own ``kwargs`` too.
    """

    name: str
    family: str
    eval_name: str
    init: str | None = None
    classifier: bool = False
    data: str = "sr"
    pixel_only: bool = False
    preset: bool = False
    terms: tuple[str, ...] = ()
    default_weights: dict[str, float] = field(default_factory=dict)
    discriminator: bool = False
    lr_head: bool = False
    outputs: dict[str, str] = field(default_factory=dict)
    models: str = "sr_models"
    control_of: str | None = None
    zero_terms: tuple[str, ...] = ()
    settings: dict = field(default_factory=dict)


SR_TERMS = ("pixel", "perceptual", "adversarial")
SEMANTIC_TERMS = ("semantic_kl", "semantic_feat")
#: Every loss term a stage can weight (``loss_weights`` keys).
LOSS_TERMS = (*SR_TERMS, *SEMANTIC_TERMS, "shared_cls")

#: The stages in training order. ``semantic_feat`` already holds ``semantic.feature_weight``, hence
#: its weight 1.
STAGES: dict[str, Stage] = {
    "warmup": Stage("warmup", family="psnr", eval_name="{model}", pixel_only=True,
                    terms=SR_TERMS, default_weights={"pixel": 1.0}),
    "gan": Stage("gan", family="gan", eval_name="{model}_{loss_preset}", init="warmup", preset=True,
                 terms=SR_TERMS, discriminator=True),
    "semantic": Stage("semantic", family="semantic", eval_name="{model}_semantic", init="warmup",
                      classifier=True, data="classification", preset=True,
                      terms=(*SR_TERMS, *SEMANTIC_TERMS),
                      default_weights={"semantic_kl": 0.1, "semantic_feat": 1.0}),
    "shared": Stage("shared", family="shared", eval_name="{model}_shared", init="warmup",
                    classifier=True, data="classification", terms=LOSS_TERMS,
                    default_weights={"pixel": 1.0, "shared_cls": 0.1}, lr_head=True,
                    outputs={"head": "lr_head.pt"}),
    "refsr": Stage("refsr", family="refsr", eval_name="{model}", data="refsr", pixel_only=True,
                   terms=SR_TERMS, default_weights={"pixel": 1.0}, models="refsr_models"),
    # adversarial fine-tuning of the refsr generator (SSEN, and its no-reference control where that
    # has a refsr_gan section): the gan stage's preset terms, with a PatchGAN by default
    "refsr_gan": Stage("refsr_gan", family="refsr", eval_name="{model}_gan", init="refsr", data="refsr",
                       preset=True, terms=SR_TERMS, discriminator=True, models="refsr_models",
                       settings={"discriminator": {"arch": "patchgan", "kwargs": {}}}),
}
# Budget-matched controls: the semantic stage without its prior, the shared stage without its head.
STAGES["semantic_control"] = replace(STAGES["semantic"], name="semantic_control",
                                     eval_name="{model}_semantic_control", control_of="semantic",
                                     zero_terms=SEMANTIC_TERMS)
STAGES["shared_control"] = replace(STAGES["shared"], name="shared_control", eval_name="{model}_shared_control",
                                   control_of="shared", zero_terms=("shared_cls",), lr_head=False, outputs={})


def needs_classifier(stage: str | Stage, settings: dict) -> bool:
    """Whether ``stage`` trained with ``settings`` (its merged settings, sfsr.training.settings.
    stage_config) needs the frozen classifier: a stage that always does (``classifier``), or one
    whose perceptual term uses the classifier's features (``perceptual.net: classifier``) with a
    weight > 0: ``loss_weights.perceptual``, else the stage's default (every ``loss_preset`` weights
    the perceptual term, tests/test_settings_source.py checks it; a pixel-only stage has none).
    The one place this rule lives: the workflow's inputs (rules/common.smk), the config checks
    (sfsr.config) and the training parts (sfsr.training.parts) ask it."""
    st = STAGES[stage] if isinstance(stage, str) else stage
    if st.classifier:
        return True
    if st.pixel_only or (settings.get("perceptual") or {}).get("net") != "classifier":
        return False
    default = 1.0 if st.preset else st.default_weights.get("perceptual", 0.0)
    return bool((settings.get("loss_weights") or {}).get("perceptual", default))


def evaluation_name(stage: str, model: str, settings: dict) -> str:
    """Name the generator of ``model``'s ``stage`` is evaluated and reported under."""
    return STAGES[stage].eval_name.format(model=model, **settings)
