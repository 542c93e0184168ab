"""The generators' names and options (and the discriminators', and the target modes of the shared
stage's LR classification head), torch-free, so a configuration can be checked when the workflow is
parsed (before any job starts) without importing torch. ``sfsr.models`` builds from it."""

from __future__ import annotations

import ast
import functools
from pathlib import Path
from typing import Any

SUPPORTED_SCALES = (2, 3, 4, 8)
#: what a generator's output is added to (sfsr.models.residual)
BASES = ("none", "bilinear", "bicubic")

#: Every generator: name -> (module, class, the name's own values). Built as ``cls(scale, **kwargs)``
#: (sfsr.models.build_generator). Its options and their defaults live in one place, the class's
#: ``__init__`` signature (the keywords after ``scale`` whose defaults are literals; EDSR's
#: ``rgb_mean`` is a constant, not an option), read from the module's source with ``ast`` so this
#: module stays torch-free (the workflow checks a config's kwargs against them at parse time). The
#: third field holds a paper preset's own values where two names share a class. ``base``: what each
#: paper adds to the network's output (docs/models.md): the SRGAN paper's SRResNet, EDSR and ESRGAN's
#: RRDBNet predict the image itself; BasicSR's MSRResNet adds a bilinear upsampling.
GENERATORS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "srresnet": ("sfsr.models.srresnet", "SRResNet", {}),
    "msrresnet": ("sfsr.models.msrresnet", "MSRResNet", {}),
    "edsr_baseline": ("sfsr.models.edsr", "EDSR", {}),
    "edsr": ("sfsr.models.edsr", "EDSR", {"num_blocks": 32, "num_features": 256, "res_scale": 0.1}),
    "rrdbnet": ("sfsr.models.rrdbnet", "RRDBNet", {}),
    "autoencoder": ("sfsr.models.autoencoder", "ConvAutoencoderSR", {}),
    # reference-based SR (refsr_models, stage refsr): EDSR-baseline trunk + SSEN alignment (paper: 3
    # deformable layers, non-local offset estimator); use_reference false: the no-reference control
    "ssen": ("sfsr.models.ssen", "SSEN", {}),
}


@functools.cache
def _source_tree(path: Path) -> ast.Module:
    """The parsed source of a module (parsed once: several names share a module)."""
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def signature_defaults(module: str, cls: str, skip: tuple[str, ...] = ("self", "scale")) -> dict[str, Any]:
    """The keyword defaults of ``cls.__init__`` in ``module`` (a module of this package), read from
    its source with ``ast`` (nothing imported, so no torch): every parameter but ``skip`` whose
    default is a literal, in signature order."""
    path = Path(__file__).resolve().parent.joinpath(*module.split(".")[1:]).with_suffix(".py")
    tree = _source_tree(path)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            init = next(f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "__init__")
            args = init.args.posonlyargs + init.args.args
            pairs = list(zip(args[len(args) - len(init.args.defaults):], init.args.defaults))
            pairs += [(a, d) for a, d in zip(init.args.kwonlyargs, init.args.kw_defaults) if d is not None]
            out = {}
            for arg, default in pairs:
                if arg.arg in skip:
                    continue
                try:
                    out[arg.arg] = ast.literal_eval(default)
                except ValueError:  # a name or an expression: a constant of the module, not an option
                    continue
            return out
    raise LookupError(f"class {cls} not found in {path}")


def _generator_defaults(name: str) -> dict[str, Any]:
    module, cls, own = GENERATORS[name]
    return {**signature_defaults(module, cls), **own}


#: keyword arguments each generator accepts and their standard values (from :data:`GENERATORS`).
GENERATOR_KWARGS: dict[str, dict[str, Any]] = {name: _generator_defaults(name) for name in GENERATORS}
#: Generators that take a reference image: forward(lr, ref).
REFERENCE_GENERATORS = ("ssen",)
GENERATOR_NAMES = tuple(GENERATORS)
#: SSEN's deformable alignment layers: 1..MAX_DEFORM (sfsr.models.ssen; the paper uses 3).
MAX_DEFORM = 5
#: SSEN's correspondence search (``match_radius``): at most this many LR pixels each way.
MAX_MATCH_RADIUS = 8
#: options that take true/false, and those that take a number
BOOL_OPTIONS = ("use_bn", "non_local", "use_reference", "match_gate")
NUMBER_OPTIONS = ("res_scale", "negative_slope", "max_offset")
POSITIVE_INT_OPTIONS = ("num_blocks", "num_features", "growth", "extract_blocks", "num_deform", "offset_features")

#: Every discriminator: name -> (module, class), built as ``cls(**kwargs)`` by the gan stage
#: (sfsr.models.build_discriminator); its options and defaults are the class's signature, like the
#: generators', and the workflow checks a config's kwargs against them when it is parsed.
DISCRIMINATORS: dict[str, tuple[str, str]] = {
    "vgg": ("sfsr.models.discriminators", "VGGDiscriminator"),
    "patchgan": ("sfsr.models.discriminators", "PatchDiscriminator"),
}
DISCRIMINATOR_KWARGS: dict[str, dict[str, Any]] = {name: signature_defaults(module, cls)
                                                   for name, (module, cls) in DISCRIMINATORS.items()}

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
    radius = full.get("match_radius", 0)
    if isinstance(radius, bool) or not isinstance(radius, int) or not 0 <= radius <= MAX_MATCH_RADIUS:
        raise OptionError(f"option 'match_radius' of generator {name!r} must be an integer 0..{MAX_MATCH_RADIUS} "
                          f"(LR pixels; 0: no matching, the paper), got {radius!r}", "match_radius")
    if full.get("match_mode", "warp") not in ("offset", "warp"):
        raise OptionError(f"option 'match_mode' of generator {name!r} must be 'offset' or 'warp', "
                          f"got {full['match_mode']!r}", "match_mode")
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
    if full.get("max_offset", 0) < 0:
        raise OptionError(f"option 'max_offset' of generator {name!r} must be >= 0 (LR-feature pixels; 0: "
                          f"unbounded, the paper), got {full['max_offset']!r}", "max_offset")
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
