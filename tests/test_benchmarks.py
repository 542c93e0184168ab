"""The benchmark suite runs (``python -m benchmarks --dry-run``: tiny images, one run per variant)
and writes its records. No timing is asserted: speed targets live in the suite and the docs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def test_suite_dry_run_writes_records(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--dry-run", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| benchmark | variant |" in proc.stdout
    rows = [json.loads(line) for line in (tmp_path / "cpu.jsonl").read_text().splitlines()]
    benchmarks = {r["benchmark"] for r in rows}
    assert benchmarks == {"evaluate_process", "metrics", "downscale", "upscale"}
    for r in rows:
        for key in ("variant", "parameters", "median_s", "min_s", "max_s", "machine", "load_before",
                    "torch", "device", "git_commit", "speedup_vs_reference"):
            assert key in r, (key, r["benchmark"], r["variant"])
        assert r["min_s"] <= r["median_s"] <= r["max_s"]
    by = {(r["benchmark"], r["variant"]): r for r in rows}
    # the whole-process evaluate prints the same means as the in-process metrics
    cli = by[("evaluate_process", "sfsr evaluate")]["values"]
    inproc = by[("metrics", "sfsr image_metrics")]["values"]
    assert cli["psnr_y"] == inproc["psnr_y"] and cli["ssim_y"] == inproc["ssim_y"]
    # the upscale benchmark: whole image and tiles per model, peak memory of each subprocess
    for arch in ("srresnet", "rrdbnet"):
        whole = by[("upscale", f"{arch} whole image")]
        tiled = by[("upscale", f"{arch} tiles of 16")]
        assert whole["values"]["peak_rss_mb"] > 0 and tiled["values"]["peak_rss_vs_whole"] > 0
        assert tiled["reference"] == f"{arch} whole image" and tiled["mp_per_s"] > 0


def test_reference_metrics_agree_with_sfsr_to_float32_precision():
    """The BasicSR-style reference computes Y in float32 and filters by FFT: close to sfsr's
    float64 convention, not equal (which is why sfsr does not use it)."""
    from benchmarks import basicsr_ref as ref
    from sfsr.metrics import image_metrics

    rng = np.random.default_rng(0)
    hr = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    sr = np.clip(hr.astype(int) + rng.integers(-20, 21, hr.shape), 0, 255).astype(np.uint8)
    ours = image_metrics(hr, sr, 4)
    assert abs(ref.calculate_psnr(hr, sr, 4) - ours["psnr_y"]) < 1e-4
    assert abs(ref.calculate_ssim(hr, sr, 4) - ours["ssim_y"]) < 1e-5


def test_metrics_basicsr_dry_run_alternates_and_checks_values(tmp_path):
    """``--only metrics_basicsr --dry-run``: sfsr against the in-repo reference (and the real BasicSR
    where $SFSR_BASICSR_SOURCE and cv2 are there; else a message says it is skipped), one record per
    variant with the ratios and the value differences, all within the benchmark's tolerance."""
    from benchmarks.__main__ import METRICS_TOLERANCE

    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "metrics_basicsr", "--dry-run",
                           "--repeats", "2", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["variant"]: r for r in map(json.loads, (tmp_path / "cpu.jsonl").read_text().splitlines())}
    real = "basicsr calculate_psnr+ssim (real)"
    expected = {"basicsr-ref calculate_psnr+ssim", "sfsr image_metrics", "sfsr image_metrics, 1 thread"}
    if real in rows:
        expected |= {real, real + ", cv2 1 thread"}
    else:
        assert "the real BasicSR variant is skipped" in proc.stderr  # with the reason
    assert set(rows) == expected
    sfsr = rows["sfsr image_metrics"]
    assert sfsr["reference"] in ({real, real + ", cv2 1 thread"} if real in rows
                                 else {"basicsr-ref calculate_psnr+ssim"})
    assert sfsr["runs"] == 2 and sfsr["parameters"]["pairs"] == 2
    for r in rows.values():
        assert r["benchmark"] == "metrics_basicsr" and "load_before" in r and "load_after" in r
        assert "sfsr_vs_basicsr_ref" in r["values"]["ratios"]
        if not r["variant"].startswith("sfsr"):
            for key, tol in METRICS_TOLERANCE.items():
                assert r["values"]["vs_sfsr"][f"{key}_max_abs_diff"] <= tol
    assert rows["sfsr image_metrics, 1 thread"]["values"]["psnr_y"] == sfsr["values"]["psnr_y"]


