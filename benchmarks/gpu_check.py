"""The project's one GPU check: one command, under 8 minutes on one H100/H200, one JSON + Markdown record.

    # here (CPU machine): pack the real data the check needs into a git-ignored folder (< 64 MiB)
    python benchmarks/gpu_check.py --prepare-data .gpu_data
    # on the GPU machine (the device tool: carry .gpu_data), from the repository root
    PYTHONPATH=src python benchmarks/gpu_check.py --data .gpu_data --out "$OUT"
    # anywhere, in seconds: every part on tiny settings (the test suite runs this on CPU)
    python benchmarks/gpu_check.py --data .gpu_data --out /tmp/check --dry-run

Parts (each is recorded with its status, so one failure loses nothing of the others):

1. ``environment``: torch/CUDA versions, device name, CPU count and load average.
2. ``gpu_tests``: ``pytest -m gpu`` (the CUDA bicubic, bf16 training and inference tests); skipped
   with a reason where pytest is not installed.
3. ``bicubic_golden``: the MATLAB-exact downscaler on the CUDA device against the Set5 golden
   fixture (x2/x3/x4): differing pixels (must be 0).
4. ``step_speed``: one MSRResNet 16x64 training step (batch 16, HR 96, L1, Adam) per setting:
   fp32 eager, bf16 + channels_last, bf16 + channels_last + ``torch.compile``; steps/s measured in
   the same run after a warm-up, and the ratios to fp32.
5. ``train_291``: the warm-up stage (``sfsr.training.loop.train``) of MSRResNet 16x64 with the
   bicubic base on the 291 images (T91 + BSD200) for a fixed number of minutes (iterations sized
   from the measured rate), then PSNR-Y on Set5 and Set14 x4 against bicubic.

Writes ``gpu_check.json`` and ``gpu_check.md`` in ``--out``; exit code 1 when a part failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

#: folders of --data (made by --prepare-data from ../shared/data)
DATA_LAYOUT = {
    "train": ("train/T91", "train/BSD200"),
    "set5": "benchmark/Set5/HR",
    "set5_golden": "benchmark/Set5/LR_bicubic_matlab",
    "set14": "benchmark/Set14/HR",
}


# ------------------------------------------------------------------------------------ data pack
def prepare_data(shared: Path, dest: Path) -> dict[str, Any]:
    """Copy what the check reads from ``shared`` (../shared/data) into ``dest``: Set5 (+ golden LR)
    and Set14 as they are, the 291 training images re-encoded as lossless WebP (identical pixels,
    ~30% smaller) so that the folder travels within the device tool's 64 MiB."""
    from PIL import Image

    missing = [p for p in ("train/T91", "train/BSD200", DATA_LAYOUT["set5"], DATA_LAYOUT["set5_golden"],
                           DATA_LAYOUT["set14"]) if not (shared / p).is_dir()]
    if missing:
        raise SystemExit(f"gpu_check: {shared} lacks {missing}; point --shared at the project's shared "
                         "data folder (../shared/data)")
    tmp = Path(tempfile.mkdtemp(prefix=".gpu_data.", dir=dest.parent if dest.parent.exists() else None))
    try:
        for key in ("set5", "set5_golden", "set14"):
            shutil.copytree(shared / DATA_LAYOUT[key], tmp / DATA_LAYOUT[key])
        shutil.copy(shared / "README.md", tmp / "README.md")  # tests recognise the folder by it
        for folder in DATA_LAYOUT["train"]:
            (tmp / folder).mkdir(parents=True)
            for src in sorted((shared / folder).glob("*.png")):
                with Image.open(src) as im:
                    im.load()
                    im.save(tmp / folder / f"{src.stem}.webp", lossless=True, quality=100, method=4)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    return {"folder": str(dest), "bytes": size, "files": sum(1 for p in dest.rglob("*") if p.is_file())}


# ------------------------------------------------------------------------------------ the parts
def part_environment(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda_available": torch.cuda.is_available(), "cpu_count": os.cpu_count(),
                            "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
                            "dry_run": args.dry_run}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


