"""SR generators, discriminators, classifiers and generator checkpoints.

Plain functions and one table:

* :data:`GENERATORS`: name -> (class, default kwargs) of every generator (``srresnet``,
  ``msrresnet``, ``edsr_baseline``, ``edsr``, ``rrdbnet``, ``autoencoder``, and the reference-based
  ``ssen`` whose forward is ``forward(lr, ref)``), built from the torch-free table
  :data:`sfsr.model_options.GENERATORS` (the defaults: the class's signature, and a preset's own values,
  :data:`sfsr.model_options.GENERATOR_KWARGS`). :func:`build_generator` builds from it. Generators take float RGB NCHW in [0, 1] and return the SR image, approximately in
  [0, 1] (never clamped inside). Every generator has ``.encode(lr)`` (body features at LR size),
  ``.upsample(features)`` (the residual branch), ``.decode(features, lr)``, ``.num_features``,
  ``.scale`` and ``.base``; ``forward(lr) = decode(encode(lr), lr) = upsample(encode(lr)) + base(lr)``
  (:mod:`sfsr.models.residual`: option ``base`` none / bilinear / bicubic).
* :func:`build_discriminator` (``vgg``, ``patchgan``), :func:`build_classifier`.
* Checkpoints: :func:`generator_spec`, :func:`save_generator`, :func:`load_generator`.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sfsr import io
from sfsr.errors import DataError
from sfsr import model_options
from sfsr.model_options import BASES, GENERATOR_KWARGS, GENERATOR_NAMES, SUPPORTED_SCALES, generator_kwargs
from sfsr.models.autoencoder import ConvAutoencoderSR
from sfsr.models.classifier import Classifier, build_classifier, classifier_features
from sfsr.models.discriminators import PatchDiscriminator, VGGDiscriminator
from sfsr.models.edsr import EDSR
from sfsr.models.msrresnet import MSRResNet
from sfsr.models.residual import ResidualBase, SRGenerator, bicubic_upsample
from sfsr.models.rrdbnet import RRDBNet
from sfsr.models.srresnet import SRResNet
from sfsr.models.ssen import SSEN



def model_class(module: str, cls: str) -> type[nn.Module]:
    """The class ``cls`` of ``module`` (an entry of the tables of :mod:`sfsr.model_options`)."""
    return getattr(importlib.import_module(module), cls)


#: name -> (class, default kwargs): every generator of :data:`sfsr.model_options.GENERATORS`, built as
#: ``cls(scale, **kwargs)``. The defaults are the class's signature (and a preset's own values), read
#: torch-free by sfsr.model_options (the workflow checks a config's kwargs against them).
GENERATORS: dict[str, tuple[type[SRGenerator], dict[str, Any]]] = {
    name: (model_class(module, cls), GENERATOR_KWARGS[name])
    for name, (module, cls, _) in model_options.GENERATORS.items()}
DISCRIMINATOR_NAMES = tuple(model_options.DISCRIMINATORS)

__all__ = [
    "GENERATORS", "GENERATOR_NAMES", "DISCRIMINATOR_NAMES", "SUPPORTED_SCALES", "BASES",
    "ResidualBase", "SRGenerator", "bicubic_upsample",
    "build_generator", "build_discriminator", "build_classifier", "classifier_features",
    "generator_spec", "save_generator", "load_generator", "checkpoint_parts", "check_generator_weights",
    "legacy_generator", "count_parameters",
    "Classifier", "ConvAutoencoderSR", "EDSR", "MSRResNet", "PatchDiscriminator", "RRDBNet", "SRResNet", "SSEN",
    "VGGDiscriminator",
]


def _generator_kwargs(name: str, scale: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Validate name/scale/kwargs; return the full keyword set (sfsr.model_options, torch-free)."""
    return generator_kwargs(name, scale, kwargs)


def build_generator(name: str, scale: int, **kwargs: Any) -> nn.Module:
    """Build generator ``name`` for ``scale`` (2, 3, 4 or 8). ``kwargs`` override the standard
    configuration: num_blocks, num_features, use_bn (srresnet), res_scale (edsr*,
    rrdbnet), growth (rrdbnet), negative_slope (autoencoder), base (every generator: none / bilinear / bicubic, the upsampled
    input the output is added to; the residual branch's last layer then starts at zero). Unknown names/options raise ValueError listing the valid ones."""
    kw = _generator_kwargs(name, scale, kwargs)  # validates the name, scale and options
    cls, _ = GENERATORS[name]
    return cls(scale, **kw)


