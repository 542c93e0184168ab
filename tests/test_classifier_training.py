"""Tests for sfsr.training.classifier on a tiny real prepared classification set: 3 classes of crops
of distinct builtin texture photos (skimage brick, grass, gravel), made with
sfsr.data.prepare.prepare_dataset (layout builtin_classes). resnet18 from scratch at input_size 32."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from sfsr.classification import classification_accuracy
from sfsr.data.prepare import prepare_dataset
from sfsr.errors import ConfigError, DataError
from sfsr.models.classifier import load_classifier
from sfsr.training.classifier import LOG_COLUMNS, read_class_manifest, resolve_classifier_config, train_classifier

SPEC = {"source": "builtin", "layout": "builtin_classes", "images": ["brick", "grass", "gravel"],
        "hr_size": 48, "samples_per_class": 16,
        "split": {"val_fraction": 0.25, "test_fraction": 0.25}}
BASE = {"arch": "resnet18", "weights": None, "input_size": 32, "num_workers": 0, "optimizer": "adamw",
        "lr": 1e-3, "weight_decay": 0.01}


@pytest.fixture(scope="module")
def texture_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("textures") / "prepared" / "textures"
    frame = prepare_dataset("textures", SPEC, None, folder)
    assert set(frame["split"]) == {"train", "val", "test"}
    return folder


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the test machine's cores are shared


def test_manifest_labels_are_contiguous_indices_of_sorted_class_ids(tmp_path, texture_set) -> None:
    frame = pd.read_csv(texture_set / "manifest.csv")
    frame["class_id"] = frame["class_id"].map({0: 7, 1: 3, 2: 12})  # non-contiguous ids
    folder = tmp_path / "remapped"
    (folder / "HR").mkdir(parents=True)
    for f in frame["file"]:
        (folder / f).symlink_to(texture_set / f)
    frame.to_csv(folder / "manifest.csv", index=False)
    out, class_ids, class_names = read_class_manifest(folder)
    assert class_ids == [3, 7, 12]
    assert class_names == ["grass", "brick", "gravel"]
    assert out["label"].tolist() == out["class_id"].map({3: 0, 7: 1, 12: 2}).tolist()


@pytest.mark.slow
def test_train_classifier_learns_above_chance_and_matches_evaluation(tmp_path, texture_set) -> None:
    out = tmp_path / "clf"
    cfg = {**BASE, "batch_size": 4, "epochs": 6}
    path = train_classifier(cfg, dataset_dir=texture_set, out_dir=out, seed=0)
    assert path == out / "classifier.pt"
    log = pd.read_csv(out / "train_log.csv")
    assert list(log.columns) == LOG_COLUMNS and log["epoch"].tolist() == list(range(1, 7))
    assert log["train_loss"].iloc[-1] < log["train_loss"].iloc[0]
    assert log["lr"].iloc[-1] < log["lr"].iloc[0]  # cosine schedule
    assert (out / "provenance.json").is_file()

    model, meta = load_classifier(path)
    best = log.loc[log["val_top1"].idxmax()]
    assert meta["val_top1"] == pytest.approx(best["val_top1"]) and meta["epoch"] == best["epoch"]
    assert meta["val_top1"] > 1 / 3, "a few epochs on three distinct textures beat chance"
    assert meta["class_ids"] == [0, 1, 2] and meta["class_names"] == ["brick", "grass", "gravel"]
    assert meta["arch"] == {"name": "resnet18", "num_classes": 3, "input_size": 32}

    # the checkpoint, evaluated by the evaluation stage's code on the val images, gives the same
    # top-1 that training recorded (same preprocessing, same weights: the best epoch's)
    frame = pd.read_csv(texture_set / "manifest.csv", dtype={"stem": str})
    val = frame[frame["split"] == "val"]
    acc = classification_accuracy(model, texture_set / "HR", manifest=val, input_size=32,
                                  resize_size=meta["resize_size"], class_to_index=meta["class_to_index"])
    assert acc["n"] == len(val)
    assert acc["top1"] == pytest.approx(meta["val_top1"], abs=1e-6)


def test_resume_continues_from_the_saved_epoch_and_ends_like_an_uninterrupted_run(tmp_path,
                                                                                   texture_set) -> None:
    cfg = {**BASE, "batch_size": 8, "epochs": 2}
    straight = train_classifier(cfg, dataset_dir=texture_set, out_dir=tmp_path / "a", seed=3)

    stopped = train_classifier(cfg, dataset_dir=texture_set, out_dir=tmp_path / "b", seed=3, max_epochs=1)
    assert stopped == tmp_path / "b" / "state" / "last.pt"
    assert not (tmp_path / "b" / "classifier.pt").exists()
    state = torch.load(stopped, weights_only=True)
    assert state["epoch"] == 1
    first_row = pd.read_csv(tmp_path / "b" / "train_log.csv")
    assert first_row["epoch"].tolist() == [1]

    resumed = train_classifier(cfg, dataset_dir=texture_set, out_dir=tmp_path / "b", seed=3)
    log_a = pd.read_csv(tmp_path / "a" / "train_log.csv")
    log_b = pd.read_csv(tmp_path / "b" / "train_log.csv")
    assert log_b["epoch"].tolist() == [1, 2]
    assert log_b["train_loss"].iloc[0] == first_row["train_loss"].iloc[0]  # epoch 1 not redone
    cols = ["epoch", "train_loss", "val_top1", "val_top5", "lr"]
    pd.testing.assert_frame_equal(log_a[cols], log_b[cols])
    a = torch.load(straight, weights_only=True)
    b = torch.load(resumed, weights_only=True)
    assert a["epoch"] == b["epoch"]
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0, msg=key)

    # a state made for another model is not continued (the workflow reruns the job when its
    # settings change): that run starts afresh and replaces it
    train_classifier({**cfg, "input_size": 40}, dataset_dir=texture_set, out_dir=tmp_path / "b")
    state = torch.load(tmp_path / "b" / "state" / "last.pt", weights_only=True)
    assert state["spec"]["input_size"] == 40 and state["epoch"] == 2


def test_the_classifier_trains_exactly_as_a_plain_loop_written_out_here(tmp_path, texture_set) -> None:
    """The shared machinery (sfsr.training.runner, parts.make_optimizer/make_scheduler, speed.place)
    changes nothing a run computes: the weights after the last epoch and each epoch's logged loss
    equal, bit for bit, those of the loop written out by hand below (same seeding, model construction,
    optimiser, schedule, data order and augmentation)."""
    from torch.utils.data import DataLoader

    from sfsr import provenance
    from sfsr.models import build_classifier
    from sfsr.tensors import to_float
    from sfsr.training.classifier import _epoch_seed, _split_set, train_transform

    cfg = {**BASE, "batch_size": 8, "epochs": 2, "bf16": False, "channels_last": False}
    train_classifier(cfg, dataset_dir=texture_set, out_dir=tmp_path / "clf", seed=5)
    trained = torch.load(tmp_path / "clf" / "state" / "last.pt", weights_only=True)["model"]
    logged = pd.read_csv(tmp_path / "clf" / "train_log.csv")["train_loss"].tolist()

    full = resolve_classifier_config(cfg)
    provenance.seed_everything(5)
    frame, class_ids, _ = read_class_manifest(texture_set)
    train_set = _split_set(frame, texture_set, "train", train_transform(full["input_size"]))
    assert len(train_set) % 8 != 1  # no batch is dropped
    model = build_classifier(full["arch"], len(class_ids), weights=None).train()
    opt = torch.optim.AdamW(model.parameters(), lr=full["lr"], betas=tuple(full["betas"]),
                            weight_decay=full["weight_decay"])
    steps = -(-len(train_set) // 8)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=2 * steps, eta_min=full["eta_min"])
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=full["label_smoothing"])
    for epoch in (1, 2):
        epoch_seed = _epoch_seed(5, epoch)
        torch.manual_seed(epoch_seed)
        losses = []
        for images, labels in DataLoader(train_set, batch_size=8, shuffle=True,
                                         generator=torch.Generator().manual_seed(epoch_seed)):
            loss = criterion(model(to_float(images, torch.device("cpu"))).float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.detach())
        assert float(torch.stack(losses).float().mean()) == logged[epoch - 1], epoch
    assert set(trained) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(trained[key], value), key


@pytest.mark.parametrize("prev_good", [True, False])
def test_corrupt_resume_state_never_wedges_the_job(tmp_path, texture_set, caplog, prev_good) -> None:
    """A truncated state/last.pt: resume from prev.pt (the epoch before) or, without one, start
    afresh; either way the result equals an uninterrupted run's."""
    cfg = {**BASE, "batch_size": 8, "epochs": 3}
    straight = train_classifier(cfg, dataset_dir=texture_set, out_dir=tmp_path / "a", seed=3)
    train_classifier(cfg, dataset_dir=texture_set, out_dir=tmp_path / "b", seed=3,
                     max_epochs=2 if prev_good else 1)
    last = tmp_path / "b" / "state" / "last.pt"
    raw = last.read_bytes()
    last.write_bytes(raw[: len(raw) // 3])
    assert (last.with_name("prev.pt")).is_file() == prev_good
    with caplog.at_level("WARNING"):
        resumed = train_classifier(cfg, dataset_dir=texture_set, out_dir=tmp_path / "b", seed=3)
    assert ("previous good state" if prev_good else "starting afresh") in caplog.text
    a, b = torch.load(straight, weights_only=True), torch.load(resumed, weights_only=True)
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0, msg=key)


def test_bad_settings_and_data_raise_user_errors(tmp_path, texture_set) -> None:
    with pytest.raises(ConfigError, match="optimiser"):
        resolve_classifier_config({"optimiser": "sgd"})
    with pytest.raises(ConfigError, match="arch"):
        resolve_classifier_config({"arch": "resnet9"})
    with pytest.raises(ConfigError, match="resize_size"):
        resolve_classifier_config({"input_size": 64, "resize_size": 32})
    with pytest.raises(ConfigError, match=r"\['threads'\] are the workflow's job resources"):
        resolve_classifier_config({"threads": 2})  # in the schema's classifier section, not a training setting
    with pytest.raises(DataError, match="manifest.csv"):
        train_classifier(BASE, dataset_dir=tmp_path / "nowhere", out_dir=tmp_path / "o")
    frame = pd.read_csv(texture_set / "manifest.csv")
    folder = tmp_path / "noval"
    (folder / "HR").mkdir(parents=True)
    frame.loc[frame["split"] == "val", "split"] = "train"
    frame.to_csv(folder / "manifest.csv", index=False)
    for f in frame["file"]:
        (folder / f).symlink_to(texture_set / f)
    with pytest.raises(DataError, match="val split is empty"):
        train_classifier(BASE, dataset_dir=folder, out_dir=tmp_path / "o")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_train_classifier_on_cuda_with_bf16_and_channels_last(tmp_path, texture_set) -> None:
    cfg = {**BASE, "batch_size": 8, "epochs": 1, "bf16": True, "channels_last": True}
    path = train_classifier(cfg, dataset_dir=texture_set, out_dir=tmp_path / "gpu", device="cuda")
    prov = json.loads((tmp_path / "gpu" / "provenance.json").read_text())
    assert prov["speed_flags"] == {"bf16": True, "channels_last": True}
    model, meta = load_classifier(path, "cuda")
    assert next(model.parameters()).is_cuda and 0 <= meta["val_top1"] <= 1


@pytest.mark.slow
def test_lr_baseline_fine_tunes_the_classifier_on_other_images(tmp_path, texture_set) -> None:
    """The LR classification baseline: init_checkpoint's weights are the starting point (with lr
    tiny and one epoch the result stays next to them; from scratch it does not), image_dir's images
    (here bicubic x4-degraded copies, matched by stem) are what it trains and is tested on, and a
    classifier of other classes is refused."""
    import numpy as np
    from PIL import Image

    from sfsr import io
    from sfsr.data.bicubic import imresize

    base = train_classifier({**BASE, "batch_size": 8, "epochs": 2}, dataset_dir=texture_set,
                            out_dir=tmp_path / "hr", seed=0)
    blurred = tmp_path / "bicubic"
    for path in sorted((texture_set / "HR").iterdir()):
        hr = np.asarray(Image.open(path).convert("RGB"))
        io.save_image(blurred / f"{path.stem}.png", imresize(imresize(hr, 1 / 4), 4.0))
    tiny = {**BASE, "batch_size": 8, "epochs": 1, "lr": 1e-7}
    tuned = train_classifier(tiny, dataset_dir=texture_set, out_dir=tmp_path / "lr", seed=0,
                             image_dir=blurred, init_checkpoint=base)
    scratch = train_classifier(tiny, dataset_dir=texture_set, out_dir=tmp_path / "scratch", seed=1,
                               image_dir=blurred)  # another seed: another random start
    start = torch.load(base, weights_only=True)["state_dict"]
    after = torch.load(tuned, weights_only=True)["state_dict"]
    fresh = torch.load(scratch, weights_only=True)["state_dict"]
    w = next(k for k, v in start.items() if k.endswith("weight") and v.ndim == 4)  # the first conv
    assert torch.allclose(after[w], start[w], atol=1e-4) and not torch.allclose(fresh[w], start[w], atol=1e-2)
    meta = torch.load(tuned, weights_only=True)
    assert meta["images"] == str(blurred) and meta["weights_init"] == str(base)
    # its recorded test accuracy is on the blurred images, not on HR
    model, _ = load_classifier(tuned)
    frame = pd.read_csv(texture_set / "manifest.csv", dtype={"stem": str})
    test = frame[frame["split"] == "test"]
    _, m = load_classifier(base)
    on_blur = classification_accuracy(model, blurred, manifest=test, input_size=32,
                                      resize_size=m["resize_size"], class_to_index=m["class_to_index"])
    assert meta["test_top1"] == pytest.approx(on_blur["top1"], abs=1e-6)
    # a classifier of other classes cannot be the starting point
    other = tmp_path / "other"
    (other / "HR").mkdir(parents=True)
    remapped = frame.assign(class_id=frame["class_id"] + 10)
    for f in remapped["file"]:
        (other / f).symlink_to(texture_set / f)
    remapped.to_csv(other / "manifest.csv", index=False)
    with pytest.raises(DataError, match="does not fit"):
        train_classifier(tiny, dataset_dir=other, out_dir=tmp_path / "bad", init_checkpoint=base,
                         image_dir=blurred)
