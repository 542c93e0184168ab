"""Training of the fine-grained HR classifier that later serves as the semantic prior of SR training
and as the frozen judge of classification accuracy on HR / bicubic / SR images.

``train_classifier(cfg, dataset_dir=..., out_dir=...)`` trains a :func:`sfsr.models.build_classifier`
model on a prepared classification set (``dataset_dir/HR/<stem>.png`` + ``manifest.csv`` with
``class_id`` and ``split``) and writes to ``out_dir``:

* ``state/last.pt``: model, optimiser, scheduler, epoch, best metric and log rows after every epoch
  (atomic); a later call with the same ``out_dir`` resumes from it. ``state/best.pt``: the
  classifier checkpoint of the epoch with the best validation top-1 so far.
* ``train_log.csv``: epoch, train_loss, val_top1, val_top5, lr, elapsed_s.
* ``provenance.json`` and, written last, ``classifier.pt`` (the best epoch; see
  :func:`sfsr.models.classifier.checkpoint_dict` for its contents), loaded with
  :func:`sfsr.models.classifier.load_classifier`.

Augmentation: ``RandomResizedCrop(input_size, scale=(0.5, 1))`` + horizontal flip for training; resize
of the short side to ``resize_size`` (default ``round(input_size * 256 / 224)``) + centre crop for
validation/test, which is the preprocessing of :func:`sfsr.classification.classification_accuracy`.
Labels: the manifest's ``class_id`` values, sorted, mapped to contiguous indices ``0..C-1``; the
list ``class_ids`` (index -> class_id) is stored in the checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from sfsr import io, provenance, schema
from sfsr.data.images import images_by_stem, read_image, to_rgb
from sfsr.data.manifest import class_index
from sfsr.errors import ConfigError, DataError
from sfsr.metrics import topk_accuracy
from sfsr.models import build_classifier, count_parameters
from sfsr.models.classifier import checkpoint_dict, eval_transform, read_classifier_checkpoint
from sfsr.tensors import eval_mode, resolve_device, to_float
from sfsr.training.parts import make_optimizer, make_scheduler
from sfsr.training.runner import NonFinite, Run, begin, check_finite, resumable_state
from sfsr.training.settings import CHECKED_WHEN_APPLIED, check_settings
from sfsr.training.speed import autocast_context, place, speed_flags

log = logging.getLogger("sfsr.training")

STATE_FORMAT = 1
WHAT = "classifier training"
LOG_COLUMNS = ["epoch", "train_loss", "val_top1", "val_top5", "lr", "elapsed_s"]

#: Job resources of the ``classifier`` config section (the workflow's, not the training's settings).
CLASSIFIER_RESOURCES = ("threads", "gpus", "mem_mb", "runtime")
#: Settings of classifier training: the ``classifier`` config section's defaults as config.schema.yaml
#: gives them (its one source), less the job resources. ``weights``: null (from scratch), 'imagenet'
#: (torchvision's DEFAULT weights) or a local .pth path.
CLASSIFIER_DEFAULTS: dict[str, Any] = {k: v for k, v in schema.defaults("#/properties/classifier").items()
                                       if k not in CLASSIFIER_RESOURCES}


# ------------------------------------------------------------------------------------ settings
def resolve_classifier_config(cfg: dict) -> dict:
    """``cfg`` over :data:`CLASSIFIER_DEFAULTS`; unknown keys and values the schema refuses raise
    ConfigError (:func:`sfsr.training.settings.check_settings`), as does a resize_size below input_size."""
    resources = sorted(set(cfg) & set(CLASSIFIER_RESOURCES))
    if resources:  # the schema's classifier section has them, the training does not take them
        raise ConfigError(f"classifier setting(s) {resources} are the workflow's job resources, not training "
                          "settings; leave them out of train_classifier's settings")
    out = {**copy.deepcopy(CLASSIFIER_DEFAULTS), **copy.deepcopy(cfg)}
    check_settings(out, "#/properties/classifier", "classifier setting", skip=CHECKED_WHEN_APPLIED)
    if out["resize_size"] is not None and out["resize_size"] < out["input_size"]:
        raise ConfigError(f"classifier setting 'resize_size' must be null or an integer >= input_size "
                          f"({out['input_size']}), got {out['resize_size']!r}")
    return out


# ------------------------------------------------------------------------------------------ data
def read_class_manifest(dataset_dir: str | os.PathLike) -> tuple[pd.DataFrame, list[int], list[str]]:
    """The manifest of a prepared classification set, with a ``label`` column (contiguous index),
    plus ``class_ids`` (index -> manifest class_id) and ``class_names`` (index -> name)."""
    dataset_dir = Path(dataset_dir)
    path = dataset_dir / "manifest.csv"
    if not path.is_file():
        raise DataError(f"classification manifest {path} not found; prepare the dataset first (it needs "
                        "HR/<stem>.png and manifest.csv)")
    frame = pd.read_csv(path, dtype={"stem": str, "file": str, "class_name": str, "split": str})
    missing = [c for c in ("stem", "class_id", "split") if c not in frame.columns]
    if missing:
        raise DataError(f"{path} lacks the column(s) {missing}; it is not a classification manifest "
                        f"(has {list(frame.columns)})")
    if frame["class_id"].isna().any():
        stems = frame.loc[frame["class_id"].isna(), "stem"].tolist()[:5]
        raise DataError(f"{path}: rows without class_id (e.g. {stems}); is this a classification set?")
    frame["class_id"] = frame["class_id"].astype(np.int64)
    class_ids, class_names = class_index(frame)
    index = {c: i for i, c in enumerate(class_ids)}
    frame["label"] = frame["class_id"].map(index).astype(np.int64)
    if "file" not in frame.columns:
        frame["file"] = [f"HR/{s}.png" for s in frame["stem"]]
    frame["file"] = [f if isinstance(f, str) and f else f"HR/{s}.png"
                     for f, s in zip(frame["file"], frame["stem"])]
    return frame, class_ids, class_names


class ClassificationSet(Dataset):
    """(uint8 CHW RGB tensor after ``transform``, label) for the given image paths."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], transform: nn.Module) -> None:
        self.paths = [Path(p) for p in paths]
        self.labels = [int(v) for v in labels]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = to_rgb(read_image(self.paths[index]))
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        return self.transform(tensor), self.labels[index]


