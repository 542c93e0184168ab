"""SRResNet (Ledig et al., SRGAN paper, CVPR 2017) and its batch-norm-free variant (MSRResNet).

Architecture (paper Fig. 4, generator): 9x9 conv 3->64 + PReLU; B=16 residual blocks
conv3x3-BN-PReLU-conv3x3-BN with identity skip; conv3x3-BN after the blocks plus a global skip from the
head; per x2 stage conv3x3 64->256, PixelShuffle(2), PReLU (x3: one conv 64->576, PixelShuffle(3),
PReLU); 9x9 conv 64->3. Output is not clamped or squashed (inputs/targets are in [0, 1]).
``use_bn=False`` gives the "MSRResNet" variant used here: the same graph without any batch norm
(BN is replaced by identity; residual-block convs use the 0.1-scaled Kaiming init of BasicSR's
MSRResNet so that the un-normalised residual stack starts near identity).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sfsr.model_options import SUPPORTED_SCALES
from sfsr.models.residual import SRGenerator


def upsampling_factors(scale: int) -> list[int]:
    """Per-stage factors for a supported scale: 2->[2], 3->[3], 4->[2, 2], 8->[2, 2, 2]."""
    if scale == 3:
        return [3]
    if scale in (2, 4, 8):
        return [2] * {2: 1, 4: 2, 8: 3}[scale]
    raise ValueError(f"unsupported scale {scale!r}; supported scales are {list(SUPPORTED_SCALES)}")


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


class SRResidualBlock(nn.Module):
    """conv3x3 - BN - PReLU - conv3x3 - BN, plus identity (BN omitted when ``use_bn`` is False)."""

    def __init__(self, num_features: int, use_bn: bool = True) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(num_features, num_features, 3, padding=1),
            nn.BatchNorm2d(num_features) if use_bn else nn.Identity(),
            nn.PReLU(),
            nn.Conv2d(num_features, num_features, 3, padding=1),
            nn.BatchNorm2d(num_features) if use_bn else nn.Identity(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class SRResNet(SRGenerator):
    """SRGAN generator (SRResNet). ``encode`` returns the body features at LR resolution."""

    def __init__(self, scale: int = 4, num_features: int = 64, num_blocks: int = 16,
                 use_bn: bool = True, base: str = "none") -> None:
        super().__init__()
        factors = upsampling_factors(scale)
        self.scale = scale
        self.num_features = num_features
        self.head = nn.Sequential(nn.Conv2d(3, num_features, 9, padding=4), nn.PReLU())
        self.blocks = nn.Sequential(*[SRResidualBlock(num_features, use_bn) for _ in range(num_blocks)])
        self.body_tail = nn.Sequential(
            nn.Conv2d(num_features, num_features, 3, padding=1),
            nn.BatchNorm2d(num_features) if use_bn else nn.Identity(),
        )
        stages: list[nn.Module] = []
        for f in factors:
            stages += [nn.Conv2d(num_features, num_features * f * f, 3, padding=1),
                       nn.PixelShuffle(f), nn.PReLU()]
        self.upsampler = nn.Sequential(*stages)
        self.tail = nn.Conv2d(num_features, 3, 9, padding=4)
        if not use_bn:
            scaled_kaiming_init(self.blocks, 0.1)
        self._init_base(base, scale, self.tail)

    def encode(self, lr: Tensor) -> Tensor:
        """LR image (N,3,h,w) in [0,1] -> body features (N, num_features, h, w)."""
        head = self.head(lr)
        return head + self.body_tail(self.blocks(head))

    def upsample(self, features: Tensor) -> Tensor:
        """Body features -> the residual branch's output at HR size (the SR image when base is none)."""
        return self.tail(self.upsampler(features))
