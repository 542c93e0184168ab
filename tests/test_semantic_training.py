"""Tests for the semantic and shared training stages of sfsr.training.loop.train.

Data: a tiny real prepared classification set (crops of the builtin brick/grass/gravel photos, gray, made
with sfsr.data.prepare.prepare_dataset, layout builtin_classes, 32 px HR). The frozen classifier is
a resnet18 from scratch (BN statistics set on the set's images) saved in train_classifier's
checkpoint format; the warm-up generator is a tiny EDSR saved with save_generator. CPU, x2, a few
iterations each.
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

from sfsr import io
from sfsr.classification import classification_accuracy
from sfsr.data.bicubic import imresize
from sfsr.data.prepare import prepare_dataset
from sfsr.errors import ConfigError
from sfsr.models import build_classifier, build_generator, generator_spec, save_generator
from sfsr.models.classifier import checkpoint_dict, load_classifier
from sfsr.training import parts
from sfsr.training.classifier import CLASSIFIER_DEFAULTS
from sfsr.training.data import ManifestPatchDataset, select_training_images, to_rgb, whole_image_lr_patch
from sfsr.training.loop import train
from sfsr.training.lr_head import load_lr_classifier, lr_eval_sizes
from sfsr.training.settings import resolve_config, stage_weights

SPEC = {"source": "builtin", "layout": "builtin_classes", "images": ["brick", "grass", "gravel"],
        "hr_size": 32, "samples_per_class": 8, "split": {"val_fraction": 0.25, "test_fraction": 0.25}}
KWARGS = {"num_blocks": 1, "num_features": 8}


def cfg_for(**over) -> dict:
    cfg = dict(arch="edsr_baseline", scale=2, kwargs=dict(KWARGS), iterations=4, batch_size=2,
               lr_patch=None, lr=1e-3, log_every=1, val_every=1000, checkpoint_every=2, num_workers=0,
               ema_decay=0.9, loss_preset="srgan", cache_mb=64)
    cfg.update(over)
    return cfg


SEMANTIC = dict(loss_weights={"pixel": 1.0, "perceptual": 0.1, "adversarial": 1e-3, "semantic_kl": 1.0},
                perceptual={"net": "classifier", "layer": "layer1", "weights": None},
                semantic={"feature_layers": ["layer1"], "feature_weight": 0.5},
                discriminator={"arch": "vgg", "kwargs": {"num_features": 4, "dense_features": 16}})


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the test machine's cores are shared


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """The classification set, its classifier.pt and a warm-up generator.pt."""
    root = tmp_path_factory.mktemp("semantic")
    data = root / "prepared" / "textures"
    frame = prepare_dataset("textures", SPEC, None, data)
    assert set(frame["split"]) == {"train", "val", "test"}
    torch.manual_seed(0)
    clf = build_classifier("resnet18", 3, weights=None)
    images = torch.stack([torch.from_numpy(to_rgb(np.array(Image.open(data / f)))).permute(2, 0, 1)
                          for f in frame["file"]]).float() / 255
    clf.train()
    with torch.no_grad():
        clf(images)  # sane BN statistics
    cfg = {**CLASSIFIER_DEFAULTS, "arch": "resnet18", "weights": None, "input_size": 32}
    io.torch_save(root / "classifier.pt", checkpoint_dict(clf.eval(), cfg, [0, 1, 2],
                                                          ["brick", "grass", "gravel"]))
    gen = build_generator("edsr_baseline", 2, **KWARGS)
    save_generator(root / "warmup.pt", gen, generator_spec("edsr_baseline", 2, **KWARGS))
    return {"root": root, "data": data, "hr": data / "HR", "classifier": root / "classifier.pt",
            "warm": root / "warmup.pt"}


def _kw(setup, **over) -> dict:
    kw = dict(train_hr_dirs=[setup["hr"]], valid_hr_dirs=[setup["hr"]], device="cpu", seed=0,
              init_checkpoint=setup["warm"], classifier_checkpoint=setup["classifier"])
    kw.update(over)
    return kw


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same(a: dict, b: dict, atol: float = 0.0) -> None:
    assert set(a) == set(b)
    for key, value in a.items():
        assert torch.allclose(value.float(), b[key].float(), atol=atol), key


@pytest.fixture(scope="module")
def semantic_run(setup) -> Path:
    """An uninterrupted 4-iteration semantic run (all terms on)."""
    out = setup["root"] / "semantic_straight"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests comparing with it (float sums depend on threads)
    try:
        train("semantic", cfg_for(**SEMANTIC), out_dir=out, **_kw(setup))
    finally:
        torch.set_num_threads(threads)
    return out


# ---------------------------------------------------------------------------- settings, data
def test_config_checks_and_stage_weights(setup, tmp_path) -> None:
    base = cfg_for()
    with pytest.raises(ConfigError, match="classifier_checkpoint"):
        train("semantic", base, out_dir=tmp_path / "a", **_kw(setup, classifier_checkpoint=None))
    with pytest.raises(ConfigError, match="init_checkpoint"):
        train("shared", base, out_dir=tmp_path / "b", **_kw(setup, init_checkpoint=None))
    with pytest.raises(ConfigError, match="shared.mode"):
        resolve_config({**base, "shared": {"mode": "labels"}})
    with pytest.raises(ConfigError, match="semantic.*unknown key"):
        resolve_config({**base, "semantic": {"temprature": 2.0}})
    with pytest.raises(ConfigError, match="semantic.temperature"):
        resolve_config({**base, "semantic": {"temperature": 0}})
    with pytest.raises(ConfigError, match=r"\['shared_cls'\] do not belong to the gan stage"):
        stage_weights("gan", resolve_config({**base, "loss_weights": {"shared_cls": 1.0}}))
    with pytest.raises(ConfigError, match="semantic"):
        train("semantic", cfg_for(semantic={"feature_layers": ["layer9"], "feature_weight": 1.0},
                                  loss_weights={"pixel": 1.0, "perceptual": 0.0}),
              out_dir=tmp_path / "c", **_kw(setup))
    # semantic: preset weights + the prior; shared: pixel + shared_cls; zeros are left out
    sem = stage_weights("semantic", resolve_config({**base, "loss_weights": {"perceptual": 0}}))
    assert sem == {"adversarial": 1e-3, "semantic_kl": 0.1}  # srgan: pixel weight 0
    assert stage_weights("shared", resolve_config(base)) == {"pixel": 1.0, "shared_cls": 0.1}
    feat = resolve_config({**base, "semantic": {"feature_layers": ["layer1"], "feature_weight": 0.5}})
    assert stage_weights("semantic", feat)["semantic_feat"] == 1.0


def test_split_selection_labels_and_whole_image_patches(setup, tmp_path) -> None:
    frame = pd.read_csv(setup["data"] / "manifest.csv", dtype={"stem": str})
    keep, labels = select_training_images([setup["hr"]], "train", {0: 0, 1: 1, 2: 2})
    train_stems = set(frame.loc[frame["split"] == "train", "stem"])
    assert {p.stem for p in keep} == train_stems and len(train_stems) < len(frame)
    assert whole_image_lr_patch([setup["hr"]], 2, keep) == 16  # 32 px crops at x2: the whole image
    ds = ManifestPatchDataset([setup["hr"]], 2, 16, keep=keep, labels=labels, length=12, seed=0,
                              augment=False)
    class_of = dict(zip(frame["stem"], frame["class_id"]))
    pixels = {p.stem: to_rgb(np.array(Image.open(p))) for p in ds.files}
    for k in range(12):
        item = ds[k]
        patch = item["hr"].permute(1, 2, 0).numpy()
        (stem,) = [s for s, img in pixels.items() if np.array_equal(img, patch)]  # whole image
        assert int(item["label"]) == class_of[stem]
    # a folder without a manifest: every image, no restriction
    plain = tmp_path / "plain" / "HR"
    plain.mkdir(parents=True)
    (plain / "a.png").symlink_to(next(setup["hr"].iterdir()))
    assert select_training_images([plain], "train") == (None, None)


def test_stages_on_the_classification_set_flip_only_horizontally(setup) -> None:
    """augment auto: horizontal flips only (what the classifier was trained with) for the stages on
    the classification set, flips and rotations for the others; the sample's crop is the same."""
    assert resolve_config(cfg_for(), "semantic")["augment"] == "hflip"
    assert resolve_config(cfg_for(), "shared_control")["augment"] == "hflip"
    assert resolve_config(cfg_for(), "warmup")["augment"] == "dihedral"
    assert resolve_config(cfg_for(augment="none"), "semantic")["augment"] == "none"
    with pytest.raises(ConfigError, match="augment"):
        resolve_config(cfg_for(augment="rotate"), "semantic")
    kw = dict(length=64, seed=0)
    plain, hflip, dihedral = (ManifestPatchDataset([setup["hr"]], 2, 8, keep=None, augment=a, **kw)
                              for a in ("none", "hflip", "dihedral"))
    flipped = other = 0
    for k in range(64):
        base, h, d = plain[k]["hr"], hflip[k]["hr"], dihedral[k]["hr"]
        assert torch.equal(h, base) or torch.equal(h, base.flip(-1))
        flipped += not torch.equal(h, base)
        other += not (torch.equal(d, base) or torch.equal(d, base.flip(-1)))
    assert flipped > 10 and other > 10  # both modes do flip; only dihedral rotates / flips vertically


