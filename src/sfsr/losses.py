"""Training losses: pixel (L1, MSE, Charbonnier), perceptual (frozen feature network), adversarial
(vanilla BCE GAN of SRGAN, relativistic average GAN of ESRGAN), presets and the weighted total.

All image inputs are float RGB NCHW in [0, 1].
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sfsr.errors import ConfigError
from sfsr.models.classifier import (IMAGENET_MEAN, IMAGENET_STD, Classifier, classifier_features,
                                    load_torchvision_backbone, named_vgg_features)

# Loss presets of the two GAN papers. "pixel" = (criterion, weight); the other numbers are weights.
# SRGAN (Ledig et al. 2017): generator loss = VGG54 content loss + 1e-3 * adversarial, no pixel term;
#   VGG54 = MSE on relu5_4 features (after the activation) with the features rescaled by 1/12.75
#   (the paper's "~0.006" = 1/12.75**2 on the loss).
# ESRGAN (Wang et al. 2018): L1 on conv5_4 features (BEFORE the activation), 1e-2 * L1 pixel loss,
#   5e-3 * RaGAN.
LOSS_PRESETS: dict[str, dict] = {
    "srgan": {"pixel": ("mse", 0.0), "perceptual": 1.0, "adversarial": 1e-3, "gan_type": "vanilla",
              "perceptual_layer": "relu5_4", "perceptual_criterion": "mse",
              "perceptual_feature_scale": 1.0 / 12.75},
    "esrgan": {"pixel": ("l1", 1e-2), "perceptual": 1.0, "adversarial": 5e-3, "gan_type": "ragan",
               "perceptual_layer": "conv5_4", "perceptual_criterion": "l1",
               "perceptual_feature_scale": 1.0},
}

PIXEL_LOSS_NAMES = ("l1", "mse", "charbonnier")


# ----------------------------------------------------------------------------------------- pixel
def l1_loss(sr: Tensor, hr: Tensor) -> Tensor:
    """Mean absolute error."""
    return F.l1_loss(sr, hr)


def mse_loss(sr: Tensor, hr: Tensor) -> Tensor:
    """Mean squared error."""
    return F.mse_loss(sr, hr)


def charbonnier_loss(sr: Tensor, hr: Tensor, eps: float = 1e-3) -> Tensor:
    """Charbonnier (differentiable L1): mean(sqrt((sr - hr)^2 + eps^2)), eps = 1e-3 as in LapSRN.
    Note it equals ``eps`` (not 0) for identical inputs."""
    return torch.sqrt((sr - hr) ** 2 + eps * eps).mean()


def pixel_loss(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The pixel loss function called ``name`` ('l1', 'mse', 'charbonnier')."""
    if name == "l1":
        return l1_loss
    elif name == "mse":
        return mse_loss
    elif name == "charbonnier":
        return charbonnier_loss
    raise ValueError(f"unknown pixel loss {name!r}; valid: {', '.join(PIXEL_LOSS_NAMES)}")


# ------------------------------------------------------------------------------------ perceptual
_VGG_SHORTHANDS = {f"{b}{i}" for b in range(1, 6) for i in range(1, 5)}


def _resolve_vgg_layer(layer: str, before_relu: bool) -> str:
    """'conv5_4'/'relu5_4'/'pool4' pass through; shorthands '54', 'vgg54', 'VGG54' become conv5_4
    (before_relu=True) or relu5_4 (False)."""
    key = layer.lower().removeprefix("vgg")
    if key in _VGG_SHORTHANDS:
        return f"{'conv' if before_relu else 'relu'}{key[0]}_{key[1]}"
    return layer


