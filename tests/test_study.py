"""A whole (tiny) study through the DAG: data -> classifier -> warm-up -> GAN -> evaluation ->
classification accuracy -> figures -> summary -> Snakemake report, then the report in a browser.

The run's one shared tiny study (conftest's session fixture ``tiny_study``, run once for all xdist
workers; the SLURM test compares with it too) serves all tests here; its settings
(``helpers.TINY_STUDY``) only shrink sizes and budgets. It runs as on a CPU with native bf16
(``SFSR_CPU_BF16=native``: config.yaml's ``bf16: true`` then turns CPU autocast on in every training
job), whatever CPU runs the suite; the README test runs the default study with the CPU's own detection.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import TINY_STUDY as TINY, run_snakemake

pytestmark = [pytest.mark.slow, pytest.mark.heavy(seconds=370)]  # the shared study runs here first

MODELS = ["bicubic", "srresnet_x4", "srresnet_x4_srgan", "srresnet_x4_semantic", "srresnet_x4_shared",
          "srresnet_x4_semantic_control", "srresnet_x4_shared_control"]
STAGES = {"warmup": 6, "gan": 4, "semantic": 4, "shared": 4, "semantic_control": 4, "shared_control": 4}


@pytest.fixture(scope="module")
def study(tiny_study):
    """The run's shared tiny study (conftest ``tiny_study``: helpers.TINY_STUDY, rule ``all``)."""
    return tiny_study, tiny_study / "results" / "default"


def test_every_training_job_ran_bf16_autocast_as_on_a_native_bf16_cpu(study):
    _, res = study
    provenances = [*res.glob("models/*/*/provenance.json"), *res.glob("classifier/*/**/provenance.json")]
    assert len(provenances) >= len(STAGES) + 4 + 3  # SR stages, both SSEN and their GANs, prior + judge + LR baseline
    for path in provenances:
        assert json.loads(path.read_text())["speed_flags"]["bf16"] is True, path
    logs = [p for pattern in ("train_*", "pretrain_*", "finetune_*") for p in res.glob(f"logs/{pattern}/**/*.log")]
    assert len(logs) == len(provenances)
    for log in logs:
        assert "on cpu: bf16 autocast on (SFSR_CPU_BF16=native)" in log.read_text(), log


def test_every_stage_produced_its_outputs(study):
    _, res = study
    for stage, iterations in STAGES.items():
        folder = res / "models" / "srresnet_x4" / stage
        log = pd.read_csv(folder / "train_log.csv")
        assert log["iteration"].max() == iterations
        prov = json.loads((folder / "provenance.json").read_text())
        assert prov["seed"] == 0 and prov["git_commit"] and prov["versions"]["torch"]
    gan_log = pd.read_csv(res / "models" / "srresnet_x4" / "gan" / "train_log.csv")
    # offline default: the perceptual loss runs on the pipeline's own classifier (no ImageNet VGG)
    assert {"adversarial", "perceptual"} <= set(gan_log.columns)
    assert gan_log["iteration"].iloc[0] == 0 and gan_log["perceptual"].isna().iloc[0]  # step-0 validation
    assert (gan_log["perceptual"].dropna() > 0).all() and gan_log["perceptual"].notna().sum() > 0
    gan_prov = json.loads((res / "models" / "srresnet_x4" / "gan" / "provenance.json").read_text())
    assert "classifier.pt" in json.dumps(gan_prov)
    assert "semantic_kl" in pd.read_csv(res / "models" / "srresnet_x4" / "semantic" / "train_log.csv")
    assert "shared_cls" in pd.read_csv(res / "models" / "srresnet_x4" / "shared" / "train_log.csv")
    assert (res / "models" / "srresnet_x4" / "shared" / "lr_head.pt").is_file()
    assert (res / "classifier" / "builtin_demo_cls" / "classifier.pt").is_file()


