"""Training: EMA rule, patch data, learning, resume, non-finite stop, GAN init, checkpoints.

Images are real photographs from scikit-image written to tmp_path; models are tiny; CPU only.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from sfsr.data.bicubic import imresize, modcrop
from sfsr.errors import ConfigError, SfsrError
from sfsr.metrics import image_metrics, to_uint8
from sfsr.models import build_generator, load_generator
from sfsr.training import parts
from sfsr.training.data import PatchDataset, load_validation_set, make_loader, make_lr_batch
from sfsr.training.ema import effective_decay, make_ema
from sfsr.training.loop import train
from sfsr.training.settings import TRAINING_DEFAULTS, resolve_config, stage_config


@pytest.fixture(scope="module")
def photos(tmp_path_factory, photo_saver) -> dict[str, Path]:
    """train/ (astronaut, coffee crops and a gray camera crop), valid/ (chelsea crop), astro/ (one
    astronaut crop used both to train and validate) and a prepared layout with X2 LR files."""
    root = tmp_path_factory.mktemp("photos")
    folders = {"train": photo_saver(root / "train", "astronaut", "coffee", "camera"),
               "valid": photo_saver(root / "valid", "chelsea"),
               "astro": photo_saver(root / "astro", "astronaut")}
    prepared = root / "prepared" / "builtin" / "HR"
    (prepared.parent / "LR_bicubic" / "X2").mkdir(parents=True)
    prepared.mkdir()
    for p in folders["train"].iterdir():
        img = np.asarray(Image.open(p))
        Image.fromarray(img).save(prepared / p.name)
        Image.fromarray(imresize(modcrop(img, 2), 1 / 2)).save(prepared.parent / "LR_bicubic" / "X2" / p.name)
    folders["prepared"] = prepared
    return folders


def tiny_cfg(**over) -> dict:
    cfg = dict(arch="edsr_baseline", scale=2, kwargs=dict(num_blocks=1, num_features=8), iterations=6,
               batch_size=2, lr_patch=8, lr=1e-3, log_every=1, val_every=1000, checkpoint_every=2,
               num_workers=0, ema_decay=0.9, bf16=True, channels_last=True, compile=False)
    cfg.update(over)
    return cfg


# ----------------------------------------------------------------------------------------- EMA
def test_ema_rule_numerically():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = make_ema(model, decay=0.9)
    expected = None
    for n in range(30):
        with torch.no_grad():
            model.weight.add_(torch.randn_like(model.weight))
        current = model.weight.detach().numpy().astype(np.float64)
        d = min(0.9, (1 + n) / (10 + n))
        expected = current if n == 0 else d * expected + (1 - d) * current
        ema.update_parameters(model)
    assert np.allclose(ema.module.weight.numpy(), expected, atol=1e-5)
    assert effective_decay(0.9, 0) == pytest.approx(0.1)
    assert effective_decay(0.9, 1000) == 0.9
    assert not ema.module.weight.requires_grad


# ---------------------------------------------------------------------------------------- data
def test_cosine_start_holds_the_lr_then_decays_as_cosine_annealing():
    """``cosine_start`` f: the lr stays constant for f of the iterations, then follows
    CosineAnnealingLR's curve over the rest down to eta_min; 0 is CosineAnnealingLR itself."""
    def lrs(**cfg):
        opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=2e-4)
        sched = parts.make_scheduler(opt, {"scheduler": "cosine", "eta_min": 1e-6, **cfg})
        out = []
        for _ in range(cfg.get("iterations") + 1):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out
    held = lrs(iterations=100, cosine_start=0.6)
    plain = lrs(iterations=40, cosine_start=0.0)
    assert held[:61] == [2e-4] * 61 and held[61] < 2e-4
    assert held[60:] == pytest.approx(plain, rel=1e-9)
    assert held[-1] == pytest.approx(1e-6) and held == sorted(held, reverse=True)
    assert lrs(iterations=40) == plain  # the key absent: the decay starts at once
    assert len(set(plain[:2])) == 2


def test_patch_dataset_deterministic_and_gray(photos):
    ds = PatchDataset([photos["train"]], scale=2, lr_patch=10, length=50, seed=3)
    a, b = ds[7], ds[7]
    assert torch.equal(a["hr"], b["hr"]) and a["hr"].shape == (3, 20, 20) and a["hr"].dtype == torch.uint8
    assert "lr" not in a
    assert not torch.equal(ds[7]["hr"], ds[8]["hr"])
    other = PatchDataset([photos["train"]], scale=2, lr_patch=10, length=50, seed=4)
    assert not all(torch.equal(ds[k]["hr"], other[k]["hr"]) for k in range(5))
    gray = [k for k in range(50) if torch.equal(ds[k]["hr"][0], ds[k]["hr"][1])
            and torch.equal(ds[k]["hr"][1], ds[k]["hr"][2])]
    assert gray, "the gray camera crop should appear replicated to 3 channels"


