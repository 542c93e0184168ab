"""LPIPS (Zhang et al., CVPR 2018) of SR outputs against their HR images, with the maintained
``lpips`` package (richzhang/PerceptualSimilarity, v0.1 linear layers) — docs/metrics.md.

Convention (:data:`LPIPS_CONVENTION`): the HR image is cropped to a multiple of the scale
(``modcrop``) and the SR image must have exactly its size, ``crop_border`` pixels (default: the
scale, as for PSNR/SSIM) are shaved from every border, a gray image is replicated to RGB, and the
uint8 RGB values are mapped to [-1, 1] (``x / 127.5 - 1``, lpips' input convention). Lower is
better; identical images give 0.

The linear layers ship inside the ``lpips`` wheel; the backbone (torchvision's AlexNet or VGG16,
ImageNet weights) is read from torch's hub cache (``torch.hub.get_dir()/checkpoints``).
:func:`lpips_available` checks that file without downloading anything: a machine without it gets a
skip with one line naming the file to place there, never a download attempt or a crash.

This module imports torch (inside functions): only the ``perceptual_metrics`` job uses it.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from sfsr.data.bicubic import modcrop
from sfsr.data.images import read_image, to_rgb
from sfsr.errors import DataError
from sfsr.evaluation import matched_images

log = logging.getLogger(__name__)

#: lpips' backbone name -> (torchvision builder, the name people know it by). lpips 0.1.4 builds
#: the backbone with ``tv.<builder>(pretrained=True)``, which torchvision maps to IMAGENET1K_V1.
LPIPS_NETS: dict[str, tuple[str, str]] = {"alex": ("alexnet", "AlexNet"), "vgg": ("vgg16", "VGG16")}
LPIPS_VERSION = "0.1"  # the version of lpips' linear layers (its default, the paper's v0.1)
LPIPS_CONVENTION = "lpips-v0.1;rgb-[-1,1];gray-replicated;modcrop;shave=crop_border;v1"
"""Versioned name of the LPIPS convention, stored in every row beside the backbone (``net``)."""
LPIPS_COLUMNS = ["image", "lpips", "net", "crop_border", "convention", "skipped"]


def _check_net(net: str) -> None:
    if net not in LPIPS_NETS:
        raise DataError(f"unknown LPIPS network {net!r}; evaluation.lpips must be one of "
                        f"{', '.join(LPIPS_NETS)} or null")


def backbone_url(net: str) -> str:
    """Download address of the torchvision ImageNet weights lpips' ``net`` backbone loads."""
    _check_net(net)
    from torchvision import models

    weights = models.get_model_weights(LPIPS_NETS[net][0])
    return weights["IMAGENET1K_V1"].url