def build_discriminator(name: str, **kwargs: Any) -> nn.Module:
    """``vgg`` (SRGAN discriminator with adaptive pooling, logits (N,1); kwargs in_channels,
    num_features, pool_size, dense_features) or ``patchgan`` (pix2pix 70x70, logit map; kwargs
    in_channels, num_features, n_layers)."""
    if name in model_options.DISCRIMINATORS:
        return model_class(*model_options.DISCRIMINATORS[name])(**kwargs)
    raise ValueError(f"unknown discriminator {name!r}; valid names: {', '.join(DISCRIMINATOR_NAMES)}")


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


#: Options a checkpoint always spells out, defaults included, so it keeps its meaning if a default
#: changes; each with the value a checkpoint written before the option existed meant (None: today's
#: default; ``match_gate``, SSEN's only: such a model was trained ungated).
SPELLED_OUT: dict[str, Any] = {"base": None, "match_gate": False}


def generator_spec(name: str, scale: int, **kwargs: Any) -> dict[str, Any]:
    """The JSON-able description a checkpoint stores to rebuild the generator (validated here),
    with each of :data:`SPELLED_OUT` the generator has written out."""
    full = _generator_kwargs(name, scale, kwargs)
    return {"name": name, "scale": int(scale),
            "kwargs": {**kwargs, **{k: full[k] for k in SPELLED_OUT if k in full}}}


def save_generator(path: str | os.PathLike, model: nn.Module, spec: dict[str, Any], **extra: Any) -> None:
    """Write ``{"arch": spec, "state_dict": ..., **extra}`` atomically (``extra``: e.g. epoch,
    metrics; keep it to plain types, tensors and dicts so ``weights_only`` loading works)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    io.torch_save(path, {"arch": spec, "state_dict": state, **extra})


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, int]:
    """Load a checkpoint written by :func:`save_generator`; returns (model in eval mode, scale).

    A missing, unreadable, corrupt or unsafe file, a spec that does not match its weights and
    non-finite weights raise a one-line :class:`DataError` naming the path
    (:func:`check_generator_weights`); a spec is checked against the weights before anything of
    its size is built."""
    path = Path(path)
    ckpt = io.torch_load(path, "generator checkpoint", "train the model first or fix the path",
                         "delete it and re-run training")
    name, scale, kwargs, state = checkpoint_parts(path, ckpt)
    check_generator_weights(path, name, scale, kwargs, state)
    try:
        model = build_generator(name, scale, **kwargs)
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # checked above: not expected
        raise DataError(f"generator checkpoint {path} does not describe a usable generator "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); it was not written by "
                        "save_generator or by this version - re-run training") from exc
    return model.to(device).eval(), scale


def checkpoint_parts(path: Path, ckpt: Any) -> tuple[str, int, dict[str, Any], dict[str, torch.Tensor]]:
    """(name, scale, kwargs, state dict) of a loaded checkpoint, validated as to form and options: the
    graph its weights are (:func:`legacy_generator`) and each of :data:`SPELLED_OUT` it lacks at what it
    meant when it was written. A one-line :class:`DataError` naming ``path`` where it is unusable."""
    def unusable(why: str) -> DataError:
        return DataError(f"generator checkpoint {path} does not describe a usable generator ({why}); it "
                         "was not written by save_generator or by this version - re-run training")

    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("arch"), dict) or "state_dict" not in ckpt:
        keys = sorted(map(str, ckpt))[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise unusable(f"expected a dict with 'arch' and 'state_dict', found {keys}")
    arch, state = ckpt["arch"], ckpt["state_dict"]
    name, scale, kwargs = arch.get("name"), arch.get("scale"), arch.get("kwargs", {})
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise unusable("its 'state_dict' is not a dict of tensors")
    if not isinstance(name, str) or isinstance(scale, bool) or not isinstance(scale, int) or not isinstance(kwargs, dict):
        raise unusable(f"its spec {_short(arch)} needs a name, an integer scale and a dict of kwargs")
    name, kwargs = legacy_generator(name, kwargs, state)
    try:
        full = _generator_kwargs(name, scale, kwargs)
    except ValueError as exc:
        raise unusable(f"its spec is invalid: {exc}") from None
    before = {k: v for k, v in SPELLED_OUT.items() if v is not None and k in full and k not in kwargs}
    return name, int(scale), {**kwargs, **before}, state


#: A state-dict key that only the graph ``msrresnet`` named until 2026-12-07 has (SRResNet without
#: batch norm: its conv after the residual blocks; BasicSR's MSRResNet has none).
LEGACY_MSRRESNET_KEY = "body_tail.0.weight"


def legacy_generator(name: str, kwargs: dict[str, Any], state: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The (name, kwargs) that rebuild a checkpoint's weights. ``msrresnet`` named SRResNet without
    batch norm (9x9 head and tail, PReLU) until 2026-12-07, when it became BasicSR's MSRResNet
    (:mod:`sfsr.models.msrresnet`); a checkpoint of the old graph (it has
    :data:`LEGACY_MSRRESNET_KEY`) is that graph, ``srresnet`` with ``use_bn: false`` and its base
    (bilinear, the old default, where unstated), so what it was trained as is what it loads as."""
    if name == "msrresnet" and LEGACY_MSRRESNET_KEY in state:
        return "srresnet", {**kwargs, "use_bn": False, "base": kwargs.get("base", "bilinear")}
    return name, kwargs