def train_transform(input_size: int) -> nn.Module:
    """RandomResizedCrop(input_size, scale=(0.5, 1)) + horizontal flip (uint8 in, uint8 out)."""
    from torchvision.transforms import v2  # here: SR-only jobs import this module but not torchvision

    return v2.Compose([v2.RandomResizedCrop(input_size, scale=(0.5, 1.0), antialias=True),
                       v2.RandomHorizontalFlip()])


def _split_set(frame: pd.DataFrame, dataset_dir: Path, split: str, transform: nn.Module,
               images: dict[str, Path] | None = None) -> ClassificationSet:
    """The images of ``split``: the manifest's files, or with ``images`` (stem -> path, e.g. the
    bicubic-upscaled LR images of the set) those of the same stems."""
    rows = frame[frame["split"] == split]
    if images is None:
        paths = [dataset_dir / f for f in rows["file"]]
        absent = [str(p) for p in paths if not p.is_file()]
    else:
        absent = [str(s) for s in rows["stem"] if s not in images]
        paths = [images.get(s) for s in rows["stem"]]
    if absent:
        raise DataError(f"{len(absent)} image(s) of the {split} split listed in "
                        f"{dataset_dir / 'manifest.csv'} are missing, e.g. {absent[:3]}; re-run "
                        + ("prepare" if images is None else "the upscale job of these images"))
    return ClassificationSet(paths, rows["label"].tolist(), transform)


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])


@dataclass
class Splits:
    """The train / val / test images of a classification set, its classes and how it is batched."""
    train: ClassificationSet
    val: ClassificationSet
    test: ClassificationSet
    class_ids: list[int]
    class_names: list[str]
    batch_size: int
    drop_last: bool
    steps_per_epoch: int
    loader_kw: dict

    def epoch_batches(self, seed: int, epoch: int) -> DataLoader:
        """The shuffled training batches of ``epoch``: their order and augmentation depend only on
        ``(seed, epoch)``, so a resumed run sees the batches an uninterrupted one does."""
        epoch_seed = _epoch_seed(seed, epoch)
        torch.manual_seed(epoch_seed)  # augmentation in the main process (num_workers 0)
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True, drop_last=self.drop_last,
                          generator=torch.Generator().manual_seed(epoch_seed), **self.loader_kw)

    def batches(self, dataset: Dataset) -> DataLoader:
        """The batches of an evaluation split, in order."""
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, **self.loader_kw)


