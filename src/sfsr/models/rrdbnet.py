"""RRDBNet, the ESRGAN generator (Wang et al., ECCV-W 2018), following the authors' code.

Graph: 3x3 conv 3->F; 23 Residual-in-Residual Dense Blocks (each = 3 residual dense blocks of five
3x3 convs with growth G=32 and LeakyReLU(0.2), residual scaled by 0.2, plus an outer residual scaled
by 0.2); 3x3 conv (trunk); global skip; upsampling by nearest interpolation x2 + 3x3 conv +
LeakyReLU(0.2) per stage (x2: one stage, x4: two, x8: three; x3: one nearest x3 stage); 3x3 conv +
LeakyReLU(0.2); 3x3 conv F->3. Convs of the trunk use the 0.1-scaled Kaiming init of the authors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sfsr.models.residual import SRGenerator
from sfsr.models.blocks import scaled_kaiming_init, upsampling_factors


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs; output = x + res_scale * conv5(...)."""

    def __init__(self, num_features: int = 64, growth: int = 32, res_scale: float = 0.2) -> None:
        super().__init__()
        self.res_scale = res_scale
        self.convs = nn.ModuleList(
            [nn.Conv2d(num_features + i * growth, growth, 3, padding=1) for i in range(4)]
            + [nn.Conv2d(num_features + 4 * growth, num_features, 3, padding=1)]
        )
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)
        scaled_kaiming_init(self, 0.1)

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for conv in self.convs[:-1]:
            features.append(self.lrelu(conv(torch.cat(features, 1))))
        return x + self.convs[-1](torch.cat(features, 1)) * self.res_scale


class RRDB(nn.Module):
    """Residual-in-Residual Dense Block: three dense blocks, outer residual scaled by res_scale."""

    def __init__(self, num_features: int = 64, growth: int = 32, res_scale: float = 0.2) -> None:
        super().__init__()
        self.res_scale = res_scale
        self.rdbs = nn.Sequential(*[ResidualDenseBlock(num_features, growth, res_scale) for _ in range(3)])

    def forward(self, x: Tensor) -> Tensor:
        return x + self.rdbs(x) * self.res_scale


class RRDBNet(SRGenerator):
    """ESRGAN generator; ``encode`` returns the trunk features (after the global skip) at LR size."""

    def __init__(self, scale: int = 4, num_features: int = 64, num_blocks: int = 23, growth: int = 32,
                 res_scale: float = 0.2, base: str = "none") -> None:
        super().__init__()
        self.factors = upsampling_factors(scale)
        self.scale = scale
        self.num_features = num_features
        self.conv_first = nn.Conv2d(3, num_features, 3, padding=1)
        self.body = nn.Sequential(*[RRDB(num_features, growth, res_scale) for _ in range(num_blocks)])
        self.conv_body = nn.Conv2d(num_features, num_features, 3, padding=1)
        self.upconvs = nn.ModuleList(
            [nn.Conv2d(num_features, num_features, 3, padding=1) for _ in self.factors])
        self.conv_hr = nn.Conv2d(num_features, num_features, 3, padding=1)
        self.conv_last = nn.Conv2d(num_features, 3, 3, padding=1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)
        self._init_base(base, scale, self.conv_last)

    def encode(self, lr: Tensor) -> Tensor:
        """LR image (N,3,h,w) in [0,1] -> trunk features (N, num_features, h, w)."""
        feat = self.conv_first(lr)
        return feat + self.conv_body(self.body(feat))

    def upsample(self, features: Tensor) -> Tensor:
        """Trunk features -> the residual branch's output at HR size (the SR image when base is none)."""
        x = features
        for f, conv in zip(self.factors, self.upconvs):
            x = self.lrelu(conv(F.interpolate(x, scale_factor=f, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(x)))