def test_prepared_lr_is_aligned_with_hr(photos):
    for augment in (False, True):
        ds = PatchDataset([photos["prepared"]], scale=2, lr_patch=16, length=20, seed=0,
                          lr_source="prepared", augment=augment)
        for k in range(20):
            item = ds[k]
            assert item["lr"].shape == (3, 16, 16)
            # away from the patch border the bicubic of the HR patch equals the prepared LR crop
            # (exactly; with a transposing augmentation the two MATLAB passes swap order, and their
            # per-pass uint8 rounding may then differ by 1)
            on_the_fly = make_lr_batch(item["hr"][None], 2)[0].int()
            diff = (on_the_fly[:, 3:-3, 3:-3] - item["lr"][:, 3:-3, 3:-3].int()).abs().max().item()
            assert diff <= (1 if augment else 0), (augment, k, diff)


def test_loader_resumes_the_same_batches(photos):
    ds = PatchDataset([photos["train"]], scale=2, lr_patch=8, length=6 * 3, seed=1)
    full = [b["hr"] for b in make_loader(ds, 3)]
    tail = [b["hr"] for b in make_loader(ds, 3, start_iteration=4)]
    assert len(full) == 6 and len(tail) == 2
    assert all(torch.equal(x, y) for x, y in zip(full[4:], tail))


def test_validation_set_uses_exact_bicubic(photos):
    (item,) = load_validation_set([photos["valid"]], 2)
    hr = np.asarray(Image.open(photos["valid"] / "chelsea.png"))
    assert np.array_equal(item.lr, imresize(modcrop(hr, 2), 1 / 2)) and item.hr.shape == (100, 100, 3)


# -------------------------------------------------------------------------------------- config
def test_stage_config_merges_defaults_training_and_stage():
    config = {"training": {"lr": 1e-3, "perceptual": {"weights": None}},
              "models": {"m": {"arch": "srresnet", "scale": 4, "kwargs": {"num_blocks": 2},
                               "warmup": {"iterations": 7}, "gan": None}}}
    cfg = stage_config(config, "m", "warmup")
    assert cfg["iterations"] == 7 and cfg["lr"] == 1e-3 and cfg["arch"] == "srresnet"
    assert cfg["perceptual"] == {**TRAINING_DEFAULTS["perceptual"], "weights": None}
    assert cfg["batch_size"] == TRAINING_DEFAULTS["batch_size"]
    with pytest.raises(ConfigError, match="models.m.gan"):
        stage_config(config, "m", "gan")
    with pytest.raises(ConfigError, match="lr_rate"):
        resolve_config({"arch": "srresnet", "scale": 4, "lr_rate": 1})


# ------------------------------------------------------------------------------------ training
@pytest.mark.slow
def test_warmup_learns_to_beat_bicubic(photos, tmp_path):
    cfg = tiny_cfg(kwargs=dict(num_blocks=2, num_features=32), iterations=300, batch_size=8,
                   lr_patch=16, val_every=300, checkpoint_every=300, log_every=50, ema_decay=None,
                   milestones=[0.8])
    out = train("warmup", cfg, train_hr_dirs=[photos["astro"]], valid_hr_dirs=[photos["astro"]],
                out_dir=tmp_path, device="cpu", seed=0)
    hr = modcrop(np.asarray(Image.open(photos["astro"] / "astronaut.png")), 2)
    bicubic = image_metrics(hr, imresize(imresize(hr, 1 / 2), 2.0), 2)["psnr_y"]
    model, scale = load_generator(out)
    with torch.no_grad():
        lr = torch.from_numpy(imresize(hr, 1 / 2)).permute(2, 0, 1)[None].float() / 255
        sr = to_uint8(model(lr)[0])  # the pipeline's quantization (round half away from zero)
    psnr = image_metrics(hr, sr, 2)["psnr_y"]
    assert scale == 2
    assert psnr > bicubic + 0.3, f"trained {psnr:.2f} dB vs bicubic {bicubic:.2f} dB"
    logged = pd.read_csv(tmp_path / "train_log.csv")
    assert logged["val_psnr_y"].dropna().iloc[-1] == pytest.approx(psnr, abs=1e-6)
    pixel = logged["pixel"].dropna()
    assert pixel.iloc[-1] < pixel.iloc[0]