def test_logged_total_is_the_weighted_sum_of_the_logged_terms(semantic_run) -> None:
    """train_log.csv's g_total (the loss the optimiser stepped on) equals sum(weight * term) of the
    logged terms on every row, and every weighted term contributes (none is dropped or overwritten)."""
    weights = stage_weights("semantic", resolve_config(cfg_for(**SEMANTIC), "semantic"))
    assert set(weights) == {"pixel", "perceptual", "adversarial", "semantic_kl", "semantic_feat"}
    log = pd.read_csv(semantic_run / "train_log.csv").dropna(subset=["g_total"])
    assert len(log) == 4
    parts = pd.DataFrame({t: w * log[t] for t, w in weights.items()})
    assert np.allclose(log["g_total"], parts.sum(axis=1), rtol=1e-5, atol=1e-7)
    for term in weights:  # leaving any one term out would not match
        assert (parts[term].abs() > 1e-4 * log["g_total"].abs()).all(), term


# ----------------------------------------------------------------------------- semantic stage
def test_semantic_stage_starts_from_warmup_keeps_the_classifier_frozen_and_resumes(
        setup, semantic_run, tmp_path, monkeypatch) -> None:
    priors = []
    real = parts.load_semantic_prior

    def spy(*args, **kwargs):
        priors.append(real(*args, **kwargs))
        return priors[-1]

    monkeypatch.setattr(parts, "load_semantic_prior", spy)
    out = tmp_path / "sem"
    cfg = cfg_for(**SEMANTIC)
    at_zero = _state(train("semantic", cfg, out_dir=out, max_iterations=0, **_kw(setup)))
    warm = _state(setup["warm"])["state_dict"]
    _assert_same({k: at_zero["generator"][k] for k in warm}, warm)  # starts from the warm-up
    stopped = train("semantic", cfg, out_dir=out, max_iterations=2, **_kw(setup))
    assert _state(stopped)["iteration"] == 2 and not (out / "generator.pt").exists()
    final = train("semantic", cfg, out_dir=out, **_kw(setup))
    assert final == out / "generator.pt"

    logged = pd.read_csv(out / "train_log.csv")
    # iteration 0: the validation of the starting (warm-up) weights, no losses yet
    assert logged["iteration"].tolist() == [0, 1, 2, 3, 4]
    assert logged["val_psnr_y"].notna().iloc[0] and logged["pixel"].isna().iloc[0]
    logged = logged[logged["iteration"] > 0]
    assert {"pixel", "perceptual", "adversarial", "semantic_kl", "semantic_feat", "g_total",
            "d_loss"} <= set(logged.columns)
    assert np.isfinite(logged[["semantic_kl", "semantic_feat"]].to_numpy()).all()
    assert (logged["semantic_kl"] > 0).all()
    assert logged["val_psnr_y"].notna().iloc[-1]
    end = _state(out / "state" / "last.pt")
    assert any(not torch.equal(end["generator"][k], v) for k, v in warm.items())
    # interrupted (0, 2, then 4) ends where the uninterrupted run ends
    _assert_same(end["generator"], _state(semantic_run / "state" / "last.pt")["generator"], atol=1e-6)

    # the frozen prior holds the checkpoint's weights and BN statistics, unchanged by training
    saved = _state(setup["classifier"])["state_dict"]
    assert priors
    for prior in priors:
        assert not prior.classifier.training
        assert all(not p.requires_grad for p in prior.classifier.parameters())
        _assert_same(prior.classifier.state_dict(), saved)
    prov = yaml.safe_load((out / "provenance.json").read_text())
    assert prov["semantic"]["labels_used"] is False
    assert prov["semantic"]["classifier_input_size"] == 32