def test_controls_train_like_their_stage_without_the_prior_or_head(study):
    _, res = study
    folder = res / "models" / "srresnet_x4"
    for stage, gone in (("semantic", "semantic_kl"), ("shared", "shared_cls")):
        main = json.loads((folder / stage / "provenance.json").read_text())
        control = json.loads((folder / f"{stage}_control" / "provenance.json").read_text())
        assert gone in main["loss_weights"] and gone not in control["loss_weights"]
        assert {k: v for k, v in main["loss_weights"].items() if k != gone} == control["loss_weights"]
        assert main["init_checkpoint"] == control["init_checkpoint"]
        assert main["train_hr_dirs"] == control["train_hr_dirs"] and main["iterations"] == control["iterations"]
    assert not (folder / "shared_control" / "lr_head.pt").exists()


def test_reference_based_sr_is_trained_and_evaluated_per_level(study):
    _, res = study
    log = pd.read_csv(res / "models" / "ssen_x4" / "refsr" / "train_log.csv")
    assert log["iteration"].max() == 4 and "offset" in log.columns
    summary = pd.read_csv(res / "refsr" / "builtin_refgroups_test_x4.csv")
    inputs = {(m, i) for m, i in zip(summary["model"], summary["input"])}
    # the refsr generators and their refsr_gan fine-tunings ('<model>_gan'), per level
    assert inputs == {("bicubic", "bicubic"), *{(f"ssen_x4_noref{g}", "none") for g in ("", "_gan")},
                      *{(f"ssen_x4{g}", i) for g in ("", "_gan") for i in ("random", *(f"ref{k}" for k in range(1, 5)))}}
    assert (res / "figures" / "refsr_builtin_refgroups_test_x4.png").stat().st_size > 10_000
    gan = pd.read_csv(res / "models" / "ssen_x4" / "refsr_gan" / "train_log.csv")
    assert gan["iteration"].max() == 4 and {"offset", "adversarial", "d_loss"} <= set(gan.columns)
    record = json.loads((res / "models" / "ssen_x4" / "refsr_gan" / "provenance.json").read_text())
    assert record["config"]["discriminator"]["arch"] == "patchgan"
    assert record["init_checkpoint"].endswith("models/ssen_x4/refsr/generator.pt")
    paired = pd.read_csv(res / "refsr" / "builtin_refgroups_test_x4_vs_control.csv")
    assert set(zip(paired["model"], paired["control"])) == {("ssen_x4", "ssen_x4_noref"),
                                                            ("ssen_x4_gan", "ssen_x4_noref_gan")}
    # reference-based models are not evaluated as single-image models
    assert "ssen_x4" not in set(pd.read_csv(res / "summary.csv")["model"])


def test_summary_has_one_row_per_model_dataset_scale(study):
    _, res = study
    summary = pd.read_csv(res / "summary.csv")
    refsr_rows = {"bicubic", *{f"ssen_x4_noref{g}" for g in ("", "_gan")},
                  *{f"ssen_x4{g} @ {i}" for g in ("", "_gan") for i in ("random", *(f"ref{k}" for k in range(1, 5)))}}
    expected = {(m, d, 4) for m in MODELS for d in ("builtin_valid", "builtin_demo_cls")} | \
        {(m, "builtin_refgroups_test", 4) for m in refsr_rows}  # RefSR per reference level
    assert set(zip(summary.model, summary.dataset, summary.scale)) == expected
    assert len(summary) == len(expected)
    trained = summary[(summary.model != "bicubic") & (summary.dataset != "builtin_refgroups_test")]
    assert (trained["params"] > 0).all() and (trained["train_time_s"] > 0).all()
    assert summary["convention"].nunique() == 1
    assert (res / "summary.md").read_text().count("srresnet_x4_srgan") == 2
    assert len(re.findall(r"srresnet_x4_semantic\s*\|", (res / "summary.md").read_text())) == 2


