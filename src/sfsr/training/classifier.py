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
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from sfsr import io, provenance, schema
from sfsr.data.images import images_by_stem, read_image, to_rgb
from sfsr.errors import ConfigError, DataError, SfsrError
from sfsr.metrics import topk_accuracy
from sfsr.models import build_classifier, count_parameters
from sfsr.models.classifier import checkpoint_dict, eval_transform, read_classifier_checkpoint
from sfsr.tensors import eval_mode, resolve_device, to_float
from sfsr.training.settings import CHECKED_WHEN_APPLIED, check_settings
from sfsr.training.speed import autocast_context, speed_flags
from sfsr.training.state import load_state, save_state

log = logging.getLogger("sfsr.training")

STATE_FORMAT = 1
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
    class_ids = sorted(int(c) for c in frame["class_id"].unique())
    index = {c: i for i, c in enumerate(class_ids)}
    frame["label"] = frame["class_id"].map(index).astype(np.int64)
    names_by_id: dict[int, str] = {}
    if "class_name" in frame.columns:
        for cid, name in zip(frame["class_id"], frame["class_name"]):
            names_by_id.setdefault(int(cid), "" if pd.isna(name) else str(name))
    class_names = [names_by_id.get(c, str(c)) for c in class_ids]
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
    would). A non-finite training loss raises SfsrError; the last saved state is kept."""
    cfg = resolve_classifier_config(cfg)
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    state_path, best_path = out_dir / "state" / "last.pt", out_dir / "state" / "best.pt"
    dev = resolve_device(cfg["device"] if device == "auto" else device, "classifier.device")
    cuda = dev.type == "cuda"
    flags = speed_flags(cfg, dev, what="classifier training")
    bf16, channels_last = flags["bf16"], flags["channels_last"]
    autocast = autocast_context(flags, dev)
    epochs = cfg["epochs"]
    stop = epochs if max_epochs is None else min(epochs, int(max_epochs))
    provenance.seed_everything(seed)
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # ---- data
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
    workers = int(cfg["num_workers"])
    loader_kw = dict(num_workers=workers, pin_memory=cuda, persistent_workers=False)

    def eval_loader(dataset: Dataset) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, **loader_kw)

    # ---- model, optimiser, schedule
    model = build_classifier(cfg["arch"], len(class_ids), weights=None if init_checkpoint else cfg["weights"])
    if init_checkpoint is not None:
        init = read_classifier_checkpoint(init_checkpoint)
        if init["class_ids"] != class_ids or init["arch"]["name"] != cfg["arch"]:
            raise DataError(f"initial classifier {init_checkpoint} ({init['arch']['name']}, classes "
                            f"{init['class_ids'][:5]}...) does not fit {dataset_dir} with arch {cfg['arch']}; "
                            "fine-tune the classifier trained on this set")
        model.load_state_dict(init["state_dict"], strict=True)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(dev, memory_format=memory_format).train()
    if cfg["optimizer"] == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                              weight_decay=cfg["weight_decay"], nesterov=cfg["momentum"] > 0)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=tuple(cfg["betas"]),
                                weight_decay=cfg["weight_decay"])
    total_steps = epochs * steps_per_epoch
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps, eta_min=cfg["eta_min"])
             if cfg["scheduler"] == "cosine" else torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0))
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"])
    spec = {"arch": cfg["arch"], "num_classes": len(class_ids), "input_size": cfg["input_size"],
            "class_ids": class_ids}
    if image_dir is not None or init_checkpoint is not None:  # a fine-tuning run (the LR baseline)
        spec.update(images=str(image_dir), init=str(init_checkpoint))

    # ---- resume
    start, elapsed, rows = 0, 0.0, []
    best: dict[str, Any] = {"val_top1": -math.inf, "val_top5": -math.inf, "epoch": 0}
    state = load_state(state_path, "classifier")  # last.pt, else prev.pt, else None (afresh)
    if state is not None and (state.get("format") != STATE_FORMAT or state.get("spec") != spec):
        # the workflow reruns this job when its settings change: the old state is another run's
        log.warning("%s holds the state of another classifier run (%s, this run: %s): starting afresh",
                    state_path, state.get("spec"), spec)
        shutil.rmtree(state_path.parent)
        state = None
    resuming = state is not None
    if resuming:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, best, elapsed, rows = state["epoch"], state["best"], state["elapsed_s"], state["log"]
        if state["epochs"] != epochs:
            log.warning("%s was made for %d epochs, now %d: the schedule changes", state_path,
                        state["epochs"], epochs)
        log.info("resuming classifier training from %s at epoch %d", state_path, start)

    t0 = time.perf_counter()
    bar = tqdm(total=total_steps, initial=start * steps_per_epoch, desc=f"classifier {cfg['arch']}",
               dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0, file=sys.stderr)
    try:
        for epoch in range(start + 1, stop + 1):
            epoch_seed = _epoch_seed(seed, epoch)
            torch.manual_seed(epoch_seed)  # augmentation in the main process (num_workers 0)
            loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=drop_last,
                                generator=torch.Generator().manual_seed(epoch_seed), **loader_kw)
            model.train()
            losses = []
            lr_now = opt.param_groups[0]["lr"]
            for images, labels in loader:
                x = to_float(images, dev, channels_last)
                y = labels.to(dev, non_blocking=True)
                with autocast():
                    loss = criterion(model(x).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(loss.detach())
                bar.update(1)
            train_loss = float(torch.stack(losses).float().mean().cpu())
            if not math.isfinite(train_loss):
                kept = f"the last good state {state_path} was kept" if state_path.is_file() else \
                    "no state had been saved yet"
                raise SfsrError(f"classifier training in {out_dir} stopped: the training loss is "
                                f"{train_loss} in epoch {epoch}; {kept}. Lower lr or turn bf16 off, then "
                                "re-run (it resumes from the kept state)")
            val = evaluate_loader(model, eval_loader(val_set), dev, autocast, channels_last)
            now = elapsed + time.perf_counter() - t0
            rows.append({"epoch": epoch, "train_loss": train_loss, "val_top1": val["top1"],
                         "val_top5": val["top5"], "lr": lr_now, "elapsed_s": now})
            bar.set_postfix({"loss": f"{train_loss:.4g}", "val_top1": f"{val['top1']:.3f}"}, refresh=False)
            bar.write(f"[classifier] epoch {epoch}/{epochs}: train loss {train_loss:.4f}, val top-1 "
                      f"{val['top1']:.4f}, top-5 {val['top5']:.4f}")
            if val["top1"] > best["val_top1"]:
                best = {"val_top1": val["top1"], "val_top5": val["top5"], "epoch": epoch}
                io.torch_save(best_path, checkpoint_dict(model, cfg, class_ids, class_names, **best))
            save_state(state_path, {
                "format": STATE_FORMAT, "spec": spec, "epoch": epoch, "epochs": epochs,
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "best": best, "elapsed_s": now, "log": rows})
            io.write_csv(out_dir / "train_log.csv", pd.DataFrame(rows, columns=LOG_COLUMNS))
    finally:
        bar.close()
    elapsed += time.perf_counter() - t0
    if stop < epochs:
        log.info("stopped at epoch %d of %d (max_epochs); state in %s", stop, epochs, state_path)
        return state_path

    # ---- final outputs (classifier.pt last): the best epoch, with its test accuracy
    best_ckpt = io.torch_load(best_path, "best classifier state", "re-run train_classifier",
                              "delete it and re-run train_classifier")
    model.load_state_dict(best_ckpt["state_dict"])
    test = (evaluate_loader(model, eval_loader(test_set), dev, autocast, channels_last)
            if len(test_set) else {"top1": None, "top5": None, "n": 0})
    io.write_csv(out_dir / "train_log.csv", pd.DataFrame(rows, columns=LOG_COLUMNS))
    provenance.write(out_dir / "provenance.json", config=cfg, seed=seed, dataset_dir=str(dataset_dir),
                     image_dir=None if image_dir is None else str(image_dir),
                     init_checkpoint=None if init_checkpoint is None else str(init_checkpoint),
                     device=str(dev), speed_flags={"bf16": bf16, "channels_last": channels_last},
                     epochs=epochs, parameters=count_parameters(model), class_ids=class_ids,
                     n_train=len(train_set), n_val=len(val_set), n_test=len(test_set), best=best,
                     test_top1=test["top1"], test_top5=test["top5"], training_time_s=elapsed)
    final = {**best_ckpt, "test_top1": test["top1"], "test_top5": test["top5"], "epochs": epochs,
             "weights_init": str(init_checkpoint) if init_checkpoint is not None
             else None if cfg["weights"] is None else str(cfg["weights"]),
             "images": "HR" if image_dir is None else str(image_dir),
             "training_time_s": elapsed}
    io.torch_save(out_dir / "classifier.pt", final)
    return out_dir / "classifier.pt"