def backbone_file(net: str) -> Path:
    """Where torch's hub cache keeps that file: ``torch.hub.get_dir()/checkpoints/<file name>``
    (``$TORCH_HOME/hub/checkpoints`` when ``TORCH_HOME`` is set, else ``~/.cache/torch/...``)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / backbone_url(net).rsplit("/", 1)[1]


def lpips_available(net: str = "alex") -> tuple[bool, str]:
    """Whether LPIPS with backbone ``net`` ('alex' or 'vgg') can run offline here, and a one-line
    message: where its weights are, or what file to place where. Downloads nothing."""
    try:
        import lpips  # noqa: F401
    except ImportError:
        return False, ("LPIPS skipped: the Python package lpips is not installed; pip install "
                       "lpips==0.1.4 (a dependency of sfsr), or set evaluation.lpips: null")
    path = backbone_file(net)
    if path.is_file():
        return True, f"LPIPS ({net}): backbone weights {path}"
    name = LPIPS_NETS[net][1]
    return False, (f"LPIPS skipped: torchvision's {name} weights are not in the torch cache; place "
                   f"{path.name} in {path.parent} (download {backbone_url(net)} on a connected "
                   f"machine), or set evaluation.lpips: null")


def load_lpips(net: str = "alex", device: str = "cpu") -> Any:
    """The ``lpips.LPIPS`` model (v0.1 linear layers from the package, backbone from the torch
    cache), frozen, in eval mode, on ``device``. Raises :class:`DataError` when the backbone file is
    absent (the message of :func:`lpips_available`) or unreadable (naming it)."""
    ok, message = lpips_available(net)
    if not ok:
        raise DataError(message)
    import lpips

    path = backbone_file(net)
    try:
        with warnings.catch_warnings():  # torchvision's deprecation of lpips' pretrained=True
            warnings.simplefilter("ignore", UserWarning)
            model = lpips.LPIPS(net=net, version=LPIPS_VERSION, verbose=False)
    except Exception as exc:  # a truncated or foreign file in the cache
        raise DataError(f"cannot load the LPIPS backbone weights {path} ({type(exc).__name__}: "
                        f"{exc}); replace the file with a good copy of {backbone_url(net)}") from exc
    model.eval().requires_grad_(False)
    return model.to(device)


def _rgb(img: np.ndarray) -> np.ndarray:
    img = to_rgb(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise DataError(f"LPIPS takes uint8 gray or RGB images, got {img.dtype} {img.shape}")
    return img


def lpips_pair(model: Any, hr: np.ndarray, sr: np.ndarray, scale: int,
               crop_border: int | None = None, device: str = "cpu") -> float:
    """LPIPS of one SR image against its HR image (uint8 arrays) under :data:`LPIPS_CONVENTION`."""
    import torch

    s = scale if crop_border is None else int(crop_border)
    hr = modcrop(_rgb(hr), scale)
    sr = _rgb(sr)
    if hr.shape != sr.shape:
        raise DataError(f"SR image is {sr.shape[1]}x{sr.shape[0]} (WxH) but the HR image cropped to a "
                        f"multiple of x{scale} is {hr.shape[1]}x{hr.shape[0]}; the SR output must be "
                        f"exactly scale x the LR size of modcrop(HR, {scale})")
    if s:
        hr, sr = hr[s:-s, s:-s], sr[s:-s, s:-s]

    def tensor(x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.require(x, requirements=["C", "W"])).permute(2, 0, 1)[None].float()
        return (t / 127.5 - 1.0).to(device)

    with torch.inference_mode():
        try:
            value = model(tensor(hr), tensor(sr))
        except RuntimeError as exc:  # too small for the backbone's strides and poolings
            raise DataError(f"image of {hr.shape[1]}x{hr.shape[0]} (after the border crop) is too "
                            f"small for LPIPS ({type(exc).__name__}: {exc})") from None
    return float(value.flatten()[0])


def lpips_table(hr_dir: str | os.PathLike, sr_dir: str | os.PathLike, scale: int, *,
                net: str = "alex", device: str = "cpu", crop_border: int | None = None,
                model: Any = None, stems: Sequence[str] | None = None) -> pd.DataFrame:
    """Per-image LPIPS of every SR image against the HR image of the same stem.

    Columns :data:`LPIPS_COLUMNS` (``skipped`` empty), sorted by stem. ``crop_border`` defaults to
    ``scale`` (the PSNR/SSIM convention). Raises :class:`DataError` when the folders do not match by
    stem, an SR image has the wrong size or the backbone weights are missing (check
    :func:`lpips_available` first to skip instead). ``stems``: only these images (as
    :func:`sfsr.evaluation.evaluate_folders`)."""
    _check_net(net)
    hr, sr = matched_images(hr_dir, sr_dir, stems)
    border = int(scale if crop_border is None else crop_border)
    model = model if model is not None else load_lpips(net, device)
    rows = []
    for stem in sorted(hr):
        try:
            value = lpips_pair(model, read_image(hr[stem]), read_image(sr[stem]), scale, border, device)
        except DataError as exc:
            raise DataError(f"{sr[stem]} (HR {hr[stem]}): {exc}") from None
        rows.append({"image": stem, "lpips": value, "net": net, "crop_border": border,
                     "convention": LPIPS_CONVENTION, "skipped": ""})
    return pd.DataFrame(rows, columns=LPIPS_COLUMNS)


def skipped_table(hr_dir: str | os.PathLike, sr_dir: str | os.PathLike, scale: int, reason: str, *,
                  net: str = "alex", crop_border: int | None = None,
                  stems: Sequence[str] | None = None) -> pd.DataFrame:
    """The table of a skipped LPIPS: one row per image, ``lpips`` NaN and the ``reason``."""
    hr, _ = matched_images(hr_dir, sr_dir, stems)
    border = int(scale if crop_border is None else crop_border)
    return pd.DataFrame([{"image": stem, "lpips": float("nan"), "net": net, "crop_border": border,
                          "convention": LPIPS_CONVENTION, "skipped": reason} for stem in sorted(hr)],
                        columns=LPIPS_COLUMNS)
