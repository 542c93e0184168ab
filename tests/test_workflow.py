"""The Snakemake workflow end to end: lint, dry-run, config errors, and real runs of the data and
evaluation stages on the builtin, local and url sources (the url one against a 127.0.0.1 server)."""

from __future__ import annotations

import hashlib
import json
import http.server
import subprocess
import sys
import threading
import zipfile

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from helpers import NO_REFSR, REPO, run_snakemake
from sfsr.data import catalogue

pytestmark = [pytest.mark.slow, pytest.mark.heavy(seconds=80)]


def test_lint_is_clean(tmp_path):
    proc = run_snakemake(tmp_path, "--lint")
    assert "Congratulations, your workflow is in a good condition" in proc.stdout + proc.stderr


def test_dry_run_lists_the_data_and_evaluation_jobs(tmp_path):
    proc = run_snakemake(tmp_path, "-n")
    out = proc.stdout + proc.stderr
    counts = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    from sfsr.config import DATASET_LISTS
    used = {d for key in DATASET_LISTS for d in cfg[key]}
    n_sets = len(used)
    scales = cfg["scales"]
    assert counts["prepare"] == n_sets
    lr_sets = {d for key in ("train", "valid", "test", "classification") for d in cfg[key]}
    assert counts["make_lr"] == len(lr_sets) * len(scales)  # reference-only sets need no LR folders
    assert counts["upscale"] >= len(scales)  # bicubic at every scale, plus trained models
    assert counts["summarize"] == 1
    assert counts["train_refsr"] == len(cfg["refsr_models"]) and counts["refsr_summary"] == len(cfg["refsr"])
    assert counts["train_semantic_control"] == counts["train_semantic"]  # a control beside each model


def test_dry_run_trains_and_evaluates_the_refsr_gan_per_level(tmp_path):
    """The default study fine-tunes SSEN and its no-reference control adversarially (refsr_gan,
    from their refsr generators, no classifier needed) and evaluates both GAN generators per
    reference level beside the refsr ones; a model whose refsr_gan section is null trains none."""
    proc = run_snakemake(tmp_path, "evaluate_refsr", "-n", "-p")
    out = proc.stdout + proc.stderr
    res = f"{tmp_path}/results/default"
    for model in ("ssen_x4", "ssen_x4_noref"):
        assert f"{res}/models/{model}/refsr_gan/generator.pt" in out
        for name in (model, f"{model}_gan"):
            assert f"{res}/refsr/per_group/{name}/builtin_refgroups_test_x4.csv" in out
    assert f"{res}/figures/training_refsr_gan.png" in out
    jobs = [line.split("rule ", 1)[1].rstrip(":") for line in out.splitlines() if line.startswith("rule ")]
    assert jobs.count("train_refsr_gan") == 2 and jobs.count("refsr_metrics") == 5  # 4 generators + bicubic
    assert "pretrain_classifier" not in jobs  # the offline refsr_gan has no perceptual term on the classifier
    proc = run_snakemake(tmp_path, "evaluate_refsr", "-n",
                         config={"models": {"ssen_x4_noref": {"refsr_gan": None}}})
    out = proc.stdout + proc.stderr
    assert "ssen_x4_noref/refsr_gan" not in out and "per_group/ssen_x4_noref_gan/" not in out
    assert "per_group/ssen_x4_gan/" in out


