"""How big the semantic prior's term is next to L1 at the start of semantic fine-tuning: the mean
pixel L1 and the mean T^2 KL(f(HR) || f(SR)) of a warm-up generator on a split of the classification
set (the semantic stage's own images, never the test split), and the prior weight that makes the two
terms equal. The x8 CPU study (experiments/flowers102_x8_local.yaml) set its `semantic_kl` weight
from this probe before any of its semantic runs or test results existed (docs/results_semantic_cpu.md).

    python -m benchmarks.semantic_weight_probe --generator results/flowers102_x8_cpu/models/srresnet_x8/warmup/generator.pt \
        --classifier results/flowers102_x8_cpu/classifier/flowers102/classifier.pt \
        --data resources/data_semantic_x8/prepared/flowers102 --scale 8 --split sr_train
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from sfsr.data.images import read_image, to_rgb  # sfsr before torch: it sets torch's thread waiting
from sfsr.models import load_generator
from sfsr.models.classifier import load_classifier
from sfsr.semantic import load_semantic_prior

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def _batch(folder: Path, stems: list[str]) -> torch.Tensor:
    arrays = [to_rgb(read_image(folder / f"{s}.png")) for s in stems]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def probe(generator: Path, classifier: Path, data: Path, scale: int, split: str, batch_size: int = 32,
          temperature: float = 1.0) -> dict:
    """Mean L1(SR, HR) and mean T^2 KL of the prior (its judge's view, SR clamped) over ``split``."""
    model, _ = load_generator(generator)
    _, meta = load_classifier(classifier)
    prior = load_semantic_prior(classifier, "cpu", temperature=temperature, input_size=int(meta["arch"]["input_size"]),
                                resize_size=meta.get("resize_size"), clamp=True)
    manifest = pd.read_csv(data / "manifest.csv", dtype={"stem": str, "split": str})
    stems = sorted(manifest.loc[manifest["split"] == split, "stem"])
    if not stems:
        raise SystemExit(f"{data}/manifest.csv has no images in split {split!r}")
    l1, kl, n = 0.0, 0.0, 0
    with torch.no_grad():
        for start in range(0, len(stems), batch_size):
            part = stems[start:start + batch_size]
            lr = _batch(data / "LR_bicubic" / f"X{scale}", part)
            hr = _batch(data / "HR", part)
            sr = model(lr)
            l1 += float(F.l1_loss(sr, hr, reduction="mean")) * len(part)
            kl += float(prior(sr, hr)["semantic_kl"]) * len(part)
            n += len(part)
    l1, kl = l1 / n, kl / n
    return {"generator": str(generator), "classifier": str(classifier), "split": split, "n": n,
            "l1": l1, "semantic_kl": kl, "weight_equal_terms": l1 / kl if kl > 0 else float("inf")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", type=Path, required=True)
    parser.add_argument("--classifier", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="a prepared classification set folder")
    parser.add_argument("--scale", type=int, required=True)
    parser.add_argument("--split", default="sr_train")
    parser.add_argument("--temperature", type=float, default=1.0)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    print(json.dumps(probe(args.generator, args.classifier, args.data, args.scale, args.split,
                           temperature=args.temperature), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