def _real_basicsr():
    """BasicSR's own psnr_ssim module from $SFSR_BASICSR_SOURCE (skip with the reason otherwise)."""
    import os

    from benchmarks import basicsr_real

    source = basicsr_real.source_from(None)
    if source is None or not source.exists():
        pytest.skip("real BasicSR source not given: set SFSR_BASICSR_SOURCE to basicsr-1.4.2.tar.gz "
                    "(`pip download basicsr==1.4.2 --no-deps -d DIR`) or its extracted folder "
                    f"(now {os.environ.get('SFSR_BASICSR_SOURCE')!r})")
    try:
        return basicsr_real.load_metrics(source)
    except basicsr_real.Unavailable as exc:
        pytest.skip(f"real BasicSR metrics cannot run here: {exc}")


def test_real_basicsr_metrics_equal_sfsr(shared_data):
    """Where the real BasicSR source and cv2 are present: its calculate_psnr/calculate_ssim
    (crop_border 4, test_y_channel, BGR; gray as 2-D) give sfsr's PSNR-Y/SSIM-Y on Set14 x4 (SR =
    sfsr's bicubic x4 of the exact x1/4) and on noisy random images, within the benchmark's
    tolerance (BasicSR's Y is float32, sfsr's float64), and the same Set14 means at 4 decimals."""
    from benchmarks.__main__ import METRICS_TOLERANCE
    from benchmarks.basicsr_real import basicsr_input, psnr_ssim_y
    from sfsr.data.bicubic import imresize, modcrop
    from sfsr.data.images import read_image
    from sfsr.metrics import image_metrics

    module = _real_basicsr()
    pairs = []
    for path in sorted((shared_data / "benchmark" / "Set14" / "HR").glob("*.png")):
        hr = modcrop(read_image(path), 4)
        pairs.append((hr, imresize(imresize(hr, 1 / 4), 4)))
    rng = np.random.default_rng(3)
    for shape in [(64, 48, 3), (60, 52)]:
        hr = rng.integers(0, 256, shape, dtype=np.uint8)
        pairs.append((hr, np.clip(hr.astype(int) + rng.integers(-30, 31, shape), 0, 255).astype(np.uint8)))
    assert len(pairs) == 16
    ours_all, theirs_all = [], []
    for hr, sr in pairs:
        ours = image_metrics(hr, sr, 4)
        theirs = psnr_ssim_y(module, basicsr_input(hr), basicsr_input(sr), 4)
        assert abs(theirs[0] - ours["psnr_y"]) <= METRICS_TOLERANCE["psnr_y"], (hr.shape, theirs, ours)
        assert abs(theirs[1] - ours["ssim_y"]) <= METRICS_TOLERANCE["ssim_y"], (hr.shape, theirs, ours)
        ours_all.append((ours["psnr_y"], ours["ssim_y"]))
        theirs_all.append(theirs)
    # Set14's means as BasicSR logs them (4 decimals) are the same numbers
    assert [f"{v:.4f}" for v in np.mean(ours_all[:14], axis=0)] == \
        [f"{v:.4f}" for v in np.mean(theirs_all[:14], axis=0)]
    # a wrong channel order is caught: RGB given as BGR moves PSNR-Y far beyond the tolerance
    hr, sr = pairs[0]
    swapped = psnr_ssim_y(module, hr, sr, 4)[0]
    assert abs(swapped - image_metrics(hr, sr, 4)["psnr_y"]) > 100 * METRICS_TOLERANCE["psnr_y"]


def test_reference_imresize_is_close_but_not_exact():
    from benchmarks import basicsr_ref as ref
    from sfsr.data.bicubic import imresize

    rng = np.random.default_rng(1)
    hr = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    diff = np.abs(ref.imresize_uint8(hr, 1 / 4).astype(int) - imresize(hr, 1 / 4).astype(int))
    assert diff.max() <= 1


def test_fit_whole_peak_is_a_line_through_the_sizes():
    """The whole-image peak of a size too large to run is estimated by a line through measured ones."""
    from benchmarks.__main__ import fit_whole_peak

    assert fit_whole_peak([(1000, 50.0)]) is None  # one size: no line
    assert fit_whole_peak([(1000, 50.0), (1000, 52.0)]) is None
    intercept, slope = fit_whole_peak([(1000, 50.0), (3000, 90.0), (2000, 70.0)])
    assert abs(intercept - 30.0) < 1e-9 and abs(slope - 0.02) < 1e-12


