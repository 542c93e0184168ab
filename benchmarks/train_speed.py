"""Training speed of SRResNet x4 with and without the speed settings (not a test).

    python benchmarks/train_speed.py [--iterations 300] [--batch-size 16] [--lr-patch 24]
        [--num-blocks 16] [--num-features 64] [--device auto] [--images DIR] [--num-workers 4]
    python benchmarks/train_speed.py --cpu [--only fp32 bf16 ...] [--threads N] [--iterations 12]
    python benchmarks/train_speed.py --cpu --converge 60 --only fp32 bf16 --valid DIR

Runs the real training loop (sfsr.training.loop.train, warm-up stage, on-the-fly MATLAB-exact LR on the
device) once per setting: fp32; bf16; bf16 + channels_last; bf16 + channels_last + torch.compile. The
rate is measured between the first logged window and the end, so start-up and compilation are left
out. Training images: DIR, or the builtin photos of the default config written to a temporary
folder.

``--cpu``: the CPU settings instead (``always`` forces a speed setting on a CPU, where ``true`` leaves
it off except bf16 on a CPU with AVX512-BF16/AMX): the default config (``default``: bf16 autocast on a
CPU with native bf16, float32 elsewhere), float32 (``fp32``, every switch off, on any CPU), fp32 on 1
thread, bf16 autocast, channels_last, bf16 + channels_last, torch.compile, bf16 + compile; ``--only``
picks some. Every row says what actually ran (``ran``: the speed flags the training recorded in its
provenance), so a label never hides another dtype.
``--converge N``: N iterations per setting from the same seed, the loss table at 10 checkpoints and
the final validation PSNR-Y on ``--valid`` (e.g. Set5), to compare convergence.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from pathlib import Path

import pandas as pd

from sfsr import io  # sfsr before torch: its threading policy (sfsr.threads), as a training job has it
from sfsr.data.sources import load_builtin
from sfsr.training.loop import train

import torch  # noqa: E402  isort: skip

BUILTIN_TRAIN = ["astronaut", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
                 "stereo_motorcycle", "china", "brick", "grass"]
SETTINGS = [
    ("fp32", dict(bf16=False, channels_last=False, compile=False)),
    ("bf16", dict(bf16=True, channels_last=False, compile=False)),
    ("bf16+channels_last", dict(bf16=True, channels_last=True, compile=False)),
    ("bf16+channels_last+compile", dict(bf16=True, channels_last=True, compile=True)),
]
#: CPU settings ("always" forces a speed setting on a CPU); "threads" sets torch's intra-op threads.
CPU_SETTINGS = [
    ("default", dict(bf16=True, channels_last=True, compile=False)),  # the default config: bf16 only on native bf16
    ("fp32", dict(bf16=False, channels_last=False, compile=False)),
    ("fp32-1thread", dict(bf16=False, channels_last=False, compile=False, threads=1)),
    ("bf16", dict(bf16="always", channels_last=False, compile=False)),
    ("channels_last", dict(bf16=False, channels_last="always", compile=False)),
    ("bf16+channels_last", dict(bf16="always", channels_last="always", compile=False)),
    ("compile", dict(bf16=False, channels_last=False, compile="always")),
    ("bf16+compile", dict(bf16="always", channels_last=False, compile="always")),
]


def training_images(given: Path | None, tmp: Path) -> Path:
    """``given`` (a folder of HR images), else the builtin photos of :data:`BUILTIN_TRAIN` written
    to ``tmp/images``."""
    if given is not None:
        return given
    images = tmp / "images"
    for name in BUILTIN_TRAIN:
        io.save_image(images / f"{name}.png", load_builtin(name))
    return images


def ran(out_dir: Path) -> str:
    """What a training run actually ran, from the speed flags its provenance.json records: e.g.
    ``bf16+channels_last``, or ``fp32`` when no switch was on."""
    flags = json.loads((out_dir / "provenance.json").read_text(encoding="utf-8"))["speed_flags"]
    return "+".join(k for k in ("bf16", "channels_last", "compile") if flags.get(k)) or "fp32"


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
    parser.add_argument("--cpu", action="store_true", help="the CPU settings (device cpu)")
    parser.add_argument("--only", nargs="+", help="run only these settings (by label)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--converge", type=int, default=None, metavar="N",
                        help="N iterations per setting, same seed: loss table and final PSNR")
    parser.add_argument("--valid", type=Path, default=None, help="validation HR folder (--converge)")
    parser.add_argument("--lr", type=float, default=2e-4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    settings = CPU_SETTINGS if args.cpu else SETTINGS
    if args.cpu:
        args.device = "cpu"
    if args.only:
        settings = [s for s in settings if s[0] in args.only]
    if args.converge:
        args.iterations = args.converge
    log_every = max(1, args.iterations // 10)
    default_threads = args.threads or torch.get_num_threads()
    curves = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = training_images(args.images, tmp)
        rows = []
        for label, flags in settings:
            flags = dict(flags)
            threads = flags.pop("threads", default_threads)
            torch.set_num_threads(threads)
            val_every = args.iterations if (args.converge and args.valid) else 10**9
            cfg = dict(arch=args.arch, scale=4,
                       kwargs=dict(num_blocks=args.num_blocks, num_features=args.num_features),
                       iterations=args.iterations, batch_size=args.batch_size, lr_patch=args.lr_patch,
                       lr=args.lr, log_every=log_every, val_every=val_every, checkpoint_every=10**9,
                       num_workers=args.num_workers, ema_decay=0.999, device=args.device, **flags)
            load = round(os.getloadavg()[0], 2)
            train("warmup", cfg, train_hr_dirs=[images],
                  valid_hr_dirs=[args.valid] if val_every == args.iterations else [],
                  out_dir=tmp / label, seed=0)
            full = pd.read_csv(tmp / label / "train_log.csv")
            log = full.dropna(subset=["lr"])
            first, last = log.iloc[0], log.iloc[-1]
            rate = (last.iteration - first.iteration) / (last.elapsed_s - first.elapsed_s)
            row = {"setting": label, "ran": ran(tmp / label), "threads": threads, "it_per_s": rate,
                   "patches_per_s": rate * args.batch_size,
                   "data_wait_fraction": log.data_wait_fraction.iloc[1:].mean(),
                   "first_window_s": first.elapsed_s, "load_before": load,
                   "load_after": round(os.getloadavg()[0], 2)}
            if args.converge:
                curves[label] = log.set_index("iteration")["pixel"]
                val = full.dropna(subset=["val_psnr_y"])
                if len(val):
                    row["final_val_psnr_y"] = float(val.val_psnr_y.iloc[-1])
                    row["final_val_ssim_y"] = float(val.val_ssim_y.iloc[-1])
            rows.append(row)
            print(row, flush=True)
            torch.set_num_threads(default_threads)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    table = pd.DataFrame(rows)
    table["speedup"] = table.it_per_s / table.it_per_s.iloc[0]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    print(f"{args.arch} x4 ({args.num_blocks} blocks x {args.num_features}), batch {args.batch_size}, "
          f"LR patch {args.lr_patch}, {args.iterations} iterations on {device}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if curves:
        loss = pd.DataFrame(curves)
        base = loss.columns[0]
        for col in loss.columns[1:]:
            loss[f"{col}/{base}-1"] = loss[col] / loss[base] - 1
        print("pixel (L1) loss, mean of each logged window:")
        print(loss.to_string(float_format=lambda v: f"{v:.5f}"))
    if args.csv:
        io.write_csv(args.csv, table)


if __name__ == "__main__":
    main()
