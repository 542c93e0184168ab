"""Are two runs of the same study bit-identical? For refactors that must not change a result
(docs/reproducibility.md): run the study before and after under two experiment names (or two
clones), then::

    python -m benchmarks.same_outputs results/before results/after

Every file of one run is paired with the same path in the other and compared by what it holds:

- ``*.pt``: every tensor (state dicts, optimiser state, EMA) with ``torch.equal``, every number,
  string and list equal; provenance keys (when, where, which commit, how long) are skipped;
- ``*.csv``: every cell equal, except columns that time or date a run (seconds, elapsed, wall,
  time, date, commit, host);
- ``*.png``: every pixel equal;
- ``*.json`` (per-image classification records, provenance): like a checkpoint, keys that time,
  date or place a run skipped; a provenance's ``command`` and ``git_commit`` differ by design;
- anything else (logs, the report's HTML, Markdown tables holding training times) is listed as not
  compared.

It prints one line per difference and a count per kind, and exits 1 if any compared file differs or
exists in one run only (``--ignore GLOB`` leaves paths out, e.g. a benchmark's own timing table).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

#: CSV columns and checkpoint keys that record when, where or how fast a run went, not what it computed.
VOLATILE = re.compile(r"(^|_)(sec|secs|seconds|s|elapsed|wall|time|times|date|commit|host|hostname|"
                      r"created|started|finished|duration|provenance|versions|git|pid|it_per_s|"
                      r"wait|command)($|_)", re.IGNORECASE)


#: the volatile CSV columns and checkpoint keys skipped so far (printed, so nothing is skipped unseen)
SKIPPED: set[str] = set()


def _volatile(name: Any) -> bool:
    hit = isinstance(name, str) and bool(VOLATILE.search(name))
    if hit:
        SKIPPED.add(name)
    return hit


def _same(a: Any, b: Any, where: str, out: list[str]) -> None:
    """Append to ``out`` a line for each place where ``a`` and ``b`` differ."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.dtype != b.dtype \
                or a.shape != b.shape or not torch.equal(a, b):
            out.append(f"{where}: tensors differ")
    elif isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if _volatile(key):
                continue
            if key not in a or key not in b:
                out.append(f"{where}[{key!r}]: in one run only")
            else:
                _same(a[key], b[key], f"{where}[{key!r}]", out)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            out.append(f"{where}: lengths {len(a)} and {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]", out)
    elif isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return
    elif type(a) is not type(b) or a != b:
        out.append(f"{where}: {a!r} and {b!r}")


def compare_checkpoint(a: Path, b: Path) -> list[str]:
    import torch

    out: list[str] = []
    _same(torch.load(a, map_location="cpu", weights_only=False),
          torch.load(b, map_location="cpu", weights_only=False), "", out)
    return out


def compare_csv(a: Path, b: Path) -> list[str]:
    left, right = pd.read_csv(a), pd.read_csv(b)
    keep = [c for c in left.columns if not _volatile(c)]
    if list(left.columns) != list(right.columns):
        return [f"columns {list(left.columns)} and {list(right.columns)}"]
    if left.shape != right.shape:
        return [f"shapes {left.shape} and {right.shape}"]
    bad = [c for c in keep if not left[c].equals(right[c])]
    return [f"column {c!r} differs" for c in bad]


def compare_json(a: Path, b: Path) -> list[str]:
    out: list[str] = []
    _same(json.loads(a.read_text(encoding="utf-8")), json.loads(b.read_text(encoding="utf-8")), "", out)
    return out


def compare_png(a: Path, b: Path) -> list[str]:
    with Image.open(a) as x, Image.open(b) as y:
        same = x.mode == y.mode and x.size == y.size and np.array_equal(np.asarray(x), np.asarray(y))
    return [] if same else ["pixels differ"]


COMPARERS = {".pt": compare_checkpoint, ".csv": compare_csv, ".png": compare_png, ".json": compare_json}


def compare(a: Path, b: Path, ignore: tuple[str, ...] = ()) -> tuple[list[str], dict[str, int]]:
    """Lines naming each difference, and how many files of each kind were compared / not compared."""
    def files(root: Path) -> set[str]:
        return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()
                and not any(fnmatch.fnmatch(p.relative_to(root).as_posix(), g) for g in ignore)}

    fa, fb = files(a), files(b)
    lines = [f"{rel}: only in {a}" for rel in sorted(fa - fb)] + [f"{rel}: only in {b}" for rel in sorted(fb - fa)]
    counts: dict[str, int] = {}
    for rel in sorted(fa & fb):
        suffix = Path(rel).suffix.lower()
        comparer = COMPARERS.get(suffix)
        kind = suffix if comparer else "not compared"
        counts[kind] = counts.get(kind, 0) + 1
        if comparer is not None:
            lines += [f"{rel}: {d}" for d in comparer(a / rel, b / rel)]
    return lines, counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.same_outputs", description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="results/<experiment> of the first run")
    parser.add_argument("b", type=Path, help="results/<experiment> of the second run")
    parser.add_argument("--ignore", action="append", default=[], metavar="GLOB",
                        help="relative paths to leave out (repeatable)")
    args = parser.parse_args(argv)
    for run in (args.a, args.b):
        if not run.is_dir():
            parser.error(f"{run} is not a folder: give results/<experiment> of a finished study")
    lines, counts = compare(args.a, args.b, tuple(args.ignore))
    for line in lines:
        print(line)
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
    if SKIPPED:
        print(f"skipped as volatile: {', '.join(sorted(SKIPPED))}")
    print(f"{'identical' if not lines else f'{len(lines)} difference(s)'}: {summary}")
    return 1 if lines else 0


if __name__ == "__main__":
    raise SystemExit(main())