def test_cpu_ceiling_counts_forward_and_backward_and_records_like_the_suite(tmp_path):
    """benchmarks/cpu_ceiling.py (issue 14 item 4's bound): a training step's counted FLOPs are its
    forward's plus the backward's (about twice the forward: input and weight gradients, none for
    the first layer's input), and its records carry what the suite's carry."""
    import torch

    from benchmarks.cpu_ceiling import count_flops, training_step
    from sfsr.models import build_generator

    torch.manual_seed(0)
    model = build_generator("msrresnet", 4, num_blocks=2, num_features=8, base="bilinear")
    lr, hr = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 32, 32)
    forward = count_flops(model, lr)
    step = count_flops(training_step, model, torch.optim.Adam(model.parameters()), lr, hr)
    assert forward > 0 and 2.5 * forward < step <= 3.0 * forward, (forward, step)

    proc = subprocess.run([sys.executable, "-m", "benchmarks.cpu_ceiling", "--dry-run", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fp32 GEMM ceiling" in proc.stdout and "2x BasicSR needs" in proc.stdout
    rows = {r["variant"]: r for r in map(json.loads, (tmp_path / "cpu.jsonl").read_text().splitlines())}
    assert set(rows) == {"fp32 GEMM 256x256", "bf16 GEMM 256x256", "msrresnet training step"}
    for r in rows.values():
        assert r["benchmark"] == "cpu_ceiling" and r["dry_run"] is True
        for key in ("machine", "git_commit", "torch", "load_before", "median_s", "gflop_per_s"):
            assert key in r, key
    bound = rows["msrresnet training step"]["values"]
    # the bound is the arithmetic of the measured numbers: the fastest step runs at the ceiling
    assert bound["fastest_possible_step_s"] * bound["fp32_ceiling_gflop_per_s"] == \
        pytest.approx(bound["step_gflop"])
    assert bound["fp32_ceiling_gflop_per_s"] == pytest.approx(rows["fp32 GEMM 256x256"]["values"]["best_gflop_per_s"])


def test_compare_studies_pairs_the_rows_and_flags_a_large_difference(tmp_path, capsys):
    """benchmarks.compare_studies on two results folders: differences per (model, dataset, scale) and
    per (set, judge, input), b - a; exit 1 when |ΔPSNR-Y| exceeds --max-db."""
    import pandas as pd

    from benchmarks import compare_studies

    def run(name, psnr, top1):
        root = tmp_path / name
        (root / "metrics").mkdir(parents=True)
        (root / "classification" / "cls_x4").mkdir(parents=True)
        pd.DataFrame({"model": ["bicubic", "srresnet_x4"], "dataset": "test", "scale": 4, "n": 3,
                      "psnr_y": psnr, "ssim_y": [0.8, 0.82], "psnr_rgb": psnr}).to_csv(root / "metrics" / "summary.csv")
        pd.DataFrame({"dataset": "cls", "scale": 4, "judge": ["prior", "prior"], "input": ["hr", "srresnet_x4"],
                      "top1": top1, "n": 48}).to_csv(root / "classification" / "cls_x4" / "accuracy.csv")
        return root

    a = run("fp32", [29.19, 29.91], [0.75, 0.5])
    b = run("bf16", [29.19, 29.82], [0.75, 0.5208])
    q, acc = compare_studies.quality(a, b), compare_studies.accuracy(a, b)
    assert q.set_index("model").loc["srresnet_x4", "psnr_y_diff"] == pytest.approx(-0.09)
    assert q.set_index("model").loc["bicubic", "psnr_y_diff"] == 0
    assert acc.set_index("input").loc["srresnet_x4", "top1_diff"] == pytest.approx(0.0208)
    out = tmp_path / "table.md"
    assert compare_studies.main([str(a), str(b), "--labels", "fp32", "bf16", "--out", str(out)]) == 0
    assert "ΔPSNR-Y (dB)" in out.read_text() and "-0.0900" in out.read_text()
    assert compare_studies.main([str(a), str(b), "--max-db", "0.05"]) == 1
    assert "largest |ΔPSNR-Y| 0.0900 dB > 0.05 dB" in capsys.readouterr().err


def test_contention_dry_run_measures_each_policy_in_its_own_process(tmp_path):
    """``python -m benchmarks --only contention --dry-run``: every model of the default config's
    sr_models and MSRResNet, per candidate (a child process each, its environment as given), quiet and
    beside a busy core, against today's quiet default; the "sfsr policy" child imports sfsr first and
    so runs with what sfsr.threads sets."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "contention", "--dry-run",
                           "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "busy / today quiet (>= 0.45)" in proc.stdout
    rows = [json.loads(line) for line in (tmp_path / "cpu.jsonl").read_text().splitlines()]
    assert {r["benchmark"] for r in rows} == {"contention"}
    models = {r["parameters"]["model"] for r in rows}
    assert models == {"srresnet_x4", "edsr_baseline_x4", "rrdbnet_x4", "autoencoder_x4", "msrresnet_16x64"}
    by = {(r["parameters"]["model"], r["parameters"]["candidate"], r["parameters"]["competing_busy_process"]): r
          for r in rows}
    candidates = {c for _, c, _ in by}
    assert {"default", "sfsr policy"} <= candidates
    assert len(by) == len(rows) == len(models) * len(candidates) * 2
    for r in rows:
        for key in ("machine", "git_commit", "torch", "load_before", "load_after", "median_s",
                    "speedup_vs_reference"):
            assert key in r, key
        assert r["reference"] == f"{r['parameters']['model']} default"
    default = by[("rrdbnet_x4", "default", False)]["parameters"]
    sfsr = by[("rrdbnet_x4", "sfsr policy", True)]["parameters"]
    assert default["env"] == {} and sfsr["env"] == {}  # both started without threading variables
    assert sfsr["sfsr_policy"]["applied_before_torch"] is True
    assert sfsr["sfsr_policy"]["env"]["OMP_WAIT_POLICY"] == "PASSIVE"
    assert by[("rrdbnet_x4", "default", False)]["speedup_vs_reference"] == 1.0


def test_the_refsr_ladder_rungs_are_what_they_claim():
    """benchmarks/refsr_ladder.py (docs/refsr.md, the diagnosis ladder): 'own' is the target itself,
    'int' the photo's window moved by whole LR pixels, 'sub' by whole HR pixels that are not whole LR
    pixels on both axes, and the numbered rungs the builtin levels."""
    import numpy as np

    from benchmarks.refsr_ladder import HR_SIZE, SCALE, ladder_groups
    from sfsr.data.refgroups import _photo_pair, synthetic_groups

    groups = ladder_groups(["camera"], 2, seed=1)
    rows = [r for r in synthetic_groups("ladder", ["camera"], HR_SIZE, 2, seed=1) if r["role"] == "target"]
    photo = _photo_pair("camera")[0]
    for g, row in zip(groups, rows):
        assert set(g["refs"]) == {"own", "int", "sub", "1", "2", "3", "4"}
        assert np.array_equal(g["refs"]["own"], g["target"])

        def moved(ref):  # the (dy, dx) within 8 HR px at which the photo's window equals ref
            return [(dy, dx) for dy in range(-8, 9) for dx in range(-8, 9)
                    if np.array_equal(photo[row["top"] + dy:row["top"] + dy + HR_SIZE,
                                            row["left"] + dx:row["left"] + dx + HR_SIZE], ref)]

        (dy, dx), = moved(g["refs"]["int"])
        assert (dy, dx) != (0, 0) and dy % SCALE == 0 and dx % SCALE == 0 and max(abs(dy), abs(dx)) == SCALE
        (dy, dx), = moved(g["refs"]["sub"])
        assert (dy % SCALE or dx % SCALE) and 3.5 <= np.hypot(dy, dx) <= 6
        assert moved(g["refs"]["1"]) == []  # level 1 is resampled, not a window of the photo


def _real_msrresnet():
    """BasicSR's own MSRResNet class from $SFSR_BASICSR_SOURCE (skip with the reason otherwise)."""
    import os

    from benchmarks import basicsr_real, basicsr_train

    source = basicsr_real.source_from(None)
    if source is None or not source.exists():
        pytest.skip("real BasicSR source not given: set SFSR_BASICSR_SOURCE to basicsr-1.4.2.tar.gz "
                    f"or its extracted folder (now {os.environ.get('SFSR_BASICSR_SOURCE')!r})")
    try:
        return basicsr_train.load_msrresnet(source)
    except basicsr_real.Unavailable as exc:
        pytest.skip(f"real BasicSR MSRResNet cannot load here: {exc}")


def test_real_basicsr_msrresnet_loads_and_upscales_x4():
    """benchmarks/basicsr_train.py: BasicSR's MSRResNet from the source (srresnet_arch.py, arch_util.py,
    registry.py, unchanged) maps (1,3,24,24) to (1,3,96,96); compare_architectures tells equal from
    different nets."""
    import sys

    import torch

    from benchmarks.basicsr_train import BASICSR_NET, compare_architectures

    msrresnet = _real_msrresnet()
    assert msrresnet.__module__ == "basicsr.archs.srresnet_arch"
    assert "MSRResNet" in sys.modules["basicsr.utils.registry"].ARCH_REGISTRY
    net = msrresnet(**BASICSR_NET)
    with torch.no_grad():
        out = net(torch.rand(1, 3, 24, 24))
    assert out.shape == (1, 3, 96, 96) and torch.isfinite(out).all()
    same = compare_architectures(net, msrresnet(**BASICSR_NET))
    assert same["same"] and same["same_count"] and same["same_shapes"]
    assert same["basicsr_params"] == sum(p.numel() for p in net.parameters())
    fewer = compare_architectures(net, msrresnet(**{**BASICSR_NET, "num_block": 15}))
    assert not fewer["same"] and not fewer["same_count"] and not fewer["same_shapes"]


def test_sfsr_msrresnet_computes_what_basicsrs_computes():
    """sfsr's ``msrresnet`` is BasicSR's graph, not only its shapes: with BasicSR's weights copied in
    parameter order it gives BasicSR's output (activations, order, skips and the bilinear base)."""
    import torch

    from benchmarks.basicsr_train import BASICSR_NET, compare_architectures
    from sfsr.models import build_generator

    msrresnet = _real_msrresnet()
    torch.manual_seed(0)
    theirs = msrresnet(**BASICSR_NET).eval()
    ours = build_generator("msrresnet", 4).eval()
    assert compare_architectures(theirs, ours)["same"]
    with torch.no_grad():
        for mine, their in zip(ours.parameters(), theirs.parameters()):
            mine.copy_(their)
        lr = torch.rand(2, 3, 20, 24)
        assert torch.allclose(ours(lr), theirs(lr), atol=1e-6)
        ours.tail[-1].weight.mul_(2)  # a different net gives a different output: the check can fail
        assert not torch.allclose(ours(lr), theirs(lr), atol=1e-6)


def test_basicsr_model_ema_is_the_formula():
    """benchmarks/basicsr_train.basicsr_model_ema: ema = decay * ema + (1 - decay) * net, per parameter
    (base_model.py's model_ema); decay 0 copies the net."""
    import torch

    from benchmarks.basicsr_train import basicsr_model_ema

    torch.manual_seed(0)
    net, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in ema.parameters()]
    basicsr_model_ema(net, ema, 0.9)
    for old, new, p in zip(before, ema.parameters(), net.parameters()):
        assert torch.allclose(new, 0.9 * old + 0.1 * p, atol=1e-7)
        assert not torch.equal(new, old)
    basicsr_model_ema(net, ema, 0)
    for new, p in zip(ema.parameters(), net.parameters()):
        assert torch.equal(new, p)


def test_basicsr_train_tiny_run_gives_both_rates(tmp_path):
    """benchmarks/basicsr_train.main: 1 round, 2 iterations, batch 2, tiny images: one row with
    positive s/it for sfsr and BasicSR, their ratio, and what sfsr ran (fp32)."""
    from benchmarks.basicsr_train import main
    from sfsr import io

    _real_msrresnet()
    rng = np.random.default_rng(0)
    for i in range(3):
        io.save_image(tmp_path / "img" / f"{i}.png", rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    rows = main(["--images", str(tmp_path / "img"), "--rounds", "1", "--iterations", "2",
                 "--batch-size", "2", "--lr-patch", "8", "--threads", "1"])
    assert len(rows) == 1
    row = rows[0]
    assert row["order"] == "sfsr+basicsr"
    assert row["sfsr_s_per_it"] > 0 and row["basicsr_s_per_it"] > 0
    assert row["ratio"] == pytest.approx(row["basicsr_s_per_it"] / row["sfsr_s_per_it"])
    assert row["sfsr_ran"] == "fp32"
    assert row["basicsr_timed_iterations"] == 2 and row["sfsr_timed_iterations"] == 2
