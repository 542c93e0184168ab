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

from torch import Tensor, nn

from sfsr.models.blocks import pixel_shuffle_upsampler, scaled_kaiming_init, upsampling_factors
from sfsr.models.residual import SRGenerator


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
        upsampling_factors(scale)  # validates the scale before building anything
        self.scale = scale
        self.num_features = num_features
        self.head = nn.Sequential(nn.Conv2d(3, num_features, 9, padding=4), nn.PReLU())
        self.blocks = nn.Sequential(*[SRResidualBlock(num_features, use_bn) for _ in range(num_blocks)])
        self.body_tail = nn.Sequential(
            nn.Conv2d(num_features, num_features, 3, padding=1),
            nn.BatchNorm2d(num_features) if use_bn else nn.Identity(),
        )
        self.upsampler = pixel_shuffle_upsampler(num_features, scale, nn.PReLU)
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
