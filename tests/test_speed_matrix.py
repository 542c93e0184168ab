"""Every speed setting forced on (``always``), on this CPU, for every job of the default study:
the classifier, its judge and the LR baseline; every (model, stage) that config.yaml trains (the four
warm-up generators, the GAN with its discriminator, the semantic and shared stages with the LR head
and their controls, SSEN with and without references and their adversarial fine-tuning refsr_gan with
its PatchGAN); then inference (bf16 autocast too) and
evaluation of what they made. On a CPU without native bf16 the bf16 runs are emulated: slow, but the
same code path as on a CPU with it (docs/PERFORMANCE.md, "bf16 on the CPU").

The settings are config.yaml's, merged as the workflow merges them (``stage_config``); only budgets
and sizes shrink (iterations, batch, patch, epochs). Data: real builtin photos, prepared with the
pipeline's own code.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from sfsr.config import load as load_config
from sfsr.data.bicubic import imresize
from sfsr.data.prepare import prepare_dataset
from sfsr.classification import split_accuracy
from sfsr.inference import upscale_image
from sfsr.metrics import image_metrics
from sfsr.models import DISCRIMINATOR_NAMES, build_discriminator, load_generator
from sfsr.refsr import reference_table
from sfsr.training.classifier import train_classifier
from sfsr.training.loop import train
from sfsr.training.lr_head import load_lr_classifier
from sfsr.training.settings import stage_config
from sfsr.training.stages import STAGES

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

REPO = Path(__file__).resolve().parents[1]
#: The forced settings; compile is forced in its own test below (its compilation costs ~10-60 s a model).
SETTINGS = {
    "bf16": {"bf16": "always", "channels_last": False, "compile": False},
    "channels_last": {"bf16": False, "channels_last": "always", "compile": False},
    "bf16+channels_last": {"bf16": "always", "channels_last": "always", "compile": False},
}
SHRINK = dict(iterations=2, batch_size=2, log_every=1, val_every=2, checkpoint_every=2, num_workers=0,
              device="cpu", cache_mb=64)
CLASSIFIER_SHRINK = dict(epochs=1, batch_size=8, input_size=32, num_workers=0, device="cpu")


def default_jobs(config: dict) -> list[tuple[str, str]]:
    """(stage, model) of every SR training job the default study runs, in training order."""
    jobs = []
    for stage, st in STAGES.items():
        for model in config[st.models]:
            if st.init is not None and config["models"][model].get(st.control_of or stage) is None:
                continue
            if st.control_of and not config.get("controls", True):
                continue
            jobs.append((stage, model))
    return jobs


CONFIG = load_config(REPO / "config.yaml")
JOBS = default_jobs(CONFIG)


def test_the_matrix_covers_every_model_and_stage_of_the_default_study():
    stages = {s for s, _ in JOBS}
    assert stages == set(STAGES), stages  # warmup, gan, semantic, shared, both controls, refsr, refsr_gan
    assert {m for s, m in JOBS if s == "warmup"} == set(CONFIG["sr_models"]) and len(CONFIG["sr_models"]) == 4
    assert {m for s, m in JOBS if s == "refsr"} == set(CONFIG["refsr_models"])
    assert {m for s, m in JOBS if s == "refsr_gan"} == set(CONFIG["refsr_models"])  # the control's GAN too
    kwargs = [CONFIG["models"][m]["kwargs"] for m in CONFIG["refsr_models"]]
    assert {k.get("use_reference", True) for k in kwargs} == {True, False}  # SSEN with and without


@pytest.fixture(scope="module")
def data(tmp_path_factory, photo_saver) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("matrix")
    sr = photo_saver(root / "sr", "astronaut", "coffee", "chelsea")
    cls = root / "cls"
    prepare_dataset("cls", {"source": "builtin", "layout": "builtin_classes", "images": ["brick", "grass", "gravel"],
                            "hr_size": 32, "samples_per_class": 6,
                            "split": {"val_fraction": 0.25, "test_fraction": 0.25}}, None, cls)
    ref = root / "ref"
    prepare_dataset("ref", {"source": "builtin", "layout": "builtin_refgroups", "images": ["astronaut", "coffee"],
                            "hr_size": 48, "groups_per_image": 1}, None, ref)
    blurred = root / "cls_bicubic"  # the LR baseline's images: bicubic x4-degraded HR, by stem
    blurred.mkdir()
    for path in sorted((cls / "HR").iterdir()):
        hr = np.asarray(Image.open(path).convert("RGB"))
        Image.fromarray(imresize(imresize(hr, 1 / 4), 4.0)).save(blurred / f"{path.stem}.png")
    return {"root": root, "sr": sr, "cls": cls, "cls_hr": cls / "HR", "ref": ref / "HR", "blurred": blurred}


def _flags(provenance: Path) -> dict:
    return json.loads(provenance.read_text())["speed_flags"]


def _expected(setting: dict, keys=("bf16", "channels_last", "compile")) -> dict:
    return {k: setting[k] == "always" for k in keys}


class Study:
    """The default study's jobs under one forced setting, each run once (on first use) and kept."""

    def __init__(self, name: str, setting: dict, data: dict[str, Path]):
        self.setting, self.data = setting, data
        self.out = data["root"] / name.replace("+", "_")
        self.done: dict = {}

    def classifier(self, which: str = "prior") -> Path:
        if which in self.done:
            return self.done[which]
        cfg = {k: v for k, v in CONFIG["classifier"].items() if k not in ("threads", "gpus", "mem_mb", "runtime")}
        cfg.update(CLASSIFIER_SHRINK, bf16=self.setting["bf16"], channels_last=self.setting["channels_last"])
        out = self.out / "classifier" / which
        if which == "prior":
            path = train_classifier(cfg, dataset_dir=self.data["cls"], out_dir=out, seed=0)
        elif which == "judge":  # config.yaml's judge: the classifier's recipe with its own seed
            judge = CONFIG["judges"][0]
            path = train_classifier(cfg, dataset_dir=self.data["cls"], out_dir=out, seed=judge["seed"])
        else:  # the LR baseline: the prior fine-tuned on bicubic images
            cfg.update(lr=cfg["lr"] / 10)
            path = train_classifier(cfg, dataset_dir=self.data["cls"], out_dir=out, seed=0,
                                    image_dir=self.data["blurred"], init_checkpoint=self.classifier("prior"))
        self.done[which] = path
        return path

    def generator(self, stage: str, model: str) -> Path:
        if (stage, model) in self.done:
            return self.done[(stage, model)]
        st = STAGES[stage]
        cfg = stage_config(CONFIG, model, stage)
        cfg.update(SHRINK, **self.setting)
        if cfg["lr_patch"] is not None:
            cfg["lr_patch"] = 8
        dirs = {"sr": ([self.data["sr"]], [self.data["sr"]]), "classification": ([self.data["cls_hr"]],) * 2,
                "refsr": ([self.data["ref"]], [self.data["ref"]])}[st.data]
        init = self.generator(st.init, model) if st.init else None
        path = train(stage, cfg, train_hr_dirs=dirs[0], valid_hr_dirs=dirs[1], out_dir=self.out / model / stage,
                     init_checkpoint=init, classifier_checkpoint=self.classifier(), seed=0)
        self.done[(stage, model)] = path
        return path


