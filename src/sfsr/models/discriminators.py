"""Discriminators for adversarial SR training. Both return raw logits (no sigmoid).

``VGGDiscriminator`` is SRGAN's discriminator (Ledig et al. 2017, Fig. 4): conv3x3 3->64 +
LeakyReLU(0.2); seven conv3x3 + BN + LeakyReLU(0.2) blocks with channels 64, 128, 128, 256, 256, 512,
512 and strides 2, 1, 2, 1, 2, 1, 2 (four stride-2 convs in all); then the paper flattens the
512x6x6 map of a 96x96 patch into Dense(1024) + LeakyReLU(0.2) + Dense(1). Here an
``AdaptiveAvgPool2d(pool_size)`` sits before the flatten so the network accepts ANY patch size; with
the default ``pool_size=6`` the pooling is the identity at 96x96, i.e. exactly the paper's network
there, and larger/smaller patches are average-pooled (or replicated) to 6x6. Output: (N, 1).

``PatchDiscriminator`` is pix2pix's 70x70 PatchGAN (Isola et al. 2017, ``NLayerDiscriminator`` with
n_layers=3, BatchNorm): conv4x4/s2 64 + LeakyReLU(0.2); conv4x4/s2 128, 256 + BN + LeakyReLU;
conv4x4/s1 512 + BN + LeakyReLU; conv4x4/s1 -> 1. Output: an (N, 1, H', W') logit map.
"""

from __future__ import annotations

from torch import Tensor, nn


class VGGDiscriminator(nn.Module):
    """SRGAN VGG-style discriminator with adaptive pooling before the dense layers."""

    def __init__(self, in_channels: int = 3, num_features: int = 64, pool_size: int = 6,
                 dense_features: int = 1024) -> None:
        super().__init__()
        nf = num_features
        layers: list[nn.Module] = [nn.Conv2d(in_channels, nf, 3, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        spec = [(nf, nf, 2), (nf, 2 * nf, 1), (2 * nf, 2 * nf, 2), (2 * nf, 4 * nf, 1),
                (4 * nf, 4 * nf, 2), (4 * nf, 8 * nf, 1), (8 * nf, 8 * nf, 2)]
        for cin, cout, stride in spec:
            layers += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(8 * nf * pool_size * pool_size, dense_features),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(dense_features, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Image batch (N,C,H,W) -> logits (N, 1)."""
        return self.classifier(self.pool(self.features(x)))


class PatchDiscriminator(nn.Module):
    """pix2pix PatchGAN (70x70 receptive field for n_layers=3)."""

    def __init__(self, in_channels: int = 3, num_features: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        nf = num_features
        layers: list[nn.Module] = [nn.Conv2d(in_channels, nf, 4, stride=2, padding=1),
                                   nn.LeakyReLU(0.2, inplace=True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(nf * prev, nf * mult, 4, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(nf * mult), nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv2d(nf * mult, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Image batch (N,C,H,W) -> logit map (N, 1, H', W')."""
        return self.model(x)