def read_splits(cfg: dict, dataset_dir: Path, image_dir: str | os.PathLike | None,
                device: torch.device) -> Splits:
    """The splits of the prepared set ``dataset_dir`` (``image_dir``: its images replaced by those of
    the same stems there), with the transforms of training and evaluation; at least 2 training and 1
    validation image."""
    frame, class_ids, class_names = read_class_manifest(dataset_dir)
    resize_size = cfg["resize_size"] or round(cfg["input_size"] * 256 / 224)
    images = images_by_stem(image_dir, what="classifier training image") if image_dir is not None else None
    train_set = _split_set(frame, dataset_dir, "train", train_transform(cfg["input_size"]), images)
    val_set = _split_set(frame, dataset_dir, "val", eval_transform(cfg["input_size"], resize_size), images)
    test_set = _split_set(frame, dataset_dir, "test", eval_transform(cfg["input_size"], resize_size), images)
    if len(train_set) < 2:
        raise DataError(f"{dataset_dir / 'manifest.csv'}: the train split has {len(train_set)} image(s); "
                        "a classifier needs at least 2")
    if len(val_set) == 0:
        raise DataError(f"{dataset_dir / 'manifest.csv'}: the val split is empty; the best epoch is chosen "
                        "on it - set the dataset's split.val_fraction > 0 (or carve_val_from) and re-prepare")
    batch_size = min(cfg["batch_size"], len(train_set))
    drop_last = len(train_set) % batch_size == 1  # a batch of one breaks BatchNorm in training mode
    steps_per_epoch = len(train_set) // batch_size + (0 if drop_last or len(train_set) % batch_size == 0
                                                      else 1)
    loader_kw = dict(num_workers=int(cfg["num_workers"]), pin_memory=device.type == "cuda",
                     persistent_workers=False)
    return Splits(train_set, val_set, test_set, class_ids, class_names, batch_size, drop_last, steps_per_epoch,
                  loader_kw)


# ------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def evaluate_loader(model: nn.Module, loader: DataLoader, device: torch.device,
                    autocast=contextlib.nullcontext, channels_last: bool = False) -> dict[str, float]:
    """Top-1 / top-5 accuracy of ``model`` (eval mode) over a loader of (uint8 images, labels)."""
    logits, labels = [], []
    with eval_mode(model):
        for images, target in loader:
            x = to_float(images, device, channels_last)
            with autocast():
                logits.append(model(x).float().cpu())
            labels.append(torch.as_tensor(target))
    acc = topk_accuracy(torch.cat(logits), torch.cat(labels), ks=(1, 5))
    return {"top1": acc[1], "top5": acc[5], "n": int(sum(len(t) for t in labels))}


