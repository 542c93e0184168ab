"""Forward+backward time of the parts of sfsr's ``msrresnet`` x4 training step (batch 16, LR 24x24,
64 features) against BasicSR's MSRResNet parts, the variants alternating round by round in one
process (docs/PERFORMANCE.md, "Issue 26 item 1: where the fp32 step goes"):

* trunk, 16 residual blocks at LR: sfsr's ``SRResidualBlock`` without batch norm (PReLU, as
  SRResNet) against ``EDSRResidualBlock`` (ReLU, res_scale 1: BasicSR's ``ResidualBlockNoBN``);
* x4 upsampler (``pixel_shuffle_upsampler``): PReLU (sfsr) against LeakyReLU(0.1) (BasicSR);
* tail at HR 96x96: sfsr's 9x9 conv 64->3 against BasicSR's conv_hr (3x3 64->64, LeakyReLU) +
  conv_last (3x3 64->3).

Prints the median and the minimum per variant in ms, float32, torch's default threads.

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

from sfsr.models.blocks import pixel_shuffle_upsampler
from sfsr.models.edsr import EDSRResidualBlock
from sfsr.models.srresnet import SRResidualBlock


def variants() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    """name -> (module, input shape)."""
    lr, hr = (16, 64, 24, 24), (16, 64, 96, 96)
    leaky = lambda: nn.LeakyReLU(0.1)  # noqa: E731
    return {
        "trunk, sfsr (PReLU)": (nn.Sequential(*[SRResidualBlock(64, use_bn=False) for _ in range(16)]), lr),
        "trunk, BasicSR (ReLU)": (nn.Sequential(*[EDSRResidualBlock(64) for _ in range(16)]), lr),
        "upsampler, sfsr (PReLU)": (pixel_shuffle_upsampler(64, 4, nn.PReLU), lr),
        "upsampler, BasicSR (LeakyReLU 0.1)": (pixel_shuffle_upsampler(64, 4, leaky), lr),
        "tail, sfsr (9x9 64->3)": (nn.Conv2d(64, 3, 9, padding=4), hr),
        "tail, BasicSR (conv_hr + conv_last)": (nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), leaky(),
                                                              nn.Conv2d(64, 3, 3, padding=1)), hr),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    torch.manual_seed(0)
    mods = {name: (m, torch.randn(shape, requires_grad=True)) for name, (m, shape) in variants().items()}
    for m, x in mods.values():  # warm-up
        for _ in range(2):
            m(x).sum().backward()
    times: dict[str, list[float]] = {k: [] for k in mods}
    load = os.getloadavg()[0]
    for _ in range(args.rounds):
        for name, (m, x) in mods.items():
            start = time.perf_counter()
            m(x).sum().backward()
            times[name].append(time.perf_counter() - start)
    print(f"load {load:.2f} -> {os.getloadavg()[0]:.2f}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, v in times.items():
        print(f"{name:38s} median {statistics.median(v) * 1000:6.1f} ms  min {min(v) * 1000:6.1f} ms")


if __name__ == "__main__":
    main()
