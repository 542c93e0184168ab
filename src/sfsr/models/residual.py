"""Global residual learning: the generator predicts a residual added to an upsampled copy of its input.

``base`` (a generator option, see ``docs/models.md``):

* ``none``: the network outputs the SR image itself (the SRGAN paper's SRResNet, EDSR, ESRGAN's
  RRDBNet as published);
* ``bilinear``: ``F.interpolate(lr, mode="bilinear", align_corners=False)`` is added (BasicSR's
  MSRResNet);
* ``bicubic``: the project's MATLAB-exact bicubic upsampling on tensors
  (:func:`sfsr.data.bicubic.imresize`, the kernel that made the LR images), float32, differentiable,
  not rounded. With the residual branch's last layer at zero, an untrained generator outputs exactly
  bicubic, so training starts from the baseline instead of from a random image (VDSR, Kim et al. 2016).

Every generator inherits :class:`SRGenerator`: ``forward(lr) = decode(encode(lr), lr)`` with
``decode(features, lr) = upsample(features) + base(lr)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sfsr.data.bicubic import imresize
from sfsr.model_options import BASES


def bicubic_upsample(lr: Tensor, scale: int) -> Tensor:
    """MATLAB-exact bicubic upsampling of a float batch (N, C, h, w) by an integer ``scale``: the
    torch path of :func:`sfsr.data.bicubic.imresize` (the kernel that made the LR images), in float32
    (bf16/fp16 inputs are computed in float32), not rounded or clamped, differentiable."""
    x = lr if lr.dtype in (torch.float32, torch.float64) else lr.float()
    return imresize(x, scale=int(scale))


class ResidualBase(nn.Module):
    """The upsampled copy of the LR input that a residual generator adds to its output (no
    parameters). ``mode`` is one of :data:`BASES`; ``none`` returns None."""

    def __init__(self, mode: str, scale: int) -> None:
        super().__init__()
        if mode not in BASES:
            raise ValueError(f"unknown base {mode!r}; valid: {', '.join(BASES)}")
        self.mode = mode
        self.scale = int(scale)

    def forward(self, lr: Tensor) -> Tensor | None:
        if self.mode == "bicubic":
            return bicubic_upsample(lr, self.scale)
        if self.mode == "bilinear":
            return F.interpolate(lr, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return None

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, scale={self.scale}"


class SRGenerator(nn.Module):
    """Common frame of the generators: subclasses define ``encode(lr)`` (body features at LR size)
    and ``upsample(features)`` (the residual branch's output at HR size) and call
    :meth:`_init_base` at the end of ``__init__`` with the layer that ends the residual branch."""

    base: ResidualBase

    def _init_base(self, base: str, scale: int, last_layer: nn.Module) -> None:
        self.base = ResidualBase(base, scale)
        if base != "none":  # an untrained residual generator outputs exactly its base
            nn.init.zeros_(last_layer.weight)
            if last_layer.bias is not None:
                nn.init.zeros_(last_layer.bias)

    def decode(self, features: Tensor, lr: Tensor) -> Tensor:
        """Body features (and the LR input they came from) -> SR image (N, 3, h*s, w*s)."""
        out = self.upsample(features)
        base = self.base(lr)
        return out if base is None else out + base.to(out.dtype)

    def forward(self, lr: Tensor) -> Tensor:
        return self.decode(self.encode(lr), lr)