def test_accuracy_table_joins_hr_bicubic_and_models(study):
    _, res = study
    table = pd.read_csv(res / "classification" / "builtin_demo_cls_x4" / "accuracy.csv")
    assert set(table.judge) == {"prior", "seed1"}  # the prior and config.yaml's independent judge
    assert set(table.loc[table.independent, "judge"]) == {"seed1"}
    acc = table[table.judge == "prior"]
    assert set(acc.input) == {"hr", *MODELS, "srresnet_x4_lr_head", "lr_classifier"}
    row = acc.set_index("input")
    # the LR baseline: the classifier fine-tuned on bicubic images, paired against bicubic
    assert np.isnan(row.loc["lr_classifier", "psnr_y"]) and 0 <= row.loc["lr_classifier", "p_vs_bicubic"] <= 1
    assert row.loc["bicubic", "gap_closed"] == pytest.approx(0.0) or np.isnan(row.loc["bicubic", "gap_closed"])
    assert ((acc.top1 >= 0) & (acc.top1 <= 1)).all()
    manifest = pd.read_csv(study[0] / "data" / "prepared" / "builtin_demo_cls" / "manifest.csv")
    assert (acc.n == (manifest.split == "test").sum()).all()
    assert np.isnan(row.loc["hr", "psnr_y"]) and np.isfinite(row.loc["srresnet_x4", "psnr_y"])
    assert np.isnan(row.loc["srresnet_x4_lr_head", "psnr_y"])  # classifies LR, makes no image
    # paired statistics on the same test images: vs bicubic, and each model vs its control
    assert row.loc["srresnet_x4_semantic", "control"] == "srresnet_x4_semantic_control"
    assert row.loc["srresnet_x4_shared", "control"] == "srresnet_x4_shared_control"
    for name in ("srresnet_x4_semantic", "srresnet_x4_shared"):
        assert 0 <= row.loc[name, "p_vs_control"] <= 1 and 0 <= row.loc[name, "p_vs_bicubic"] <= 1
        assert row.loc[name, "diff_vs_control_low"] <= row.loc[name, "diff_vs_control_high"]
        fixed, broken = row.loc[name, ["fixed_vs_bicubic", "broken_vs_bicubic"]]
        n = row.loc[name, "n"]
        assert row.loc[name, "top1"] - row.loc["bicubic", "top1"] == pytest.approx((fixed - broken) / n)


def test_an_independent_judge_gives_its_own_verdicts(study):
    """The judge is another network (own seed): its weights differ from the prior's, its accuracy
    rows cover HR, bicubic and every model (not the LR head, a classifier of its own), and its
    records are what ITS checkpoint says about the images, recomputed here."""
    import torch

    from sfsr.classification import split_accuracy

    work, res = study
    prior = torch.load(res / "classifier" / "builtin_demo_cls" / "classifier.pt", weights_only=True)
    judge_ckpt = res / "classifier" / "builtin_demo_cls" / "judges" / "seed1" / "classifier.pt"
    judge = torch.load(judge_ckpt, weights_only=True)
    assert prior["state_dict"].keys() == judge["state_dict"].keys()
    assert any(not torch.equal(prior["state_dict"][k], judge["state_dict"][k]) for k in prior["state_dict"])
    table = pd.read_csv(res / "classification" / "builtin_demo_cls_x4" / "accuracy.csv")
    judged = table[table.judge == "seed1"]
    assert set(judged.input) == {"hr", *MODELS}
    assert judged.independent.all() and not table.loc[table.judge == "prior", "independent"].any()
    records = res / "classification" / "builtin_demo_cls_x4" / "judges" / "seed1"
    manifest = work / "data" / "prepared" / "builtin_demo_cls" / "manifest.csv"
    # (the SR folders are temporary: the HR record is the one whose images are still there)
    record = json.loads((records / "hr.json").read_text())
    assert record["judge"] == "seed1"
    again = split_accuracy(judge_ckpt, work / "data" / "prepared" / "builtin_demo_cls" / "HR", manifest,
                           device="cpu")
    assert record["correct_top1"] == again["correct_top1"] and record["top1"] == again["top1"]
    assert judged.set_index("input").loc["hr", "top1"] == pytest.approx(record["top1"])
    for name in MODELS:  # every model judged by this judge, on the same test images as the prior
        record = json.loads((records / f"{name}.json").read_text())
        prior_record = json.loads((records.parents[1] / f"{name}.json").read_text())
        assert record["judge"] == "seed1" and prior_record["judge"] == "prior"
        assert record["images"] == prior_record["images"]


