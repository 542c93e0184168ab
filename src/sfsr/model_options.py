"""The generators' names and options, torch-free, so a configuration can be checked when the
workflow is parsed (before any job starts) without importing torch. ``sfsr.models`` builds from it."""

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


def generator_kwargs(name: str, scale: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Validate name/scale/kwargs; return the full keyword set (defaults + overrides). Raises
    ValueError listing the valid names/options/values."""
    if name not in GENERATOR_KWARGS:
        raise ValueError(f"unknown generator {name!r}; valid names: {', '.join(GENERATOR_NAMES)}")
    if scale not in SUPPORTED_SCALES:
        raise ValueError(f"unsupported scale {scale!r} for {name}; supported: {list(SUPPORTED_SCALES)}")
    allowed = GENERATOR_KWARGS[name]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for generator {name!r}; valid: {sorted(allowed)}")
    full = {**allowed, **kwargs}
    if full.get("ref_downsample", "conv") not in ("conv", "unshuffle"):
        raise ValueError(f"option 'ref_downsample' of generator {name!r} must be 'conv' or 'unshuffle', "
                         f"got {full['ref_downsample']!r}")
    if full["base"] not in BASES:
        raise ValueError(f"unknown base {full['base']!r} for generator {name!r}; valid: {', '.join(BASES)}")
    for key in ("num_blocks", "num_features", "growth", "extract_blocks", "num_deform", "offset_features"):
        if key in full and (isinstance(full[key], bool) or not isinstance(full[key], int) or full[key] < 1):
            raise ValueError(f"option {key!r} of generator {name!r} must be a positive integer, "
                             f"got {full[key]!r}")
    return full