class PerceptualLoss(nn.Module):
    """Distance between features of a FROZEN network: criterion(s * phi(sr), s * phi(hr)).

    ``feature_net='vgg19'``: torchvision VGG19 (no BN) with ImageNet normalisation of the [0,1]
    input; ``layer`` is a name of :func:`sfsr.models.classifier.vgg_layer_names` (``conv5_4`` = index
    34 = ESRGAN's choice, before the ReLU; ``relu5_4`` = index 35 = SRGAN's VGG54) or a shorthand
    '54'/'VGG54' resolved by ``before_relu``. The network is truncated after that layer.
    ``weights``: 'imagenet' (torchvision DEFAULT), a local state-dict path, or None (random; tests).

    ``feature_net`` may instead be a module, e.g. the pipeline's own pretrained
    :class:`~sfsr.models.classifier.Classifier` (which normalises internally and takes [0,1] input);
    then ``layer`` is a stage name of that classifier (e.g. 'layer3') or a callable
    ``layer(net, x) -> Tensor``; for another module a string ``layer`` is a node name for
    ``torchvision.models.feature_extraction.create_feature_extractor``. The module is deep-copied,
    so freezing it does not touch the caller's model.

    The feature network never trains: parameters have requires_grad=False and it stays in eval mode
    even when the loss module is put in train mode; gradients flow to the input only.
    """

    def __init__(self, feature_net: str | nn.Module = "vgg19", layer: str | Callable = "conv5_4",
                 weights: str | Path | None = "imagenet", criterion: str = "l1", before_relu: bool = True,
                 feature_scale: float = 1.0) -> None:
        super().__init__()
        if criterion not in ("l1", "mse"):
            raise ValueError(f"unknown perceptual criterion {criterion!r}; valid: l1, mse")
        self.criterion = criterion
        self.feature_scale = feature_scale
        self._layer_fn: Callable[[nn.Module, Tensor], Tensor] | None = None
        if isinstance(feature_net, str):
            if feature_net != "vgg19":
                raise ValueError(f"unknown perceptual feature network {feature_net!r}; use 'vgg19' or pass "
                                 "the pipeline's classifier module")
            if not isinstance(layer, str):
                raise ValueError("with feature_net='vgg19' the layer must be a name such as 'conv5_4'")
            alternatives = ("Either copy torchvision's VGG19 weights file (vgg19-dcbb9e9d.pth) to this "
                            "machine and pass its local path as the perceptual weights, or use the "
                            "pipeline's own pretrained classifier as the perceptual feature network.")
            vgg = load_torchvision_backbone("vgg19", weights, alternatives)
            features = named_vgg_features(vgg.features)
            names = [n for n, _ in features.named_children()]
            self.layer = _resolve_vgg_layer(layer, before_relu)
            if self.layer not in names:
                raise ValueError(f"unknown VGG19 layer {layer!r}; valid: {', '.join(names)} or '54'-style")
            net: nn.Module = features[: names.index(self.layer) + 1]
            self._mode = "vgg"
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        else:
            net = copy.deepcopy(feature_net)
            self.layer = layer
            if callable(layer) and not isinstance(layer, str):
                self._mode, self._layer_fn = "callable", layer
            elif isinstance(net, Classifier):
                if layer not in net.layer_names:
                    raise ValueError(f"unknown layer {layer!r} for the {net.backbone} classifier; valid: "
                                     f"{', '.join(net.layer_names)}")
                self._mode = "classifier"
            else:
                from torchvision.models.feature_extraction import create_feature_extractor

                net = create_feature_extractor(net, return_nodes=[layer])
                self._mode = "fx"
        for p in net.parameters():
            p.requires_grad_(False)
        self.net = net.eval()

    def train(self, mode: bool = True) -> "PerceptualLoss":
        """Keep the frozen feature network in eval mode whatever ``mode`` is."""
        super().train(mode)
        self.net.eval()
        return self

    def features(self, x: Tensor) -> Tensor:
        """Scaled features of a [0,1] RGB batch."""
        if self._mode == "vgg":
            feat = self.net((x - self.mean) / self.std)
        elif self._mode == "classifier":
            feat = classifier_features(self.net, x, [self.layer])[self.layer]
        elif self._mode == "callable":
            feat = self._layer_fn(self.net, x)
        else:
            feat = self.net(x)[self.layer]
        return feat * self.feature_scale

    def forward(self, sr: Tensor, hr: Tensor) -> Tensor:
        """Perceptual distance between SR and HR (target features computed without grad)."""
        with torch.no_grad():
            target = self.features(hr)
        pred = self.features(sr)
        return F.l1_loss(pred, target) if self.criterion == "l1" else F.mse_loss(pred, target)


