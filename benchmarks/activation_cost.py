"""Forward+backward time of MSRResNet's trunk (16 residual blocks of 64 features at LR 24x24) and
its x4 pixel-shuffle upsampler, batch 16, with PReLU (sfsr's srresnet/msrresnet, as SRResNet), ReLU
(BasicSR's ResidualBlockNoBN) and LeakyReLU(0.1) (BasicSR's MSRResNet upsampler), the variants
alternating round by round in one process (docs/PERFORMANCE.md, "Issue 26 item 1: where the fp32
step goes"). Prints the median and the minimum per variant in ms, float32, torch's default threads.

    python -m benchmarks.activation_cost [--rounds 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import sfsr  # noqa: F401  (before torch: the OpenMP wait policy)
import torch
from torch import nn

ACTIVATIONS = {"PReLU": nn.PReLU, "ReLU": nn.ReLU, "LeakyReLU(0.1)": lambda: nn.LeakyReLU(0.1)}


class Block(nn.Module):
    """conv3x3 - activation - conv3x3 plus identity (no batch norm)."""

    def __init__(self, act) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), act(), nn.Conv2d(64, 64, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def upsampler(act) -> nn.Module:
    """x4 as two (conv 64->256, pixel shuffle x2, activation) stages."""
    return nn.Sequential(nn.Conv2d(64, 256, 3, padding=1), nn.PixelShuffle(2), act(),
                         nn.Conv2d(64, 256, 3, padding=1), nn.PixelShuffle(2), act())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randn(16, 64, 24, 24, requires_grad=True)
    mods = {(name, part): nn.Sequential(*[Block(act) for _ in range(16)]) if part == "trunk" else upsampler(act)
            for name, act in ACTIVATIONS.items() for part in ("trunk", "upsampler")}
    for m in mods.values():  # warm-up
        for _ in range(2):
            m(x).sum().backward()
    times: dict[tuple[str, str], list[float]] = {k: [] for k in mods}
    load = os.getloadavg()[0]
    for _ in range(args.rounds):
        for k, m in mods.items():
            start = time.perf_counter()
            m(x).sum().backward()
            times[k].append(time.perf_counter() - start)
    print(f"load {load:.2f} -> {os.getloadavg()[0]:.2f}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for (name, part), v in times.items():
        print(f"{part:9s} {name:15s} median {statistics.median(v) * 1000:6.1f} ms  min {min(v) * 1000:6.1f} ms")


if __name__ == "__main__":
    main()
