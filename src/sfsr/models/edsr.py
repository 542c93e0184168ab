"""EDSR and EDSR-baseline (Lim et al., NTIRE 2017 / CVPRW 2017), following the authors' code.

Graph: subtract the DIV2K RGB mean; 3x3 conv 3->F; B residual blocks conv3x3-ReLU-conv3x3 (no batch
norm) whose residual is multiplied by ``res_scale``; 3x3 conv; global skip from the head; upsampler
(per x2 stage conv3x3 F->4F + PixelShuffle(2), x3: conv3x3 F->9F + PixelShuffle(3), no activation);
3x3 conv F->3; add the mean back. EDSR-baseline = 16 blocks x 64, res_scale 1; EDSR = 32 x 256,
res_scale 0.1. Inputs are in [0, 1] (the authors work in [0, 255]; the mean is the same fraction).
The mean shift is a fixed buffer, not a parameter, so it is not counted in the parameter total.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sfsr.models.blocks import pixel_shuffle_upsampler, upsampling_factors
from sfsr.models.residual import SRGenerator

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


class EDSRResidualBlock(nn.Module):
    """conv3x3 - ReLU - conv3x3, residual scaled by ``res_scale``, plus identity."""

    def __init__(self, num_features: int, res_scale: float = 1.0) -> None:
        super().__init__()
        self.res_scale = res_scale
        self.body = nn.Sequential(
            nn.Conv2d(num_features, num_features, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(num_features, num_features, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x) * self.res_scale


class EDSR(SRGenerator):
    """EDSR generator; ``encode`` returns the body features (after the global skip) at LR size."""

    def __init__(self, scale: int = 4, num_features: int = 64, num_blocks: int = 16,
                 res_scale: float = 1.0, rgb_mean: tuple[float, float, float] = DIV2K_RGB_MEAN,
                 base: str = "none") -> None:
        super().__init__()
        upsampling_factors(scale)  # validates the scale before building anything
        self.scale = scale
        self.num_features = num_features
        self.register_buffer("rgb_mean", torch.tensor(rgb_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.head = nn.Conv2d(3, num_features, 3, padding=1)
        self.blocks = nn.Sequential(*[EDSRResidualBlock(num_features, res_scale) for _ in range(num_blocks)])
        self.body_tail = nn.Conv2d(num_features, num_features, 3, padding=1)
        self.upsampler = pixel_shuffle_upsampler(num_features, scale)
        self.tail = nn.Conv2d(num_features, 3, 3, padding=1)
        self._init_base(base, scale, self.tail)

    def encode(self, lr: Tensor) -> Tensor:
        """LR image (N,3,h,w) in [0,1] -> body features (N, num_features, h, w)."""
        head = self.head(lr - self.rgb_mean)
        return head + self.body_tail(self.blocks(head))

    def upsample(self, features: Tensor) -> Tensor:
        """Body features -> the residual branch's output at HR size: with base none the SR image
        (the mean is added back), else the residual added to the base (no mean)."""
        out = self.tail(self.upsampler(features))
        return out + self.rgb_mean if self.base.mode == "none" else out