def test_dry_run_does_not_import_torch(tmp_path):
    """Parsing the workflow (Snakefile, rules/*.smk, the config checks) imports no torch: every
    `snakemake -n` would otherwise pay seconds for it (docs/PERFORMANCE.md)."""
    overrides = tmp_path / "test-overrides.yaml"
    overrides.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"),
                                         "results_dir": str(tmp_path / "results")}))
    cmd = [sys.executable, "-X", "importtime", "-m", "snakemake", "-n", "--quiet", "-s",
           str(REPO / "Snakefile"), "-d", str(tmp_path), "--cores", "1", "--configfile",
           str(REPO / "config.yaml"), str(overrides)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert "snakemake.workflow" in imported and "sfsr.training.stages" in imported
    assert not {"torch", "torchvision"} & imported


def test_bad_config_fails_before_any_job_naming_the_key(tmp_path):
    proc = run_snakemake(tmp_path, "-n", config={"test": ["builtin_test", "set55"]}, check=False)
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "test[1]" in err and "set55" in err
    assert not (tmp_path / "data").exists()


def test_data_stage_on_builtin_source(tmp_path):
    only_test = {"scales": [2, 4], "train": [], "valid": [], "test": ["builtin_test"],
                 "classification": [], "sr_models": [], **NO_REFSR}
    run_snakemake(tmp_path, "data", config=only_test)
    prepared = tmp_path / "data" / "prepared" / "builtin_test"
    manifest = pd.read_csv(prepared / "manifest.csv")
    assert sorted(manifest["stem"]) == sorted(catalogue.load()["builtin_test"]["images"])
    assert bool(manifest.set_index("stem").loc["camera", "gray"])  # grayscale photo flagged
    for row in manifest.itertuples():
        hr = np.asarray(Image.open(prepared / row.file))
        assert hr.shape[:2] == (row.height, row.width)
        for s in (2, 4):
            lr = np.asarray(Image.open(prepared / "LR_bicubic" / f"X{s}" / f"{row.stem}.png"))
            assert lr.shape[:2] == (row.height // s, row.width // s)
            assert lr.ndim == hr.ndim
    # a log and a benchmark per job
    assert (tmp_path / "data" / "logs" / "prepare" / "builtin_test.log").is_file()
    assert (tmp_path / "data" / "benchmarks" / "make_lr" / "builtin_test_x4.tsv").is_file()
    # nothing to do on a second run
    proc = run_snakemake(tmp_path, "data", "-n", config=only_test)
    assert "Nothing to be done" in proc.stdout + proc.stderr
    # the report of this partial run (rule `finished`: what exists of `all`)
    run_snakemake(tmp_path, "--report", str(tmp_path / "partial.html"), "finished", config=only_test)
    assert "builtin_test" in (tmp_path / "partial.html").read_text(errors="replace")


def test_local_source_used_in_place_and_evaluation_matches_the_papers(tmp_path, shared_data):
    """Set5 as a local folder: never written to; LR equal to MATLAB's; bicubic row as published."""
    set5 = shared_data / "benchmark" / "Set5" / "HR"
    before = {p.name: p.stat().st_mtime_ns for p in set5.iterdir()}
    extra = tmp_path / "set5.yaml"
    extra.write_text(yaml.safe_dump({"datasets": {"set5": {"source": "local", "path": str(set5), "root": ""}}}))
    run_snakemake(tmp_path, "evaluate", configfile=extra,
                  config={"scales": [2], "train": [], "valid": [], "test": ["set5"],
                          "classification": [], "sr_models": [], **NO_REFSR})
    assert {p.name: p.stat().st_mtime_ns for p in set5.iterdir()} == before
    assert not (tmp_path / "data" / "raw" / "set5").exists()  # used in place, not copied
    lr_dir = tmp_path / "data" / "prepared" / "set5" / "LR_bicubic" / "X2"
    golden = shared_data / "benchmark" / "Set5" / "LR_bicubic_matlab" / "X2"
    for ours in sorted(lr_dir.glob("*.png")):
        theirs = next(golden.glob(f"{ours.stem}*.png"))
        assert np.array_equal(np.asarray(Image.open(ours)), np.asarray(Image.open(theirs))), ours.name
    summary = pd.read_csv(tmp_path / "results" / "default" / "metrics" / "summary.csv")
    row = summary[(summary.model == "bicubic") & (summary.dataset == "set5")].iloc[0]
    assert abs(row.psnr_y - 33.66) <= 0.02 and abs(row.ssim_y - 0.9299) <= 0.002
    per_image = pd.read_csv(tmp_path / "results" / "default" / "metrics" / "bicubic" / "set5_x2.csv")
    assert len(per_image) == 5 and set(per_image.channel) == {"y"}
    assert (tmp_path / "results" / "default" / "metrics" / "provenance.json").is_file()


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture()
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a, **k: _Handler(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_url_source_downloads_verifies_extracts_and_prepares(tmp_path, http_root):
    import skimage.data

    root, base = http_root
    zpath = root / "photos.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for name in ("astronaut", "coffee"):
            img = getattr(skimage.data, name)()[:96, :120]
            png = tmp_path / f"{name}.png"
            Image.fromarray(img).save(png)
            zf.write(png, f"photos/HR/{name}.png")
    sha = hashlib.sha256(zpath.read_bytes()).hexdigest()
    extra = tmp_path / "web.yaml"
    spec = {"source": "url", "root": "photos/HR", "files": [{"url": f"{base}/photos.zip", "sha256": sha}]}
    extra.write_text(yaml.safe_dump({"datasets": {"web": spec}}))
    work = tmp_path / "work"
    work.mkdir()
    web_only = {"scales": [4], "train": [], "valid": [], "test": ["web"], "classification": [],
                "sr_models": [], **NO_REFSR}
    run_snakemake(work, "data", configfile=extra, config=web_only)
    assert (work / "data" / "downloads" / "photos.zip").read_bytes() == zpath.read_bytes()
    manifest = pd.read_csv(work / "data" / "prepared" / "web" / "manifest.csv")
    assert sorted(manifest.stem) == ["astronaut", "coffee"]
    assert len(list((work / "data" / "prepared" / "web" / "LR_bicubic" / "X4").glob("*.png"))) == 2

    # a checksum mismatch fails the download job, names both digests, and leaves no file
    spec["files"][0]["sha256"] = "0" * 64
    extra.write_text(yaml.safe_dump({"datasets": {"web": spec}}))
    work2 = tmp_path / "work2"
    work2.mkdir()
    proc = run_snakemake(work2, "data", configfile=extra, check=False, config=web_only)
    assert proc.returncode != 0
    log = (work2 / "data" / "logs" / "download" / "photos.zip.log").read_text()
    assert sha in log and "0" * 64 in log
    assert not (work2 / "data" / "downloads" / "photos.zip").exists()



@pytest.mark.slow
def test_seeds_train_each_model_per_seed_and_summarise_mean_and_sd(tmp_path):
    """seeds: [0, 1] trains srresnet_x4 (seed 0) and its twin srresnet_x4_seed1 (seed 1) from the
    same settings; seeds.csv holds both PSNRs, their mean and sd."""
    import pandas as pd
    import torch

    config = {"scales": [4], "train": ["builtin_valid"], "valid": ["builtin_valid"], "test": ["builtin_valid"],
              "classification": [], "sr_models": ["srresnet_x4"], "seeds": [0, 1], **NO_REFSR,
              "training": {"batch_size": 2, "lr_patch": 8, "val_every": 4, "checkpoint_every": 4, "log_every": 2},
              "models": {"srresnet_x4": {"kwargs": {"num_blocks": 1, "num_features": 8},
                                         "warmup": {"iterations": 4}, "gan": None, "semantic": None,
                                         "shared": None}}}
    run_snakemake(tmp_path, "seed_summary", config=config)
    res = tmp_path / "results" / "default"
    weights = [torch.load(res / "models" / m / "warmup" / "generator.pt", weights_only=True)["state_dict"]
               for m in ("srresnet_x4", "srresnet_x4_seed1")]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    for m, seed in (("srresnet_x4", 0), ("srresnet_x4_seed1", 1)):
        prov = json.loads((res / "models" / m / "warmup" / "provenance.json").read_text())
        assert prov["seed"] == seed
    summary = pd.read_csv(res / "metrics" / "summary.csv").set_index("model")
    row = pd.read_csv(res / "seeds.csv").set_index(["model", "metric"]).loc[("srresnet_x4", "psnr_y")]
    values = [summary.loc["srresnet_x4", "psnr_y"], summary.loc["srresnet_x4_seed1", "psnr_y"]]
    assert row["n_seeds"] == 2 and row["seeds"] == "0;1"
    assert row["mean"] == pytest.approx(sum(values) / 2, abs=1e-5)
    assert row["sd"] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5, abs=1e-5)
