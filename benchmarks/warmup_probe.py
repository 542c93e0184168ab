"""Warm-up convergence probe: train the warm-up stage of some models of a config outside Snakemake,
with overrides, and print test PSNR-Y against bicubic (the tool behind docs/training.md).

    python benchmarks/warmup_probe.py --models srresnet_x4 --set kwargs.base=bicubic \\
        --set warmup.iterations=600 --out /tmp/probe
    python benchmarks/warmup_probe.py --curves none=/tmp/a/srresnet_x4 bicubic=/tmp/b/srresnet_x4 \\
        --out curves.png

``--set KEY=VALUE`` (YAML value) overrides ``models.<model>.KEY`` for every probed model; dotted keys
go into nested mappings (``warmup.lr=1e-3``, ``kwargs.use_bn=false``). The data must be prepared
(``snakemake --cores all data``). Prints one line per model: iterations, wall seconds, validation
curve, test PSNR-Y of the final (EMA) and best generators, bicubic's, and the gap.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from sfsr.models import load_generator  # noqa: E402
from sfsr.training.data import load_validation_items  # noqa: E402
from sfsr.training.loop import train  # noqa: E402
from sfsr.training.settings import stage_config  # noqa: E402
from sfsr.training.validation import bicubic_reference, validate  # noqa: E402


def _set(mapping: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        if not isinstance(mapping.get(k), dict):
            mapping[k] = {}
        mapping = mapping[k]
    mapping[keys[-1]] = value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", nargs="+", default=[str(REPO / "config.yaml")])
    ap.add_argument("--models", nargs="+", default=None, help="default: the config's sr_models")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", required=True, help="folder for the runs (one per model)")
    ap.add_argument("--json", help="append one JSON line per model to this file")
    ap.add_argument("--title", help="figure title (with --curves)")
    ap.add_argument("--curves", nargs="+", metavar="LABEL=RUN_DIR",
                    help="instead of training: draw the learning curves of finished runs into --out "
                         "(a PNG path) with sfsr.plots.plot_training_curves")
    args = ap.parse_args(argv)
    if args.curves:
        import pandas as pd

        from sfsr.plots import plot_training_curves
        logs = {}
        for item in args.curves:
            label, _, folder = item.partition("=")
            logs[label] = pd.read_csv(Path(folder) / "train_log.csv")
        plot_training_curves(logs, args.out, title=args.title or "")
        print(f"wrote {args.out}")
        return 0
    from snakemake.utils import update_config  # merge config files as `--configfile a b` does

    config: dict = {}
    for path in args.config:
        update_config(config, yaml.safe_load(Path(path).read_text()))
    data_dir = Path(config.get("data_dir", "resources/data"))
    prepared = lambda name: data_dir / "prepared" / name / "HR"  # noqa: E731
    for name in args.models or config["sr_models"]:
        config_m = copy.deepcopy(config)
        for item in args.set:
            key, _, raw = item.partition("=")
            value = yaml.safe_load(raw)
            if isinstance(value, str):  # YAML 1.1 reads 2e-4 as a string
                try:
                    value = float(value)
                except ValueError:
                    pass
            _set(config_m["models"][name], key, value)
        cfg = stage_config(config_m, name, "warmup")
        out = Path(args.out) / name
        t0 = time.perf_counter()
        ckpt = train("warmup", cfg, train_hr_dirs=[prepared(d) for d in config["train"]],
                     valid_hr_dirs=[prepared(d) for d in config["valid"]], out_dir=out,
                     seed=int(config.get("seed", 0)))
        wall = time.perf_counter() - t0
        scale = int(cfg["scale"])
        test, _ = load_validation_items([prepared(d) for d in config["test"]], scale, None)
        model, _ = load_generator(ckpt)
        best, _ = load_generator(out / "best.pt") if (out / "best.pt").is_file() else (model, scale)
        import torch
        rec = {"model": name, "set": args.set, "iterations": cfg["iterations"], "wall_s": round(wall, 1),
               "test_psnr_y": round(validate(model, test, scale, torch.device("cpu"))["psnr_y"], 3),
               "test_psnr_y_best": round(validate(best, test, scale, torch.device("cpu"))["psnr_y"], 3),
               "bicubic_psnr_y": round(bicubic_reference(test, scale)["psnr_y"], 3)}
        rec["gap_db"] = round(rec["test_psnr_y"] - rec["bicubic_psnr_y"], 3)
        import pandas as pd
        log = pd.read_csv(out / "train_log.csv")
        rec["val_curve"] = [round(v, 2) for v in log["val_psnr_y"].dropna().tolist()]
        print(json.dumps(rec), flush=True)
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