def test_semantic_stage_reads_no_labels(setup, semantic_run, tmp_path) -> None:
    """Same images, manifest without class_id/class_name: the result is identical."""
    copy = tmp_path / "prepared" / "nolabels"
    (copy / "HR").mkdir(parents=True)
    for p in setup["hr"].iterdir():
        (copy / "HR" / p.name).symlink_to(p)
    frame = pd.read_csv(setup["data"] / "manifest.csv", dtype={"stem": str})
    frame.drop(columns=["class_id", "class_name"]).to_csv(copy / "manifest.csv", index=False)
    out = tmp_path / "sem"
    train("semantic", cfg_for(**SEMANTIC), out_dir=out,
          **_kw(setup, train_hr_dirs=[copy / "HR"], valid_hr_dirs=[copy / "HR"]))
    _assert_same(_state(out / "generator.pt")["state_dict"],
                 _state(semantic_run / "generator.pt")["state_dict"])


# ------------------------------------------------------------------------------- shared stage
def _encoder_names(model: torch.nn.Module) -> set[str]:
    x = torch.rand(1, 3, 8, 8)
    model.zero_grad()
    model.encode(x).sum().backward()
    names = {n for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return names


def test_shared_stage_trains_the_encoder_and_writes_a_usable_lr_head(setup, tmp_path) -> None:
    out = tmp_path / "shared"
    cfg = cfg_for(iterations=3, ema_decay=None, loss_weights={"pixel": 0.0, "shared_cls": 1.0})
    path = train("shared", cfg, out_dir=out, **_kw(setup))
    warm = _state(setup["warm"])["state_dict"]
    trained = _state(path)["state_dict"]
    gen = build_generator("edsr_baseline", 2, **KWARGS)
    encoder = _encoder_names(gen)
    params = {n for n, _ in gen.named_parameters()}
    assert encoder and encoder < params
    for name in params:
        changed = not torch.equal(trained[name], warm[name])
        # only the classification loss is on: it moves every encoder weight and nothing else
        assert changed == (name in encoder), name

    logged = pd.read_csv(out / "train_log.csv")
    assert {"shared_cls", "g_total", "val_head_top1"} <= set(logged.columns)
    assert "pixel" not in logged.columns and "d_loss" not in logged.columns
    top1 = logged["val_head_top1"].dropna()  # iteration 0 (untrained head) and the end
    assert len(top1) == 2 and all(0.0 <= v <= 1.0 for v in top1)

    head = _state(out / "lr_head.pt")
    assert head["in_features"] == 8 and head["num_classes"] == 3 and head["class_ids"] == [0, 1, 2]
    # LR view = the classifier's 32 px crop of a 37 px short side, divided by the scale
    assert (head["input_size"], head["resize_size"]) == lr_eval_sizes(32, 37, 2) == (16, 18)
    _assert_same(head["state_dict"], _state(out / "state" / "last.pt")["head"])  # no EMA here
    model = load_lr_classifier(out / "generator.pt", out / "lr_head.pt")
    lr = torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        logits = model(lr)
    assert logits.shape == (5, 3)

    # classification_accuracy on a folder of LR images: the head sees LR-size inputs
    frame = pd.read_csv(setup["data"] / "manifest.csv", dtype={"stem": str})
    test = frame[frame["split"] == "test"]
    lr_dir = tmp_path / "LR"
    for stem in test["stem"]:
        hr = np.asarray(Image.open(setup["hr"] / f"{stem}.png"))
        io.save_image(lr_dir / f"{stem}.png", imresize(hr, 1 / 2))
    shapes = []
    model.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    _, meta = load_classifier(setup["classifier"])
    acc = classification_accuracy(model, lr_dir, manifest=test, class_to_index=meta["class_to_index"],
                                  input_size=model.input_size, resize_size=model.resize_size,
                                  normalize=False)
    assert acc["n"] == len(test) and 0.0 <= acc["top1"] <= 1.0
    assert shapes and all(s[1:] == (3, 16, 16) for s in shapes)


def test_a_deeper_lr_head_is_trained_saved_and_loaded(setup, tmp_path) -> None:
    """shared.head_hidden adds hidden layers to the head; lr_head.pt records them, so the saved head
    is loaded with the same layers and gives the trained head's logits."""
    with pytest.raises(ConfigError, match="head_hidden"):
        resolve_config(cfg_for(shared={"head_hidden": [0]}))
    out = tmp_path / "deep"
    train("shared", cfg_for(iterations=2, ema_decay=None, shared={"head_hidden": [12, 6]}), out_dir=out,
          **_kw(setup))
    saved = _state(out / "lr_head.pt")
    assert saved["hidden"] == [12, 6]
    assert [tuple(v.shape) for k, v in saved["state_dict"].items() if k.endswith("weight")] == [
        (12, 8), (6, 12), (3, 6)]
    model = load_lr_classifier(out / "generator.pt", out / "lr_head.pt")
    trained = _state(out / "state" / "last.pt")["head"]
    _assert_same(model.head.state_dict(), trained)
    lr = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        pooled = model.generator.encode(lr).mean(dim=(2, 3))
        h = torch.relu(pooled @ trained["mlp.0.weight"].T + trained["mlp.0.bias"])
        h = torch.relu(h @ trained["mlp.2.weight"].T + trained["mlp.2.bias"])
        expected = h @ trained["fc.weight"].T + trained["fc.bias"]
        assert torch.allclose(model(lr), expected, atol=1e-5)


def test_shared_label_mode_needs_a_manifest_and_uses_it(setup, tmp_path) -> None:
    plain = tmp_path / "plain" / "HR"
    plain.mkdir(parents=True)
    for p in sorted(setup["hr"].iterdir())[:6]:
        (plain / p.name).symlink_to(p)
    cfg = cfg_for(iterations=2, shared={"mode": "label"})
    with pytest.raises(ConfigError, match="'label' needs true class labels.*manifest.csv"):
        train("shared", cfg, out_dir=tmp_path / "nolabels", **_kw(setup, train_hr_dirs=[plain]))
    out = train("shared", cfg, out_dir=tmp_path / "labels", **_kw(setup))
    prov = yaml.safe_load((tmp_path / "labels" / "provenance.json").read_text())
    assert out.is_file() and prov["semantic"]["labels_used"] is True


def test_shared_stage_resumes(setup, tmp_path, caplog) -> None:
    cfg = cfg_for(iterations=3, checkpoint_every=1)
    a, b = tmp_path / "a", tmp_path / "b"
    train("shared", cfg, out_dir=a, max_iterations=1, **_kw(setup))
    assert not (a / "lr_head.pt").exists()
    with caplog.at_level(logging.INFO, logger="sfsr.training"):
        train("shared", cfg, out_dir=a, **_kw(setup))
    assert "resuming shared training" in caplog.text
    assert pd.read_csv(a / "train_log.csv")["iteration"].tolist() == [0, 1, 2, 3]  # 0: validation
    train("shared", cfg, out_dir=b, **_kw(setup))
    sa, sb = _state(a / "state" / "last.pt"), _state(b / "state" / "last.pt")
    assert sa["iteration"] == sb["iteration"] == 3
    _assert_same(sa["generator"], sb["generator"], atol=1e-6)
    _assert_same(sa["head"], sb["head"], atol=1e-6)
    _assert_same(_state(a / "lr_head.pt")["state_dict"], _state(b / "lr_head.pt")["state_dict"], atol=1e-6)
    # another classifier is another run: the state is not continued
    other = tmp_path / "other.pt"
    ckpt = _state(setup["classifier"])
    ckpt["state_dict"] = {k: (v + 0.01 if v.is_floating_point() else v)
                          for k, v in ckpt["state_dict"].items()}
    io.torch_save(other, ckpt)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sfsr.training"):
        train("shared", cfg, out_dir=a, max_iterations=1, **_kw(setup, classifier_checkpoint=other))
    assert "starting afresh" in caplog.text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_semantic_and_shared_stages_on_cuda_with_speed_flags(setup, tmp_path) -> None:
    for stage, extra in (("semantic", SEMANTIC), ("shared", {"shared": {"mode": "soft"}})):
        cfg = cfg_for(iterations=2, bf16=True, channels_last=True, **extra)
        out = train(stage, cfg, out_dir=tmp_path / stage, **_kw(setup, device="cuda"))
        logged = pd.read_csv(tmp_path / stage / "train_log.csv")
        assert out.is_file() and np.isfinite(logged["g_total"]).all()
    assert load_lr_classifier(tmp_path / "shared" / "generator.pt", tmp_path / "shared" / "lr_head.pt",
                              "cuda")(torch.rand(2, 3, 16, 16, device="cuda")).shape == (2, 3)
