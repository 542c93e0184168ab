"""Training speed of SRResNet x4 with and without the GPU speed settings (not a test).

    python benchmarks/train_speed.py [--iterations 300] [--batch-size 16] [--lr-patch 24]
        [--num-blocks 16] [--num-features 64] [--device auto] [--images DIR] [--num-workers 4]

Runs the real training loop (sfsr.training.loop.train, warm-up stage, on-the-fly MATLAB-exact LR on the
device) once per setting: fp32; bf16; bf16 + channels_last; bf16 + channels_last + torch.compile. The
rate is measured between the first logged window and the end, so start-up and compilation are left
out. Training images: DIR, or the builtin photos of the default config written to a temporary
folder. On CPU the three speed settings are ignored by design, so all rows measure the same thing.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import pandas as pd
import torch

from sfsr import io
from sfsr.data.sources import load_builtin
from sfsr.training.loop import train

BUILTIN_TRAIN = ["astronaut", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
                 "stereo_motorcycle", "china", "brick", "grass"]
SETTINGS = [
    ("fp32", dict(bf16=False, channels_last=False, compile=False)),
    ("bf16", dict(bf16=True, channels_last=False, compile=False)),
    ("bf16+channels_last", dict(bf16=True, channels_last=True, compile=False)),
    ("bf16+channels_last+compile", dict(bf16=True, channels_last=True, compile=True)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr-patch", type=int, default=24)
    parser.add_argument("--num-blocks", type=int, default=16)
    parser.add_argument("--num-features", type=int, default=64)
    parser.add_argument("--arch", default="srresnet")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--num-workers", type=int, default=4)
    parser.add_argument("--images", type=Path, default=None, help="folder of training HR images")
    parser.add_argument("--csv", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    log_every = max(1, args.iterations // 10)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = args.images
        if images is None:
            images = tmp / "images"
            for name in BUILTIN_TRAIN:
                io.save_image(images / f"{name}.png", load_builtin(name))
        rows = []
        for label, flags in SETTINGS:
            cfg = dict(arch=args.arch, scale=4,
                       kwargs=dict(num_blocks=args.num_blocks, num_features=args.num_features),
                       iterations=args.iterations, batch_size=args.batch_size, lr_patch=args.lr_patch,
                       log_every=log_every, val_every=10**9, checkpoint_every=10**9,
                       num_workers=args.num_workers, ema_decay=0.999, device=args.device, **flags)
            train("warmup", cfg, train_hr_dirs=[images], valid_hr_dirs=[], out_dir=tmp / label)
            log = pd.read_csv(tmp / label / "train_log.csv").dropna(subset=["lr"])
            first, last = log.iloc[0], log.iloc[-1]
            rate = (last.iteration - first.iteration) / (last.elapsed_s - first.elapsed_s)
            rows.append({"setting": label, "it_per_s": rate, "patches_per_s": rate * args.batch_size,
                         "data_wait_fraction": log.data_wait_fraction.iloc[1:].mean(),
                         "first_window_s": first.elapsed_s})
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    table = pd.DataFrame(rows)
    table["speedup"] = table.it_per_s / table.it_per_s.iloc[0]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    print(f"{args.arch} x4 ({args.num_blocks} blocks x {args.num_features}), batch {args.batch_size}, "
          f"LR patch {args.lr_patch}, {args.iterations} iterations on {device}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.csv:
        io.write_csv(args.csv, table)


if __name__ == "__main__":
    main()