@pytest.mark.parametrize("arch", ["srresnet", "edsr_baseline", "rrdbnet", "autoencoder"])
def test_residual_warmup_starts_at_bicubic_and_improves_in_100_iterations(shared_data, tmp_path, arch):
    """base bicubic: the step-0 validation (logged as iteration 0) is the bicubic baseline of the same
    images (also logged), and 100 CPU iterations on Set5 raise validation PSNR-Y above it."""
    set5 = shared_data / "benchmark" / "Set5" / "HR"
    kwargs = {"num_blocks": 2, "num_features": 16, "base": "bicubic"}
    if arch == "rrdbnet":
        kwargs["growth"] = 8
    # SRResNet's 9x9 convs need a lower learning rate to start (docs/training.md, finding 2)
    cfg = tiny_cfg(arch=arch, scale=4, kwargs=kwargs, iterations=100, batch_size=8, lr_patch=12,
                   lr=2e-4 if arch == "srresnet" else 1e-3, val_every=100, checkpoint_every=100,
                   log_every=20, ema_decay=None, scheduler="constant",
                   bf16=False)  # float32 on every CPU: the residual base is tested, not the dtype
    train("warmup", cfg, train_hr_dirs=[set5], valid_hr_dirs=[set5], out_dir=tmp_path, device="cpu", seed=0)
    log = pd.read_csv(tmp_path / "train_log.csv")
    val = log.dropna(subset=["val_psnr_y"]).set_index("iteration")
    assert list(val.index) == [0, 100]
    bicubic = val["val_bicubic_psnr_y"]
    assert bicubic.nunique() == 1 and bicubic.iloc[0] == pytest.approx(28.42, abs=0.02)  # published
    assert val.loc[0, "val_psnr_y"] == pytest.approx(bicubic.iloc[0], abs=0.01)
    assert val.loc[100, "val_psnr_y"] > val.loc[0, "val_psnr_y"] + 0.05, val[["val_psnr_y"]]


