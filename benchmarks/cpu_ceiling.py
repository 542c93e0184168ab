"""How close one CPU training step already is to what the CPU can compute (issue 14 item 4; not a test).

    python -m benchmarks.cpu_ceiling [--repeats 5] [--threads N] [--dry-run] [--out DIR]

In one run, interleaved so that both see the same load:

* the CPU's float32 ceiling: GFLOP/s of ``torch.mm`` on 2048x2048 matrices (the best case for
  oneDNN/MKL: large, square, contiguous), and the same in bfloat16 (emulated on a CPU without
  ``avx512_bf16``/AMX: slower, not faster);
* the training step of issue 14's setting: MSRResNet 16x64 x4 (bilinear base), batch 16, LR 24x24,
  L1 loss, backward, Adam step; its FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode``
  (forward + backward convolutions and matrix products), its seconds measured. The step is written
  out here (not sfsr's training loop, which ``benchmarks/train_speed.py --cpu`` times) so that the
  counter sees exactly the measured work;
* the bound this gives: a step cannot take less than ``FLOPs / ceiling`` seconds in float32, so
  the best possible speed-up over the measured step is ``step / (FLOPs / ceiling)``; the issue's 2x
  over BasicSR (:data:`BASICSR_S_PER_ITER`, the issue's measurement) needs at least
  ``FLOPs / (BASICSR_S_PER_ITER / 2)``. Results: docs/PERFORMANCE.md, "Why 2x BasicSR is out of
  reach on this CPU".

Prints a table and appends the suite's records (machine, commit, torch, load; :class:`Recorder` of
``python -m benchmarks``) to ``DIR/cpu.jsonl`` (default ``benchmarks/results``); ``--dry-run``: a
tiny model and matrices, records marked ``dry_run``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from benchmarks.__main__ import REPO, Recorder, _load  # imports sfsr (threading policy) before torch
from sfsr.models import build_generator

import torch  # noqa: E402  isort: skip
import torch.nn.functional as F  # noqa: E402  isort: skip
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402  isort: skip

BASICSR_S_PER_ITER = 0.64  # issue 14's quiet measurement of BasicSR on this VM


def gemm_seconds(a: torch.Tensor, b: torch.Tensor) -> float:
    t = time.perf_counter()
    torch.mm(a, b)
    return time.perf_counter() - t


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu_ceiling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, one run each")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
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
    mats = {dtype: (torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype))
            for dtype in (torch.float32, torch.bfloat16)}
    for a, b in mats.values():
        torch.mm(a, b)  # warm-up (oneDNN primitive, page faults)
    load = _load()
    fp32, bf16, steps = [], [], []
    for _ in range(repeats):  # interleaved: each kind sees the same load
        fp32.append(gemm_seconds(*mats[torch.float32]))
        t = time.perf_counter()
        training_step(model, opt, lr, hr)
        steps.append(time.perf_counter() - t)
        bf16.append(gemm_seconds(*mats[torch.bfloat16]))

    gemm_gflop = 2 * n ** 3 / 1e9
    ceiling = gemm_gflop / min(fp32)  # GFLOP/s, best of the runs
    step, step_gflop = statistics.median(steps), step_flops / 1e9
    achieved = step_gflop / step
    floor = step_gflop / ceiling
    need = step_gflop / (BASICSR_S_PER_ITER / 2)
    bound = {"step_gflop": step_gflop, "fp32_ceiling_gflop_per_s": ceiling,
             "achieved_gflop_per_s": achieved, "achieved_fraction_of_ceiling": achieved / ceiling,
             "fastest_possible_step_s": floor, "max_speedup_fp32": step / floor,
             "basicsr_2x_needs_gflop_per_s": need, "basicsr_2x_needs_vs_ceiling": need / ceiling,
             "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    rec = Recorder(args.out, "cpu", args.dry_run)
    for name, times in (("fp32 GEMM", fp32), ("bf16 GEMM", bf16)):
        rec.add("cpu_ceiling", f"{name} {n}x{n}", times, {"n": n}, load_before=load, work=gemm_gflop,
                unit="gflop_per_s", values={"best_gflop_per_s": gemm_gflop / min(times)})
    rec.add("cpu_ceiling", "msrresnet training step", steps,
            {"arch": "msrresnet", "num_blocks": blocks, "num_features": feats, "batch_size": batch,
             "lr_patch": patch, "loss": "l1", "optimizer": "adam"},
            load_before=load, work=step_gflop, unit="gflop_per_s", values=bound)
    rec.finish()

    rows = [
        ("fp32 GEMM ceiling (best of runs)", f"{ceiling:.1f} GFLOP/s", f"median {gemm_gflop / statistics.median(fp32):.1f}"),
        ("bf16 GEMM (best of runs)", f"{gemm_gflop / min(bf16):.1f} GFLOP/s", f"{gemm_gflop / min(bf16) / ceiling:.2f}x fp32"),
        ("training step FLOPs (counted)", f"{step_gflop:.1f} GFLOP", f"batch {batch}, LR {patch}, {blocks}x{feats}"),
        ("training step (median)", f"{step:.3f} s", f"min {min(steps):.3f}, max {max(steps):.3f}"),
        ("achieved", f"{achieved:.1f} GFLOP/s", f"{achieved / ceiling:.0%} of the ceiling"),
        ("fastest possible fp32 step", f"{floor:.3f} s", f"at most {step / floor:.2f}x faster than now"),
        ("2x BasicSR needs", f"{need:.1f} GFLOP/s", f"{need / ceiling:.2f}x the fp32 ceiling"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"threads {torch.get_num_threads()}, load {load}-{_load()}, torch {torch.__version__}, "
          f"cpu capability {bound['cpu_capability']}, commit {rec.common['git_commit']}")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>16}  {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
