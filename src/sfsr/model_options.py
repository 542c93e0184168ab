"""The generators' names and options (and the discriminators', and the target modes of the shared
stage's LR classification head), torch-free, so a configuration can be checked when the workflow is
parsed (before any job starts) without importing torch. ``sfsr.models`` builds from it."""

from __future__ import annotations

from typing import Any

SUPPORTED_SCALES = (2, 3, 4, 8)
#: what a generator's output is added to (sfsr.models.residual)
BASES = ("none", "bilinear", "bicubic")

#: keyword arguments each generator accepts and their standard values. ``base``: what each paper
#: adds to the network's output (docs/models.md): the SRGAN paper's SRResNet, EDSR and ESRGAN's RRDBNet
#: predict the image itself; BasicSR's MSRResNet adds a bilinear upsampling.
GENERATOR_KWARGS: dict[str, dict[str, Any]] = {
    "srresnet": {"num_blocks": 16, "num_features": 64, "use_bn": True, "base": "none"},
    "msrresnet": {"num_blocks": 16, "num_features": 64, "use_bn": False, "base": "bilinear"},
    "edsr_baseline": {"num_blocks": 16, "num_features": 64, "res_scale": 1.0, "base": "none"},
    "edsr": {"num_blocks": 32, "num_features": 256, "res_scale": 0.1, "base": "none"},
    "rrdbnet": {"num_blocks": 23, "num_features": 64, "growth": 32, "res_scale": 0.2, "base": "none"},
    "autoencoder": {"num_blocks": 2, "num_features": 64, "negative_slope": 0.2, "base": "none"},
    # reference-based SR (refsr_models, stage refsr): EDSR-baseline trunk + SSEN alignment (paper: 3
    # deformable layers, non-local offset estimator); use_reference false: the no-reference control
    "ssen": {"num_blocks": 16, "num_features": 64, "extract_blocks": 5, "num_deform": 3, "non_local": True,
             "offset_features": 64, "use_reference": True, "ref_downsample": "conv", "base": "none"},
}
#: Generators that take a reference image: forward(lr, ref).
REFERENCE_GENERATORS = ("ssen",)
GENERATOR_NAMES = tuple(GENERATOR_KWARGS)
#: SSEN's deformable alignment layers: 1..MAX_DEFORM (sfsr.models.ssen; the paper uses 3).
MAX_DEFORM = 5
#: options that take true/false, and those that take a number
BOOL_OPTIONS = ("use_bn", "non_local", "use_reference")
NUMBER_OPTIONS = ("res_scale", "negative_slope")
POSITIVE_INT_OPTIONS = ("num_blocks", "num_features", "growth", "extract_blocks", "num_deform", "offset_features")

#: keyword arguments each discriminator accepts (sfsr.models.build_discriminator) and their
#: defaults, the constructors' own (tests/test_config_checks.py compares them); the gan stage builds
#: ``cls(**kwargs)``, so the workflow checks a config's kwargs against this table when it is parsed.
DISCRIMINATOR_KWARGS: dict[str, dict[str, Any]] = {
    "vgg": {"in_channels": 3, "num_features": 64, "pool_size": 6, "dense_features": 1024},
    "patchgan": {"in_channels": 3, "num_features": 64, "n_layers": 3},
}

#: How the shared stage's classification targets are made (sfsr.semantic.shared_classification_loss).
SHARED_MODES = ("pseudo", "soft", "label")


class OptionError(ValueError):
    """A bad option of a generator or discriminator; ``option``: the option's name when one value is
    at fault (None for unknown names, which the message lists)."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _with_defaults(kind: str, name: str, table: dict[str, dict[str, Any]], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``table[name]``'s defaults updated by ``kwargs``; :class:`OptionError` for an unknown name or
    option (``kind``: "generator" or "discriminator", for the message)."""
    if name not in table:
        raise OptionError(f"unknown {kind} {name!r}; valid names: {', '.join(table)}")
    unknown = sorted(set(kwargs) - set(table[name]))
    if unknown:
        raise OptionError(f"unknown option(s) {unknown} for {kind} {name!r}; valid: {sorted(table[name])}")
    return {**table[name], **kwargs}


def generator_kwargs(name: str, scale: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Validate name/scale/kwargs; return the full keyword set (defaults + overrides). Raises
    ValueError listing the valid names/options/values."""
    full = _with_defaults("generator", name, GENERATOR_KWARGS, kwargs)
    if scale not in SUPPORTED_SCALES:
        raise OptionError(f"unsupported scale {scale!r} for {name}; supported: {list(SUPPORTED_SCALES)}")
    if full.get("ref_downsample", "conv") not in ("conv", "unshuffle"):
        raise OptionError(f"option 'ref_downsample' of generator {name!r} must be 'conv' or 'unshuffle', "
                          f"got {full['ref_downsample']!r}", "ref_downsample")
    if full["base"] not in BASES:
        raise OptionError(f"unknown base {full['base']!r} for generator {name!r}; valid: {', '.join(BASES)}",
                          "base")
    for key in POSITIVE_INT_OPTIONS:
        if key in full and not _positive_int(full[key]):
            raise OptionError(f"option {key!r} of generator {name!r} must be a positive integer, "
                              f"got {full[key]!r}", key)
    if "num_deform" in full and full["num_deform"] > MAX_DEFORM:
        raise OptionError(f"option 'num_deform' of generator {name!r} is {full['num_deform']!r}; it takes 1 to "
                          f"{MAX_DEFORM} deformable alignment layers (the paper uses 3)", "num_deform")
    for key in BOOL_OPTIONS:
        if key in full and not isinstance(full[key], bool):
            raise OptionError(f"option {key!r} of generator {name!r} must be true or false, got {full[key]!r}",
                              key)
    for key in NUMBER_OPTIONS:
        if key in full and (isinstance(full[key], bool) or not isinstance(full[key], (int, float))):
            hint = " (YAML 1.1 reads 1e-1 as text: write 1.0e-1)" if isinstance(full[key], str) else ""
            raise OptionError(f"option {key!r} of generator {name!r} must be a number, got {full[key]!r}{hint}",
                              key)
    return full


def discriminator_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Validate a discriminator's name and kwargs (torch-free); return the full keyword set. Raises
    :class:`OptionError` listing the valid names/options."""
    full = _with_defaults("discriminator", name, DISCRIMINATOR_KWARGS, kwargs)
    for key, value in full.items():
        if not _positive_int(value):
            raise OptionError(f"option {key!r} of discriminator {name!r} must be a positive integer, got "
                              f"{value!r}", key)
    if full["in_channels"] != 3:
        raise OptionError(f"option 'in_channels' of discriminator {name!r} is {full['in_channels']!r}, but the "
                          "discriminator sees RGB images: 3 (or leave it out)", "in_channels")
    return full