@pytest.fixture(scope="module")
def studies(data) -> dict[str, Study]:
    return {name: Study(name, setting, data) for name, setting in SETTINGS.items()}


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("which", ["prior", "judge", "lr_classifier"])
def test_classifier_judge_and_lr_baseline_train_with_the_setting_forced(studies, setting, which):
    study = studies[setting]
    path = study.classifier(which)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert _flags(path.parent / "provenance.json") == _expected(study.setting, ("bf16", "channels_last"))
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    log = pd.read_csv(path.parent / "train_log.csv")
    assert log["train_loss"].map(math.isfinite).all() and 0 <= ckpt["val_top1"] <= 1
    if which == "lr_classifier":
        assert ckpt["images"] == str(study.data["blurred"])


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("stage,model", JOBS, ids=[f"{s}-{m}" for s, m in JOBS])
def test_every_stage_trains_with_the_setting_forced(studies, setting, stage, model):
    study = studies[setting]
    path = study.generator(stage, model)
    folder = path.parent
    assert _flags(folder / "provenance.json") == _expected(study.setting)
    log = pd.read_csv(folder / "train_log.csv")
    assert log["iteration"].max() == 2
    losses = log.drop(columns=[c for c in log.columns if c in ("iteration", "lr", "time_s", "elapsed_s")])
    values = losses.select_dtypes("number").to_numpy().ravel()
    values = values[~np.isnan(values)]
    assert values.size and np.isfinite(values).all(), log
    if STAGES[stage].discriminator or "d_loss" in log.columns:
        assert log["d_loss"].dropna().map(math.isfinite).all()  # the discriminator trained too
    if STAGES[stage].lr_head:
        assert (folder / "lr_head.pt").is_file()
    if STAGES[stage].data == "refsr" and CONFIG["models"][model]["kwargs"].get("use_reference", True):
        assert log["offset"].dropna().map(math.isfinite).all()  # deform_conv2d ran (in float32)
    gen, scale = load_generator(path)
    assert all(torch.isfinite(p).all() for p in gen.parameters())


