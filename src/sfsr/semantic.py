"""Semantic-favorable SR: a frozen fine-grained classifier as a label-free prior on the SR output, and
a classification head sharing the generator's encoder.

* :class:`SemanticPriorLoss`: ``T^2 * KL(softmax(f(HR)/T) || softmax(f(SR)/T))`` with the softmax
  over the class dimension and batch-mean reduction, optionally plus an L1 feature-matching term on
  intermediate layers of the same classifier. ``f`` is a frozen copy of the classifier trained on HR
  images (:func:`sfsr.training.classifier.train_classifier`); no labels are used. Gradients reach
  the SR image only.
* :func:`load_semantic_prior`: the prior built from the pipeline's own ``classifier.pt``.
* :class:`LRClassificationHead` + :class:`SharedFeatureModel`: ``encode`` runs once per LR batch
  and feeds both the generator's ``upsample`` and the head, so a classification loss trains the
  shared encoder. :func:`shared_classification_loss` supervises the head with pseudo-labels or soft
  targets of the frozen HR classifier (label-free), or with true labels.

Accuracy gaps (``gap_closed``) are computed by :func:`sfsr.classification.accuracy_table`.
See ``docs/semantic.md``.
"""

from __future__ import annotations

import copy
import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sfsr.model_options import SHARED_MODES  # torch-free: the config checks read it too
from sfsr.models.classifier import (Classifier, classifier_features, eval_transform, load_classifier,
                                   read_classifier_checkpoint)
from sfsr.tensors import eval_mode


