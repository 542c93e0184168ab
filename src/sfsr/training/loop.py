"""The iteration-based SR training loop: PSNR-oriented warm-up, GAN fine-tuning, semantic-favorable
fine-tuning and shared-feature (SR + LR classification) training.

Stages (``STAGES``):

* ``warmup``: pixel loss only.
* ``gan``: pixel + perceptual + adversarial (``loss_preset``/``loss_weights``), from the warm-up.
* ``semantic``: the gan stage's terms plus the label-free prior of the frozen fine-grained classifier
  (:class:`sfsr.semantic.SemanticPriorLoss`, loaded from ``classifier_checkpoint``), from the warm-up.
* ``shared``: :class:`sfsr.semantic.SharedFeatureModel` (generator + :class:`LRClassificationHead` on
  ``generator.encode``), SR loss + ``shared_cls`` (:func:`sfsr.semantic.shared_classification_loss`,
  targets from the frozen classifier on the HR patch), from a warm-up (or gan/semantic) generator;
  also writes ``lr_head.pt`` (:func:`load_lr_classifier`).

``train(stage, cfg, ...)`` trains one model stage and writes to ``out_dir``:

* ``state/last.pt``: the full training state (generator, EMA, discriminator, optimisers,
  schedulers, iteration, RNG states, best metric, log rows), written atomically every
  ``checkpoint_every`` iterations; a later call with the same ``out_dir`` resumes from it.
* ``best.pt``: the validated generator with the best PSNR-Y (``save_generator`` format).
* ``train_log.csv``: iteration, each loss term, lr, data_wait_fraction, val_psnr_y, val_ssim_y,
  (shared: val_head_top1), elapsed_s (one row per ``log_every`` iterations; losses are means over
  those iterations).
* ``provenance.json``, (shared: ``lr_head.pt``) and, written last, ``generator.pt`` (EMA weights
  when EMA is on).

``cfg`` is the flat settings dict of one model stage (see :func:`stage_config`): ``arch``, ``scale``,
``kwargs`` plus the keys of :data:`TRAINING_DEFAULTS`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from sfsr import io, provenance
from sfsr.errors import ConfigError, DataError, SfsrError
from sfsr.losses import LOSS_PRESETS, PerceptualLoss, adversarial_loss, pixel_loss, total_loss
from sfsr.metrics import image_metrics, to_uint8
from sfsr.data.bicubic import imresize
from sfsr.data.images import list_images
from sfsr.models import (build_discriminator, build_generator, count_parameters, generator_spec,
                         load_generator, save_generator)
from sfsr.semantic import (LRClassificationHead, SharedFeatureModel, load_semantic_prior,
                           shared_classification_loss)
from sfsr.training.classifier import load_classifier
from sfsr.training.data import (PatchDataset, ValidationImage, _image_size, load_validation_set,
                                make_loader, make_lr_batch, to_float)
from sfsr.training.ema import make_ema
from sfsr.training.settings import (RUN_NEUTRAL_KEYS, TRAINING_DEFAULTS, resolve_config,  # noqa: F401
                                    stage_config, stage_weights)
from sfsr.training.stages import CLASSIFIER_STAGES, INIT_STAGES, SEMANTIC_TERMS, STAGES  # noqa: F401  re-exported
from sfsr.training.state import load_state, save_state as write_state

log = logging.getLogger("sfsr.training")

STATE_FORMAT = 1
HEAD_KIND = "sfsr_lr_head"
HEAD_FORMAT = 1


def pick_device(name: str) -> torch.device:
    """'auto' -> cuda when available else cpu; 'cuda' without a GPU raises ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"training device {name!r} requested but CUDA is not available here; "
                          "set training.device to auto or cpu")
    return dev


# ----------------------------------------------------------------------------- optimisation
def make_optimizer(params, cfg: dict, lr: float) -> torch.optim.Optimizer:
    """Adam or AdamW with the configured betas and weight decay."""
    cls = torch.optim.AdamW if cfg["optimizer"] == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, betas=tuple(cfg["betas"]), weight_decay=cfg["weight_decay"])


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: dict) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-iteration schedule: multistep (milestones are fractions of ``iterations``), cosine
    (to ``eta_min``) or constant."""
    total = cfg["iterations"]
    if cfg["scheduler"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=cfg["eta_min"])
    milestones = [] if cfg["scheduler"] == "constant" else sorted({max(1, round(m * total))
                                                                    for m in cfg["milestones"]})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=cfg["gamma"])


# ------------------------------------------------------------------------------------ RNG state
def rng_state() -> dict[str, Any]:
    """Python/numpy/torch RNG states as tensors and plain numbers (loadable with weights_only)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]), "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
        "python_version": int(py_state[0]), "python": torch.tensor(py_state[1], dtype=torch.int64),
        "python_gauss": py_state[2],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_gauss"]))
    random.setstate((state["python_version"], tuple(int(v) for v in state["python"].tolist()),
                     state["python_gauss"]))


# ------------------------------------------------------------------------------------ validation
def _mean_metrics(images: Sequence[ValidationImage], scale: int, upscale) -> dict[str, float]:
    """Mean PSNR-Y / SSIM-Y over whole images of ``upscale(item) -> uint8 SR image``."""
    psnrs, ssims = [], []
    for item in images:
        m = image_metrics(item.hr[:, :, 0] if item.gray else item.hr, upscale(item), scale)
        psnrs.append(m["psnr_y"])
        ssims.append(m["ssim_y"])
    return {"psnr_y": float(np.mean(psnrs)), "ssim_y": float(np.mean(ssims))}


