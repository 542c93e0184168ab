"""How close one CPU training step already is to what the CPU can compute (issue 14 item 4; not a test).

    python benchmarks/cpu_ceiling.py [--repeats 5] [--threads N] [--dry-run]

In one run, interleaved so that both see the same load:

* the CPU's float32 ceiling: GFLOP/s of ``torch.mm`` on 2048x2048 matrices (the best case for
  oneDNN/MKL: large, square, contiguous), and the same in bfloat16 (emulated on a CPU without
  ``avx512_bf16``/AMX: slower, not faster);
* the training step of issue 14's setting: MSRResNet 16x64 x4 (bilinear base), batch 16, LR 24x24,
  L1 loss, backward, Adam step; its FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode``
  (forward + backward convolutions and matrix products), its seconds measured;
* the bound this gives: a step cannot take less than ``FLOPs / ceiling`` seconds in float32, so
  the best possible speed-up over the measured step is ``step / (FLOPs / ceiling)``; the issue's 2x
  over BasicSR (0.64 s/iter measured there: 0.32 s) needs at least ``FLOPs / 0.32 s``.

Prints a table and appends one JSON record per run to ``benchmarks/results/cpu.jsonl`` (unless
``--dry-run``: a tiny model and matrices, nothing written).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from sfsr.models import build_generator

RESULTS = Path(__file__).resolve().parent / "results" / "cpu.jsonl"
BASICSR_S_PER_ITER = 0.64  # issue 14's quiet measurement of BasicSR on this VM


def gemm_gflops(n: int, dtype: torch.dtype, repeats: int) -> list[float]:
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.mm(a, b)  # warm-up (oneDNN primitive, page faults)
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        rates.append(2 * n ** 3 / (time.perf_counter() - t) / 1e9)
    return rates


def training_step(model: torch.nn.Module, opt: torch.optim.Optimizer, lr: torch.Tensor, hr: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss = F.l1_loss(model(lr), hr)
    loss.backward()
    opt.step()


def count_flops(fn, *args) -> int:
    """FLOPs of ``fn(*args)`` as ``torch.utils.flop_counter.FlopCounterMode`` counts them (matrix
    products and convolutions, forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, nothing written")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    blocks, feats, batch, patch, n = (1, 8, 2, 8, 256) if args.dry_run else (16, 64, 16, 24, 2048)
    repeats = 1 if args.dry_run else args.repeats
    model = build_generator("msrresnet", 4, num_blocks=blocks, num_features=feats, base="bilinear")
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    lr = torch.rand(batch, 3, patch, patch)
    hr = torch.rand(batch, 3, patch * 4, patch * 4)
    step_flops = count_flops(training_step, model, opt, lr, hr)
    load = [os.getloadavg()[0]]
    fp32, bf16, steps = [], [], []
    for _ in range(repeats):  # interleaved: each kind sees the same load
        fp32 += gemm_gflops(n, torch.float32, 1)
        t = time.perf_counter()
        training_step(model, opt, lr, hr)
        steps.append(time.perf_counter() - t)
        bf16 += gemm_gflops(n, torch.bfloat16, 1)
    load.append(os.getloadavg()[0])
    ceiling, step = max(fp32), statistics.median(steps)
    achieved = step_flops / step / 1e9
    floor = step_flops / (ceiling * 1e9)
    need = step_flops / (BASICSR_S_PER_ITER / 2) / 1e9
    rows = [
        ("fp32 GEMM ceiling (best of runs)", f"{ceiling:.1f} GFLOP/s", f"median {statistics.median(fp32):.1f}"),
        ("bf16 GEMM (best of runs)", f"{max(bf16):.1f} GFLOP/s", f"{max(bf16) / ceiling:.2f}x fp32"),
        ("training step FLOPs (counted)", f"{step_flops / 1e9:.1f} GFLOP", f"batch {batch}, LR {patch}, {blocks}x{feats}"),
        ("training step (median)", f"{step:.3f} s", f"min {min(steps):.3f}, max {max(steps):.3f}"),
        ("achieved", f"{achieved:.1f} GFLOP/s", f"{achieved / ceiling:.0%} of the ceiling"),
        ("fastest possible fp32 step", f"{floor:.3f} s", f"at most {step / floor:.2f}x faster than now"),
        ("2x BasicSR needs", f"{need:.1f} GFLOP/s", f"{need / ceiling:.2f}x the fp32 ceiling"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"threads {torch.get_num_threads()}, load {load[0]:.2f}-{load[1]:.2f}, torch {torch.__version__}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>16}  {note}")
    if not args.dry_run:
        record = {"benchmark": "cpu_ceiling", "threads": torch.get_num_threads(), "gemm_n": n,
                  "fp32_gflops": fp32, "bf16_gflops": bf16, "step_s": steps, "step_gflop": step_flops / 1e9,
                  "achieved_fraction": achieved / ceiling, "max_speedup_fp32": step / floor,
                  "load": load, "torch": torch.__version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "cpu_capability": torch.backends.cpu.get_cpu_capability()}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
