"""SR generators, discriminators, classifiers and generator checkpoints.

Plain functions and one table:

* :data:`GENERATORS`: name -> (class, default kwargs) of every generator (``srresnet``,
  ``msrresnet``, ``edsr_baseline``, ``edsr``, ``rrdbnet``, ``autoencoder``, and the reference-based
  ``ssen`` whose forward is ``forward(lr, ref)``); the defaults are the
  torch-free :data:`sfsr.model_options.GENERATOR_KWARGS`. :func:`build_generator` builds from it. Generators take float RGB NCHW in [0, 1] and return the SR image, approximately in
  [0, 1] (never clamped inside). Every generator has ``.encode(lr)`` (body features at LR size),
  ``.upsample(features)`` (the residual branch), ``.decode(features, lr)``, ``.num_features``,
  ``.scale`` and ``.base``; ``forward(lr) = decode(encode(lr), lr) = upsample(encode(lr)) + base(lr)``
  (:mod:`sfsr.models.residual`: option ``base`` none / bilinear / bicubic).
* :func:`build_discriminator` (``vgg``, ``patchgan``), :func:`build_classifier`.
* Checkpoints: :func:`generator_spec`, :func:`save_generator`, :func:`load_generator`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sfsr import io
from sfsr.errors import DataError
from sfsr.model_options import BASES, GENERATOR_KWARGS, GENERATOR_NAMES, SUPPORTED_SCALES, generator_kwargs
from sfsr.models.autoencoder import ConvAutoencoderSR
from sfsr.models.classifier import Classifier, build_classifier, classifier_features
from sfsr.models.discriminators import PatchDiscriminator, VGGDiscriminator
from sfsr.models.edsr import EDSR
from sfsr.models.residual import ResidualBase, SRGenerator, bicubic_upsample
from sfsr.models.rrdbnet import RRDBNet
from sfsr.models.srresnet import SRResNet
from sfsr.models.ssen import SSEN

#: name -> (class, default kwargs): every generator, built as ``cls(scale, **kwargs)``. The defaults
#: live in the torch-free sfsr.model_options (the workflow checks a config's kwargs against them).
GENERATORS: dict[str, tuple[type[SRGenerator], dict[str, Any]]] = {
    "srresnet": (SRResNet, GENERATOR_KWARGS["srresnet"]),
    "msrresnet": (SRResNet, GENERATOR_KWARGS["msrresnet"]),
    "edsr_baseline": (EDSR, GENERATOR_KWARGS["edsr_baseline"]),
    "edsr": (EDSR, GENERATOR_KWARGS["edsr"]),
    "rrdbnet": (RRDBNet, GENERATOR_KWARGS["rrdbnet"]),
    "autoencoder": (ConvAutoencoderSR, GENERATOR_KWARGS["autoencoder"]),
    "ssen": (SSEN, GENERATOR_KWARGS["ssen"]),
}
DISCRIMINATOR_NAMES = ("vgg", "patchgan")

__all__ = [
    "GENERATORS", "GENERATOR_NAMES", "DISCRIMINATOR_NAMES", "SUPPORTED_SCALES", "BASES",
    "ResidualBase", "SRGenerator", "bicubic_upsample",
    "build_generator", "build_discriminator", "build_classifier", "classifier_features",
    "generator_spec", "save_generator", "load_generator", "count_parameters",
    "Classifier", "ConvAutoencoderSR", "EDSR", "PatchDiscriminator", "RRDBNet", "SRResNet", "SSEN",
    "VGGDiscriminator",
]


def _generator_kwargs(name: str, scale: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Validate name/scale/kwargs; return the full keyword set (sfsr.model_options, torch-free)."""
    return generator_kwargs(name, scale, kwargs)


def build_generator(name: str, scale: int, **kwargs: Any) -> nn.Module:
    """Build generator ``name`` for ``scale`` (2, 3, 4 or 8). ``kwargs`` override the standard
    configuration: num_blocks, num_features, use_bn (srresnet/msrresnet), res_scale (edsr*,
    rrdbnet), growth (rrdbnet), negative_slope (autoencoder), base (every generator: none / bilinear / bicubic, the upsampled
    input the output is added to; the residual branch's last layer then starts at zero). Unknown names/options raise ValueError listing the valid ones."""
    kw = _generator_kwargs(name, scale, kwargs)  # validates the name, scale and options
    cls, _ = GENERATORS[name]
    return cls(scale, **kw)


def build_discriminator(name: str, **kwargs: Any) -> nn.Module:
    """``vgg`` (SRGAN discriminator with adaptive pooling, logits (N,1); kwargs in_channels,
    num_features, pool_size, dense_features) or ``patchgan`` (pix2pix 70x70, logit map; kwargs
    in_channels, num_features, n_layers)."""
    if name == "vgg":
        return VGGDiscriminator(**kwargs)
    elif name == "patchgan":
        return PatchDiscriminator(**kwargs)
    raise ValueError(f"unknown discriminator {name!r}; valid names: {', '.join(DISCRIMINATOR_NAMES)}")


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def generator_spec(name: str, scale: int, **kwargs: Any) -> dict[str, Any]:
    """The JSON-able description a checkpoint stores to rebuild the generator (validated here).
    ``base`` is always written out, so a checkpoint keeps its meaning if a default changes."""
    full = _generator_kwargs(name, scale, kwargs)
    return {"name": name, "scale": int(scale), "kwargs": {**kwargs, "base": full["base"]}}


def save_generator(path: str | os.PathLike, model: nn.Module, spec: dict[str, Any], **extra: Any) -> None:
    """Write ``{"arch": spec, "state_dict": ..., **extra}`` atomically (``extra``: e.g. epoch,
    metrics; keep it to plain types, tensors and dicts so ``weights_only`` loading works)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    io.torch_save(path, {"arch": spec, "state_dict": state, **extra})


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, int]:
    """Load a checkpoint written by :func:`save_generator`; returns (model in eval mode, scale).

    A missing, corrupt or mismatching file raises :class:`DataError` naming the path."""
    path = Path(path)
    ckpt = io.torch_load(path, "generator checkpoint", "train the model first or fix the path",
                         "it is corrupt or not a torch file - delete it and re-run training")
    try:
        arch = ckpt["arch"]
        model = build_generator(arch["name"], arch["scale"], **arch.get("kwargs", {}))
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except Exception as exc:
        raise DataError(f"generator checkpoint {str(path)!r} does not describe a usable generator "
                        f"({type(exc).__name__}: {exc}); it was not written by save_generator or by "
                        "this version - re-run training") from exc
    return model.to(device).eval(), int(arch["scale"])