def test_resume_after_forced_stop(photos, tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("SFSR_CPU_BF16", "none")  # as on a CPU without native bf16, whatever runs the test
    kw = dict(train_hr_dirs=[photos["train"]], valid_hr_dirs=[photos["valid"]], device="cpu", seed=0)
    with caplog.at_level(logging.INFO, logger="sfsr.training"):
        first = train("warmup", tiny_cfg(), out_dir=tmp_path / "a", max_iterations=3, **kw)
    assert ("training on cpu: float32 (bf16: True, ignored: SFSR_CPU_BF16=none), contiguous, "
            "channels_last ignored on cpu (set 'always' to force)") in caplog.text
    assert first == tmp_path / "a" / "state" / "last.pt" and not (tmp_path / "a" / "generator.pt").exists()
    state = torch.load(first, weights_only=True)
    assert state["iteration"] == 3
    assert all(s["step"].item() == 3 for s in state["opt_g"]["state"].values())
    out = train("warmup", tiny_cfg(), out_dir=tmp_path / "a", **kw)
    assert out == tmp_path / "a" / "generator.pt"
    logged = pd.read_csv(tmp_path / "a" / "train_log.csv")
    assert logged["iteration"].tolist() == [0, 1, 2, 3, 4, 5, 6]  # 0: the step-0 validation
    assert (logged["elapsed_s"].diff().dropna() >= 0).all()
    final = torch.load(tmp_path / "a" / "state" / "last.pt", weights_only=True)
    # Adam's step counters continue from 3 (restored), not from 0
    assert all(s["step"].item() == 6 for s in final["opt_g"]["state"].values())
    # the interrupted run ends exactly where an uninterrupted one does
    train("warmup", tiny_cfg(), out_dir=tmp_path / "b", **kw)
    other = torch.load(tmp_path / "b" / "state" / "last.pt", weights_only=True)
    for key, value in final["generator"].items():
        assert torch.allclose(value.float(), other["generator"][key].float(), atol=1e-6), key
    for name in ("generator.pt", "best.pt"):
        ckpt = torch.load(tmp_path / "a" / name, weights_only=True)
        assert set(ckpt["state_dict"]) == set(final["generator"])
    prov = yaml.safe_load((tmp_path / "a" / "provenance.json").read_text())
    assert prov["parameters"] > 0 and prov["training_time_s"] > 0 and prov["seed"] == 0


def test_state_of_a_run_with_other_settings_is_not_resumed(photos, tmp_path, caplog):
    """The workflow reruns a stage when its settings change: that run must start afresh."""
    kw = dict(train_hr_dirs=[photos["train"]], valid_hr_dirs=[photos["valid"]], device="cpu", seed=0)
    train("warmup", tiny_cfg(), out_dir=tmp_path / "a", max_iterations=3, **kw)
    with caplog.at_level(logging.WARNING, logger="sfsr.training"):
        train("warmup", tiny_cfg(lr=5e-4), out_dir=tmp_path / "a", **kw)
    assert "starting afresh" in caplog.text
    logged = pd.read_csv(tmp_path / "a" / "train_log.csv")
    assert logged["iteration"].tolist() == [0, 1, 2, 3, 4, 5, 6]
    final = torch.load(tmp_path / "a" / "state" / "last.pt", weights_only=True)
    assert all(s["step"].item() == 6 for s in final["opt_g"]["state"].values())
    # ... and equals a run that never saw the old state
    train("warmup", tiny_cfg(lr=5e-4), out_dir=tmp_path / "b", **kw)
    other = torch.load(tmp_path / "b" / "state" / "last.pt", weights_only=True)
    for key, value in final["generator"].items():
        assert torch.allclose(value.float(), other["generator"][key].float(), atol=1e-6), key


def test_non_finite_loss_stops_and_keeps_last_good_state(photos, tmp_path, monkeypatch):
    calls = {"n": 0}

    def l1_then_nan(name):
        def fn(sr, hr):
            calls["n"] += 1
            loss = torch.nn.functional.l1_loss(sr, hr)
            return loss * float("nan") if calls["n"] >= 5 else loss
        return fn

    monkeypatch.setattr(parts, "pixel_loss", l1_then_nan)
    cfg = tiny_cfg(iterations=10, log_every=1, checkpoint_every=2)
    with pytest.raises(SfsrError, match=r"'pixel' is nan at iteration 5.*iteration 4\) was kept"):
        train("warmup", cfg, train_hr_dirs=[photos["train"]], valid_hr_dirs=[], out_dir=tmp_path,
              device="cpu")
    state = torch.load(tmp_path / "state" / "last.pt", weights_only=True)
    assert state["iteration"] == 4
    assert all(torch.isfinite(v).all() for v in state["generator"].values() if v.is_floating_point())
    assert not (tmp_path / "generator.pt").exists()


def test_gan_stage_starts_from_the_warmup_generator(photos, tmp_path):
    kw = dict(train_hr_dirs=[photos["train"]], valid_hr_dirs=[photos["valid"]], device="cpu")
    warm = train("warmup", tiny_cfg(iterations=3), out_dir=tmp_path / "warmup", **kw)
    gan_cfg = tiny_cfg(iterations=4, loss_preset="srgan", lr=1e-4,
                       loss_weights={"pixel": 1.0, "perceptual": 0.0, "adversarial": 1e-3},
                       discriminator={"arch": "vgg", "kwargs": {"num_features": 4, "dense_features": 16}})
    with pytest.raises(ConfigError, match="init_checkpoint"):
        train("gan", gan_cfg, out_dir=tmp_path / "nogan", **kw)
    state0 = train("gan", gan_cfg, out_dir=tmp_path / "gan", init_checkpoint=warm, max_iterations=0, **kw)
    at_zero = torch.load(state0, weights_only=True)
    warm_sd = torch.load(warm, weights_only=True)["state_dict"]
    assert at_zero["iteration"] == 0
    for key, value in warm_sd.items():
        assert torch.equal(at_zero["generator"][key], value), key
    out = train("gan", gan_cfg, out_dir=tmp_path / "gan", init_checkpoint=warm, **kw)
    logged = pd.read_csv(tmp_path / "gan" / "train_log.csv")
    assert {"pixel", "adversarial", "d_loss", "g_total"} <= set(logged.columns)
    assert "perceptual" not in logged.columns
    assert logged["iteration"].tolist() == [0, 1, 2, 3, 4]
    final = torch.load(tmp_path / "gan" / "state" / "last.pt", weights_only=True)
    assert final["discriminator"] is not None and final["opt_d"]["state"]
    assert any(not torch.equal(final["generator"][k], v) for k, v in warm_sd.items())
    model, scale = load_generator(out)
    assert scale == 2
    bad = tiny_cfg(kwargs=dict(num_blocks=2, num_features=8))
    with pytest.raises(ConfigError, match="same arch"):
        train("gan", {**gan_cfg, **{"kwargs": bad["kwargs"]}}, out_dir=tmp_path / "bad",
              init_checkpoint=warm, **kw)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_speed_flags_run(photos, tmp_path):
    cfg = tiny_cfg(iterations=4, compile=True)
    out = train("warmup", cfg, train_hr_dirs=[photos["train"]], valid_hr_dirs=[photos["valid"]],
                out_dir=tmp_path, device="cuda")
    prov = yaml.safe_load((tmp_path / "provenance.json").read_text())
    assert prov["speed_flags"] == {"bf16": True, "channels_last": True, "compile": True}
    model, _ = load_generator(out)
    assert isinstance(model, type(build_generator("edsr_baseline", 2, num_blocks=1, num_features=8)))
