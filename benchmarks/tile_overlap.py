"""How far tiled upscaling is from the whole image, per tile overlap (no timing):

    python -m benchmarks.tile_overlap [--hr DIR] [--tile 64] [--overlaps 0 4 8 12 16 24]

A random-init x4 SRResNet (16 blocks x 64, as in the upscale benchmark) whose output is spread over
[0, 1] (``0.5 + 4 * y``: random init gives ~0 +- 0.05, which clamping would flatten and so hide seam
errors) upscales the exact x1/4 LR of every RGB image of ``--hr`` whole and in tiles; printed per
overlap: the largest absolute difference to the whole image in grey levels, and the share of output
values that differ by more than 1. A trained generator's receptive field is not the same as a
random one's: this measures the seam error of this architecture, not of every checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

DEFAULT_HR = Path("/work/shared/data/benchmark/Set14/HR")


class Spread(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 + 4.0 * self.inner(x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tile_overlap")
    parser.add_argument("--hr", type=Path, default=DEFAULT_HR)
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--overlaps", type=int, nargs="+", default=[0, 4, 8, 12, 16, 24])
    args = parser.parse_args(argv)

    from sfsr.data.bicubic import imresize
    from sfsr.data.images import read_image
    from sfsr.inference import upscale_image
    from sfsr.models import build_generator

    torch.manual_seed(0)
    model = Spread(build_generator("srresnet", 4))
    worst = {ov: 0 for ov in args.overlaps}
    over1 = {ov: 0 for ov in args.overlaps}
    values = 0
    stds = []
    for path in sorted(args.hr.iterdir()):
        hr = read_image(path)
        if hr.ndim != 3:
            continue
        lr = imresize(hr[: hr.shape[0] // 4 * 4, : hr.shape[1] // 4 * 4], 1 / 4)
        whole = upscale_image(lr, scale=4, model=model).astype(int)
        stds.append(float(whole.std()))
        values += whole.size
        for ov in args.overlaps:
            tiled = upscale_image(lr, scale=4, model=model, tile=args.tile, tile_overlap=ov).astype(int)
            diff = np.abs(tiled - whole)
            worst[ov] = max(worst[ov], int(diff.max()))
            over1[ov] += int((diff > 1).sum())
    print(json.dumps({"tile": args.tile, "images": len(stds), "output_std_grey_levels":
                      round(float(np.mean(stds)), 1),
                      "max_abs_diff": worst,
                      "share_diff_over_1": {ov: over1[ov] / values for ov in args.overlaps}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
