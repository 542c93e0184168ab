"""The benchmark suite: ``python -m benchmarks [--quick] [--device cpu|cuda] [--dry-run]``.

Each benchmark runs sfsr's variants and the BasicSR-style reference (:mod:`benchmarks.basicsr_ref`)
in the same run, so ratios are measured under the same load. It prints a table and appends one JSON
record per variant (benchmark, variant, parameters, median/min/max seconds, throughput, ratio to the
reference, machine, load average before/after, torch version, device, git commit) to
``benchmarks/results/<device>.jsonl``.

Benchmarks:

* ``evaluate_process``: ``sfsr evaluate --hr HR --sr SR --scale 4 --json`` as a whole process
  (start-up included) against the reference's metrics script (``python -m benchmarks.basicsr_ref
  metrics``, which imports torch and torchvision as ``import basicsr`` does); ``--baseline-src DIR``
  adds an older checkout's ``src`` as a third variant.
* ``metrics``: PSNR-Y + SSIM-Y of every SR/HR pair in-process (``sfsr.metrics.image_metrics``, one
  thread and the default) against the reference's ``calculate_psnr`` + ``calculate_ssim``.
* ``downscale``: MATLAB-exact x1/4 of every HR image (after modcrop), in MP/s of input: sfsr numpy
  (one thread and the default), a uint8 torch CPU tensor (default routing: numpy kernels), the
  torch kernels forced, and the reference ``imresize``; each again with a competing busy process
  on one core (``--no-busy`` skips that). With ``--device cuda``, the torch kernels on the GPU too.
* ``upscale``: ``sfsr upscale --checkpoint G.pt --device cpu [--tile N]`` (its code path,
  :func:`sfsr.inference.upscale_path`, in a subprocess per variant: :mod:`benchmarks.upscale_child`)
  of the x4 LR of a DIV2K-sized image (2040x1356, made at run time by mirroring the largest RGB
  image of ``--hr``; LR by sfsr's exact x1/4: 510x339, or a crop of it, see :data:`UPSCALE_SIZES`),
  SRResNet and RRDBNet with random-init weights (speed and memory do not depend on the weights):
  the whole image against LR tiles, in output MP/s and the subprocess's peak RSS.

Data: ``--hr`` (default ``/work/shared/data/benchmark/Set14/HR``); SR images are made here (LR by
sfsr's exact x1/4, then sfsr's bicubic x4). ``--dry-run`` uses two tiny random images, one run per
variant, and writes its records to ``--out`` (default: the results folder) -- the test suite runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from benchmarks import basicsr_ref as ref  # noqa: E402

DEFAULT_HR = Path("/work/shared/data/benchmark/Set14/HR")
SCALE = 4


# ------------------------------------------------------------------------------------ records


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "src",
                                "benchmarks", ":(exclude)benchmarks/results"],  # records are not code
                               cwd=REPO, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count()
    return {"host": platform.node(), "cpu": _cpu_model(), "cpus": cpus, "python": platform.python_version(),
            "numpy": np.__version__}


def _torch_info(device: str) -> dict[str, Any]:
    import torch

    info = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(), "device": device}
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _load() -> float:
    return round(os.getloadavg()[0], 2)


class Recorder:
    def __init__(self, out: Path, device: str, dry_run: bool):
        self.out = out
        self.device = device
        self.rows: list[dict[str, Any]] = []
        self.common = {"machine": machine(), "git_commit": _git_commit(), "dry_run": dry_run,
                       **_torch_info(device)}

    def add(self, benchmark: str, variant: str, times: list[float], params: dict[str, Any], *,
            load_before: float, work: float | None = None, unit: str | None = None,
            reference: str | list[str] | None = None, values: Any = None) -> dict[str, Any]:
        row = {"benchmark": benchmark, "variant": variant, "parameters": params,
               "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
               "runs": len(times), "load_before": load_before, "load_after": _load(),
               "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **self.common}
        if work is not None and unit:
            row[unit] = work / row["median_s"]
        if reference is not None:
            row["reference"] = reference
        if values is not None:
            row["values"] = values
        self.rows.append(row)
        return row

    def finish(self) -> Path:
        for row in self.rows:  # ratios against the fastest reference variant of the same benchmark
            names = row.get("reference")
            names = [names] if isinstance(names, str) else (names or [])
            refs = [r for r in self.rows if r["benchmark"] == row["benchmark"] and r["variant"] in names]
            if refs:
                best = min(refs, key=lambda r: r["median_s"])
                row["reference"] = best["variant"]
                row["speedup_vs_reference"] = best["median_s"] / row["median_s"]
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / f"{self.device}.jsonl"
        with path.open("a") as fh:
            for row in self.rows:
                fh.write(json.dumps(row, sort_keys=True) + "\n")
        return path

    def table(self) -> str:
        lines = ["| benchmark | variant | median s | min s | max s | throughput | vs reference | peak RSS | load |",
                 "|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in self.rows:
            mps = r.get("mp_per_s")
            thr = "" if mps is None else f"{mps:.1f} MP/s" if mps >= 10 else f"{mps:.3f} MP/s"
            ratio = f"{r['speedup_vs_reference']:.2f}x" if "speedup_vs_reference" in r else ""
            v = r.get("values") if isinstance(r.get("values"), dict) else {}
            mem = f"{v['peak_rss_mb']:.0f} MB" if "peak_rss_mb" in v else ""
            if "peak_rss_vs_whole" in v:
                mem += f" ({v['peak_rss_vs_whole']:.2f}x whole; +{v['peak_increase_mb']:.0f} MB = " \
                       f"{v.get('peak_increase_vs_whole', float('nan')):.2f}x)"
            elif "peak_increase_mb" in v:
                mem += f" (+{v['peak_increase_mb']:.0f} MB)"
            lines.append(f"| {r['benchmark']} | {r['variant']} | {r['median_s']:.4f} | {r['min_s']:.4f} | "
                         f"{r['max_s']:.4f} | {thr} | {ratio} | {mem} | {r['load_before']}-{r['load_after']} |")
        return "\n".join(lines)


def _time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[list[float], Any]:
    value = None
    for _ in range(warmup):
        value = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return times, value


@contextlib.contextmanager
def busy_core(enabled: bool = True) -> Iterator[None]:
    """A competing process that keeps one core busy (``python -c 'while 1: pass'``)."""
    if not enabled:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
    try:
        time.sleep(0.5)
        yield
    finally:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _baseline_module(baseline_src: Path | None, relpath: str, name: str) -> Any:
    """A module of an older checkout (``--baseline-src``), loaded under another name next to the
    current sfsr (its own ``from sfsr...`` imports resolve to the current package)."""
    if baseline_src is None or not (baseline_src / relpath).is_file():
        return None
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, baseline_src / relpath)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------ data


def prepare_data(hr_dir: Path | None, work: Path, dry_run: bool) -> tuple[Path, Path]:
    """HR folder and an SR folder (sfsr exact x1/4, then sfsr bicubic x4) under ``work``."""
    from sfsr import io
    from sfsr.data.bicubic import imresize, modcrop
    from sfsr.data.images import read_image

    if dry_run or hr_dir is None:
        hr_dir = work / "HR"
        hr_dir.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for i, shape in enumerate([(48, 40, 3), (44, 52)]):
            io.save_image(hr_dir / f"tiny{i}.png", rng.integers(0, 256, shape, dtype=np.uint8))
    sr_dir = work / "SR"
    sr_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(hr_dir.iterdir()):
        hr = modcrop(read_image(path), SCALE)
        io.save_image(sr_dir / f"{path.stem}.png", imresize(imresize(hr, 1 / SCALE), SCALE))
    return hr_dir, sr_dir


def _pairs(hr_dir: Path, sr_dir: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    from sfsr.data.bicubic import modcrop
    from sfsr.data.images import read_image

    return [(modcrop(read_image(p), SCALE), read_image(sr_dir / f"{p.stem}.png"))
            for p in sorted(hr_dir.iterdir())]


def _rgb(img: np.ndarray) -> np.ndarray:
    return np.repeat(img[:, :, None], 3, axis=2) if img.ndim == 2 else img


# ------------------------------------------------------------------------------------ benchmarks


def bench_evaluate_process(rec: Recorder, hr: Path, sr: Path, repeats: int,
                           baseline_src: Path | None) -> None:
    cmd_sfsr = [sys.executable, "-m", "sfsr.cli", "evaluate", "--hr", str(hr), "--sr", str(sr),
                "--scale", str(SCALE), "--json"]
    cmd_ref = [sys.executable, "-m", "benchmarks.basicsr_ref", "metrics", "--hr", str(hr), "--sr", str(sr),
               "--crop-border", str(SCALE)]
    variants = [("basicsr-ref metrics script", cmd_ref, str(REPO)),
                ("sfsr evaluate", cmd_sfsr, f"{SRC}{os.pathsep}{REPO}")]
    if baseline_src is not None:
        variants.append((f"sfsr evaluate @ {baseline_src}", cmd_sfsr, str(baseline_src)))
    params = {"images": len(list(hr.iterdir())), "scale": SCALE, "hr": str(hr)}
    for name, cmd, path in variants:
        env = {**os.environ, "PYTHONPATH": path}

        def run() -> str:
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"{name} failed: {proc.stderr[-2000:]}")
            return proc.stdout.strip().splitlines()[-1]

        load = _load()
        times, out = _time(run, repeats)
        values = json.loads(out) if out.startswith("{") else out
        rec.add("evaluate_process", name, times, params, load_before=load,
                reference="basicsr-ref metrics script", values=values)


def bench_metrics(rec: Recorder, pairs: list[tuple[np.ndarray, np.ndarray]], repeats: int,
                  baseline_src: Path | None = None) -> None:
    from sfsr.metrics import image_metrics

    old = _baseline_module(baseline_src, "sfsr/metrics.py", "sfsr_baseline_metrics")

    rgb_pairs = [(_rgb(h), _rgb(s)) for h, s in pairs]
    mp = sum(h.shape[0] * h.shape[1] for h, _ in pairs) / 1e6
    params = {"pairs": len(pairs), "scale": SCALE, "megapixels": round(mp, 3)}

    def sfsr_run() -> list[tuple[float, float]]:
        return [(m["psnr_y"], m["ssim_y"]) for m in (image_metrics(h, s, SCALE) for h, s in pairs)]

    def ref_run() -> list[tuple[float, float]]:
        return [(ref.calculate_psnr(h, s, SCALE), ref.calculate_ssim(h, s, SCALE)) for h, s in rgb_pairs]

    variants = [("basicsr-ref calculate_psnr+ssim", ref_run, {}),
                ("sfsr image_metrics, 1 thread", sfsr_run, {"SFSR_METRIC_THREADS": "1"}),
                ("sfsr image_metrics", sfsr_run, {})]
    if old is not None:
        variants.append((f"sfsr image_metrics @ {baseline_src}",
                         lambda: [(m["psnr_y"], m["ssim_y"]) for m in (old.image_metrics(h, s, SCALE)
                                                                       for h, s in pairs)], {}))
    for name, fn, env in variants:
        with _env(**env):
            load = _load()
            times, values = _time(fn, repeats)
        mean = [float(np.mean([v[0] for v in values])), float(np.mean([v[1] for v in values]))]
        rec.add("metrics", name, times, params, load_before=load, work=mp, unit="mp_per_s",
                reference="basicsr-ref calculate_psnr+ssim", values={"psnr_y": mean[0], "ssim_y": mean[1]})


def _torch_threads(n: int | None) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """Run a variant with ``torch.set_num_threads(n)`` (restored after)."""
    def wrap(fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            import torch

            if n is None:
                return fn()
            before = torch.get_num_threads()
            torch.set_num_threads(n)
            try:
                return fn()
            finally:
                torch.set_num_threads(before)
        return run
    return wrap


def bench_downscale(rec: Recorder, pairs: list[tuple[np.ndarray, np.ndarray]], repeats: int,
                    device: str, busy: bool, baseline_src: Path | None = None) -> None:
    import torch

    from sfsr.data.bicubic import _resize_torch, imresize

    old = _baseline_module(baseline_src, "sfsr/data/bicubic.py", "sfsr_baseline_bicubic")

    images = [h for h, _ in pairs]
    mp = sum(h.shape[0] * h.shape[1] for h in images) / 1e6
    tensors = [torch.from_numpy(np.array(np.atleast_3d(h).transpose(2, 0, 1))) for h in images]
    refname = "basicsr-ref imresize (float, not exact)"
    ref1 = "basicsr-ref imresize, torch 1 thread"
    variants: list[tuple[str, Callable[[], Any], dict[str, str]]] = [
        (refname, lambda: [ref.imresize_uint8(h, 1 / SCALE) for h in images], {}),
        (ref1, _torch_threads(1)(lambda: [ref.imresize_uint8(h, 1 / SCALE) for h in images]), {}),
        ("sfsr numpy, 1 thread", lambda: [imresize(h, 1 / SCALE) for h in images], {"SFSR_RESIZE_THREADS": "1"}),
        ("sfsr numpy", lambda: [imresize(h, 1 / SCALE) for h in images], {}),
        ("sfsr torch cpu tensor", lambda: [imresize(t, 1 / SCALE) for t in tensors], {}),
        ("sfsr torch kernels (forced), cpu", lambda: [_resize_torch(t, 1 / SCALE, None, native=True)
                                                      for t in tensors], {}),
    ]
    if old is not None:
        variants.append((f"sfsr numpy @ {baseline_src}", lambda: [old.imresize(h, 1 / SCALE) for h in images],
                         {}))
    if device == "cuda" and torch.cuda.is_available():
        gpu = [t.cuda() for t in tensors]

        def on_gpu() -> list[Any]:
            out = [imresize(t, 1 / SCALE) for t in gpu]
            torch.cuda.synchronize()
            return out
        variants.append(("sfsr torch cuda", on_gpu, {}))
    exact = [imresize(h, 1 / SCALE) for h in images]
    for busy_now in ([False, True] if busy else [False]):
        with busy_core(busy_now):
            for name, fn, env in variants:
                with _env(**env):
                    load = _load()
                    times, out = _time(fn, repeats)
                if not name.startswith("basicsr"):
                    got = [o.cpu().numpy().transpose(1, 2, 0) if hasattr(o, "cpu") else o for o in out]
                    diff = int(sum(np.count_nonzero(np.squeeze(g) != np.squeeze(e))
                                   for g, e in zip(got, exact)))
                    assert diff == 0, f"{name}: {diff} pixels differ from the numpy result"
                suffix = " + busy core" if busy_now else ""
                rec.add("downscale", name + suffix, times,
                        {"images": len(images), "factor": f"1/{SCALE}", "megapixels": round(mp, 3),
                         "competing_busy_process": busy_now,
                         "threads_env": env.get("SFSR_RESIZE_THREADS", "default")},
                        load_before=load, work=mp, unit="mp_per_s",
                        reference=[refname + suffix, ref1 + suffix])


#: What the upscale benchmark runs: (arch, generator kwargs, LR crop (h, w) of the 510x339 x4 LR of
#: the DIV2K-sized image, LR tile sizes, tile overlap). RRDBNet costs ~7x SRResNet per pixel, so it
#: gets a quarter of the image and tiles of half the size (the same tile-to-image ratio).
UPSCALE_SIZES: dict[str, list[tuple[str, dict[str, Any], tuple[int, int], list[int], int]]] = {
    "full": [("srresnet", {}, (339, 510), [256, 128], 16), ("rrdbnet", {}, (170, 255), [128, 64], 16)],
    "quick": [("srresnet", {}, (170, 255), [128], 16), ("rrdbnet", {}, (85, 128), [64], 16)],
    "dry": [("srresnet", {"num_blocks": 1, "num_features": 8}, (20, 24), [16], 4),
            ("rrdbnet", {"num_blocks": 1, "num_features": 8, "growth": 4}, (20, 24), [16], 4)],
}
DIV2K_SIZE = (1356, 2040)  # (h, w) of a DIV2K HR image


def div2k_sized_lr(hr_dir: Path | None, dry_run: bool) -> np.ndarray:
    """The exact x1/4 LR of a DIV2K-sized (2040x1356) image made by mirroring the largest RGB image
    of ``hr_dir`` (no pixels are stored in the repository); a random image for a dry run."""
    from sfsr.data.bicubic import imresize
    from sfsr.data.images import read_image

    if dry_run or hr_dir is None:
        return np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    images = [read_image(p) for p in sorted(hr_dir.iterdir())]
    img = max((i for i in images if i.ndim == 3), key=lambda i: i.shape[0] * i.shape[1])
    h, w = DIV2K_SIZE
    reps = (-(-h // img.shape[0]), -(-w // img.shape[1]))
    rows = [np.concatenate([img if (i + j) % 2 == 0 else img[:, ::-1] for j in range(reps[1])], axis=1)
            for i in range(reps[0])]
    big = np.concatenate([r if i % 2 == 0 else r[::-1] for i, r in enumerate(rows)], axis=0)
    return imresize(np.ascontiguousarray(big[:h, :w]), 1 / SCALE)


def bench_upscale(rec: Recorder, hr_dir: Path | None, work: Path, repeats: int, mode: str,
                  dry_run: bool, baseline_src: Path | None = None) -> None:
    import torch

    from sfsr import io
    from sfsr.models import build_generator, generator_spec, save_generator

    lr_full = div2k_sized_lr(hr_dir, dry_run)
    paths = {"": f"{SRC}{os.pathsep}{REPO}"}
    if baseline_src is not None:  # an older sfsr.inference, same child script and checkpoint
        paths[f" @ {baseline_src}"] = f"{baseline_src}{os.pathsep}{REPO}"
    for arch, kwargs, (h, w), tiles, overlap in UPSCALE_SIZES[mode]:
        torch.manual_seed(0)
        ckpt = work / f"{arch}.pt"
        save_generator(ckpt, build_generator(arch, SCALE, **kwargs), generator_spec(arch, SCALE, **kwargs))
        lr_path = work / f"{arch}_lr.png"
        io.save_image(lr_path, np.ascontiguousarray(lr_full[:h, :w]))
        out_mp = h * w * SCALE * SCALE / 1e6
        whole = f"{arch} whole image"
        rows = {}
        runs = [(tile, "") for tile in [0, *tiles]] + [(tile, k) for k in paths if k for tile in [0, tiles[0]]]
        for tile, suffix in runs:
            env = {**os.environ, "PYTHONPATH": paths[suffix]}
            name = (whole if tile == 0 else f"{arch} tiles of {tile}") + suffix
            cmd = [sys.executable, "-m", "benchmarks.upscale_child", "--checkpoint", str(ckpt),
                   "--input", str(lr_path), "--output", str(work / f"{arch}_sr_{tile}.png"),
                   "--tile", str(tile), "--overlap", str(overlap), "--repeats", str(repeats)]
            load = _load()
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
            if proc.returncode != 0:
                raise RuntimeError(f"upscale {name} failed: {proc.stderr[-2000:]}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            values = {"peak_rss_mb": round(res["peak_rss_mb"], 1),
                      "peak_rss_mb_before": round(res["peak_rss_mb_before"], 1),
                      "peak_increase_mb": round(res["peak_rss_mb"] - res["peak_rss_mb_before"], 1)}
            rows[(tile, suffix)] = rec.add("upscale", name, res["times"],
                                 {"arch": arch, "kwargs": kwargs, "weights": "random init (seed 0)",
                                  "lr_size": f"{w}x{h}", "output_size": f"{w * SCALE}x{h * SCALE}",
                                  "scale": SCALE, "tile": tile or None, "tile_overlap": overlap,
                                  "image": "x1/4 of a DIV2K-sized 2040x1356 mirror of the largest --hr image"},
                                 load_before=load, work=out_mp, unit="mp_per_s", reference=whole,
                                 values=values)
        for tile, suffix in runs:  # memory against the whole-image run of the same model and code
            if tile == 0:
                continue
            base = rows[(0, suffix)]["values"]
            v = rows[(tile, suffix)]["values"]
            v["peak_rss_vs_whole"] = round(v["peak_rss_mb"] / base["peak_rss_mb"], 3)
            if base["peak_increase_mb"] > 0:
                v["peak_increase_vs_whole"] = round(v["peak_increase_mb"] / base["peak_increase_mb"], 3)


# ------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 runs per variant instead of 7")
    parser.add_argument("--dry-run", action="store_true", help="tiny random images, one run each")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--hr", type=Path, default=DEFAULT_HR, help="folder of HR images (Set14)")
    parser.add_argument("--only", nargs="+", choices=["evaluate_process", "metrics", "downscale", "upscale"])
    parser.add_argument("--repeats", type=int, help="runs per variant (overrides --quick)")
    parser.add_argument("--no-busy", action="store_true", help="skip the runs with a busy core")
    parser.add_argument("--upscale-repeats", type=int, help="runs per upscale variant (default 1)")
    parser.add_argument("--baseline-src", type=Path,
                        help="an older checkout's src/: one more variant per benchmark")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.dry_run else 3 if args.quick else 7)
    only = set(args.only or ["evaluate_process", "metrics", "downscale", "upscale"])
    rec = Recorder(args.out, args.device, args.dry_run)
    with tempfile.TemporaryDirectory(prefix="sfsr-bench-") as tmp:
        hr_dir = None if args.dry_run else args.hr
        if hr_dir is not None and not hr_dir.is_dir():
            print(f"{hr_dir} not found; using tiny random images", file=sys.stderr)
            hr_dir = None
        hr, sr = prepare_data(hr_dir, Path(tmp), args.dry_run)
        pairs = _pairs(hr, sr)
        if "evaluate_process" in only:
            bench_evaluate_process(rec, hr, sr, repeats, args.baseline_src)
        if "metrics" in only:
            bench_metrics(rec, pairs, repeats, args.baseline_src)
        if "downscale" in only:
            bench_downscale(rec, pairs, repeats, args.device, busy=not (args.no_busy or args.dry_run),
                            baseline_src=args.baseline_src)
        if "upscale" in only:  # one run per variant (seconds to minutes each on a 2-core CPU)
            bench_upscale(rec, hr_dir, Path(tmp), args.upscale_repeats or 1,
                          "dry" if args.dry_run else "quick" if args.quick else "full", args.dry_run,
                          baseline_src=args.baseline_src)
    path = rec.finish()
    m = rec.common["machine"]
    print(f"machine: {m['cpu']}, {m['cpus']} CPUs; torch {rec.common['torch']} "
          f"({rec.common['torch_threads']} threads); device {args.device}; commit {rec.common['git_commit']}")
    print(rec.table())
    print(f"records appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