def part_gpu_tests(args: argparse.Namespace) -> dict[str, Any]:
    if importlib.util.find_spec("pytest") is None:
        return {"status": "skipped", "reason": "pytest is not installed in this Python"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-o",
           "addopts=", str(REPO / "tests")]
    if args.dry_run:  # collect only: proves the selection works without running anything
        cmd.append("--collect-only")
    env = {**os.environ, "SFSR_SHARED_DATA": str(args.data.resolve()),
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=args.tests_timeout)
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
    return {"status": "ok" if proc.returncode in (0, 5) else "failed", "returncode": proc.returncode,
            "summary": lines[-1] if lines else proc.stderr.strip()[-500:],
            "seconds": round(time.perf_counter() - t0, 1),
            "tail": "\n".join(lines[-15:]) if proc.returncode not in (0, 5) else None}


def part_bicubic_golden(args: argparse.Namespace, device: Any) -> dict[str, Any]:
    import torch
    from PIL import Image

    from sfsr.data.bicubic import imresize, modcrop
    hr_dir, golden = args.data / DATA_LAYOUT["set5"], args.data / DATA_LAYOUT["set5_golden"]
    rows = []
    for scale in (2, 3, 4):
        for path in sorted(hr_dir.glob("*.png")):
            hr = modcrop(np.asarray(Image.open(path).convert("RGB")), scale)
            ref = np.asarray(Image.open(golden / f"X{scale}" / path.name).convert("RGB"))
            x = torch.from_numpy(np.array(hr)).permute(2, 0, 1).to(device)
            lr = imresize(x, 1 / scale).permute(1, 2, 0).cpu().numpy()
            if lr.shape != ref.shape:
                raise AssertionError(f"{path.name} x{scale}: LR shape {lr.shape} != golden {ref.shape}")
            rows.append({"image": path.stem, "scale": scale,
                         "differing_values": int(np.count_nonzero(lr != ref))})
    total_diff = sum(r["differing_values"] for r in rows)
    return {"status": "ok" if total_diff == 0 else "failed", "device": str(device),
            "images": len(rows), "differing_values": total_diff, "rows": rows}