# ----------------------------------------------------------------------------------- adversarial
def _bce(logits: Tensor, real: bool) -> Tensor:
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


def gan_loss_vanilla(real_logits: Tensor | None, fake_logits: Tensor, *, for_discriminator: bool) -> Tensor:
    """Standard (SRGAN) GAN loss with BCE on logits.

    Discriminator: BCE(D(hr), 1) + BCE(D(sr), 0) (pass ``fake_logits`` of a detached SR).
    Generator (non-saturating): BCE(D(sr), 1); ``real_logits`` is ignored (may be None)."""
    if for_discriminator:
        if real_logits is None:
            raise ValueError("the discriminator loss needs real_logits")
        return _bce(real_logits, True) + _bce(fake_logits, False)
    return _bce(fake_logits, True)


def relativistic_average_loss(real_logits: Tensor, fake_logits: Tensor, *, for_discriminator: bool) -> Tensor:
    """ESRGAN's relativistic average GAN loss, D_Ra(a, b) = sigmoid(C(a) - mean C(b)).

    Discriminator: [BCE(C(hr) - mean C(sr), 1) + BCE(C(sr) - mean C(hr), 0)] / 2.
    Generator:     [BCE(C(hr) - mean C(sr), 0) + BCE(C(sr) - mean C(hr), 1)] / 2.
    The paper writes the sum; the halving follows the authors' code, with which the 5e-3 weight was
    tuned. Means are over the whole batch (and over positions for logit maps). For the
    discriminator step pass logits of a detached SR; for the generator step the real logits may be
    detached (the real branch has no generator parameters)."""
    real_rel = real_logits - fake_logits.mean()
    fake_rel = fake_logits - real_logits.mean()
    if for_discriminator:
        return (_bce(real_rel, True) + _bce(fake_rel, False)) / 2
    return (_bce(real_rel, False) + _bce(fake_rel, True)) / 2


def adversarial_loss(gan_type: str) -> Callable[..., Tensor]:
    """``'vanilla'`` -> :func:`gan_loss_vanilla`, ``'ragan'`` -> :func:`relativistic_average_loss`."""
    if gan_type == "vanilla":
        return gan_loss_vanilla
    elif gan_type == "ragan":
        return relativistic_average_loss
    raise ValueError(f"unknown gan_type {gan_type!r}; valid: vanilla, ragan")


# ----------------------------------------------------------------------------------------- total
def total_loss(terms: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """Weighted sum of ALL scalar ``terms``: sum(weights[k] * terms[k]).

    Every term needs a weight and every weight needs a term (a mismatch raises ConfigError naming the
    keys); a 0 weight keeps the term in the sum with no effect."""
    missing_terms = sorted(set(weights) - set(terms))
    missing_weights = sorted(set(terms) - set(weights))
    if missing_terms or missing_weights:
        raise ConfigError(f"loss weights and terms do not match: weights without a term {missing_terms}, "
                          f"terms without a weight {missing_weights}; available terms: {sorted(terms)}")
    if not terms:
        raise ValueError("total_loss needs at least one term")
    for key, value in terms.items():
        if value.dim() != 0:
            raise ValueError(f"loss term {key!r} must be a scalar, got shape {tuple(value.shape)}")
    return torch.stack([weights[k] * terms[k] for k in terms]).sum()