def test_the_pre_registered_analysis_is_computed_from_the_records(study):
    """analysis.csv holds the config's comparisons in order; the primary's counts, estimate and p are
    those of the per-image records of the primary judge (recomputed here), and accuracy.csv marks
    its row; the records carry predictions; the PSNR comparison uses the test images only."""
    from scipy.stats import binomtest, wilcoxon

    work, res = study
    folder = res / "classification" / "builtin_demo_cls_x4"
    analysis = pd.read_csv(folder / "analysis.csv")
    assert analysis["role"].tolist() == ["primary", "secondary", "secondary"]
    assert analysis["metric"].tolist() == ["top1", "agreement", "psnr_y"]
    primary = analysis.iloc[0]
    assert primary["judge"] == "seed1"  # primary_judge, as the comparison names none

    def record(name, judge="seed1"):
        path = folder / ("judges/seed1" if judge == "seed1" else "") / f"{name}.json"
        return json.loads(path.read_text())

    sem, ctl = record("srresnet_x4_semantic"), record("srresnet_x4_semantic_control")
    assert len(sem["pred_top1"]) == sem["n"] == len(sem["logp_true"])
    assert sem["correct_top1"] == [p == y for p, y in zip(sem["pred_top1"], sem["label"])]
    assert all(0 <= v <= 1 for v in sem["prob_true"])
    fixed = sum(a and not b for a, b in zip(sem["correct_top1"], ctl["correct_top1"]))
    broken = sum(b and not a for a, b in zip(sem["correct_top1"], ctl["correct_top1"]))
    assert (primary["fixed"], primary["broken"]) == (fixed, broken)
    assert primary["estimate"] == pytest.approx((fixed - broken) / sem["n"])
    p = binomtest(min(fixed, broken), fixed + broken, 0.5).pvalue if fixed + broken else 1.0
    assert primary["p"] == pytest.approx(p) and primary["p_holm"] == pytest.approx(p)
    assert primary["low"] <= primary["estimate"] <= primary["high"] and primary["low"] < primary["high"]
    # the manipulation check: agreement with the prior's own prediction on HR
    hr, sem_p, ctl_p = record("hr", "prior"), record("srresnet_x4_semantic", "prior"), \
        record("srresnet_x4_semantic_control", "prior")
    agree_sem = [a == h for a, h in zip(sem_p["pred_top1"], hr["pred_top1"])]
    agree_ctl = [a == h for a, h in zip(ctl_p["pred_top1"], hr["pred_top1"])]
    assert analysis.iloc[1]["estimate"] == pytest.approx((sum(agree_sem) - sum(agree_ctl)) / len(agree_sem))
    # PSNR on the test images only, paired per image
    manifest = pd.read_csv(work / "data" / "prepared" / "builtin_demo_cls" / "manifest.csv", dtype={"stem": str})
    test = set(manifest.loc[manifest["split"] == "test", "stem"])
    psnr = {m: pd.read_csv(res / "metrics" / m / "builtin_demo_cls_x4.csv", dtype={"image": str})
            .set_index("image").loc[sorted(test), "psnr_y"] for m in ("srresnet_x4", "bicubic")}
    assert analysis.iloc[2]["estimate"] == pytest.approx((psnr["srresnet_x4"] - psnr["bicubic"]).mean(), abs=1e-9)
    assert analysis.iloc[2]["n_images"] == len(test)
    differences = (psnr["srresnet_x4"] - psnr["bicubic"]).to_numpy()
    assert analysis.iloc[2]["p"] == pytest.approx(wilcoxon(differences).pvalue)
    # accuracy.csv: the primary judge's rows and the primary comparison's row are marked
    acc = pd.read_csv(folder / "accuracy.csv")
    assert acc.loc[acc.judge == "seed1", "primary_judge"].all() and not acc.loc[acc.judge == "prior", "primary_judge"].any()
    row = acc[(acc.judge == "seed1") & (acc.input == "srresnet_x4_semantic")].iloc[0]
    assert row["role"] == "primary" and row["compared_with"] == "srresnet_x4_semantic_control"
    assert set(acc.loc[(acc.judge == "prior"), "role"]) == {"descriptive"}
    assert "primary" in (folder / "analysis.md").read_text()