def _speed_once(device: Any, mode: str, steps: int, warmup: int, size: dict[str, int]) -> float:
    """Steps per second of one MSRResNet training step in ``mode`` (synthetic patches: the step's
    cost does not depend on the pixel values)."""
    import torch

    from sfsr.models import build_generator
    torch.manual_seed(0)
    bf16 = mode != "fp32" and device.type == "cuda"
    channels_last = mode != "fp32"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    g = build_generator("msrresnet", 4, num_blocks=size["blocks"], num_features=size["features"],
                        base="bicubic").to(device, memory_format=fmt)
    opt = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.9, 0.99))
    fwd = torch.compile(g) if mode.endswith("compile") else g
    lr = torch.rand(size["batch"], 3, size["lr_patch"], size["lr_patch"], device=device).to(memory_format=fmt)
    hr = torch.rand(size["batch"], 3, 4 * size["lr_patch"], 4 * size["lr_patch"], device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.l1_loss(fwd(lr).float(), hr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return steps / (time.perf_counter() - t0)


def part_step_speed(args: argparse.Namespace, device: Any) -> dict[str, Any]:
    size = ({"blocks": 2, "features": 16, "batch": 2, "lr_patch": 8} if args.dry_run
            else {"blocks": 16, "features": 64, "batch": 16, "lr_patch": 24})
    steps, warmup = (3, 1) if args.dry_run else (100, 15)
    modes = ["fp32", "bf16+channels_last"]
    if device.type == "cuda":
        modes.append("bf16+channels_last+compile")
    rates: dict[str, float] = {}
    errors: dict[str, str] = {}
    for mode in modes:
        try:
            rates[mode] = _speed_once(device, mode, steps, warmup, size)
        except Exception as exc:  # e.g. compile unavailable: record it, keep the other modes
            errors[mode] = f"{type(exc).__name__}: {exc}"[:500]
    base = rates.get("fp32")
    return {"status": "ok" if not errors else "failed", "model": "MSRResNet x4", **size,
            "steps_timed": steps, "steps_per_s": {k: round(v, 3) for k, v in rates.items()},
            "ratio_to_fp32": {k: round(v / base, 3) for k, v in rates.items()} if base else {},
            "errors": errors or None}


def part_train_291(args: argparse.Namespace, device: Any, rate: float | None) -> dict[str, Any]:
    import pandas as pd

    from sfsr.models import load_generator
    from sfsr.training.loop import bicubic_reference, load_validation_items, train, validate
    out = args.out / "train_291"
    if out.exists():
        shutil.rmtree(out)
    if args.dry_run:
        iterations, kwargs, batch, lr_patch = 4, {"num_blocks": 1, "num_features": 8}, 2, 8
    else:
        # size the run from the measured rate of the speed setting the loop uses on this device
        # (data loading and validation cost a little more than the bare step: 85%)
        iterations = max(100, int(args.train_minutes * 60 * (rate or 1.0) * 0.85))
        kwargs, batch, lr_patch = {"num_blocks": 16, "num_features": 64}, 16, 24
    cfg = {"arch": "msrresnet", "scale": 4, "kwargs": {**kwargs, "base": "bicubic"},
           "iterations": iterations, "batch_size": batch, "lr_patch": lr_patch, "lr": 2e-4,
           "betas": [0.9, 0.99], "scheduler": "cosine", "eta_min": 1e-6, "ema_decay": 0.999,
           "pixel_loss": "l1", "val_every": max(1, iterations // 8), "checkpoint_every": iterations,
           "log_every": max(1, min(100, iterations // 4)), "num_workers": 0 if args.dry_run else 6,
           "device": str(device.type), "bf16": True, "channels_last": True, "compile": False,
           "cache_mb": 2048}
    train_dirs = [args.data / d for d in DATA_LAYOUT["train"]]
    if args.dry_run:  # two training images are enough to run every step
        tiny = args.out / "train_291_dry_data"
        shutil.rmtree(tiny, ignore_errors=True)
        tiny.mkdir(parents=True)
        for src in sorted(train_dirs[0].iterdir())[:2]:
            shutil.copy(src, tiny / src.name)
        train_dirs = [tiny]
    t0 = time.perf_counter()
    ckpt = train("warmup", cfg, train_hr_dirs=train_dirs, valid_hr_dirs=[args.data / DATA_LAYOUT["set5"]],
                 out_dir=out, device=str(device.type), seed=0)
    wall = time.perf_counter() - t0
    model, _ = load_generator(ckpt, device)
    result: dict[str, Any] = {"status": "ok", "iterations": iterations, "wall_s": round(wall, 1),
                              "settings": cfg}
    for name in ("set5", "set14"):
        items, _ = load_validation_items([args.data / DATA_LAYOUT[name]], 4, None)
        psnr = validate(model, items, 4, device)["psnr_y"]
        bic = bicubic_reference(items, 4)["psnr_y"]
        result[name] = {"psnr_y": round(psnr, 3), "bicubic_psnr_y": round(bic, 3),
                        "gain_db": round(psnr - bic, 3)}
    log = pd.read_csv(out / "train_log.csv").dropna(subset=["val_psnr_y"])
    result["curve"] = [{"iteration": int(r.iteration), "minutes": round(r.elapsed_s / 60, 2),
                        "set5_psnr_y": round(r.val_psnr_y, 3)} for r in log.itertuples()]
    return result


# ------------------------------------------------------------------------------------ record
def markdown(record: dict[str, Any]) -> str:
    env = record["environment"]
    lines = ["# GPU check", "",
             f"- when: {record['started']}; total {record['seconds']:.0f} s; dry run: {env.get('dry_run')}",
             f"- device: {env.get('device', 'no CUDA device')} (capability {env.get('capability', '-')}, "
             f"{env.get('memory_gib', '-')} GiB); torch {env['torch']}, CUDA {env.get('cuda', '-')}",
             f"- host: {env['cpu_count']} CPUs, load average {env['load_average_1_5_15']}", ""]
    for name, part in record["parts"].items():
        lines.append(f"## {name}: {part.get('status')}")
        if part.get("status") == "failed" and part.get("error"):
            lines += ["```", part["error"][-1500:], "```"]
        if name == "gpu_tests":
            lines.append(f"- {part.get('summary') or part.get('reason')}")
        elif name == "bicubic_golden" and "images" in part:
            lines.append(f"- {part['images']} image/scale pairs on {part['device']}: "
                         f"{part['differing_values']} differing values")
        elif name == "step_speed" and "steps_per_s" in part:
            lines += ["", "| setting | steps/s | ratio to fp32 |", "|---|---:|---:|"]
            for mode, rate in part["steps_per_s"].items():
                lines.append(f"| {mode} | {rate:.2f} | {part['ratio_to_fp32'].get(mode, math.nan):.2f} |")
            if part.get("errors"):
                lines.append(f"- errors: {part['errors']}")
        elif name == "train_291" and "set5" in part:
            lines += [f"- {part['iterations']} iterations in {part['wall_s']:.0f} s", "",
                      "| set | PSNR-Y | bicubic | gain (dB) |", "|---|---:|---:|---:|"]
            for s in ("set5", "set14"):
                lines.append(f"| {s} | {part[s]['psnr_y']:.3f} | {part[s]['bicubic_psnr_y']:.3f} | "
                             f"{part[s]['gain_db']:+.3f} |")
        lines.append("")
    return "\n".join(lines)


def run_check(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "parts": {}}
    t_start = time.perf_counter()

    def run(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            part = fn()
        except Exception as exc:
            part = {"status": "failed", "error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"}
        part["seconds"] = round(time.perf_counter() - t0, 1)
        record["parts"][name] = part
        print(f"[gpu_check] {name}: {part['status']} ({part['seconds']} s)", flush=True)
        return part

    record["environment"] = part_environment(args)
    if not args.dry_run and device.type != "cuda":
        print("[gpu_check] no CUDA device: the record will say so (use --dry-run on CPU)", flush=True)
    run("gpu_tests", lambda: part_gpu_tests(args))
    run("bicubic_golden", lambda: part_bicubic_golden(args, device))
    speed = run("step_speed", lambda: part_step_speed(args, device))
    rate = (speed.get("steps_per_s") or {}).get("bf16+channels_last")
    run("train_291", lambda: part_train_291(args, device, rate))
    record["environment"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    record["seconds"] = round(time.perf_counter() - t_start, 1)
    from sfsr import io
    io.write_text(args.out / "gpu_check.json", json.dumps(record, indent=2, default=str) + "\n")
    io.write_text(args.out / "gpu_check.md", markdown(record) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--data", type=Path, help="folder made by --prepare-data")
    ap.add_argument("--out", type=Path, help="where gpu_check.json / .md are written")
    ap.add_argument("--prepare-data", type=Path, metavar="DEST",
                    help="pack the shared data the check needs into DEST (git-ignore it) and stop")
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get("SFSR_SHARED_DATA", REPO.parent / "shared" / "data")),
                    help="the shared data folder (default: $SFSR_SHARED_DATA or ../shared/data)")
    ap.add_argument("--train-minutes", type=float, default=3.0,
                    help="minutes of 291-image training (default 3: the whole check stays under 8)")
    ap.add_argument("--tests-timeout", type=int, default=150, help="seconds for pytest -m gpu")
    ap.add_argument("--dry-run", action="store_true", help="tiny settings, seconds on a CPU")
    args = ap.parse_args(argv)
    if args.prepare_data is not None:
        print(json.dumps(prepare_data(args.shared, args.prepare_data)))
        return 0
    if args.data is None or args.out is None:
        ap.error("--data and --out are needed (or --prepare-data DEST)")
    missing = [v for v in (DATA_LAYOUT["set5"], DATA_LAYOUT["set14"], *DATA_LAYOUT["train"])
               if not (args.data / v).is_dir()]
    if missing:
        ap.error(f"{args.data} lacks {missing}: make it with --prepare-data {args.data}")
    record = run_check(args)
    print(markdown(record))
    return 0 if all(p.get("status") in ("ok", "skipped") for p in record["parts"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