def semantic_kl(sr_logits: Tensor, hr_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``T^2 * KL(softmax(hr/T) || softmax(sr/T))``; softmax over classes (dim 1), mean over the
    batch (``F.kl_div(..., reduction='batchmean')``), computed in float32."""
    if sr_logits.shape != hr_logits.shape or sr_logits.dim() != 2:
        raise ValueError(f"semantic_kl expects two N x C logit tensors of the same shape, got "
                         f"{tuple(sr_logits.shape)} and {tuple(hr_logits.shape)}")
    t = float(temperature)
    log_q = F.log_softmax(sr_logits.float() / t, dim=1)
    p = F.softmax(hr_logits.float() / t, dim=1)
    return F.kl_div(log_q, p, reduction="batchmean") * (t * t)


def straight_through_clamp(x: Tensor) -> Tensor:
    """``x`` clamped to [0, 1] in the forward pass, with the identity's gradient (straight-through):
    the prior judges the image the evaluation sees, while out-of-range pixels still get a gradient."""
    return x + (x.clamp(0.0, 1.0) - x).detach()


class SemanticPriorLoss(nn.Module):
    """Label-free semantic prior of a frozen HR classifier on the SR output.

    ``forward(sr, hr)`` returns ``{"semantic_kl": T^2 * KL(softmax(f(hr)/T) || softmax(f(sr)/T))}``
    and, when ``feature_layers`` are given and ``feature_weight > 0``, ``"semantic_feat":
    feature_weight * mean over layers of L1(f_l(sr), f_l(hr))`` (layers of
    :func:`sfsr.models.classifier_features`; needs a :class:`Classifier`). The trainer gives each
    returned term a weight in :func:`sfsr.losses.total_loss`, which sums them.

    The classifier is deep-copied, frozen (requires_grad False) and kept in eval mode even when the
    loss is put in train mode; HR logits/features are computed without grad, so gradients flow to
    ``sr`` only. ``input_size``: when given, SR and HR are resized (bilinear, antialiased,
    differentiable) to ``input_size`` x ``input_size`` before the classifier; with ``resize_size``
    too, they get the judge's view instead (the classifier's
    :func:`~sfsr.models.classifier.eval_transform`: short side to ``resize_size``, centre
    ``input_size`` crop). ``clamp``: SR is clamped to [0, 1] first with a straight-through
    gradient (:func:`straight_through_clamp`), as the evaluation sees it.
    """

    def __init__(self, classifier: nn.Module, temperature: float = 1.0,
                 feature_layers: Sequence[str] | None = None, feature_weight: float = 0.0,
                 input_size: int | None = None, resize_size: int | None = None,
                 clamp: bool = False) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if feature_weight < 0:
            raise ValueError(f"feature_weight must be >= 0, got {feature_weight}")
        net = copy.deepcopy(classifier)
        net.requires_grad_(False)
        self.classifier = net.eval()
        self.temperature = float(temperature)
        self.feature_layers = list(feature_layers or [])
        self.feature_weight = float(feature_weight)
        self.input_size = input_size
        self.resize_size = resize_size
        self.clamp = bool(clamp)
        if resize_size is not None and input_size is None:
            raise ValueError("resize_size (the judge's view) needs input_size, the centre crop")
        # the judge's view: the classifier's own evaluation transform (differentiable on tensors)
        self.view = eval_transform(input_size, resize_size) if resize_size is not None else None
        if self.use_features:
            if not isinstance(net, Classifier):
                raise ValueError("feature matching (feature_layers) needs a sfsr Classifier, got "
                                 f"{type(net).__name__}")
            unknown = [layer for layer in self.feature_layers if layer not in net.layer_names]
            if unknown:
                raise ValueError(f"unknown feature layer(s) {unknown} for the {net.backbone} classifier; "
                                 f"valid: {', '.join(net.layer_names)}")

    @property
    def use_features(self) -> bool:
        return bool(self.feature_layers) and self.feature_weight > 0

    @property
    def term_names(self) -> list[str]:
        """Keys of the dict :meth:`forward` returns."""
        return ["semantic_kl", *(["semantic_feat"] if self.use_features else [])]

    def train(self, mode: bool = True) -> "SemanticPriorLoss":
        """Keep the frozen classifier in eval mode whatever ``mode`` is."""
        super().train(mode)
        self.classifier.eval()
        return self

    def _prepare(self, x: Tensor) -> Tensor:
        x = x.float()
        if self.clamp:
            x = straight_through_clamp(x)
        if self.view is not None:
            return self.view(x)
        if self.input_size is not None and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False, antialias=True)
        return x

    def _outputs(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits and (when used) intermediate features of one forward pass."""
        if not self.use_features:
            return self.classifier(x), {}
        net: Classifier = self.classifier
        last = net.layer_names[-1]
        feats = classifier_features(net, x, [*self.feature_layers, last])
        logits = net.head(net.pool(feats[last])).flatten(1)
        return logits, {k: feats[k] for k in self.feature_layers}

    def forward(self, sr: Tensor, hr: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            hr_logits, hr_feats = self._outputs(self._prepare(hr))
        sr_logits, sr_feats = self._outputs(self._prepare(sr))
        terms = {"semantic_kl": semantic_kl(sr_logits, hr_logits, self.temperature)}
        if self.use_features:
            l1 = torch.stack([F.l1_loss(sr_feats[k].float(), hr_feats[k].float())
                              for k in self.feature_layers]).mean()
            terms["semantic_feat"] = self.feature_weight * l1
        return terms


def load_semantic_prior(checkpoint_path: str | os.PathLike, device: str | torch.device = "cpu",
                        **kwargs) -> SemanticPriorLoss:
    """:class:`SemanticPriorLoss` on the fine-grained classifier of ``checkpoint_path`` (the
    ``classifier.pt`` of :func:`sfsr.training.classifier.train_classifier`), never on ImageNet
    weights. ``kwargs`` go to :class:`SemanticPriorLoss`. A path that is not a classifier checkpoint
    raises DataError naming it. After loading, every tensor of the prior is checked against the
    checkpoint's state dict; ``loss.meta`` holds the checkpoint's metadata (class_ids, input_size...)."""
    model, meta = load_classifier(checkpoint_path, "cpu")
    loss = SemanticPriorLoss(model, **kwargs)
    saved = read_classifier_checkpoint(checkpoint_path)["state_dict"]
    loaded = loss.classifier.state_dict()
    differ = [k for k, v in saved.items() if k not in loaded or not torch.equal(loaded[k], v)]
    if differ or set(loaded) != set(saved):
        raise RuntimeError(f"semantic prior from {checkpoint_path} does not hold the checkpoint's weights "
                           f"(differing tensors: {differ[:5]})")
    loss.meta = meta
    return loss.to(device)


# ------------------------------------------------------------------------ shared-feature head
class LRClassificationHead(nn.Module):
    """Global average pooling + linear layer over the generator's body features
    (``generator.encode(lr)``, ``generator.num_features`` channels) -> logits (N, num_classes).
    ``hidden``: widths of hidden layers (Linear + ReLU each) before the last linear layer; () is the
    single linear layer."""

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = ()) -> None:
        super().__init__()
        self.hidden = [int(h) for h in hidden]
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden layer widths must be positive, got {list(hidden)}")
        self.pool = nn.AdaptiveAvgPool2d(1)
        layers: list[nn.Module] = []
        width = in_features
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        self.mlp = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(self.mlp(self.pool(features).flatten(1)))


