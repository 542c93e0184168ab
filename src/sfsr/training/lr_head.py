"""The shared stage's LR classifier: the LR classification head on the generator's encoder, its
checkpoint ``lr_head.pt`` (written by the training loop, read by ``workflow_scripts/classify.py``) and
the classifier views it is validated and evaluated on.

* :func:`resize_square`, :func:`eval_view`, :func:`lr_eval_sizes`: how the frozen classifier and
  the LR head see an image (the preprocessing of :func:`sfsr.classification.classification_accuracy`).
* :class:`LRClassifier`, :func:`save_lr_head`, :func:`load_lr_classifier`: ``lr_head.pt``.
* :func:`validate_head`: top-1 of the LR head on whole validation images.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from sfsr import io
from sfsr.errors import DataError
from sfsr.models import load_generator
from sfsr.semantic import LRClassificationHead, SharedFeatureModel
from sfsr.tensors import eval_mode, to_float
from sfsr.training.data import ValidationImage

HEAD_KIND = "sfsr_lr_head"
HEAD_FORMAT = 1


def resize_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """Batch resized to ``size`` x ``size`` (bilinear, antialiased) as the semantic prior does;
    unchanged when it already has that size."""
    x = x.float()
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                           antialias=True)


def eval_view(image: np.ndarray, input_size: int, resize_size: int) -> torch.Tensor:
    """uint8 HxWx3 -> float 1x3xSxS in [0, 1]: short side resized to ``resize_size`` (antialiased
    bilinear), centre crop ``input_size`` - the preprocessing of
    :func:`sfsr.classification.classification_accuracy` (without its normalisation)."""
    from torchvision.transforms.v2 import functional as TF

    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    t = TF.center_crop(TF.resize(t, [int(resize_size)], antialias=True), [int(input_size)] * 2)
    return to_float(t[None])


def lr_eval_sizes(input_size: int, resize_size: int, scale: int) -> tuple[int, int]:
    """``(input_size, resize_size)`` for LR images given the HR classifier's: both divided by the
    scale (rounded, at least 1), so the LR head sees the field of view the classifier sees on the
    HR image, at LR resolution."""
    return max(1, round(input_size / scale)), max(1, round(resize_size / scale))


class LRClassifier(nn.Module):
    """LR image batch (N, 3, h, w) in [0, 1] -> logits (N, num_classes): ``head(generator.encode(lr))``.

    Attributes for :func:`sfsr.classification.classification_accuracy` on a folder of LR images:
    ``input_size``/``resize_size`` (LR side: the classifier's divided by ``scale``), ``class_ids``.
    It takes [0, 1] RGB, so call classification_accuracy with ``normalize=False``."""

    def __init__(self, generator: nn.Module, head: nn.Module, *, scale: int, class_ids: Sequence[int],
                 input_size: int, resize_size: int) -> None:
        super().__init__()
        self.generator = generator
        self.head = head
        self.scale = int(scale)
        self.class_ids = [int(c) for c in class_ids]
        self.input_size = int(input_size)
        self.resize_size = int(resize_size)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return self.head(self.generator.encode(lr))


def save_lr_head(path: str | os.PathLike, head: nn.Module, *, in_features: int, classifier_meta: dict,
                 scale: int, classifier_sizes: tuple[int, int], **extra: Any) -> None:
    """Write ``lr_head.pt``: the head's weights, its classes, the LR view sizes
    (:func:`lr_eval_sizes` of the classifier's ``classifier_sizes``) and ``extra`` (plain values:
    mode, generator spec, classifier checkpoint, iterations, ema)."""
    cls_size, cls_resize = classifier_sizes
    lr_sizes = lr_eval_sizes(cls_size, cls_resize, scale)
    io.torch_save(path, {
        "kind": HEAD_KIND, "format": HEAD_FORMAT, "in_features": int(in_features),
        "num_classes": int(classifier_meta["arch"]["num_classes"]), "hidden": list(getattr(head, "hidden", [])),
        "state_dict": {k: v.detach().cpu().clone() for k, v in head.state_dict().items()},
        "class_ids": [int(c) for c in classifier_meta.get("class_ids", [])],
        "class_names": [str(n) for n in classifier_meta.get("class_names", [])],
        "scale": int(scale), "input_size": lr_sizes[0], "resize_size": lr_sizes[1],
        "classifier_input_size": cls_size, "classifier_resize_size": cls_resize, **extra})


def load_lr_classifier(generator_ckpt: str | os.PathLike, head_ckpt: str | os.PathLike,
                       device: str | torch.device = "cpu") -> LRClassifier:
    """The shared stage's LR classifier: generator encoder (``generator.pt``) + head (``lr_head.pt``),
    frozen, in eval mode on ``device``. A missing or mismatching file raises DataError naming it."""
    generator, scale = load_generator(generator_ckpt, "cpu")
    head_ckpt = Path(head_ckpt)
    ckpt = io.torch_load(head_ckpt, "LR head checkpoint", "train the shared stage first",
                         "delete it and re-run the shared stage")
    if not isinstance(ckpt, dict) or ckpt.get("kind") != HEAD_KIND:
        raise DataError(f"{str(head_ckpt)!r} is not an LR head checkpoint of the shared stage (lr_head.pt)")
    if int(ckpt["in_features"]) != int(generator.num_features) or int(ckpt["scale"]) != scale:
        raise DataError(f"LR head {str(head_ckpt)!r} ({ckpt['in_features']} features, x{ckpt['scale']}) "
                        f"does not fit generator {str(generator_ckpt)!r} ({generator.num_features} "
                        f"features, x{scale}); use the generator.pt of the same shared run")
    head = LRClassificationHead(int(ckpt["in_features"]), int(ckpt["num_classes"]), ckpt.get("hidden", []))
    head.load_state_dict(ckpt["state_dict"], strict=True)
    model = LRClassifier(generator, head, scale=scale, class_ids=ckpt["class_ids"],
                         input_size=ckpt["input_size"], resize_size=ckpt["resize_size"])
    model.requires_grad_(False)
    return model.to(device).eval()


@torch.no_grad()
def validate_head(model: SharedFeatureModel, images: Sequence[ValidationImage], labels: Sequence[int | None],
                  classifier: nn.Module, hr_sizes: tuple[int, int], scale: int,
                  device: torch.device) -> float:
    """Top-1 of the LR head on whole validation images, each preprocessed as classification_accuracy
    does (LR: :func:`lr_eval_sizes`); the target is the true label where given, else the frozen
    classifier's prediction on the HR image (its own preprocessing ``hr_sizes``)."""
    lr_sizes = lr_eval_sizes(*hr_sizes, scale)
    correct = []
    with eval_mode(model):
        for item, label in zip(images, labels):
            if label is None:
                label = int(classifier(eval_view(item.hr, *hr_sizes).to(device)).argmax(1))
            x = eval_view(item.lr, *lr_sizes).to(device)
            pred = int(model.head(model.generator.encode(x)).argmax(1))
            correct.append(pred == int(label))
    return float(np.mean(correct)) if correct else math.nan
