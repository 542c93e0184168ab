"""The introductory convolutional auto-encoder SR model (baseline of the study, not a paper model).

Exactly what is built (F = ``num_features``, default 64; all convs 3x3 with padding 1, an activation
("ReLU" below) after every conv except the last one: LeakyReLU with ``negative_slope`` 0.2 by
default, plain ReLU with 0; Kaiming-normal init for that slope, zero biases):

encoder (LR resolution h x w)
    conv 3->F (stride 1), conv F->F (stride 1)                          -> e1  (F,  h,    w)
    conv F->2F (stride 2)                                               ->     (2F, h/2,  w/2)
    ``num_blocks`` x conv 2F->2F (stride 1)                             -> bottleneck
decoder
    ConvTranspose2d 2F->F (kernel 3, stride 2, padding 1, output size forced to h x w, so odd sizes
    work), ReLU, add the skip e1, conv F->F + ReLU                       -> features (F, h, w)
upscaling head ("expand twice, then conv down"), for scale s
    transposed-conv stages up to 2s x: one stage per factor of 2s (2 -> [2, 2], 3 -> [2, 3],
    4 -> [2, 2, 2], 8 -> [2, 2, 2, 2]); each stage ConvTranspose2d F->F with kernel f+2, stride f,
    padding 1 (exactly f x) + ReLU                                       ->     (F, 2sh, 2sw)
    conv F->F with stride 2 (down to s x) + ReLU, conv F->3              -> SR  (3, sh, sw)

``encode`` returns the decoder features at LR resolution; ``forward = upsample(encode(lr)) + base(lr)``.

Why leaky and Kaiming (measured, docs/training.md): with PyTorch's default init the activations
shrink through the stride-2 transposed convs to ~0.02, Adam's first bias steps (~lr each) then push
the units before the output below zero and plain ReLUs die; with a residual base the model stayed
exactly at bicubic for hundreds of iterations.
"""

from __future__ import annotations

from torch import Tensor, nn

from sfsr.models.residual import SRGenerator
from sfsr.models.blocks import upsampling_factors


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


class ConvAutoencoderSR(SRGenerator):
    """Conv encoder / transposed-conv decoder with an expand-to-2s-then-stride-2 upscaling head."""

    def __init__(self, scale: int = 4, num_features: int = 64, num_blocks: int = 2,
                 negative_slope: float = 0.2, base: str = "none") -> None:
        super().__init__()

        def act() -> nn.Module:
            return nn.LeakyReLU(negative_slope, inplace=True) if negative_slope else nn.ReLU(inplace=True)

        upsampling_factors(scale)  # validates the scale (2, 3, 4, 8)
        F = num_features
        self.scale = scale
        self.num_features = F
        self.enc1 = nn.Sequential(_conv(3, F), act(), _conv(F, F), act())
        self.down = nn.Sequential(_conv(F, 2 * F, stride=2), act())
        bottleneck: list[nn.Module] = []
        for _ in range(num_blocks):
            bottleneck += [_conv(2 * F, 2 * F), act()]
        self.bottleneck = nn.Sequential(*bottleneck)
        self.up = nn.ConvTranspose2d(2 * F, F, 3, stride=2, padding=1)
        self.act = act()
        self.dec = nn.Sequential(_conv(F, F), act())
        factors = [2] + upsampling_factors(scale)  # the factors of 2s
        expand: list[nn.Module] = []
        for f in factors:
            expand += [nn.ConvTranspose2d(F, F, f + 2, stride=f, padding=1), act()]
        self.expand = nn.Sequential(*expand)
        self.conv_down = nn.Sequential(_conv(F, F, stride=2), act())
        self.conv_last = _conv(F, 3)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, a=negative_slope, mode="fan_in",
                                        nonlinearity="leaky_relu")
                nn.init.zeros_(m.bias)
        self._init_base(base, scale, self.conv_last)

    def encode(self, lr: Tensor) -> Tensor:
        """LR image (N,3,h,w) in [0,1] -> decoder features (N, num_features, h, w)."""
        e1 = self.enc1(lr)
        bottleneck = self.bottleneck(self.down(e1))
        decoded = self.act(self.up(bottleneck, output_size=e1.shape[-2:]))
        return self.dec(decoded + e1)

    def upsample(self, features: Tensor) -> Tensor:
        """Decoder features -> the residual branch's output at HR size (the SR image when base is none)."""
        return self.conv_last(self.conv_down(self.expand(features)))
