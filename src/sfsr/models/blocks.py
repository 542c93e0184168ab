"""Building blocks shared by the generators: the supported scales and their upsampling stages, the
pixel-shuffle upsampler and the scaled Kaiming initialisation."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from sfsr.model_options import SUPPORTED_SCALES

__all__ = ["SUPPORTED_SCALES", "upsampling_factors", "pixel_shuffle_upsampler", "scaled_kaiming_init"]


def upsampling_factors(scale: int) -> list[int]:
    """Per-stage factors for a supported scale: 2->[2], 3->[3], 4->[2, 2], 8->[2, 2, 2]."""
    if scale == 3:
        return [3]
    if scale in (2, 4, 8):
        return [2] * {2: 1, 4: 2, 8: 3}[scale]
    raise ValueError(f"unsupported scale {scale!r}; supported scales are {list(SUPPORTED_SCALES)}")


def pixel_shuffle_upsampler(num_features: int, scale: int,
                            activation: Callable[[], nn.Module] | None = None) -> nn.Sequential:
    """Per upsampling stage: conv3x3 ``num_features -> num_features * f * f``, PixelShuffle(f) and,
    when given, ``activation()`` (SRResNet: PReLU; EDSR: none)."""
    stages: list[nn.Module] = []
    for f in upsampling_factors(scale):
        stages += [nn.Conv2d(num_features, num_features * f * f, 3, padding=1), nn.PixelShuffle(f)]
        if activation is not None:
            stages.append(activation())
    return nn.Sequential(*stages)


def scaled_kaiming_init(modules: list[nn.Module] | nn.Module, scale: float = 0.1) -> None:
    """Kaiming-normal (fan_in) init multiplied by ``scale``, zero bias, for every Conv2d inside
    ``modules`` (BasicSR's ``default_init_weights``, used by MSRResNet and ESRGAN's RRDBNet)."""
    if isinstance(modules, nn.Module):
        modules = [modules]
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
                with torch.no_grad():
                    m.weight.mul_(scale)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