def _short(obj: Any, limit: int = 200) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[:limit - 3] + "..."


#: options that set how many blocks (hence tensors) a generator has; each adds a fixed set of tensors
COUNT_OPTIONS = ("num_blocks", "extract_blocks", "num_deform")


def implied_tensor_count(name: str, scale: int, kwargs: dict[str, Any]) -> int:
    """The number of state-dict tensors generator ``name`` with ``kwargs`` has, without building it
    at its size: the generator is built on the ``meta`` device (no memory) with each of
    :data:`COUNT_OPTIONS` at 1 and at 2, and the count extrapolated linearly (each block adds the
    same tensors)."""
    full = _generator_kwargs(name, scale, kwargs)
    counts = {k: full[k] for k in COUNT_OPTIONS if k in full}

    def count(**override: int) -> int:
        with torch.device("meta"):
            return len(build_generator(name, scale, **{**kwargs, **{k: 1 for k in counts}, **override}).state_dict())

    base = count()
    return base + sum((count(**{k: 2}) - base) * (n - 1) for k, n in counts.items())


def check_generator_weights(path: str | os.PathLike, name: str, scale: int, kwargs: dict[str, Any],
                            state: dict[str, torch.Tensor]) -> None:
    """Refuse, in one line, weights that do not fit the generator their spec describes (a tensor
    count that the spec does not imply -- checked before the generator is built, so a spec of
    100,000 blocks costs nothing --, then names and shapes against the generator built on the
    ``meta`` device) and non-finite weights."""
    spec = f"{name} x{scale}" + (f" {_short(kwargs)}" if kwargs else "")
    prefix = f"{path}: the weights do not match the generator its spec describes ({spec})"
    damaged = "the file is damaged or was edited"
    try:
        implied = implied_tensor_count(name, scale, kwargs)
    except ValueError as exc:  # e.g. num_deform above SSEN's maximum
        raise DataError(f"{prefix}: {exc}; {damaged}") from None
    if implied != len(state):
        raise DataError(f"{prefix}: the spec implies {implied:,} tensors, the file holds {len(state):,}; {damaged}")
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in build_generator(name, scale, **kwargs).state_dict().items()}
    except ValueError as exc:
        raise DataError(f"{prefix}: {exc}; {damaged}") from None
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = [f"{len(missing)} tensors missing" + (f" (e.g. {missing[0]})" if missing else ""),
                 f"{len(unexpected)} not in the generator" + (f" (e.g. {unexpected[0]})" if unexpected else "")]
        raise DataError(f"{prefix}: {', '.join(parts)}; {damaged}")
    differ = [k for k in expected if tuple(state[k].shape) != expected[k]]
    if differ:
        k = differ[0]
        raise DataError(f"{prefix}: {len(differ)} tensors differ in shape, e.g. {k} {tuple(state[k].shape)} "
                        f"in the file vs {expected[k]}; {damaged}")
    weights = [v for v in state.values() if v.is_floating_point() or v.is_complex()]
    bad = sum(1 for v in weights if not bool(torch.isfinite(v).all()))
    if bad:
        raise DataError(f"{path}: {bad} of {len(weights)} weight tensors hold NaN/inf; the training "
                        "diverged or the file is damaged")
