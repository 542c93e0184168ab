"""Image classifiers on torchvision backbones, as in the semantic-SR work: the backbone's
convolutional features, global average pooling, and a 1x1-conv classification head.

Inputs are RGB in [0, 1]; the ImageNet mean/std normalisation is done INSIDE the model (a fixed
buffer), so SR outputs and HR images can be fed directly, and the same model can serve as the
feature network of :class:`sfsr.losses.PerceptualLoss`.

``model.features`` is an ``nn.Sequential`` with named stages so layers can be addressed by name:
ResNets: ``conv1, bn1, relu, maxpool, layer1, layer2, layer3, layer4``; VGGs: ``conv1_1, bn1_1,
relu1_1, ..., pool1, conv2_1, ..., pool5`` (see :func:`vgg_layer_names`). All ReLUs are made
non-inplace so an extracted intermediate feature is never overwritten by a later layer.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from sfsr import io
from sfsr.errors import DataError, SfsrError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLASSIFIER_NAMES = ("resnet18", "resnet50", "vgg19_bn")


def vgg_layer_names(features: nn.Sequential) -> list[str]:
    """Names for the modules of a torchvision VGG ``features`` stack (with or without BN):
    ``convB_I``, ``bnB_I``, ``reluB_I`` for the I-th conv of block B, ``poolB`` for its max-pool.
    For vgg19: index 0 -> conv1_1, 1 -> relu1_1, ..., 34 -> conv5_4, 35 -> relu5_4, 36 -> pool5."""
    names: list[str] = []
    block, conv = 1, 0
    for module in features:
        if isinstance(module, nn.Conv2d):
            conv += 1
            names.append(f"conv{block}_{conv}")
        elif isinstance(module, nn.BatchNorm2d):
            names.append(f"bn{block}_{conv}")
        elif isinstance(module, nn.ReLU):
            names.append(f"relu{block}_{conv}")
        elif isinstance(module, nn.MaxPool2d):
            names.append(f"pool{block}")
            block, conv = block + 1, 0
        else:
            raise TypeError(f"unexpected module in VGG features: {module!r}")
    return names


def named_vgg_features(features: nn.Sequential) -> nn.Sequential:
    """The same modules as a VGG ``features`` stack, renamed with :func:`vgg_layer_names`."""
    return nn.Sequential(OrderedDict(zip(vgg_layer_names(features), features)))


def _disable_inplace(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False


def _build_with_state(name: str, state: dict) -> nn.Module:
    """Build torchvision's ``name`` on the meta device (no costly random init) and assign ``state``."""
    import torchvision.models as tv_models

    with torch.device("meta"):
        model = getattr(tv_models, name)(weights=None)
    model.load_state_dict(state, strict=True, assign=True)
    left = [k for k, v in [*model.named_parameters(), *model.named_buffers()] if v.is_meta]
    if left:
        raise RuntimeError(f"tensors not set by the state dict: {left}")
    return model


def load_torchvision_backbone(name: str, weights: str | Path | None, alternatives: str) -> nn.Module:
    """Build the torchvision model ``name`` (e.g. 'resnet18', 'vgg19') with
    ``weights`` None (random init), 'imagenet' (torchvision's DEFAULT weights, downloaded or taken
    from the torch hub cache) or a path to a local state dict of that torchvision model.

    When the ImageNet download fails, raises :class:`SfsrError` whose message ends with
    ``alternatives`` (what the user can do instead)."""
    import torchvision.models as tv_models  # here, not at the top: SR-only jobs never pay its import

    if weights is None:
        return getattr(tv_models, name)(weights=None)
    if str(weights).lower() == "imagenet":
        default = tv_models.get_model_weights(name).DEFAULT
        try:
            state = default.get_state_dict(progress=False, check_hash=True)
        except Exception as exc:  # network, proxy, hash or cache errors all end up here
            raise SfsrError(
                f"could not get torchvision's ImageNet weights {default} for {name} from {default.url} "
                f"({type(exc).__name__}: {exc}); this machine is probably offline. {alternatives}") from exc
        return _build_with_state(name, state)
    path = Path(weights)
    state = io.torch_load(path, f"{name} weights file", f"give an existing .pth state dict of torchvision's "
                          f"{name}, 'imagenet', or null. {alternatives}",
                          f"give a state dict of torchvision's {name}. {alternatives}")
    try:
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        return _build_with_state(name, state)
    except Exception as exc:
        raise DataError(f"weights file {str(path)!r} is not a usable state dict of torchvision's {name} "
                        f"({type(exc).__name__}: {exc}). {alternatives}") from exc


class Classifier(nn.Module):
    """Backbone features -> global average pooling -> 1x1 conv head -> logits (N, num_classes)."""

    def __init__(self, backbone: str, features: nn.Sequential, feature_channels: int,
                 num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.feature_channels = feature_channels
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        _disable_inplace(features)
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Conv2d(feature_channels, num_classes, 1)

    @property
    def layer_names(self) -> list[str]:
        """Names usable with :func:`classifier_features`, in order."""
        return [name for name, _ in self.features.named_children()]

    def normalize(self, x: Tensor) -> Tensor:
        """[0,1] RGB -> ImageNet-normalised input."""
        return (x - self.mean) / self.std

    def forward(self, x: Tensor) -> Tensor:
        """RGB batch (N,3,H,W) in [0,1] -> class logits (N, num_classes)."""
        return self.head(self.pool(self.features(self.normalize(x)))).flatten(1)


def build_classifier(name: str, num_classes: int, *, weights: str | Path | None = None) -> Classifier:
    """A :class:`Classifier` on the torchvision backbone ``name`` ('resnet18', 'resnet50', 'vgg19_bn').

    ``weights``: None = from scratch; 'imagenet' = torchvision's DEFAULT ImageNet weights (needs the
    network or the torch hub cache); or a path to a local .pth state dict of the torchvision model.
    The head is always new (num_classes outputs)."""
    if name not in CLASSIFIER_NAMES:
        raise ValueError(f"unknown classifier {name!r}; valid names: {', '.join(CLASSIFIER_NAMES)}")
    alternatives = ("Either copy the torchvision weights file to this machine and set the classifier "
                    "weights to its local path, or set weights: null to train from scratch.")
    model = load_torchvision_backbone(name, weights, alternatives)
    if name.startswith("resnet"):
        stages = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
        features = nn.Sequential(OrderedDict((s, getattr(model, s)) for s in stages))
        channels = model.fc.in_features
    else:
        features = named_vgg_features(model.features)
        channels = 512
    return Classifier(name, features, channels, num_classes)


def classifier_features(model: Classifier, x: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
    """Outputs of the named stages of ``model.features`` for a [0,1] RGB batch ``x``.

    Runs only as far as the deepest requested layer. Unknown names raise ValueError."""
    names = model.layer_names
    unknown = [layer for layer in layers if layer not in names]
    if unknown:
        raise ValueError(f"unknown layer(s) {unknown} for {model.backbone}; valid: {', '.join(names)}")
    wanted = set(layers)
    last = max(names.index(layer) for layer in layers)
    out: dict[str, Tensor] = {}
    h = model.normalize(x)
    for i, (name, module) in enumerate(model.features.named_children()):
        h = module(h)
        if name in wanted:
            out[name] = h
        if i == last:
            break
    return out