# ------------------------------------------------------------------------------------------ main
def train_classifier(cfg: dict, *, dataset_dir: str | os.PathLike, out_dir: str | os.PathLike,
                     device: str = "auto", seed: int = 0, max_epochs: int | None = None,
                     image_dir: str | os.PathLike | None = None,
                     init_checkpoint: str | os.PathLike | None = None) -> Path:
    """Train a classifier on the prepared classification set ``dataset_dir``; returns
    ``out_dir/classifier.pt`` (the epoch with the best validation top-1), or ``out_dir/state/last.pt``
    when stopped early by ``max_epochs`` (resumable, no classifier.pt).

    ``image_dir``: train, select and test on these images instead of the set's HR images, matched by
    stem (e.g. its bicubic-upscaled LR images: the LR classification baseline). ``init_checkpoint``:
    start from that classifier.pt's weights (same classes) instead of ``cfg['weights']``.

    ``cfg``: settings over :data:`CLASSIFIER_DEFAULTS`. ``device='auto'`` defers to
    ``cfg['device']``. bf16 autocast and channels_last as the SR stages' (:mod:`sfsr.training.speed`:
    true = on CUDA, bf16 also on a CPU with native bf16; always = on any device). An existing
    ``out_dir/state/last.pt`` is resumed (epoch granularity; the data order and augmentation of
    epoch ``e`` depend only on ``(seed, e)``, so an interrupted run ends where an uninterrupted one
    would). A non-finite training loss raises SfsrError; the last saved state is kept. Resume,
    speed settings, optimiser, progress and the non-finite stop are the SR stages'
    (:mod:`sfsr.training.runner`)."""
    # ---- prepare: settings, speed flags, seeds, data, model, optimiser, schedule
    cfg = resolve_classifier_config(cfg)
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    state_path, best_path = out_dir / "state" / "last.pt", out_dir / "state" / "best.pt"
    dev = resolve_device(cfg["device"] if device == "auto" else device, "classifier.device")
    flags = speed_flags(cfg, dev, what=WHAT)
    autocast = autocast_context(flags, dev)
    epochs = cfg["epochs"]
    stop = epochs if max_epochs is None else min(epochs, int(max_epochs))
    provenance.seed_everything(seed)
    data = read_splits(cfg, dataset_dir, image_dir, dev)
    model, spec = _classifier_model(cfg, data, dataset_dir, dev, flags, image_dir, init_checkpoint)
    opt = make_optimizer(model.parameters(), cfg, cfg["lr"])
    sched = make_scheduler(opt, cfg, epochs * data.steps_per_epoch)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"])

    # ---- resume: the state of this model on this data, else afresh
    state = resumable_state(state_path, WHAT, {"format": STATE_FORMAT, "spec": spec})
    run = begin(state, state_path, WHAT, "epoch", epochs, LOG_COLUMNS,
                {"val_top1": -math.inf, "val_top5": -math.inf, "epoch": 0})
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])

    run.open_bar(epochs * data.steps_per_epoch, run.start * data.steps_per_epoch, f"classifier {cfg['arch']}")
    try:
        for epoch in range(run.start + 1, stop + 1):
            # ---- batches and steps: one epoch
            lr_now = opt.param_groups[0]["lr"]
            train_loss = _train_epoch(model, opt, sched, criterion, data.epoch_batches(seed, epoch), dev,
                                      flags["channels_last"], autocast, run, epoch)
            # ---- validate: log the epoch, keep the best
            val = evaluate_loader(model, data.batches(data.val), dev, autocast, flags["channels_last"])
            run.add_row({"epoch": epoch, "train_loss": train_loss, "val_top1": val["top1"], "val_top5": val["top5"],
                         "lr": lr_now, "elapsed_s": run.elapsed_s()},
                        {"loss": f"{train_loss:.4g}", "val_top1": f"{val['top1']:.3f}"})
            run.say(f"[classifier] epoch {epoch}/{epochs}: train loss {train_loss:.4f}, val top-1 "
                    f"{val['top1']:.4f}, top-5 {val['top5']:.4f}")
            if val["top1"] > run.best["val_top1"]:
                run.best = {"val_top1": val["top1"], "val_top5": val["top5"], "epoch": epoch}
                io.torch_save(best_path, checkpoint_dict(model, cfg, data.class_ids, data.class_names, **run.best))
            # ---- checkpoint: every epoch
            run.checkpoint(epoch, {"format": STATE_FORMAT, "spec": spec, "epoch": epoch, "epochs": epochs,
                                   "model": model.state_dict(), "optimizer": opt.state_dict(),
                                   "scheduler": sched.state_dict()})
    except NonFinite as exc:
        raise run.non_finite(exc, f"classifier training in {out_dir}", "Lower lr or turn bf16 off") from None
    finally:
        run.close()
    if stop < epochs:
        log.info("stopped at epoch %d of %d (max_epochs); state in %s", stop, epochs, state_path)
        return state_path

    # ---- finish: the best epoch, with its test accuracy (classifier.pt last)
    return _write_outputs(out_dir, cfg, model, data, run, best_path, dev=dev, flags=flags, autocast=autocast,
                          seed=seed, dataset_dir=dataset_dir, image_dir=image_dir, init_checkpoint=init_checkpoint)