@pytest.mark.parametrize("setting", SETTINGS)
def test_inference_and_evaluation_of_what_the_setting_trained(studies, setting, tmp_path):
    """Each trained SR generator upscales a test photo in float32 and under bf16 autocast; both are
    close to bicubic (2 steps from the bicubic base), so neither path broke; PSNR/SSIM tables, the
    prior's, the judge's and the LR head's accuracy, and SSEN's per-level table are computed."""
    study = studies[setting]
    hr = np.asarray(Image.open(study.data["sr"] / "chelsea.png").convert("RGB"))
    lr = imresize(hr, 1 / 4)
    bicubic = image_metrics(hr, imresize(lr, 4.0), 4)
    for stage, model in JOBS:
        if STAGES[stage].data == "refsr":  # forward(lr, ref): per reference level below
            continue
        gen, scale = load_generator(study.generator(stage, model))
        for bf16 in (False, True):
            out = upscale_image(lr, scale=scale, model=gen, bf16=bf16)
            assert out.shape == hr.shape and out.dtype == np.uint8
            metrics = image_metrics(hr, out, scale)
            assert abs(metrics["psnr_y"] - bicubic["psnr_y"]) < 1.0, (stage, model, bf16, metrics)
            assert abs(metrics["ssim_y"] - bicubic["ssim_y"]) < 0.05, (stage, model, bf16, metrics)
    # classification accuracy: the prior and the judge on HR; the LR head on the LR images
    manifest = study.data["cls"] / "manifest.csv"
    for which in ("prior", "judge"):
        acc = split_accuracy(study.classifier(which), study.data["cls_hr"], manifest, device="cpu")
        assert 0 <= acc["top1"] <= 1 and acc["n"] == (pd.read_csv(manifest)["split"] == "test").sum()
    shared = study.generator("shared", "srresnet_x4")
    head = load_lr_classifier(shared, shared.parent / "lr_head.pt")
    lr_dir = tmp_path / "cls_lr"
    lr_dir.mkdir()
    for path in sorted(study.data["cls_hr"].iterdir()):
        Image.fromarray(imresize(np.asarray(Image.open(path).convert("RGB")), 1 / 4)).save(lr_dir / path.name)
    acc = split_accuracy(study.classifier(), lr_dir, manifest, device="cpu", model=head,
                         input_size=head.input_size, resize_size=head.resize_size, normalize=False)
    assert 0 <= acc["top1"] <= 1
    # SSEN per reference level (float32) and one bf16 forward with a reference
    for stage, model in [(s, m) for s, m in JOBS if STAGES[s].data == "refsr"]:
        path = study.generator(stage, model)
        table = reference_table(study.data["ref"], 4, model_name=model, dataset="ref", checkpoint=path,
                                device="cpu")
        assert np.isfinite(table["psnr_y"]).all()
        gen, _ = load_generator(path)
        x, ref = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 32, 32)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            y = gen(x, ref if gen.use_reference else None)
        assert y.shape == (1, 3, 32, 32) and torch.isfinite(y.float()).all()


@pytest.mark.parametrize("arch", DISCRIMINATOR_NAMES)
@pytest.mark.parametrize("setting", SETTINGS)
def test_every_discriminator_steps_with_the_setting_forced(arch, setting):
    s = SETTINGS[setting]
    disc = build_discriminator(arch, num_features=8)
    x = torch.rand(2, 3, 32, 32)
    if s["channels_last"]:
        disc, x = disc.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(disc.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in disc.parameters()]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(s["bf16"])):
        logits = disc(x).float()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    loss.backward()
    opt.step()
    assert math.isfinite(loss.item())
    assert any(not torch.equal(a, b) for a, b in zip(before, disc.parameters()))


#: One job per stage (the controls run their stage's code), every setting on at once, compile included.
COMPILED_JOBS = [(s, next(m for st, m in JOBS if st == s)) for s in STAGES if not STAGES[s].control_of]


@pytest.fixture(scope="module")
def compiled(data) -> Study:
    return Study("compiled", {"bf16": "always", "channels_last": "always", "compile": "always"}, data)


@pytest.mark.parametrize("stage,model", COMPILED_JOBS, ids=[f"{s}-{m}" for s, m in COMPILED_JOBS])
def test_every_stage_trains_compiled_with_every_setting_forced(compiled, stage, model, monkeypatch):
    """torch.compile (Inductor, C++ on the CPU) of the generator and discriminator of each stage,
    with bf16 autocast and channels_last; SSEN's deform_conv2d runs in float32 inside the graph.
    Models shrink to one block each (compilation, not the model, is what is tested)."""
    real = stage_config

    def shrunk(config, name, stage_name):
        cfg = real(config, name, stage_name)
        cfg["kwargs"] = {**cfg["kwargs"], "num_blocks": 1}
        return cfg

    monkeypatch.setattr(sys.modules[__name__], "stage_config", shrunk)
    path = compiled.generator(stage, model)
    assert _flags(path.parent / "provenance.json") == {"bf16": True, "channels_last": True, "compile": True}
    log = pd.read_csv(path.parent / "train_log.csv")
    assert log["iteration"].max() == 2
    numbers = log.drop(columns=["iteration"]).select_dtypes("number").to_numpy().ravel()
    assert np.isfinite(numbers[~np.isnan(numbers)]).all(), log
    gen, _ = load_generator(path)
    assert all(torch.isfinite(p).all() for p in gen.parameters())