def test_a_gate_comes_before_the_semantic_stages(study):
    """With analysis.gate, the semantic and shared stages (and controls) take the gate's decision as an
    input: a dry run schedules the gate and reruns them."""
    work, _ = study
    changed = json.loads(json.dumps(TINY))
    changed["analysis"]["gate"] = {"judge": "prior", "min_gap": 0.05}
    proc = run_snakemake(work, "-n", config=changed)
    out = proc.stdout + proc.stderr
    jobs = set(re.findall(r"^rule (\w+):", out, flags=re.M))
    assert {"gate", "train_semantic", "train_semantic_control", "train_shared"} <= jobs
    assert "train_warmup" not in jobs and "train_gan" not in jobs
    assert "gate/builtin_demo_cls_x4/srresnet_x4.json" in out


def test_figures_exist_and_are_not_blank(study):
    _, res = study
    names = ["training_warmup", "training_gan", "training_semantic", "training_shared", "metrics_psnr_y", "metrics_ssim_y",
             "accuracy_builtin_demo_cls_x4", "tradeoff_builtin_demo_cls_x4", "visual_builtin_valid_x4_1",
             "semantic_examples_builtin_demo_cls_x4"]
    for name in names:
        png = res / "figures" / f"{name}.png"
        assert (res / "figures" / f"{name}.pdf").is_file(), name
        pixels = np.asarray(Image.open(png).convert("L"), dtype=float)
        assert pixels.std() > 10, f"{name} looks blank"


def test_changing_a_plot_setting_reruns_only_plots(study):
    work, _ = study
    proc = run_snakemake(work, "-n", config={**TINY, "plots": {"visual_images": 1, "crop_size": 24}})
    jobs = set(re.findall(r"^rule (\w+):", proc.stdout + proc.stderr, flags=re.M))
    assert jobs - {"all"} == {"plot_visual"}, jobs


def test_changing_the_warmup_reruns_the_gan(study):
    work, _ = study
    changed = json.loads(json.dumps(TINY))
    changed["models"]["srresnet_x4"]["warmup"]["lr"] = 1e-4
    proc = run_snakemake(work, "gan", "-n", config=changed)
    jobs = set(re.findall(r"^rule (\w+):", proc.stdout + proc.stderr, flags=re.M))
    assert {"train_warmup", "train_gan"} <= jobs


@pytest.fixture(scope="module")
def report(study):
    work, _ = study
    html = work / "report.html"
    run_snakemake(work, "--report", str(html), config=TINY)
    return html


def test_report_html_and_zip(study, report):
    work, _ = study
    text = report.read_text(errors="replace")
    for name in ("training_warmup.png", "metrics_psnr_y.png", "accuracy_builtin_demo_cls_x4.png",
                 "summary.csv", "Semantic-favorable"):
        assert name in text, name
    zpath = work / "report.zip"
    run_snakemake(work, "--report", str(zpath), config=TINY)
    with zipfile.ZipFile(zpath) as zf:
        names = zf.namelist()
    assert any(n.endswith("metrics_psnr_y.png") for n in names)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_renders_in_a_browser(report, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium not installed (apt-get install chromium; .ci/run installs it)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000"]
    shot = tmp_path / "report.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1400,1000",
                    report.as_uri()], check=True, capture_output=True, timeout=180)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 5, "the rendered report looks blank"
    dom = subprocess.run([browser, *flags, "--dump-dom", report.as_uri()], check=True,
                         capture_output=True, text=True, timeout=180).stdout
    assert "Semantic-favorable" in dom  # the workflow description was rendered by the report's JS
    # every figure embedded in the report decodes as an image in the browser (no broken images)
    uris = re.findall(r'"data_uri": "(data:image/png;[^"]+)"', report.read_text(errors="replace"))
    assert len(uris) >= 9
    page = tmp_path / "figures.html"
    page.write_text("<html><body>" + "".join(f'<img src="{u}">' for u in uris) +
                    "<script>window.addEventListener('load', () => { const imgs = [...document.images];"
                    " document.body.dataset.total = imgs.length; document.body.dataset.loaded ="
                    " imgs.filter(i => i.complete && i.naturalWidth > 0).length; });</script>"
                    "</body></html>")
    dom = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], check=True,
                         capture_output=True, text=True, timeout=180).stdout
    loaded = re.search(r'data-loaded="(\d+)"', dom)
    total = re.search(r'data-total="(\d+)"', dom)
    assert total and int(total.group(1)) == len(uris)
    assert loaded and int(loaded.group(1)) == len(uris), f"{loaded and loaded.group(1)} of {len(uris)} loaded"