@torch.no_grad()
def validate(model: nn.Module, images: Sequence[ValidationImage], scale: int,
             device: torch.device) -> dict[str, float]:
    """Mean PSNR-Y / SSIM-Y of ``model`` on whole images (float32, outputs quantised to uint8)."""
    def upscale(item: ValidationImage) -> np.ndarray:
        lr = torch.from_numpy(np.array(item.lr)).permute(2, 0, 1)[None].to(device).float().div_(255.0)
        return to_uint8(model(lr)[0])

    was_training = model.training
    model.eval()
    try:
        return _mean_metrics(images, scale, upscale)
    finally:
        model.train(was_training)


def bicubic_reference(images: Sequence[ValidationImage], scale: int) -> dict[str, float]:
    """Mean PSNR-Y / SSIM-Y of MATLAB-exact bicubic upscaling on the same validation images (the
    line a learning curve must rise above)."""
    return _mean_metrics(images, scale, lambda item: imresize(item.lr, scale))


# ------------------------------------------------------------------------------------------ main
def _load_init(generator: nn.Module, path: Path, spec: dict) -> None:
    """Copy the weights of a save_generator checkpoint into ``generator`` (architecture checked)."""
    if not path.is_file():
        raise DataError(f"initial generator checkpoint {path} not found; train the warm-up stage first "
                        "or fix the path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        arch = ckpt["arch"]
    except Exception as exc:
        raise DataError(f"initial generator checkpoint {path} cannot be read as a save_generator "
                        f"checkpoint ({type(exc).__name__}: {exc}); re-run the warm-up stage") from exc
    if (arch.get("name"), arch.get("scale"), arch.get("kwargs", {})) != (spec["name"], spec["scale"],
                                                                          spec["kwargs"]):
        raise ConfigError(f"initial generator checkpoint {path} holds {arch}, but this stage builds "
                          f"{spec}; the warm-up and GAN stages of a model must use the same arch, scale "
                          "and kwargs (delete the stale checkpoint or fix models.<name>)")
    generator.load_state_dict(ckpt["state_dict"], strict=True)


class _NonFinite(Exception):
    pass


def _speed_flags(cfg: dict, device: torch.device) -> dict[str, bool]:
    cuda = device.type == "cuda"
    flags = {k: bool(cfg[k]) and cuda for k in ("bf16", "channels_last", "compile")}
    ignored = [k for k in ("bf16", "channels_last", "compile") if cfg[k] and not cuda]
    if ignored:
        log.info("training on %s: %s ignored (GPU-only speed settings)", device.type, ", ".join(ignored))
    return flags


def _tensorboard(enabled: bool, folder: Path):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("training.tensorboard is on but the tensorboard package is not installed; "
                 "only the CSV log is written (pip install 'sfsr[tensorboard]')")
        return None
    return SummaryWriter(str(folder))



def _sha256(path: str | os.PathLike | None) -> str | None:
    """Hex SHA-256 of a file's content; None for None or a missing file."""
    if path is None or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_fingerprint(stage: str, cfg: dict, seed: int, train_hr_dirs: Sequence[str | os.PathLike],
                    init_checkpoint: str | os.PathLike | None,
                    classifier_checkpoint: str | os.PathLike | None = None) -> str:
    """SHA-256 of everything that defines a run: stage, settings (less RUN_NEUTRAL_KEYS), seed,
    training folders (and their manifest.csv content, which selects the split and gives labels),
    and the content of the initial and classifier checkpoints."""
    payload = {"stage": stage, "seed": seed, "init": _sha256(init_checkpoint),
               "train": sorted(str(Path(d).resolve()) for d in train_hr_dirs),
               "cfg": {k: v for k, v in cfg.items() if k not in RUN_NEUTRAL_KEYS}}
    manifests = {str(Path(d).resolve()): _sha256(manifest_path(d)) for d in train_hr_dirs}
    if any(manifests.values()):
        payload["manifests"] = manifests
    if classifier_checkpoint is not None:
        payload["classifier"] = _sha256(classifier_checkpoint)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


# ------------------------------------------------------------------ manifests, splits, labels
def manifest_path(hr_dir: str | os.PathLike) -> Path:
    """``{dataset}/manifest.csv`` beside a prepared ``{dataset}/HR`` folder."""
    return Path(hr_dir).parent / "manifest.csv"


def _read_manifest(hr_dir: str | os.PathLike) -> pd.DataFrame | None:
    path = manifest_path(hr_dir)
    if not path.is_file():
        return None
    frame = pd.read_csv(path, dtype={"stem": str, "split": str})
    if "stem" not in frame.columns:
        raise DataError(f"{path} has no 'stem' column (has {list(frame.columns)}); re-run prepare")
    return frame


def _split_stems(frame: pd.DataFrame | None, split: str | None) -> set[str] | None:
    """Stems of ``split`` when the manifest has a filled split column (classification sets), else
    None (use every image)."""
    if frame is None or split is None or "split" not in frame.columns or not frame["split"].notna().any():
        return None
    return set(frame.loc[frame["split"] == split, "stem"].astype(str))


def _labels_by_stem(frame: pd.DataFrame | None, class_to_index: dict[int, int]) -> dict[str, int] | None:
    """Stem -> classifier output index from a manifest's class_id column; None without labels."""
    if frame is None or "class_id" not in frame.columns or frame["class_id"].isna().all():
        return None
    out = {}
    for stem, cid in zip(frame["stem"].astype(str), frame["class_id"]):
        if pd.isna(cid):
            continue
        if int(cid) not in class_to_index:
            raise DataError(f"class_id {cid} of image {stem!r} is not a class of the classifier "
                            f"(class_ids {sorted(class_to_index)}); train the classifier on this dataset")
        out[stem] = class_to_index[int(cid)]
    return out


def select_training_images(hr_dirs: Sequence[str | os.PathLike], split: str | None,
                           class_to_index: dict[int, int] | None = None,
                           ) -> tuple[set[Path] | None, dict[Path, int] | None]:
    """Which training images to use and their labels.

    A folder with a ``manifest.csv`` beside it whose ``split`` column is filled (a prepared
    classification set) contributes only the images of ``split`` (so its val/test images never
    train the SR model); other folders contribute all their images. Returns ``(keep, labels)``:
    ``keep`` the resolved paths (None: no folder is restricted), ``labels`` path -> class index
    (only when ``class_to_index`` is given; DataError naming the folder when one has no labels)."""
    keep: set[Path] = set()
    restricted = False
    labels: dict[Path, int] | None = {} if class_to_index is not None else None
    for folder in hr_dirs:
        frame = _read_manifest(folder)
        stems = _split_stems(frame, split)
        files = list_images(folder)
        if stems is not None:
            restricted = True
            files = [p for p in files if p.stem in stems]
            if not files:
                raise DataError(f"no image of split {split!r} in {folder} (per {manifest_path(folder)}); "
                                "set training.train_split to a split that has images, or null for all")
        keep.update(p.resolve() for p in files)
        if labels is not None:
            by_stem = _labels_by_stem(frame, class_to_index)
            if by_stem is None:
                raise ConfigError(f"shared.mode 'label' needs true class labels, but training folder "
                                  f"{folder} has no {manifest_path(folder)} with a class_id column; use "
                                  "shared.mode 'pseudo' or 'soft' (label-free) or train on a prepared "
                                  "classification set")
            missing = [p.name for p in files if p.stem not in by_stem]
            if missing:
                raise DataError(f"{manifest_path(folder)} gives no class_id for {missing[:5]}; "
                                "re-run prepare")
            labels.update({p.resolve(): by_stem[p.stem] for p in files})
    return (keep if restricted else None), labels


def whole_image_lr_patch(hr_dirs: Sequence[str | os.PathLike], scale: int, keep: set[Path] | None) -> int:
    """``lr_patch: null``: the largest LR patch every training image holds (min side // scale); the
    whole image when all images are squares of one size (prepared classification sets)."""
    sides = [min(_image_size(p)[:2]) for folder in hr_dirs for p in list_images(folder)
             if keep is None or p.resolve() in keep]
    if not sides or min(sides) // scale < 1:
        raise DataError(f"lr_patch null: no training image in {', '.join(map(str, hr_dirs))} is at least "
                        f"{scale} px on each side")
    return min(sides) // scale


class ManifestPatchDataset(PatchDataset):
    """:class:`PatchDataset` restricted to the images in ``keep`` (resolved paths; None = all) and,
    with ``labels`` (resolved path -> class index), items carrying ``label`` (int64 scalar). Patches,
    augmentation and their determinism are PatchDataset's."""

    def __init__(self, hr_dirs: Sequence[str | os.PathLike], scale: int, lr_patch: int, *,
                 keep: set[Path] | None = None, labels: dict[Path, int] | None = None, **kwargs: Any) -> None:
        super().__init__(hr_dirs, scale, lr_patch, **kwargs)
        if keep is not None:
            index = [i for i, p in enumerate(self.files) if p.resolve() in keep]
            if not index:
                raise DataError(f"no training image of the selected split in {', '.join(map(str, hr_dirs))} "
                                f"is at least {self.hr_patch} px; lower lr_patch")
            self.files = [self.files[i] for i in index]
            if self._images is not None:
                self._images = [self._images[i] for i in index]
        self.labels = None if labels is None else [int(labels[p.resolve()]) for p in self.files]
        self._last_index = -1

    def _pair(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        self._last_index = int(index)  # the image PatchDataset.__getitem__ draws for this item
        return super()._pair(index)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        item = super().__getitem__(k)
        if self.labels is not None:
            item["label"] = torch.tensor(self.labels[self._last_index], dtype=torch.int64)
        return item


def load_validation_items(valid_hr_dirs: Sequence[str | os.PathLike], scale: int, split: str | None,
                          class_to_index: dict[int, int] | None = None,
                          ) -> tuple[list[ValidationImage], list[int | None]]:
    """Validation images (only ``split`` of folders with a filled manifest split column) and, with
    ``class_to_index``, each image's true class index from the manifest (None where there is none)."""
    images: list[ValidationImage] = []
    labels: list[int | None] = []
    for folder in valid_hr_dirs:
        frame = _read_manifest(folder)
        stems = _split_stems(frame, split)
        by_stem = _labels_by_stem(frame, class_to_index) if class_to_index is not None else None
        for item in load_validation_set([folder], scale):
            stem = item.name.split("/", 1)[1]
            if stems is not None and stem not in stems:
                continue
            images.append(item)
            labels.append(by_stem.get(stem) if by_stem else None)
    return images, labels


# --------------------------------------------------------------------- classifier views, LR head
def resize_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """Batch resized to ``size`` x ``size`` (bilinear, antialiased) as the semantic prior does;
    unchanged when it already has that size."""
    x = x.float()
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                           antialias=True)


def eval_view(image: np.ndarray, input_size: int, resize_size: int) -> torch.Tensor:
    """uint8 HxWx3 -> float 1x3xSxS in [0, 1]: short side resized to ``resize_size`` (antialiased
    bilinear), centre crop ``input_size`` - the preprocessing of
    :func:`sfsr.evaluation.classification_accuracy` (without its normalisation)."""
    from torchvision.transforms.v2 import functional as TF

    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    t = TF.center_crop(TF.resize(t, [int(resize_size)], antialias=True), [int(input_size)] * 2)
    return t[None].float().div_(255.0)


def lr_eval_sizes(input_size: int, resize_size: int, scale: int) -> tuple[int, int]:
    """``(input_size, resize_size)`` for LR images given the HR classifier's: both divided by the
    scale (rounded, at least 1), so the LR head sees the field of view the classifier sees on the
    HR image, at LR resolution."""
    return max(1, round(input_size / scale)), max(1, round(resize_size / scale))


class LRClassifier(nn.Module):
    """LR image batch (N, 3, h, w) in [0, 1] -> logits (N, num_classes): ``head(generator.encode(lr))``.

    Attributes for :func:`sfsr.evaluation.classification_accuracy` on a folder of LR images:
    ``input_size``/``resize_size`` (LR side: the classifier's divided by ``scale``), ``class_ids``.
    It takes [0, 1] RGB, so call classification_accuracy with ``normalize=False``."""

    def __init__(self, generator: nn.Module, head: nn.Module, *, scale: int, class_ids: Sequence[int],
                 input_size: int, resize_size: int) -> None:
        super().__init__()
        self.generator = generator
        self.head = head
        self.scale = int(scale)
        self.class_ids = [int(c) for c in class_ids]
        self.input_size = int(input_size)
        self.resize_size = int(resize_size)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return self.head(self.generator.encode(lr))


def load_lr_classifier(generator_ckpt: str | os.PathLike, head_ckpt: str | os.PathLike,
                       device: str | torch.device = "cpu") -> LRClassifier:
    """The shared stage's LR classifier: generator encoder (``generator.pt``) + head (``lr_head.pt``),
    frozen, in eval mode on ``device``. A missing or mismatching file raises DataError naming it."""
    generator, scale = load_generator(generator_ckpt, "cpu")
    head_ckpt = Path(head_ckpt)
    if not head_ckpt.is_file():
        raise DataError(f"LR head checkpoint {str(head_ckpt)!r} not found; train the shared stage first")
    try:
        ckpt = torch.load(head_ckpt, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"LR head checkpoint {str(head_ckpt)!r} cannot be read ({type(exc).__name__}: "
                        f"{exc}); delete it and re-run the shared stage") from exc
    if not isinstance(ckpt, dict) or ckpt.get("kind") != HEAD_KIND:
        raise DataError(f"{str(head_ckpt)!r} is not an LR head checkpoint of the shared stage (lr_head.pt)")
    if int(ckpt["in_features"]) != int(generator.num_features) or int(ckpt["scale"]) != scale:
        raise DataError(f"LR head {str(head_ckpt)!r} ({ckpt['in_features']} features, x{ckpt['scale']}) "
                        f"does not fit generator {str(generator_ckpt)!r} ({generator.num_features} "
                        f"features, x{scale}); use the generator.pt of the same shared run")
    head = LRClassificationHead(int(ckpt["in_features"]), int(ckpt["num_classes"]))
    head.load_state_dict(ckpt["state_dict"], strict=True)
    model = LRClassifier(generator, head, scale=scale, class_ids=ckpt["class_ids"],
                         input_size=ckpt["input_size"], resize_size=ckpt["resize_size"])
    model.requires_grad_(False)
    return model.to(device).eval()


@torch.no_grad()
def validate_head(model: SharedFeatureModel, images: Sequence[ValidationImage], labels: Sequence[int | None],
                  classifier: nn.Module, hr_sizes: tuple[int, int], scale: int,
                  device: torch.device) -> float:
    """Top-1 of the LR head on whole validation images, each preprocessed as classification_accuracy
    does (LR: :func:`lr_eval_sizes`); the target is the true label where given, else the frozen
    classifier's prediction on the HR image (its own preprocessing ``hr_sizes``)."""
    was_training = model.training
    model.eval()
    lr_sizes = lr_eval_sizes(*hr_sizes, scale)
    correct = []
    try:
        for item, label in zip(images, labels):
            if label is None:
                label = int(classifier(eval_view(item.hr, *hr_sizes).to(device)).argmax(1))
            x = eval_view(item.lr, *lr_sizes).to(device)
            pred = int(model.head(model.generator.encode(x)).argmax(1))
            correct.append(pred == int(label))
    finally:
        model.train(was_training)
    return float(np.mean(correct)) if correct else math.nan


# ------------------------------------------------------------------------------------------ main
def train(stage: str, cfg: dict, *, train_hr_dirs: Sequence[str | os.PathLike],
          valid_hr_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
          init_checkpoint: str | os.PathLike | None = None, device: str = "auto", seed: int = 0,
          max_iterations: int | None = None, feature_net: nn.Module | None = None,
          classifier_checkpoint: str | os.PathLike | None = None) -> Path:
    """Train one model stage; returns ``out_dir/generator.pt`` (or ``out_dir/state/last.pt`` when
    stopped early by ``max_iterations``).

    ``stage``: 'warmup' (pixel loss); 'gan' (generator initialised from ``init_checkpoint``, the
    warm-up ``generator.pt``; discriminator; loss preset ``loss_preset`` with ``loss_weights``
    overrides); 'semantic' (as gan, plus the label-free semantic prior of the frozen classifier of
    ``classifier_checkpoint``; a discriminator only when the adversarial weight is > 0); 'shared'
    (generator + LR classification head on the shared encoder, SR loss + ``shared_cls``; also writes
    ``lr_head.pt``). See :func:`stage_weights` for each stage's terms. ``device='auto'`` defers to
    ``cfg['device']``. ``max_iterations``: stop after that iteration, leaving a resumable state and no
    ``generator.pt``. ``feature_net``: a module to use as the perceptual feature network (e.g. the
    pipeline's classifier, with ``perceptual.layer``); with ``perceptual.net: classifier`` and no
    ``feature_net`` the classifier of ``classifier_checkpoint`` is used. An existing
    ``out_dir/state/last.pt`` of the same run (:func:`run_fingerprint`) is resumed. A non-finite loss
    raises SfsrError naming the iteration and term; the last saved state stays as it was."""
    if stage not in STAGES:
        raise ConfigError(f"unknown training stage {stage!r}; valid: {', '.join(STAGES)}")
    st = STAGES[stage]
    cfg = resolve_config(cfg)
    weights = stage_weights(stage, cfg)
    if st.classifier and classifier_checkpoint is None:
        raise ConfigError(f"the {stage} stage needs classifier_checkpoint (the classifier.pt of the "
                          "classifier stage: the frozen fine-grained classifier)")
    out_dir = Path(out_dir)
    state_path = out_dir / "state" / "last.pt"
    dev = pick_device(cfg["device"] if device == "auto" else device)
    flags = _speed_flags(cfg, dev)
    total, scale = cfg["iterations"], cfg["scale"]
    stop = total if max_iterations is None else min(total, int(max_iterations))
    provenance.seed_everything(seed)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    memory_format = torch.channels_last if flags["channels_last"] else torch.contiguous_format

    # ---- frozen classifier (semantic prior, classification targets, perceptual features)
    pcfg = cfg["perceptual"]
    classifier = classifier_meta = None
    wants_classifier_features = ("perceptual" in weights and pcfg["net"] == "classifier"
                                 and feature_net is None and classifier_checkpoint is not None)
    if st.classifier or wants_classifier_features:
        classifier, classifier_meta = load_classifier(classifier_checkpoint, dev)
    sem = cfg["semantic"]
    cls_size = cls_resize = None
    if classifier_meta is not None:
        native = int(classifier_meta["arch"]["input_size"])
        cls_size = int(sem["input_size"] or native)
        native_resize = int(classifier_meta.get("resize_size") or round(native * 256 / 224))
        cls_resize = max(cls_size, round(native_resize * cls_size / native))

    # ---- models, losses, optimisers
    spec = generator_spec(cfg["arch"], scale, **cfg["kwargs"])
    generator = build_generator(cfg["arch"], scale, **cfg["kwargs"])
    fingerprint = run_fingerprint(stage, cfg, seed, train_hr_dirs, init_checkpoint, classifier_checkpoint)
    state = load_state(state_path, f"{stage} training")  # last.pt, else prev.pt, else None
    if state is not None and state.get("fingerprint") != fingerprint:
        # The workflow reruns a stage when its settings or inputs (e.g. the warm-up generator)
        # change; the old state belongs to that other run and must not be continued.
        log.warning("%s belongs to a run with other settings or inputs: starting afresh", state_path)
        shutil.rmtree(state_path.parent)
        state = None
    resuming = state is not None
    if st.init is not None and init_checkpoint is None and not resuming:
        raise ConfigError(f"the {stage} stage needs init_checkpoint (the {st.init} generator.pt)")
    if init_checkpoint is not None and not resuming:
        _load_init(generator, Path(init_checkpoint), spec)
    generator = generator.to(dev, memory_format=memory_format).train()
    head = shared = None
    trainable: nn.Module = generator
    if st.lr_head:
        head = LRClassificationHead(generator.num_features, int(classifier_meta["arch"]["num_classes"]))
        shared = SharedFeatureModel(generator, head.to(dev)).train()
        trainable = shared
    ema = make_ema(trainable, cfg["ema_decay"]) if cfg["ema_decay"] is not None else None
    opt_g = make_optimizer(trainable.parameters(), cfg, cfg["lr"])
    sched_g = make_scheduler(opt_g, cfg)
    pix = pixel_loss(cfg["pixel_loss"])
    disc = opt_d = sched_d = perceptual = adv = prior = None
    ragan = False
    if not st.pixel_only:
        preset = LOSS_PRESETS[cfg["loss_preset"]]
        if "perceptual" in weights:
            net = feature_net if feature_net is not None else (
                classifier if pcfg["net"] == "classifier" else None)
            if net is None and pcfg["net"] != "vgg19":
                raise ConfigError(f"perceptual.net {pcfg['net']!r} needs the pipeline's classifier: pass "
                                  "classifier_checkpoint (or feature_net); or use vgg19 or set "
                                  "loss_weights.perceptual: 0")
            layer = pcfg["layer"] or (preset["perceptual_layer"] if net is None else None)
            if layer is None:
                raise ConfigError("perceptual.layer must name a layer of the given feature network")
            perceptual = PerceptualLoss(net if net is not None else "vgg19", layer=layer,
                                        weights=pcfg["weights"], criterion=preset["perceptual_criterion"],
                                        feature_scale=preset["perceptual_feature_scale"]).to(dev)
        if st.discriminator or "adversarial" in weights:
            dcfg = cfg["discriminator"]
            disc = build_discriminator(dcfg["arch"], **(dcfg.get("kwargs") or {}))
            disc = disc.to(dev, memory_format=memory_format).train()
            opt_d = make_optimizer(disc.parameters(), cfg, dcfg.get("lr") or cfg["lr"])
            sched_d = make_scheduler(opt_d, cfg)
            adv = adversarial_loss(preset["gan_type"])
            ragan = preset["gan_type"] == "ragan"
        if any(t in weights for t in SEMANTIC_TERMS):
            try:
                prior = load_semantic_prior(classifier_checkpoint, dev, temperature=sem["temperature"],
                                            feature_layers=sem["feature_layers"],
                                            feature_weight=sem["feature_weight"], input_size=cls_size)
            except ValueError as exc:
                raise ConfigError(f"training setting 'semantic': {exc}") from None
    if prior is None and any(t in st.default_weights for t in SEMANTIC_TERMS):
        log.warning("semantic stage with no semantic term (loss_weights.semantic_kl and semantic_feat "
                    "are 0): it trains like the gan stage")
    g_fwd = torch.compile(trainable) if flags["compile"] else trainable
    d_fwd = torch.compile(disc) if (flags["compile"] and disc is not None) else disc
    if st.pixel_only:
        columns = [*weights]
    else:
        columns = [*weights, "g_total"] + (["d_loss"] if disc is not None else [])
    val_extra = ["val_head_top1"] if st.lr_head else []

    # ---- resume
    start, best, elapsed, rows = 0, {"psnr_y": -math.inf, "iteration": 0}, 0.0, []
    if resuming:
        if state.get("format") != STATE_FORMAT or state["stage"] != stage or state["spec"] != spec:
            raise ConfigError(f"{state_path} holds the state of another run (stage {state.get('stage')}, "
                              f"model {state.get('spec')}); delete {out_dir} to start this one afresh")
        generator.load_state_dict(state["generator"])
        if head is not None:
            head.load_state_dict(state["head"])
        opt_g.load_state_dict(state["opt_g"])
        sched_g.load_state_dict(state["sched_g"])
        if ema is not None and state["ema"] is not None:
            ema.load_state_dict(state["ema"])
        if disc is not None:
            disc.load_state_dict(state["discriminator"])
            opt_d.load_state_dict(state["opt_d"])
            sched_d.load_state_dict(state["sched_d"])
        start, best, elapsed, rows = state["iteration"], state["best"], state["elapsed_s"], state["log"]
        set_rng_state(state["rng"])
        if state["iterations"] != total:
            log.warning("%s was made for %d iterations, now %d: the schedule changes", state_path,
                        state["iterations"], total)
        log.info("resuming %s training from %s at iteration %d", stage, state_path, start)

    saved = {"iteration": start if resuming else None}

    def save_state(iteration: int) -> None:
        write_state(state_path, {
            "format": STATE_FORMAT, "stage": stage, "spec": spec, "iteration": iteration,
            "fingerprint": fingerprint,
            "iterations": total, "generator": generator.state_dict(),
            "head": head.state_dict() if head is not None else None,
            "ema": ema.state_dict() if ema is not None else None,
            "discriminator": disc.state_dict() if disc is not None else None,
            "opt_g": opt_g.state_dict(), "sched_g": sched_g.state_dict(),
            "opt_d": opt_d.state_dict() if opt_d is not None else None,
            "sched_d": sched_d.state_dict() if sched_d is not None else None,
            "rng": rng_state(), "best": best, "elapsed_s": elapsed + (time.perf_counter() - t0),
            "log": rows})
        io.write_csv(out_dir / "train_log.csv", pd.DataFrame(rows, columns=_log_columns(columns, val_extra)))
        saved["iteration"] = iteration

    # ---- data
    mode = cfg["shared"]["mode"]
    use_labels = st.lr_head and "shared_cls" in weights and mode == "label"
    class_to_index = classifier_meta["class_to_index"] if classifier_meta is not None else None
    keep, labels = select_training_images(train_hr_dirs, cfg["train_split"],
                                          class_to_index if use_labels else None)
    lr_patch = cfg["lr_patch"]
    if lr_patch is None:
        lr_patch = whole_image_lr_patch(train_hr_dirs, scale, keep)
        log.info("lr_patch null: LR patches of %d px (HR %d px)", lr_patch, lr_patch * scale)
    if start < stop:
        data_kw = dict(length=total * cfg["batch_size"], seed=seed, lr_source=cfg["lr_source"],
                       cache_mb=cfg["cache_mb"])
        if keep is None and labels is None:
            dataset: PatchDataset = PatchDataset(train_hr_dirs, scale, lr_patch, **data_kw)
        else:
            dataset = ManifestPatchDataset(train_hr_dirs, scale, lr_patch, keep=keep, labels=labels,
                                           **data_kw)
        loader = iter(make_loader(dataset, cfg["batch_size"], start_iteration=start,
                                  num_workers=cfg["num_workers"], seed=seed, device=dev))
    valid, valid_labels = load_validation_items(valid_hr_dirs, scale, cfg["valid_split"],
                                                class_to_index if st.lr_head else None)
    if not valid:
        log.info("no validation images: best.pt is not written")
    bicubic = bicubic_reference(valid, scale) if valid else None
    eval_trainable = ema.module if ema is not None else trainable
    eval_model = eval_trainable.generator if shared is not None else eval_trainable
    writer = _tensorboard(cfg["tensorboard"], out_dir / "tensorboard")
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if flags["bf16"] \
        else contextlib.nullcontext

    def clip(module: nn.Module) -> None:
        if cfg["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(module.parameters(), cfg["grad_clip"])

    def step(lr: torch.Tensor, hr: torch.Tensor, label: torch.Tensor | None) -> torch.Tensor:
        """One optimisation step of every stage (warm-up: the pixel term alone); returns the
        detached loss terms (``columns`` order)."""
        if disc is not None:
            disc.requires_grad_(False)
        with autocast():
            if shared is not None:
                sr, logits = g_fwd(lr)
            else:
                sr = g_fwd(lr)
            terms = {}
            if "pixel" in weights:
                terms["pixel"] = pix(sr.float(), hr)
            if "perceptual" in weights:
                terms["perceptual"] = perceptual(sr.float(), hr).float()
            if "adversarial" in weights:
                fake = d_fwd(sr).float()
                real = d_fwd(hr).float().detach() if ragan else None
                terms["adversarial"] = adv(real, fake, for_discriminator=False)
            if prior is not None:
                terms.update({k: v for k, v in prior(sr.float(), hr).items() if k in weights})
            if "shared_cls" in weights:
                terms["shared_cls"] = shared_classification_loss(
                    logits, resize_square(hr, cls_size), classifier, labels=label, mode=mode,
                    temperature=cfg["shared"]["temperature"])
            g_loss = total_loss(terms, weights)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        clip(trainable)
        opt_g.step()
        sched_g.step()
        if ema is not None:
            ema.update_parameters(trainable)
        terms["g_total"] = g_loss
        if disc is not None:
            disc.requires_grad_(True)
            with autocast():
                d_loss = adv(d_fwd(hr).float(), d_fwd(sr.detach()).float(), for_discriminator=True)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            clip(disc)
            opt_d.step()
            sched_d.step()
            terms["d_loss"] = d_loss
        return torch.stack([terms[k].float() for k in columns]).detach()

    # ---- loop
    t0 = time.perf_counter()
    window: list[torch.Tensor] = []
    window_lr: list[float] = []
    wait, window_start = 0.0, time.perf_counter()
    bar = tqdm(total=total, initial=start, desc=f"{stage} {cfg['arch']} x{scale}", dynamic_ncols=True,
               mininterval=1.0 if sys.stderr.isatty() else 30.0, file=sys.stderr)

    def flush(iteration: int) -> None:
        """Check the window's losses for non-finite values and log its means."""
        nonlocal window, window_lr, wait, window_start
        if not window:
            return
        values = torch.stack(window).float().cpu().numpy()
        bad = np.argwhere(~np.isfinite(values))
        if len(bad):
            row, col = bad[0]
            raise _NonFinite(iteration - len(window) + 1 + int(row), columns[int(col)],
                             float(values[row, col]))
        now = time.perf_counter()
        rec = {"iteration": iteration, **dict(zip(columns, values.mean(axis=0).tolist())),
               "lr": window_lr[-1], "data_wait_fraction": wait / max(now - window_start, 1e-9),
               "val_psnr_y": math.nan, "val_ssim_y": math.nan, **{k: math.nan for k in val_extra},
               "elapsed_s": elapsed + now - t0}
        rows.append(rec)
        bar.set_postfix({k: f"{rec[k]:.4g}" for k in columns} | {"lr": f"{rec['lr']:.2e}",
                        "wait": f"{rec['data_wait_fraction']:.0%}"}, refresh=False)
        if writer is not None:
            for key in [*columns, "lr", "data_wait_fraction"]:
                writer.add_scalar(f"{stage}/{key}", rec[key], iteration)
        window, window_lr, wait, window_start = [], [], 0.0, now

    def run_validation(iteration: int) -> None:
        nonlocal best
        if not valid:
            return
        metrics = validate(eval_model, valid, scale, dev)
        if shared is not None:
            metrics["head_top1"] = validate_head(eval_trainable, valid, valid_labels, classifier,
                                                 (cls_size, cls_resize), scale, dev)
        if not rows or rows[-1]["iteration"] != iteration:
            rows.append({"iteration": iteration, "elapsed_s": elapsed + time.perf_counter() - t0})
        rows[-1].update(val_psnr_y=metrics["psnr_y"], val_ssim_y=metrics["ssim_y"],
                        val_bicubic_psnr_y=bicubic["psnr_y"], val_bicubic_ssim_y=bicubic["ssim_y"])
        if shared is not None:
            rows[-1]["val_head_top1"] = metrics["head_top1"]
        if writer is not None:
            for key in ("psnr_y", "ssim_y", "head_top1"):
                if key in metrics:
                    writer.add_scalar(f"{stage}/val_{key}", metrics[key], iteration)
        head_text = f", LR-head top-1 {metrics['head_top1']:.3f}" if "head_top1" in metrics else ""
        bar.write(f"[{stage}] iteration {iteration}: validation PSNR-Y {metrics['psnr_y']:.3f} dB "
                  f"(bicubic {bicubic['psnr_y']:.3f}), SSIM-Y {metrics['ssim_y']:.4f}{head_text}")
        if iteration > 0 and metrics["psnr_y"] > best["psnr_y"]:
            best = {"psnr_y": metrics["psnr_y"], "ssim_y": metrics["ssim_y"], "iteration": iteration}
            save_generator(out_dir / "best.pt", eval_model, spec, stage=stage, **best)

    iteration = start
    if start == 0:
        run_validation(0)  # the starting point of the curve (a residual model: bicubic)
    try:
        for iteration in range(start + 1, stop + 1):
            t_wait = time.perf_counter()
            batch = next(loader)
            wait += time.perf_counter() - t_wait
            hr_u8 = batch["hr"].to(dev, non_blocking=True)
            lr_u8 = batch["lr"].to(dev, non_blocking=True) if "lr" in batch else make_lr_batch(hr_u8, scale)
            label = batch["label"].to(dev, non_blocking=True) if "label" in batch else None
            window_lr.append(opt_g.param_groups[0]["lr"])
            window.append(step(to_float(lr_u8, dev, flags["channels_last"]),
                               to_float(hr_u8, dev, flags["channels_last"]), label))
            bar.update(1)
            val_now = iteration % cfg["val_every"] == 0 or iteration == total
            ckpt_now = iteration % cfg["checkpoint_every"] == 0 or iteration == stop
            if iteration % cfg["log_every"] == 0 or val_now or ckpt_now:
                flush(iteration)
            if val_now:
                run_validation(iteration)
            if ckpt_now:
                save_state(iteration)
    except _NonFinite as exc:
        bad_iteration, term, value = exc.args
        kept = (f"the last good state {state_path} (iteration {saved['iteration']}) was kept"
                if saved["iteration"] is not None else "no state had been saved yet")
        raise SfsrError(f"{stage} training of {cfg['arch']} x{scale} in {out_dir} stopped: loss term "
                        f"'{term}' is {value} at iteration {bad_iteration}; {kept}. Lower lr, set "
                        "grad_clip or turn bf16 off, then re-run (it resumes from the kept state)") from None
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    elapsed += time.perf_counter() - t0
    if saved["iteration"] != iteration:  # e.g. max_iterations=0: record the initial state
        save_state(iteration)
    if stop < total:
        log.info("stopped at iteration %d of %d (max_iterations); state in %s", stop, total, state_path)
        return state_path

    # ---- final outputs (generator.pt last)
    waits = [r["data_wait_fraction"] for r in rows if not pd.isna(r.get("data_wait_fraction", math.nan))]
    if waits:
        log.info("%s: mean fraction of step time waiting for data %.1f%%", stage, 100 * float(np.mean(waits)))
    io.write_csv(out_dir / "train_log.csv", pd.DataFrame(rows, columns=_log_columns(columns, val_extra)))
    final_model = eval_model
    semantic_info = None
    if classifier_meta is not None:
        semantic_info = {"classifier_checkpoint": str(classifier_checkpoint),
                         "classifier_sha256": _sha256(classifier_checkpoint),
                         "classifier_input_size": cls_size, "classifier_resize_size": cls_resize,
                         "class_ids": classifier_meta.get("class_ids"),
                         "labels_used": bool(use_labels), "lr_patch": lr_patch}
    if head is not None:
        lr_sizes = lr_eval_sizes(cls_size, cls_resize, scale)
        final_head = eval_trainable.head
        io.torch_save(out_dir / "lr_head.pt", {
            "kind": HEAD_KIND, "format": HEAD_FORMAT, "in_features": int(generator.num_features),
            "num_classes": int(classifier_meta["arch"]["num_classes"]),
            "state_dict": {k: v.detach().cpu().clone() for k, v in final_head.state_dict().items()},
            "class_ids": [int(c) for c in classifier_meta.get("class_ids", [])],
            "class_names": [str(n) for n in classifier_meta.get("class_names", [])],
            "scale": int(scale), "input_size": lr_sizes[0], "resize_size": lr_sizes[1],
            "classifier_input_size": cls_size, "classifier_resize_size": cls_resize, "mode": mode,
            "generator": spec, "classifier_checkpoint": str(classifier_checkpoint), "iterations": total,
            "ema": ema is not None})
    provenance.write(out_dir / "provenance.json", config=cfg, seed=seed, stage=stage,
                     init_checkpoint=str(init_checkpoint) if init_checkpoint else None,
                     train_hr_dirs=[str(d) for d in train_hr_dirs],
                     valid_hr_dirs=[str(d) for d in valid_hr_dirs],
                     device=str(dev), speed_flags=flags, iterations=total, loss_weights=weights,
                     parameters=count_parameters(generator),
                     head_parameters=count_parameters(head) if head is not None else None,
                     discriminator_parameters=count_parameters(disc) if disc is not None else None,
                     ema=ema is not None, best=best if math.isfinite(best["psnr_y"]) else None,
                     semantic=semantic_info, training_time_s=elapsed)
    save_generator(out_dir / "generator.pt", final_model, spec, stage=stage, iterations=total,
                   ema=ema is not None, training_time_s=elapsed,
                   best_psnr_y=best["psnr_y"] if math.isfinite(best["psnr_y"]) else None)
    return out_dir / "generator.pt"


def _log_columns(terms: Sequence[str], val_extra: Sequence[str] = ()) -> list[str]:
    return ["iteration", *terms, "lr", "data_wait_fraction", "val_psnr_y", "val_ssim_y",
            "val_bicubic_psnr_y", "val_bicubic_ssim_y", *val_extra, "elapsed_s"]
