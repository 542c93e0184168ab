"""What one training stage trains and with what: the frozen classifier,
the generator (and LR head), EMA, discriminator, loss terms and optimisers, built from the stage's
entry in :data:`sfsr.training.stages.STAGES` and its settings.

:func:`build_parts` returns a :class:`Parts`; :func:`sfsr.training.step.train_step` runs one
optimisation step on it; :meth:`Parts.state` / :meth:`Parts.load_state` are its share of the
training state (``state/last.pt``).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from sfsr import io
from sfsr.errors import ConfigError, DataError
from sfsr.losses import LOSS_PRESETS, PerceptualLoss, adversarial_loss, pixel_loss
from sfsr.models import build_discriminator, build_generator, check_generator_weights, checkpoint_parts
from sfsr.models.classifier import load_classifier
from sfsr.semantic import LRClassificationHead, SharedFeatureModel, load_semantic_prior
from sfsr.training.ema import make_ema
from sfsr.training.speed import autocast_context, place
from sfsr.training.stages import SEMANTIC_TERMS, Stage, needs_classifier

log = logging.getLogger("sfsr.training")

# ----------------------------------------------------------------------------- optimisation
def make_optimizer(params, cfg: dict, lr: float) -> torch.optim.Optimizer:
    """``cfg['optimizer']``: Adam or AdamW with the configured betas and weight decay, or SGD with
    ``momentum`` (Nesterov when it is > 0; the classifier's)."""
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg["momentum"], weight_decay=cfg["weight_decay"],
                               nesterov=cfg["momentum"] > 0)
    cls = torch.optim.AdamW if cfg["optimizer"] == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, betas=tuple(cfg["betas"]), weight_decay=cfg["weight_decay"])


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: dict,
                   steps: int | None = None) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule over ``steps`` (default ``cfg['iterations']``): multistep (milestones are
    fractions of it), cosine (to ``eta_min``; with ``cosine_start`` > 0 the lr stays constant for that
    fraction of the steps and the cosine runs over the rest) or constant."""
    total = cfg["iterations"] if steps is None else steps
    if cfg["scheduler"] == "cosine":
        flat = round(cfg.get("cosine_start", 0.0) * total)
        if flat == 0:
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=cfg["eta_min"])
        return torch.optim.lr_scheduler.LambdaLR(optimizer, [
            _flat_cosine(flat, total, cfg["eta_min"] / group["lr"]) for group in optimizer.param_groups])
    if cfg["scheduler"] == "constant":  # the classifier's settings have no gamma
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[], gamma=cfg.get("gamma", 0.1))
    milestones = sorted({max(1, round(m * total)) for m in cfg["milestones"]})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=cfg["gamma"])


def _flat_cosine(flat: int, total: int, floor: float) -> Callable[[int], float]:
    """lr factor at step t: 1 for the first ``flat`` steps, then a cosine from 1 to ``floor`` (eta_min
    over the group's lr) at step ``total`` (CosineAnnealingLR's closed form, shifted)."""
    span = max(1, total - flat)

    def factor(step: int) -> float:
        t = min(max(0, step - flat), span)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t / span))
    return factor


# ----------------------------------------------------------------------------- frozen classifier
@dataclass
class FrozenClassifier:
    """The frozen fine-grained classifier (semantic prior, classification targets, perceptual
    features) and the view it classifies: ``size`` crop of an image resized to ``resize``."""
    model: nn.Module
    meta: dict
    size: int
    resize: int


def frozen_classifier(st: Stage, cfg: dict, weights: dict, checkpoint: str | os.PathLike | None,
                      feature_net: nn.Module | None, device: torch.device) -> FrozenClassifier | None:
    """The classifier of ``checkpoint`` when the stage needs it or its perceptual term uses it."""
    resolved = {**cfg, "loss_weights": {"perceptual": weights.get("perceptual", 0.0)}}  # the stage's weights
    if not needs_classifier(st, resolved) or (
            not st.classifier and (feature_net is not None or checkpoint is None)):  # features given
        return None
    model, meta = load_classifier(checkpoint, device)
    native = int(meta["arch"]["input_size"])
    size = int(cfg["semantic"]["input_size"] or native)
    native_resize = int(meta.get("resize_size") or round(native * 256 / 224))
    return FrozenClassifier(model, meta, size, max(size, round(native_resize * size / native)))


# ----------------------------------------------------------------------------- generator init
def load_init(generator: nn.Module, path: Path, spec: dict) -> None:
    """Copy the weights of a save_generator checkpoint into ``generator``: the checkpoint read and
    checked as :func:`sfsr.models.load_generator` reads it (:func:`~sfsr.models.checkpoint_parts`,
    :func:`~sfsr.models.check_generator_weights`: a checkpoint of the graph ``msrresnet`` named before
    2026-12-07 reads as ``srresnet`` with ``use_bn: false``), then its spec compared with ``spec``."""
    ckpt = io.torch_load(path, "initial generator checkpoint", "train the warm-up stage first or fix "
                         "the path", "re-run the warm-up stage")
    name, scale, kwargs, state = checkpoint_parts(path, ckpt)
    if (name, scale, kwargs) != (spec["name"], spec["scale"], spec["kwargs"]):
        raise ConfigError(f"initial generator checkpoint {path} holds {name} x{scale} {kwargs}, but this stage "
                          f"builds {spec['name']} x{spec['scale']} {spec['kwargs']}; a model's stages must use "
                          "the same arch, scale and kwargs as the stage they start from (delete the stale "
                          "checkpoint or fix models.<name>)")
    check_generator_weights(path, name, scale, kwargs, state)
    generator.load_state_dict(state, strict=True)


# ----------------------------------------------------------------------------- the parts
@dataclass
class Parts:
    """Everything one optimisation step uses. ``trainable`` is the generator, or generator + LR head
    (:class:`~sfsr.semantic.SharedFeatureModel`); ``g_fwd``/``d_fwd`` are the (compiled) forwards;
    ``columns`` the logged loss terms in order."""
    generator: nn.Module
    head: nn.Module | None
    trainable: nn.Module
    ema: Any
    opt_g: torch.optim.Optimizer
    sched_g: Any
    disc: nn.Module | None
    opt_d: torch.optim.Optimizer | None
    sched_d: Any
    weights: dict[str, float]
    columns: list[str]
    pixel: Callable
    perceptual: nn.Module | None
    adversarial: Callable | None
    ragan: bool
    prior: nn.Module | None
    classifier: FrozenClassifier | None
    g_fwd: Callable
    d_fwd: Callable | None
    autocast: Callable
    grad_clip: float | None
    shared: dict

    @property
    def eval_trainable(self) -> nn.Module:
        """What is validated and saved: the EMA copy when EMA is on."""
        return self.ema.module if self.ema is not None else self.trainable

    @property
    def eval_generator(self) -> nn.Module:
        return self.eval_trainable.generator if self.head is not None else self.eval_trainable

    def state(self) -> dict[str, Any]:
        """The parts' share of the training state (state dicts; None for absent parts)."""
        def sd(x):
            return x.state_dict() if x is not None else None
        return {"generator": self.generator.state_dict(), "head": sd(self.head), "ema": sd(self.ema),
                "discriminator": sd(self.disc), "opt_g": self.opt_g.state_dict(),
                "sched_g": self.sched_g.state_dict(), "opt_d": sd(self.opt_d), "sched_d": sd(self.sched_d)}

    def load_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state`."""
        self.generator.load_state_dict(state["generator"])
        if self.head is not None:
            self.head.load_state_dict(state["head"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.sched_g.load_state_dict(state["sched_g"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        if self.disc is not None:
            self.disc.load_state_dict(state["discriminator"])
            self.opt_d.load_state_dict(state["opt_d"])
            self.sched_d.load_state_dict(state["sched_d"])


def build_generator_part(st: Stage, cfg: dict, spec: dict, device: torch.device, flags: dict[str, bool],
                         init_checkpoint: str | os.PathLike | None, resuming: bool) -> nn.Module:
    """The generator, initialised from ``init_checkpoint`` unless a state is resumed."""
    generator = build_generator(cfg["arch"], cfg["scale"], **cfg["kwargs"])
    if st.init is not None and init_checkpoint is None and not resuming:
        raise ConfigError(f"the {st.name} stage needs init_checkpoint (the {st.init} generator.pt)")
    if init_checkpoint is not None and not resuming:
        load_init(generator, Path(init_checkpoint), spec)
    return place(generator, device, flags)


def build_parts(st: Stage, cfg: dict, weights: dict[str, float], generator: nn.Module, device: torch.device,
                flags: dict[str, bool], classifier: FrozenClassifier | None,
                classifier_checkpoint: str | os.PathLike | None, feature_net: nn.Module | None) -> Parts:
    """LR head, EMA, optimisers, loss terms and discriminator of stage ``st`` around ``generator``."""
    head = None
    trainable: nn.Module = generator
    if st.lr_head:
        head = LRClassificationHead(generator.num_features, int(classifier.meta["arch"]["num_classes"]),
                                    hidden=cfg["shared"]["head_hidden"])
        trainable = SharedFeatureModel(generator, head.to(device)).train()
    ema = make_ema(trainable, cfg["ema_decay"]) if cfg["ema_decay"] is not None else None
    opt_g = make_optimizer(trainable.parameters(), cfg, cfg["lr"])
    sched_g = make_scheduler(opt_g, cfg)
    pix = pixel_loss(cfg["pixel_loss"])
    disc = opt_d = sched_d = perceptual = adv = prior = None
    ragan = False
    if not st.pixel_only:
        preset = LOSS_PRESETS[cfg["loss_preset"]]
        if "perceptual" in weights:
            perceptual = _perceptual(cfg["perceptual"], preset, feature_net, classifier).to(device)
        if st.discriminator or "adversarial" in weights:
            dcfg = cfg["discriminator"]
            memory_format = torch.channels_last if flags["channels_last"] else torch.contiguous_format
            disc = build_discriminator(dcfg["arch"], **(dcfg.get("kwargs") or {}))
            disc = disc.to(device, memory_format=memory_format).train()
            opt_d = make_optimizer(disc.parameters(), cfg, dcfg.get("lr") or cfg["lr"])
            sched_d = make_scheduler(opt_d, cfg)
            adv = adversarial_loss(preset["gan_type"])
            ragan = preset["gan_type"] == "ragan"
        if any(t in weights for t in SEMANTIC_TERMS):
            sem = cfg["semantic"]
            try:
                prior = load_semantic_prior(classifier_checkpoint, device, temperature=sem["temperature"],
                                            feature_layers=sem["feature_layers"],
                                            feature_weight=sem["feature_weight"],
                                            input_size=classifier.size if classifier else None,
                                            resize_size=classifier.resize if classifier and sem["view"] == "judge"
                                            else None, clamp=sem["clamp"])
            except ValueError as exc:
                raise ConfigError(f"training setting 'semantic': {exc}") from None
    if prior is None and st.control_of is None and any(t in st.default_weights for t in SEMANTIC_TERMS):
        log.warning("%s stage with no semantic term (loss_weights.semantic_kl and semantic_feat are 0): "
                    "it trains like the gan stage", st.name)
    columns = [*weights] if st.pixel_only else \
        [*weights, "g_total"] + (["d_loss"] if disc is not None else [])
    if hasattr(generator, "offset_magnitudes") and getattr(generator, "use_reference", False):
        columns.append("offset")  # mean |offset| of the deformable layers (LR-feature pixels), logged
    autocast = autocast_context(flags, device)
    return Parts(generator=generator, head=head, trainable=trainable, ema=ema, opt_g=opt_g,
                 sched_g=sched_g, disc=disc, opt_d=opt_d, sched_d=sched_d, weights=weights,
                 columns=columns, pixel=pix, perceptual=perceptual, adversarial=adv, ragan=ragan,
                 prior=prior, classifier=classifier,
                 g_fwd=torch.compile(trainable) if flags["compile"] else trainable,
                 d_fwd=torch.compile(disc) if (flags["compile"] and disc is not None) else disc,
                 autocast=autocast, grad_clip=cfg["grad_clip"], shared=dict(cfg["shared"]))


def _perceptual(pcfg: dict, preset: dict, feature_net: nn.Module | None,
                classifier: FrozenClassifier | None) -> PerceptualLoss:
    """The perceptual loss on ``feature_net``, the frozen classifier (net: classifier) or VGG19."""
    net = feature_net if feature_net is not None else (
        classifier.model if pcfg["net"] == "classifier" and classifier is not None else None)
    if net is None and pcfg["net"] != "vgg19":
        raise ConfigError(f"perceptual.net {pcfg['net']!r} needs the pipeline's classifier: pass "
                          "classifier_checkpoint (or feature_net); or use vgg19 or set "
                          "loss_weights.perceptual: 0")
    layer = pcfg["layer"] or (preset["perceptual_layer"] if net is None else None)
    if layer is None:
        raise ConfigError("perceptual.layer must name a layer of the given feature network")
    return PerceptualLoss(net if net is not None else "vgg19", layer=layer, weights=pcfg["weights"],
                          criterion=preset["perceptual_criterion"],
                          feature_scale=preset["perceptual_feature_scale"])
