"""MSRResNet: BasicSR's batch-norm-free SRResNet (Wang et al., ESRGAN paper, ECCVW 2018, section 3.1;
XPixelGroup/BasicSR ``basicsr/archs/msrresnet_arch.py``), the graph BasicSR trains and reports.

Graph (BasicSR's, layer for layer; the same parameter shapes in the same order):
conv3x3 3->64 + LeakyReLU(0.1); B=16 residual blocks conv3x3-ReLU-conv3x3 with identity skip
(BasicSR's ``ResidualBlockNoBN`` = :class:`sfsr.models.edsr.EDSRResidualBlock`, res_scale 1); per x2
stage conv3x3 64->256, PixelShuffle(2), LeakyReLU(0.1) (x3: one conv 64->576, PixelShuffle(3));
conv_hr 3x3 64->64 + LeakyReLU(0.1); conv_last 3x3 64->3; plus the input upsampled (``base``,
BasicSR: bilinear). Every conv starts with BasicSR's ``default_init_weights`` (Kaiming x 0.1),
except that with a base the last conv starts at zero, as every sfsr residual generator does, so the
untrained model outputs exactly its base (:class:`sfsr.models.residual.SRGenerator`).

Unlike sfsr's ``srresnet`` (the SRGAN paper's: 9x9 head and tail, PReLU, a conv after the blocks
with a long skip), this graph has 3x3 head and tail, ReLU/LeakyReLU and no long skip. Checkpoints
written when ``msrresnet`` named SRResNet without batch norm still load: see
:func:`sfsr.models.legacy_generator` (docs/models.md).
"""

from __future__ import annotations

from torch import Tensor, nn

from sfsr.models.blocks import pixel_shuffle_upsampler, scaled_kaiming_init, upsampling_factors
from sfsr.models.edsr import EDSRResidualBlock
from sfsr.models.residual import SRGenerator

#: BasicSR's LeakyReLU slope (MSRResNet's head, upsampler and conv_hr)
NEGATIVE_SLOPE = 0.1


def _leaky() -> nn.Module:
    return nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True)


class MSRResNet(SRGenerator):
    """BasicSR's MSRResNet. ``encode`` returns the residual blocks' output at LR resolution."""

    def __init__(self, scale: int = 4, num_features: int = 64, num_blocks: int = 16,
                 base: str = "bilinear") -> None:
        super().__init__()
        upsampling_factors(scale)  # validates the scale before building anything
        self.scale = scale
        self.num_features = num_features
        self.head = nn.Sequential(nn.Conv2d(3, num_features, 3, padding=1), _leaky())
        self.blocks = nn.Sequential(*[EDSRResidualBlock(num_features) for _ in range(num_blocks)])
        self.upsampler = pixel_shuffle_upsampler(num_features, scale, _leaky)
        self.tail = nn.Sequential(nn.Conv2d(num_features, num_features, 3, padding=1), _leaky(),
                                  nn.Conv2d(num_features, 3, 3, padding=1))
        scaled_kaiming_init(self, 0.1)
        self._init_base(base, scale, self.tail[-1])

    def encode(self, lr: Tensor) -> Tensor:
        """LR image (N,3,h,w) in [0,1] -> body features (N, num_features, h, w)."""
        return self.blocks(self.head(lr))

    def upsample(self, features: Tensor) -> Tensor:
        """Body features -> the residual branch's output at HR size (the SR image when base is none)."""
        return self.tail(self.upsampler(features))
