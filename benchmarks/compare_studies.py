"""Two runs of the same study side by side: per model, dataset and scale the PSNR-Y / SSIM-Y of each
and their difference, and per judge the top-1 accuracy of each input (docs/reproducibility.md).

Made for "the default study in bf16 against float32" (and one CPU against another): run the study
twice under two experiment names, then compare::

    SFSR_CPU_BF16=none   snakemake --cores all --resources gpu=1 --config experiment=default_fp32
    SFSR_CPU_BF16=native snakemake --cores all --resources gpu=1 --config experiment=default_bf16
    python -m benchmarks.compare_studies results/default_fp32 results/default_bf16 --labels fp32 bf16

It prints a Markdown table (``--out FILE`` also writes it) and exits 1 when a PSNR-Y difference is
larger than ``--max-db`` (default 0.1 dB, the tolerance docs/reproducibility.md states).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

METRICS = ("psnr_y", "ssim_y")
KEYS = ["model", "dataset", "scale"]


def quality(a: Path, b: Path) -> pd.DataFrame:
    """``metrics/summary.csv`` of both runs joined on model, dataset and scale, with differences."""
    left, right = (pd.read_csv(p / "metrics" / "summary.csv")[[*KEYS, *METRICS]] for p in (a, b))
    table = left.merge(right, on=KEYS, suffixes=("_a", "_b"), how="outer", validate="one_to_one")
    for m in METRICS:
        table[f"{m}_diff"] = table[f"{m}_b"] - table[f"{m}_a"]
    return table.sort_values(KEYS, ignore_index=True)


def accuracy(a: Path, b: Path) -> pd.DataFrame:
    """Top-1 of every (set, scale, judge, input) of ``classification/*/accuracy.csv`` in both runs."""
    frames = []
    for run in (a, b):
        tables = [pd.read_csv(p) for p in sorted((run / "classification").glob("*/accuracy.csv"))]
        frame = pd.concat(tables, ignore_index=True) if tables else \
            pd.DataFrame(columns=["dataset", "scale", "judge", "input", "top1"])
        frames.append(frame[["dataset", "scale", "judge", "input", "top1"]])
    keys = ["dataset", "scale", "judge", "input"]
    table = frames[0].merge(frames[1], on=keys, suffixes=("_a", "_b"), how="outer", validate="one_to_one")
    table["top1_diff"] = table["top1_b"] - table["top1_a"]
    return table.sort_values(keys, ignore_index=True)


def markdown(q: pd.DataFrame, acc: pd.DataFrame, labels: tuple[str, str]) -> str:
    a, b = labels
    q = q.rename(columns={"psnr_y_a": f"PSNR-Y {a}", "psnr_y_b": f"PSNR-Y {b}", "psnr_y_diff": "ΔPSNR-Y (dB)",
                          "ssim_y_a": f"SSIM-Y {a}", "ssim_y_b": f"SSIM-Y {b}", "ssim_y_diff": "ΔSSIM-Y"})
    acc = acc.rename(columns={"top1_a": f"top-1 {a}", "top1_b": f"top-1 {b}", "top1_diff": "Δtop-1"})
    return (f"PSNR-Y / SSIM-Y ({b} - {a}):\n\n" + q.to_markdown(index=False, floatfmt=".4f") +
            f"\n\nTop-1 accuracy ({b} - {a}):\n\n" + acc.to_markdown(index=False, floatfmt=".4f") + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare_studies", description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="results/<experiment> of the first run")
    parser.add_argument("b", type=Path, help="results/<experiment> of the second run")
    parser.add_argument("--labels", nargs=2, default=("a", "b"), metavar=("A", "B"))
    parser.add_argument("--max-db", type=float, default=0.1, help="largest |ΔPSNR-Y| accepted (dB)")
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    args = parser.parse_args(argv)
    for run in (args.a, args.b):
        if not (run / "metrics" / "summary.csv").is_file():
            parser.error(f"{run / 'metrics' / 'summary.csv'} not found: give results/<experiment> of a finished "
                         "study (snakemake --cores all ... --config experiment=<name>)")
    q, acc = quality(args.a, args.b), accuracy(args.a, args.b)
    text = markdown(q, acc, tuple(args.labels))
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    worst = q["psnr_y_diff"].abs().max()
    if not worst <= args.max_db:
        print(f"largest |ΔPSNR-Y| {worst:.4f} dB > {args.max_db} dB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
