"""One variant of the ``upscale`` benchmark in a process of its own, so its peak RSS is its own
(torch's allocations are invisible to tracemalloc). Prints one JSON line:

    python -m benchmarks.upscale_child --checkpoint G.pt --input LR.png --output SR.png
        [--tile N] [--overlap 16] [--repeats 1]

It runs what ``sfsr upscale --checkpoint G.pt --device cpu [--tile N]`` runs
(:func:`sfsr.inference.upscale_path`: read the PNG, load the generator, upscale, write the PNG) and
reports the seconds of each run and the process's peak RSS before the first run (torch and sfsr
imported, after a warm-up on a 16x16 crop) and after the last.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--tile", type=int, default=0, help="LR tile size (0: whole image)")
    parser.add_argument("--overlap", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)

    from sfsr import io
    from sfsr.data.images import read_image
    from sfsr.inference import upscale_path

    with tempfile.TemporaryDirectory() as tmp:  # warm-up: model code paths, not the big shapes
        small = Path(tmp) / "small.png"
        io.save_image(small, read_image(args.input)[:16, :16])
        upscale_path(small, Path(tmp) / "out.png", checkpoint=args.checkpoint, device="cpu",
                     progress=False)
    before = _peak_mb()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        upscale_path(args.input, args.output, checkpoint=args.checkpoint, device="cpu",
                     tile=args.tile or None, tile_overlap=args.overlap, progress=False)
        times.append(time.perf_counter() - t0)
    print(json.dumps({"times": times, "peak_rss_mb_before": before, "peak_rss_mb": _peak_mb()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