class SharedFeatureModel(nn.Module):
    """Generator + LR classification head on a shared encoder.

    ``forward(lr) -> (sr, logits)``: ``features = generator.encode(lr)`` is computed once and fed to
    both ``generator.decode`` (residual branch + base) and ``head``, so a classification loss on ``logits`` back-propagates
    into the encoder that also produces the SR image."""

    def __init__(self, generator: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.generator = generator
        self.head = head

    def forward(self, lr: Tensor) -> tuple[Tensor, Tensor]:
        features = self.generator.encode(lr)
        return self.generator.decode(features, lr), self.head(features)


@torch.no_grad()
def pseudo_labels(classifier: nn.Module, hr: Tensor) -> Tensor:
    """Argmax class index of the frozen HR classifier on ``hr`` (LongTensor N, no grad)."""
    with eval_mode(classifier):
        return classifier(hr.float()).argmax(dim=1)


@torch.no_grad()
def soft_targets(classifier: nn.Module, hr: Tensor, temperature: float = 1.0) -> Tensor:
    """``softmax(f(hr) / T)`` over classes of the frozen HR classifier (N x C, no grad)."""
    with eval_mode(classifier):
        return F.softmax(classifier(hr.float()).float() / float(temperature), dim=1)


def shared_classification_loss(logits: Tensor, hr: Tensor | None = None, classifier: nn.Module | None = None,
                               labels: Tensor | None = None, mode: str = "pseudo",
                               temperature: float = 1.0) -> Tensor:
    """Loss of the LR classification head.

    ``mode='pseudo'`` (default, label-free): cross-entropy with :func:`pseudo_labels` of the frozen
    HR classifier; ``'soft'`` (label-free): ``T^2 * KL(soft_targets || softmax(logits/T))``;
    ``'label'``: cross-entropy with the true ``labels`` (only where the config says so)."""
    if mode not in SHARED_MODES:
        raise ValueError(f"unknown shared classification mode {mode!r}; valid: {', '.join(SHARED_MODES)}")
    if mode == "label":
        if labels is None:
            raise ValueError("mode 'label' needs the true labels")
        return F.cross_entropy(logits.float(), labels.long())
    if classifier is None or hr is None:
        raise ValueError(f"mode {mode!r} needs the frozen HR classifier and the HR batch")
    if mode == "pseudo":
        return F.cross_entropy(logits.float(), pseudo_labels(classifier, hr))
    targets = soft_targets(classifier, hr, temperature)
    t = float(temperature)
    return F.kl_div(F.log_softmax(logits.float() / t, dim=1), targets, reduction="batchmean") * (t * t)
