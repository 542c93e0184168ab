"""Image classifiers on torchvision backbones, as in the semantic-SR work: the backbone's
convolutional features, global average pooling, and a 1x1-conv classification head.

Inputs are RGB in [0, 1]; the ImageNet mean/std normalisation is done INSIDE the model (a fixed
buffer), so SR outputs and HR images can be fed directly, and the same model can serve as the
feature network of :class:`sfsr.losses.PerceptualLoss`.

``model.features`` is an ``nn.Sequential`` with named stages so layers can be addressed by name:
ResNets: ``conv1, bn1, relu, maxpool, layer1, layer2, layer3, layer4``; VGGs: ``conv1_1, bn1_1,
relu1_1, ..., pool1, conv2_1, ..., pool5`` (see :func:`vgg_layer_names`). All ReLUs are made
non-inplace so an extracted intermediate feature is never overwritten by a later layer.

The classifier checkpoint (``classifier.pt`` of :func:`sfsr.training.classifier.train_classifier`)
is defined here, beside the model, since the prior, the judges and the evaluation read it too:
:func:`checkpoint_dict` (its contents), :func:`read_classifier_checkpoint`, :func:`load_classifier`,
and :func:`eval_transform`, the view of an image the classifier is validated and judged on.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from sfsr import io
from sfsr.errors import DataError, SfsrError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLASSIFIER_NAMES = ("resnet18", "resnet50", "vgg19_bn", "mobilenet_v2")


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
        if isinstance(m, (nn.ReLU, nn.ReLU6)):
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
    """A :class:`Classifier` on the torchvision backbone ``name`` ('resnet18', 'resnet50', 'vgg19_bn',
    'mobilenet_v2': its ``features`` stages '0'..'18', a family apart from the ResNets for an
    independent judge).

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
    elif name.startswith("mobilenet"):
        features = model.features
        channels = model.last_channel
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


# ------------------------------------------------------------------------------------ checkpoints
CHECKPOINT_KIND = "sfsr_classifier"
CHECKPOINT_FORMAT = 1


def checkpoint_dict(model: nn.Module, cfg: dict, class_ids: Sequence[int], class_names: Sequence[str],
                    **extra: Any) -> dict[str, Any]:
    """The classifier checkpoint: ``{"kind", "format", "arch": {"name", "num_classes",
    "input_size"}, "resize_size", "state_dict", "class_ids", "class_names", **extra}`` (plain types
    and CPU tensors, loadable with ``weights_only=True``)."""
    resize = cfg["resize_size"] or round(cfg["input_size"] * 256 / 224)
    return {"kind": CHECKPOINT_KIND, "format": CHECKPOINT_FORMAT,
            "arch": {"name": cfg["arch"], "num_classes": len(class_ids), "input_size": cfg["input_size"]},
            "resize_size": int(resize),
            "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "class_ids": [int(c) for c in class_ids], "class_names": [str(n) for n in class_names],
            **extra}


def read_classifier_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The raw checkpoint dict of :func:`checkpoint_dict`; DataError naming ``path`` when it is
    missing, unreadable or not a classifier checkpoint."""
    path = Path(path)
    ckpt = io.torch_load(path, "classifier checkpoint", "train the classifier first (train_classifier) "
                         "or fix the path", "delete it and re-train the classifier")
    arch = ckpt.get("arch") if isinstance(ckpt, dict) else None
    if (not isinstance(ckpt, dict) or ckpt.get("kind") != CHECKPOINT_KIND or not isinstance(arch, dict)
            or not {"name", "num_classes", "input_size"} <= set(arch) or "state_dict" not in ckpt):
        what = f"arch {arch}" if arch is not None else "no 'arch'"
        raise DataError(f"{str(path)!r} is not a classifier checkpoint written by train_classifier "
                        f"({what}; kind {ckpt.get('kind') if isinstance(ckpt, dict) else None!r}); "
                        "give the classifier.pt of the classifier training stage (a generator "
                        "checkpoint or a torchvision state dict is not one)")
    return ckpt


def load_classifier(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Classifier, dict]:
    """Load ``classifier.pt``; returns ``(model, meta)``: the model on ``device`` in eval mode with
    every parameter frozen (requires_grad False), and the checkpoint without its state dict plus
    ``class_to_index`` (class_id -> output index)."""
    ckpt = read_classifier_checkpoint(path)
    arch = ckpt["arch"]
    try:
        model = build_classifier(arch["name"], int(arch["num_classes"]), weights=None)
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except Exception as exc:
        raise DataError(f"classifier checkpoint {str(path)!r} does not match its architecture {arch} "
                        f"({type(exc).__name__}: {exc}); re-train the classifier") from exc
    model.requires_grad_(False)
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    meta["class_to_index"] = {int(c): i for i, c in enumerate(ckpt.get("class_ids", []))}
    meta["path"] = str(path)
    return model.to(device).eval(), meta


def eval_transform(input_size: int, resize_size: int) -> nn.Module:
    """Resize the short side to ``resize_size`` (antialiased bilinear) + centre crop ``input_size``."""
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize(resize_size, antialias=True), v2.CenterCrop(input_size)])