def _classifier_model(cfg: dict, data: Splits, dataset_dir: Path, device: torch.device, flags: dict[str, bool],
                      image_dir, init_checkpoint) -> tuple[nn.Module, dict]:
    """The model to train (``cfg['weights']`` or, fine-tuning, ``init_checkpoint``'s weights) on
    ``device``, and its spec: what a state must match to be resumed."""
    model = build_classifier(cfg["arch"], len(data.class_ids), weights=None if init_checkpoint else cfg["weights"])
    if init_checkpoint is not None:
        init = read_classifier_checkpoint(init_checkpoint)
        if init["class_ids"] != data.class_ids or init["arch"]["name"] != cfg["arch"]:
            raise DataError(f"initial classifier {init_checkpoint} ({init['arch']['name']}, classes "
                            f"{init['class_ids'][:5]}...) does not fit {dataset_dir} with arch {cfg['arch']}; "
                            "fine-tune the classifier trained on this set")
        model.load_state_dict(init["state_dict"], strict=True)
    spec = {"arch": cfg["arch"], "num_classes": len(data.class_ids), "input_size": cfg["input_size"],
            "class_ids": data.class_ids}
    if image_dir is not None or init_checkpoint is not None:  # a fine-tuning run (the LR baseline)
        spec.update(images=str(image_dir), init=str(init_checkpoint))
    return place(model, device, flags), spec


def _train_epoch(model: nn.Module, opt: torch.optim.Optimizer, sched: Any, criterion: nn.Module,
                 batches: DataLoader, device: torch.device, channels_last: bool, autocast: Any, run: Run,
                 epoch: int) -> float:
    """One epoch of optimisation steps; returns the mean training loss (a non-finite one raises
    :class:`~sfsr.training.runner.NonFinite`)."""
    model.train()
    losses = []
    for images, labels in batches:
        x = to_float(images, device, channels_last)
        y = labels.to(device, non_blocking=True)
        with autocast():
            loss = criterion(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.detach())
        run.bar.update(1)
    values = torch.stack(losses).float()
    check_finite(values[:, None].cpu().numpy(), ["train_loss"], [epoch] * len(losses))
    return float(values.mean().cpu())


def _write_outputs(out_dir: Path, cfg: dict, model: nn.Module, data: Splits, run: Run, best_path: Path, *,
                   dev: torch.device, flags: dict[str, bool], autocast: Any, seed: int, dataset_dir: Path,
                   image_dir, init_checkpoint) -> Path:
    """train_log.csv, provenance.json and, last, classifier.pt: the best epoch's weights with their
    test accuracy."""
    elapsed = run.elapsed_s()
    best_ckpt = io.torch_load(best_path, "best classifier state", "re-run train_classifier",
                              "delete it and re-run train_classifier")
    model.load_state_dict(best_ckpt["state_dict"])
    test = (evaluate_loader(model, data.batches(data.test), dev, autocast, flags["channels_last"])
            if len(data.test) else {"top1": None, "top5": None, "n": 0})
    io.write_csv(out_dir / "train_log.csv", run.frame())
    provenance.write(out_dir / "provenance.json", config=cfg, seed=seed, dataset_dir=str(dataset_dir),
                     image_dir=None if image_dir is None else str(image_dir),
                     init_checkpoint=None if init_checkpoint is None else str(init_checkpoint),
                     device=str(dev), speed_flags={k: flags[k] for k in ("bf16", "channels_last")},
                     epochs=cfg["epochs"], parameters=count_parameters(model), class_ids=data.class_ids,
                     n_train=len(data.train), n_val=len(data.val), n_test=len(data.test), best=run.best,
                     test_top1=test["top1"], test_top5=test["top5"], training_time_s=elapsed)
    final = {**best_ckpt, "test_top1": test["top1"], "test_top5": test["top5"], "epochs": cfg["epochs"],
             "weights_init": str(init_checkpoint) if init_checkpoint is not None
             else None if cfg["weights"] is None else str(cfg["weights"]),
             "images": "HR" if image_dir is None else str(image_dir),
             "training_time_s": elapsed}
    io.torch_save(out_dir / "classifier.pt", final)
    return out_dir / "classifier.pt"
