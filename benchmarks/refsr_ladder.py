"""The RefSR diagnosis ladder (docs/refsr.md, "Why the reference added nothing"): does SSEN use its
reference, and if not, which part fails?

Each *rung* is a kind of reference for the same offline groups (``sfsr.data.refgroups``: crops of the
builtin photographs, hr_size 96, x4), from the easiest to today's levels:

* ``own``: the target's own HR image (perfectly aligned: the ceiling of what the fusion can use);
* ``int``: the target window moved by one LR pixel (4 HR pixels) to one of its 8 neighbours: an
  integer shift at the LR grid, no resampling;
* ``sub``: moved by about 1.2 LR pixels (4.8 HR pixels, rounded to whole HR pixels, never a multiple
  of 4 on both axes): a sub-LR-pixel shift, still no resampling;
* ``1``..``4``: today's levels (level 1 is the same 1.2 LR-pixel shift as ``sub`` but resampled
  bicubically at a random direction; 2..4 add rotation, zoom and colour).

For each rung one SSEN trains on references of that rung only, and one no-reference control (the
same trunk) trains once, all for the same iterations, batch, patches and seed. Every trained model is
then evaluated on the 16 test groups with every rung's reference. Per run it records the mean
absolute offset of each deformable layer, the gradient norm reaching the reference branch (the
reference head, the deformable convolutions, the offset predictors) against the trunk's, and the
PSNR-Y gain over the control with a 95% paired bootstrap interval over the test groups.

    python -m benchmarks.refsr_ladder --iterations 600 --tag base
    python -m benchmarks.refsr_ladder --iterations 600 --tag warp --model-kwargs '{"match_radius": 4}' \
        --control results/refsr_ladder/base/model_none.pt

Runs are independent processes of one thread each (``--jobs`` at a time). Output (``--out``, default
the git-ignored ``results/refsr_ladder``): ``<out>/<tag>.csv`` (one row per trained model and test
rung) and ``<out>/<tag>.md``; every run's model and log in ``<out>/<tag>/``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HR_SIZE, SCALE, LR_PATCH = 96, 4, 16
TRAIN = ["astronaut", "coffee", "rocket", "china", "hubble_deep_field", "immunohistochemistry", "retina"]
TEST = ["chelsea", "flower", "stereo_motorcycle", "camera"]
RUNGS = ("own", "int", "sub", "1", "2", "3", "4")
#: The CPU setting of experiments/refsr_builtin_x4_local.yaml.
BASE_KWARGS = {"num_blocks": 4, "num_features": 32, "extract_blocks": 2, "num_deform": 3,
               "offset_features": 32, "base": "bicubic"}


def ladder_groups(photos: list[str], groups_per_image: int, seed: int) -> list[dict]:
    """Per group: ``target`` (uint8 HWC), ``refs`` {rung: uint8 HWC}, ``photo``."""
    from sfsr.data.refgroups import _photo_pair, synthetic_groups

    rows = synthetic_groups("ladder", photos, HR_SIZE, groups_per_image, seed=seed)
    rng = np.random.default_rng([seed, 7])
    out: dict[str, dict] = {}
    cache: dict[str, np.ndarray] = {}
    for r in rows:
        g = out.setdefault(r["group"], {"photo": r["photo"], "refs": {}})
        if r["role"] == "target":
            g["target"] = r["image"]
            photo = cache.setdefault(r["photo"], _photo_pair(r["photo"])[0])
            top, left = r["top"], r["left"]

            def window(dy: int, dx: int) -> np.ndarray:
                return np.ascontiguousarray(photo[top + dy:top + dy + HR_SIZE, left + dx:left + dx + HR_SIZE])

            g["refs"]["own"] = r["image"]
            neighbours = [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1) if (a, b) != (0, 0)]
            a, b = neighbours[int(rng.integers(len(neighbours)))]
            g["refs"]["int"] = window(SCALE * a, SCALE * b)
            while True:
                angle = rng.uniform(0, 2 * np.pi)
                dy, dx = (int(round(4.8 * np.sin(angle))), int(round(4.8 * np.cos(angle))))
                if dy % SCALE or dx % SCALE:
                    break
            g["refs"]["sub"] = window(dy, dx)
        else:
            g["refs"][str(r["level"])] = r["image"]
    return list(out.values())


def _patches(groups: list[dict], rung: str, rng: np.random.Generator, batch: int):
    import torch

    from sfsr.data.bicubic import imresize

    hr, ref, lr = [], [], []
    p = LR_PATCH * SCALE
    for _ in range(batch):
        g = groups[int(rng.integers(len(groups)))]
        y = int(rng.integers(HR_SIZE // SCALE - LR_PATCH + 1)) * SCALE
        x = int(rng.integers(HR_SIZE // SCALE - LR_PATCH + 1)) * SCALE
        a, b = g["target"][y:y + p, x:x + p], g["refs"][rung if rung != "none" else "1"][y:y + p, x:x + p]
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        a, b = (np.rot90(v, k) for v in (a, b))
        if flip:
            a, b = a[:, ::-1], b[:, ::-1]
        a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
        hr.append(a)
        ref.append(b)
        lr.append(imresize(a, 1 / SCALE))
    t = lambda xs: torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float() / 255.0  # noqa: E731
    return t(lr), t(ref), t(hr)


def _grad_norm(params) -> float:
    total = sum(float(p.grad.detach().pow(2).sum()) for p in params if p.grad is not None)
    return total ** 0.5


def train_one(rung: str, iterations: int, kwargs: dict, seed: int, lr_rate: float, batch: int, out: Path,
              offset_lr_mult: float) -> Path:
    """Train one model on references of ``rung`` (``none``: the no-reference control); save it."""
    from sfsr.models.ssen import SSEN  # sfsr before torch (its thread-waiting policy)

    import torch

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    groups = ladder_groups(TRAIN, 9, seed=0)
    use_ref = rung != "none"
    if not use_ref:
        kwargs = {k: v for k, v in kwargs.items() if k != "match_radius"}
    model = SSEN(scale=SCALE, use_reference=use_ref, **kwargs)
    offset_params = [p for n, p in model.named_parameters() if ".estimator." in n or ".to_offset." in n]
    ids = {id(p) for p in offset_params}
    rest = [p for p in model.parameters() if id(p) not in ids]
    groups_opt = [{"params": rest}]
    if offset_params:
        groups_opt.append({"params": offset_params, "lr": lr_rate * offset_lr_mult})
    opt = torch.optim.Adam(groups_opt, lr=lr_rate)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations)
    rng = np.random.default_rng([seed, 11])
    ref_params = {"ref_head": [], "deform": [], "offset": [], "trunk": []}
    for n, p in model.named_parameters():
        if n.startswith("ref_head."):
            ref_params["ref_head"].append(p)
        elif n.startswith("align.") and (".estimator." in n or ".to_offset." in n):
            ref_params["offset"].append(p)
        elif n.startswith("align."):
            ref_params["deform"].append(p)
        elif n.startswith("trunk"):
            ref_params["trunk"].append(p)
    log = []
    start = time.perf_counter()
    for it in range(1, iterations + 1):
        lr, ref, hr = _patches(groups, rung, rng, batch)
        sr = model(lr, ref if use_ref else None)
        loss = torch.nn.functional.l1_loss(sr, hr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if it % 25 == 0 or it == iterations:
            row = {"it": it, "l1": loss.item(), "seconds": time.perf_counter() - start}
            row |= {f"grad_{k}": _grad_norm(v) for k, v in ref_params.items() if v}
            if use_ref:
                row |= {f"offset{i}": float(m) for i, m in enumerate(model.offset_magnitudes)}
            log.append(row)
        opt.step()
        sched.step()
    path = out / f"model_{rung}.pt"
    torch.save({"state": model.state_dict(), "kwargs": kwargs, "use_reference": use_ref, "log": log,
                "seconds": time.perf_counter() - start}, path)
    return path


def evaluate(paths: dict[str, Path], seed: int, n_boot: int = 4000) -> list[dict]:
    """PSNR-Y of every model on every test group and rung; gain over the control per group."""
    import torch

    from sfsr.data.bicubic import imresize
    from sfsr.metrics import image_metrics, to_uint8
    from sfsr.models.ssen import SSEN

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    groups = ladder_groups(TEST, 4, seed=1)
    psnr: dict[tuple[str, str], np.ndarray] = {}
    for name, path in paths.items():
        blob = torch.load(path, weights_only=False)
        kw = blob["kwargs"] if blob["use_reference"] else {
            k: v for k, v in blob["kwargs"].items() if k != "match_radius"}
        model = SSEN(scale=SCALE, use_reference=blob["use_reference"], **kw).eval()
        model.load_state_dict(blob["state"])
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float() / 255  # noqa: E731
        tests = RUNGS if blob["use_reference"] else ("none",)
        for rung in tests:
            values = []
            for g in groups:
                lr = imresize(g["target"], 1 / SCALE)
                with torch.no_grad():
                    sr = model(t(lr), t(g["refs"][rung]) if blob["use_reference"] else None)
                values.append(image_metrics(g["target"], to_uint8(sr[0]), SCALE)["psnr_y"])
            psnr[(name, rung)] = np.array(values)
        if "bicubic" not in {k[0] for k in psnr}:
            values = []
            for g in groups:
                up = imresize(imresize(g["target"], 1 / SCALE), SCALE)
                values.append(image_metrics(g["target"], up, SCALE)["psnr_y"])
            psnr[("bicubic", "none")] = np.array(values)
    control = psnr[("none", "none")]
    rng = np.random.default_rng(seed)
    rows = []
    for (name, rung), v in psnr.items():
        d = v - control
        boots = d[rng.integers(len(d), size=(n_boot, len(d)))].mean(axis=1)
        rows.append({"trained_on": name, "tested_with": rung, "psnr_y": v.mean(), "gain_vs_control": d.mean(),
                     "low": np.quantile(boots, 0.025), "high": np.quantile(boots, 0.975),
                     "groups_won": int((d > 0).sum()), "groups": len(d)})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=600)
    ap.add_argument("--rungs", nargs="+", default=list(RUNGS), choices=RUNGS)
    ap.add_argument("--model-kwargs", default="{}", help="JSON merged into the SSEN kwargs of the CPU setting")
    ap.add_argument("--offset-lr-mult", type=float, default=1.0,
                    help="learning rate of the offset estimators and predictors, relative to the rest")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--control", type=Path, help="a trained control (model_none.pt) to reuse instead of training one")
    ap.add_argument("--out", type=Path, default=Path("results/refsr_ladder"))
    ap.add_argument("--tag", default="ladder")
    ap.add_argument("--train-one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    kwargs = BASE_KWARGS | json.loads(args.model_kwargs)
    run_dir = args.out / args.tag
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.train_one:
        train_one(args.train_one, args.iterations, kwargs, args.seed, args.lr, args.batch, run_dir,
                  args.offset_lr_mult)
        return
    todo = [] if args.control else ["none"]
    todo += args.rungs
    base = [sys.executable, "-m", "benchmarks.refsr_ladder", "--iterations", str(args.iterations),
            "--model-kwargs", json.dumps(kwargs), "--offset-lr-mult", str(args.offset_lr_mult),

            "--lr", str(args.lr), "--batch", str(args.batch), "--seed", str(args.seed), "--out", str(args.out),
            "--tag", args.tag]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    running: list[tuple[str, subprocess.Popen]] = []
    start = time.perf_counter()
    load_before = os.getloadavg()
    while todo or running:
        while todo and len(running) < args.jobs:
            rung = todo.pop(0)
            logf = open(run_dir / f"train_{rung}.log", "w")
            running.append((rung, subprocess.Popen([*base, "--train-one", rung], stdout=logf, stderr=logf, env=env)))
        time.sleep(2)
        for item in list(running):
            if item[1].poll() is not None:
                running.remove(item)
                if item[1].returncode:
                    raise SystemExit(f"training on rung {item[0]} failed: see {run_dir}/train_{item[0]}.log")
    wall = time.perf_counter() - start
    import pandas as pd
    import torch

    paths = {"none": args.control or run_dir / "model_none.pt"} | {r: run_dir / f"model_{r}.pt" for r in args.rungs}
    table = pd.DataFrame(evaluate(paths, args.seed))
    stats = []
    for name, path in paths.items():
        blob = torch.load(path, weights_only=False)
        last = pd.DataFrame(blob["log"]).tail(8).mean(numeric_only=True)
        stats.append({"trained_on": name, "train_seconds": blob["seconds"], "final_l1": last.get("l1"),
                      **{k: last[k] for k in last.index if k.startswith(("grad_", "offset"))}})
    stats = pd.DataFrame(stats)
    table = table.merge(stats, on="trained_on", how="left")
    table.to_csv(args.out / f"{args.tag}.csv", index=False)
    diag = table[(table.trained_on == table.tested_with) | (table.trained_on == "none")]
    meta = (f"iterations {args.iterations}, batch {args.batch}, lr {args.lr}, offset lr x{args.offset_lr_mult}, "
            f"kwargs {json.dumps(kwargs)}; wall {wall:.0f} s for the training ({args.jobs} at a time); "
            f"load {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    text = f"# {args.tag}\n\n{meta}\n\n## Trained and tested on the same rung\n\n" + diag.to_markdown(
        index=False, floatfmt=".3f") + "\n\n## Every model on every rung\n\n" + table[
        ["trained_on", "tested_with", "psnr_y", "gain_vs_control", "low", "high", "groups_won"]].to_markdown(
        index=False, floatfmt=".3f") + "\n"
    (args.out / f"{args.tag}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
