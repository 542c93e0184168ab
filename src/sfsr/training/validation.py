"""Validation of a generator during training: mean PSNR-Y / SSIM-Y on whole validation images, and
the same numbers for MATLAB-exact bicubic upscaling (the line a learning curve must rise above)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from sfsr.data.bicubic import imresize
from sfsr.metrics import image_metrics, to_uint8
from sfsr.tensors import eval_mode, to_float
from sfsr.training.data import ValidationImage


def _mean_metrics(images: Sequence[ValidationImage], scale: int, upscale) -> dict[str, float]:
    """Mean PSNR-Y / SSIM-Y over whole images of ``upscale(item) -> uint8 SR image``."""
    psnrs, ssims = [], []
    for item in images:
        m = image_metrics(item.hr[:, :, 0] if item.gray else item.hr, upscale(item), scale)
        psnrs.append(m["psnr_y"])
        ssims.append(m["ssim_y"])
    return {"psnr_y": float(np.mean(psnrs)), "ssim_y": float(np.mean(ssims))}


@torch.no_grad()
def validate(model: nn.Module, images: Sequence[ValidationImage], scale: int,
             device: torch.device) -> dict[str, float]:
    """Mean PSNR-Y / SSIM-Y of ``model`` on whole images (float32, outputs quantised to uint8)."""
    def upscale(item: ValidationImage) -> np.ndarray:
        if item.ref is not None:  # a reference-based generator: forward(lr, ref)
            return to_uint8(model(to_float(item.lr, device), to_float(item.ref, device))[0])
        return to_uint8(model(to_float(item.lr, device))[0])

    with eval_mode(model):
        return _mean_metrics(images, scale, upscale)


def bicubic_reference(images: Sequence[ValidationImage], scale: int) -> dict[str, float]:
    """Mean PSNR-Y / SSIM-Y of MATLAB-exact bicubic upscaling on the same validation images (the
    line a learning curve must rise above)."""
    return _mean_metrics(images, scale, lambda item: imresize(item.lr, scale))
