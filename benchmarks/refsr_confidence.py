"""How well each reference of a prepared reference set matches its target, as SSEN's gate sees it
(docs/refsr.md, "Matched alignment"): for every group, the target's MATLAB-exact LR against each
reference and against the random reference the evaluation uses (``random_reference_group``: the
first reference of a group of another photo), both brought to the LR grid as SSEN does
(``SSEN.fit_reference``, then bicubic antialiased), block-matched by :class:`LocalMatcher` within
``--radius`` LR pixels. Prints, per reference level, the mean peak NCC and the share of LR pixels
with a peak at or below 0 (the gate shuts them), below 0.5 and above 0.9, averaged over the groups.

    python -m benchmarks.refsr_confidence resources/data/prepared/builtin_refgroups_test/HR --radius 4
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import sfsr  # noqa: F401  (before torch: the OpenMP wait policy)
import torch
import torch.nn.functional as F

from sfsr.data.bicubic import imresize, modcrop
from sfsr.data.images import read_image, to_rgb
from sfsr.data.manifest import reference_levels
from sfsr.data.refgroups import random_reference_group
from sfsr.models.ssen import SSEN
from sfsr.refsr import group_photos


def _tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(to_rgb(img))).permute(2, 0, 1)[None].float() / 255  # a writable copy


def confidence(hr_dir: Path, scale: int, radius: int) -> dict[str, list[tuple[float, float, float, float]]]:
    """input ('ref<k>' or 'random') -> per group (mean peak, share <= 0, share < 0.5, share > 0.9)."""
    groups = reference_levels(hr_dir)
    names = [g for g, _, _ in groups]
    photos = group_photos(hr_dir, names)
    first = {g: refs[0][1] for g, _, refs in groups}
    model = SSEN(scale, num_features=8, num_blocks=1, extract_blocks=1, offset_features=8, non_local=False,
                 match_radius=radius)
    stats: dict[str, list[tuple[float, float, float, float]]] = {}
    with torch.no_grad():
        for group, target, refs in groups:
            lr = _tensor(imresize(modcrop(read_image(target), scale), scale=1.0 / scale))
            runs = [(f"ref{k}", p) for k, p in refs] + [("random", first[random_reference_group(names, photos, group)])]
            for name, path in runs:
                ref = model.fit_reference(_tensor(read_image(path)), lr.shape[-2:])
                ref_lr = F.interpolate(ref, size=lr.shape[-2:], mode="bicubic", align_corners=False, antialias=True)
                _, peak = model.matcher.flow(lr, ref_lr)
                stats.setdefault(name, []).append((peak.mean().item(), (peak <= 0).float().mean().item(),
                                                   (peak < 0.5).float().mean().item(), (peak > 0.9).float().mean().item()))
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("hr_dir", type=Path, help="a prepared reference set's HR folder")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--radius", type=int, default=4, help="match_radius, LR pixels")
    args = ap.parse_args()
    stats = confidence(args.hr_dir, args.scale, args.radius)
    print("| input | groups | mean peak NCC | share <= 0 | share < 0.5 | share > 0.9 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, rows in stats.items():
        mean = np.mean(rows, axis=0)
        print(f"| {name} | {len(rows)} | {mean[0]:.3f} | {mean[1]:.3f} | {mean[2]:.3f} | {mean[3]:.3f} |")


if __name__ == "__main__":
    main()
