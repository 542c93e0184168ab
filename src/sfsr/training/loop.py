"""The iteration-based SR training loop of every stage (:data:`sfsr.training.stages.STAGES`):
PSNR-oriented warm-up, GAN fine-tuning, semantic-favorable fine-tuning and its control,
shared-feature (SR + LR classification) training and its control, and reference-based SR (SSEN).

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

The parts live beside it, one job each: :mod:`~sfsr.training.settings` (torch-free: defaults,
merge, checks, loss weights), :mod:`~sfsr.training.parts` (device, models, losses, optimisers),
:mod:`~sfsr.training.step` (one optimisation step), :mod:`~sfsr.training.data` (patches, splits,
validation images), :mod:`~sfsr.training.validation`, :mod:`~sfsr.training.state` (checkpoint,
resume, RNG, fingerprint) and :mod:`~sfsr.training.lr_head` (the shared stage's LR classifier).

``cfg`` is the flat settings dict of one model stage (see
:func:`~sfsr.training.settings.stage_config`): ``arch``, ``scale``, ``kwargs`` plus the keys of
:data:`~sfsr.training.settings.TRAINING_DEFAULTS`.
"""

from __future__ import annotations

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
from torch.utils.data import Dataset
from tqdm import tqdm

from sfsr import io, provenance
from sfsr.errors import ConfigError, SfsrError
from sfsr.models import count_parameters, generator_spec, save_generator
from sfsr.tensors import resolve_device, to_float
from sfsr.training import distributed
from sfsr.training.data import (ManifestPatchDataset, PatchDataset, RefPairDataset, ValidationImage,
                                load_reference_validation, load_validation_items, make_loader, make_lr_batch,
                                select_training_images, whole_image_lr_patch)
from sfsr.training.lr_head import save_lr_head, validate_head
from sfsr.training.parts import FrozenClassifier, Parts, build_generator_part, build_parts, frozen_classifier
from sfsr.training.settings import resolve_config, stage_weights
from sfsr.training.speed import speed_flags
from sfsr.training.stages import STAGES, Stage
from sfsr.training.state import (file_sha256, load_state, rng_state, run_fingerprint, save_state,
                                 set_rng_state)
from sfsr.training.step import train_step
from sfsr.training.validation import bicubic_reference, validate

log = logging.getLogger("sfsr.training")

STATE_FORMAT = 1
#: Mean absolute offset (LR-feature pixels) of a reference-based generator's deformable layers above
#: which the log warns: alignment offsets that large usually mean the training is diverging.
OFFSET_WARN_PX = 10


def train(stage: str, cfg: dict, *, train_hr_dirs: Sequence[str | os.PathLike],
          valid_hr_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
          init_checkpoint: str | os.PathLike | None = None, device: str = "auto", seed: int = 0,
          max_iterations: int | None = None, feature_net: nn.Module | None = None,
          classifier_checkpoint: str | os.PathLike | None = None) -> Path:
    """Train one model stage; returns ``out_dir/generator.pt`` (or ``out_dir/state/last.pt`` when
    stopped early by ``max_iterations``).

    ``stage``: a key of :data:`~sfsr.training.stages.STAGES` - 'warmup' (pixel loss); 'gan'
    (generator initialised from ``init_checkpoint``, the warm-up ``generator.pt``; discriminator; loss
    preset ``loss_preset`` with ``loss_weights`` overrides); 'semantic' (as gan, plus the label-free
    semantic prior of the frozen classifier of ``classifier_checkpoint``; a discriminator only when
    the adversarial weight is > 0); 'shared' (generator + LR classification head on the shared
    encoder, SR loss + ``shared_cls``; also writes ``lr_head.pt``); the controls
    'semantic_control' / 'shared_control' (as their stage without its extra term); 'refsr' (SSEN
    from scratch on reference pairs, pixel loss). See
    :func:`~sfsr.training.settings.stage_weights` for each stage's terms. ``device='auto'`` defers to
    ``cfg['device']``. ``max_iterations``: stop after that iteration, leaving a resumable state and no
    ``generator.pt``. ``feature_net``: a module to use as the perceptual feature network (e.g. the
    pipeline's classifier, with ``perceptual.layer``); with ``perceptual.net: classifier`` and no
    ``feature_net`` the classifier of ``classifier_checkpoint`` is used. An existing
    ``out_dir/state/last.pt`` of the same run (:func:`~sfsr.training.state.run_fingerprint`) is
    resumed. A non-finite loss raises SfsrError naming the iteration and term; the last saved state
    stays as it was."""
    # ---- settings
    if stage not in STAGES:
        raise ConfigError(f"unknown training stage {stage!r}; valid: {', '.join(STAGES)}")
    st = STAGES[stage]
    cfg = resolve_config(cfg, stage)
    weights = stage_weights(stage, cfg)
    if st.classifier and classifier_checkpoint is None:
        raise ConfigError(f"the {stage} stage needs classifier_checkpoint (the classifier.pt of the "
                          "classifier stage: the frozen fine-grained classifier)")
    out_dir = Path(out_dir)
    state_path = out_dir / "state" / "last.pt"
    dev = resolve_device(cfg["device"] if device == "auto" else device, "training.device")
    ddp, dev = distributed.setup(dev)  # started by torchrun: this rank's share (docs/multi_gpu.md)
    try:
        return _train(stage, st, cfg, weights, out_dir, state_path, dev, ddp, train_hr_dirs=train_hr_dirs,
                      valid_hr_dirs=valid_hr_dirs, init_checkpoint=init_checkpoint, seed=seed,
                      max_iterations=max_iterations, feature_net=feature_net,
                      classifier_checkpoint=classifier_checkpoint)
    finally:
        ddp.close()


def _train(stage: str, st: Stage, cfg: dict, weights: dict, out_dir: Path, state_path: Path,
           dev: torch.device, ddp: distributed.Dist, *, train_hr_dirs, valid_hr_dirs, init_checkpoint,
           seed: int, max_iterations: int | None, feature_net: nn.Module | None,
           classifier_checkpoint) -> Path:
    """:func:`train` after the settings are checked and the device (and process group) is set."""
    if cfg["batch_size"] % ddp.world:
        raise ConfigError(f"training.batch_size {cfg['batch_size']} (the batch of all processes together) "
                          f"must be a multiple of the {ddp.world} processes (gpus); change either")
    flags = speed_flags(cfg, dev)
    total, scale = cfg["iterations"], cfg["scale"]
    stop = total if max_iterations is None else min(total, int(max_iterations))
    provenance.seed_everything(seed)

    # ---- frozen classifier, the state to resume (if any), models, losses, optimisers
    classifier = frozen_classifier(st, cfg, weights, classifier_checkpoint, feature_net, dev)
    spec = generator_spec(cfg["arch"], scale, **cfg["kwargs"])
    fingerprint = run_fingerprint(stage, cfg, seed, train_hr_dirs, init_checkpoint, classifier_checkpoint)
    if not ddp.main:  # rank 0 first: it removes stale temporaries or a foreign state
        ddp.barrier()
    state = _resumable_state(state_path, stage, fingerprint)
    if ddp.main:
        ddp.barrier()
    generator = build_generator_part(st, cfg, spec, dev, flags, init_checkpoint, resuming=state is not None)
    parts = build_parts(st, cfg, weights, generator, dev, flags, classifier, classifier_checkpoint,
                        feature_net)
    distributed.wrap(parts, ddp, dev, flags)
    val_extra = ["val_head_top1"] if st.lr_head else []

    # ---- resume: weights, optimisers, RNG, log so far
    start, best, elapsed, rows = 0, {"psnr_y": -math.inf, "iteration": 0}, 0.0, []
    if state is not None:
        if state.get("format") != STATE_FORMAT or state["stage"] != stage or state["spec"] != spec:
            raise ConfigError(f"{state_path} holds the state of another run (stage {state.get('stage')}, "
                              f"model {state.get('spec')}); delete {out_dir} to start this one afresh")
        parts.load_state(state)
        start, best, elapsed, rows = state["iteration"], state["best"], state["elapsed_s"], state["log"]
        set_rng_state(state["rng"])
        if state["iterations"] != total:
            log.warning("%s was made for %d iterations, now %d: the schedule changes", state_path,
                        state["iterations"], total)
        if ddp.main:
            log.info("resuming %s training from %s at iteration %d", stage, state_path, start)

    # ---- data: training patches (from iteration `start` on), validation images, bicubic line
    use_labels = st.lr_head and "shared_cls" in weights and cfg["shared"]["mode"] == "label"
    class_to_index = classifier.meta["class_to_index"] if classifier is not None else None
    keep, labels = select_training_images(train_hr_dirs, cfg["train_split"],
                                          class_to_index if use_labels else None)
    lr_patch = cfg["lr_patch"]
    if lr_patch is None:
        lr_patch = whole_image_lr_patch(train_hr_dirs, scale, keep)
        log.info("lr_patch null: LR patches of %d px (HR %d px)", lr_patch, lr_patch * scale)
    if start < stop:
        loader = _training_batches(cfg, st, train_hr_dirs, scale, lr_patch, keep, labels, total, start, seed, dev,
                                   ddp)
    if st.data == "refsr":  # each target with its most similar reference
        valid, valid_labels = load_reference_validation(valid_hr_dirs, scale), []
    else:
        valid, valid_labels = load_validation_items(valid_hr_dirs, scale, cfg["valid_split"],
                                                    class_to_index if st.lr_head else None)
    if not valid:
        log.info("no validation images: best.pt is not written")
    bicubic = bicubic_reference(valid, scale) if valid else None

    # ---- the loop: step, log, validate, checkpoint
    bar = tqdm(total=total, initial=start, desc=f"{stage} {cfg['arch']} x{scale}", dynamic_ncols=True,
               mininterval=1.0 if sys.stderr.isatty() else 30.0, file=sys.stderr, disable=not ddp.main)
    book = TrainLog(parts.columns, val_extra, rows, elapsed, bar,
                    _tensorboard(cfg["tensorboard"] and ddp.main, out_dir / "tensorboard"), stage,
                    reduce=ddp.mean if ddp.active else None)

    run = {"format": STATE_FORMAT, "stage": stage, "spec": spec, "fingerprint": fingerprint,
           "iterations": total}  # what every saved state of this run says about it
    saved = start if state is not None else None  # the iteration of the last saved state
    iteration = start
    if start == 0 and valid:  # the starting point of the curve (a residual model: bicubic)
        if ddp.main:
            best = _validate(parts, book, 0, valid, valid_labels, bicubic, scale, dev, best, out_dir, spec, stage)
        ddp.barrier()
    try:
        for iteration in range(start + 1, stop + 1):
            t_wait = time.perf_counter()
            batch = next(loader)
            wait = time.perf_counter() - t_wait
            hr_u8 = batch["hr"].to(dev, non_blocking=True)
            lr_u8 = batch["lr"].to(dev, non_blocking=True) if "lr" in batch else make_lr_batch(hr_u8, scale)
            label = batch["label"].to(dev, non_blocking=True) if "label" in batch else None
            ref = to_float(batch["ref"], dev, flags["channels_last"]) if "ref" in batch else None
            lr_now = parts.opt_g.param_groups[0]["lr"]
            losses = train_step(parts, to_float(lr_u8, dev, flags["channels_last"]),
                                to_float(hr_u8, dev, flags["channels_last"]), label, ref)
            book.add(losses, lr_now, wait)
            bar.update(1)
            val_now = iteration % cfg["val_every"] == 0 or iteration == total
            ckpt_now = iteration % cfg["checkpoint_every"] == 0 or iteration == stop
            if iteration % cfg["log_every"] == 0 or val_now or ckpt_now:
                book.flush(iteration)
            if val_now and valid:
                if ddp.main:
                    best = _validate(parts, book, iteration, valid, valid_labels, bicubic, scale, dev, best,
                                     out_dir, spec, stage)
                ddp.barrier()
            if ckpt_now:
                saved = _checkpoint(state_path, run, iteration, parts, best, book) if ddp.main else iteration
                ddp.barrier()
    except _NonFinite as exc:
        bad_iteration, term, value = exc.args
        kept = (f"the last good state {state_path} (iteration {saved}) was kept"
                if saved is not None else "no state had been saved yet")
        raise SfsrError(f"{stage} training of {cfg['arch']} x{scale} in {out_dir} stopped: loss term "
                        f"'{term}' is {value} at iteration {bad_iteration}; {kept}. Lower lr, set "
                        "grad_clip or turn bf16 off, then re-run (it resumes from the kept state)") from None
    finally:
        bar.close()
        if book.writer is not None:
            book.writer.close()
    if saved != iteration:  # e.g. max_iterations=0: record the initial state
        saved = _checkpoint(state_path, run, iteration, parts, best, book) if ddp.main else iteration
        ddp.barrier()
    if stop < total:
        if ddp.main:
            log.info("stopped at iteration %d of %d (max_iterations); state in %s", stop, total, state_path)
        return state_path

    # ---- final outputs (generator.pt last)
    if ddp.main:
        _write_outputs(out_dir, st, cfg, parts, book, spec=spec, seed=seed, flags=flags, dev=dev, best=best,
                       weights=weights, init_checkpoint=init_checkpoint, train_hr_dirs=train_hr_dirs,
                       valid_hr_dirs=valid_hr_dirs, classifier_checkpoint=classifier_checkpoint,
                       labels_used=bool(use_labels), lr_patch=lr_patch, world=ddp.world)
    ddp.barrier()
    return out_dir / "generator.pt"


# ------------------------------------------------------------------------------ loop helpers
class _NonFinite(Exception):
    pass


class TrainLog:
    """The rows of ``train_log.csv``: per-iteration losses gathered in a window and logged as one
    row of means per ``log_every`` iterations (a non-finite value stops the run), plus the
    validation numbers; mirrored to the progress bar and TensorBoard."""

    def __init__(self, columns: Sequence[str], val_extra: Sequence[str], rows: list[dict],
                 elapsed: float, bar: Any, writer: Any, stage: str, reduce: Any = None) -> None:
        self.columns, self.val_extra, self.rows = list(columns), list(val_extra), rows
        self.reduce = reduce  # distributed: the mean over the ranks of the window's losses
        self.elapsed, self.t0 = elapsed, time.perf_counter()  # seconds of earlier sessions, this one's start
        self.bar, self.writer, self.stage = bar, writer, stage
        self._reset(self.t0)

    def _reset(self, now: float) -> None:
        self.window: list[torch.Tensor] = []
        self.window_lr: list[float] = []
        self.wait, self.window_start = 0.0, now

    def elapsed_s(self) -> float:
        return self.elapsed + time.perf_counter() - self.t0

    def add(self, losses: torch.Tensor, lr: float, wait: float) -> None:
        self.window.append(losses)
        self.window_lr.append(lr)
        self.wait += wait

    def flush(self, iteration: int) -> None:
        """Check the window's losses for non-finite values and log their means."""
        if not self.window:
            return
        values = torch.stack(self.window).float()
        if self.reduce is not None:  # every rank gets the same numbers (and stops together on NaN)
            values = self.reduce(values)
        values = values.cpu().numpy()
        bad = np.argwhere(~np.isfinite(values))
        if len(bad):
            row, col = bad[0]
            raise _NonFinite(iteration - len(self.window) + 1 + int(row), self.columns[int(col)],
                             float(values[row, col]))
        now = time.perf_counter()
        rec = {"iteration": iteration, **dict(zip(self.columns, values.mean(axis=0).tolist())),
               "lr": self.window_lr[-1], "data_wait_fraction": self.wait / max(now - self.window_start, 1e-9),
               "val_psnr_y": math.nan, "val_ssim_y": math.nan, **{k: math.nan for k in self.val_extra},
               "elapsed_s": self.elapsed + now - self.t0}
        self.rows.append(rec)
        if rec.get("offset", 0.0) > OFFSET_WARN_PX:
            log.warning("%s: mean |offset| of the deformable layers is %.1f LR-feature pixels at iteration %d "
                        "(over %d: deformable alignment may be diverging; lower lr or set grad_clip)",
                        self.stage, rec["offset"], iteration, OFFSET_WARN_PX)
        self.bar.set_postfix({k: f"{rec[k]:.4g}" for k in self.columns} | {
            "lr": f"{rec['lr']:.2e}", "wait": f"{rec['data_wait_fraction']:.0%}"}, refresh=False)
        if self.writer is not None:
            for key in [*self.columns, "lr", "data_wait_fraction"]:
                self.writer.add_scalar(f"{self.stage}/{key}", rec[key], iteration)
        self._reset(now)

    def validation(self, iteration: int, metrics: dict[str, float], bicubic: dict[str, float]) -> None:
        """Record a validation (on the row of ``iteration``, added when there is none)."""
        if not self.rows or self.rows[-1]["iteration"] != iteration:
            self.rows.append({"iteration": iteration, "elapsed_s": self.elapsed_s()})
        self.rows[-1].update(val_psnr_y=metrics["psnr_y"], val_ssim_y=metrics["ssim_y"],
                             val_bicubic_psnr_y=bicubic["psnr_y"], val_bicubic_ssim_y=bicubic["ssim_y"])
        if "head_top1" in metrics:
            self.rows[-1]["val_head_top1"] = metrics["head_top1"]
        if self.writer is not None:
            for key in ("psnr_y", "ssim_y", "head_top1"):
                if key in metrics:
                    self.writer.add_scalar(f"{self.stage}/val_{key}", metrics[key], iteration)
        head_text = f", LR-head top-1 {metrics['head_top1']:.3f}" if "head_top1" in metrics else ""
        self.bar.write(f"[{self.stage}] iteration {iteration}: validation PSNR-Y {metrics['psnr_y']:.3f} dB "
                       f"(bicubic {bicubic['psnr_y']:.3f}), SSIM-Y {metrics['ssim_y']:.4f}{head_text}")

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=_log_columns(self.columns, self.val_extra))


def _log_columns(terms: Sequence[str], val_extra: Sequence[str] = ()) -> list[str]:
    return ["iteration", *terms, "lr", "data_wait_fraction", "val_psnr_y", "val_ssim_y",
            "val_bicubic_psnr_y", "val_bicubic_ssim_y", *val_extra, "elapsed_s"]


def _resumable_state(state_path: Path, stage: str, fingerprint: str) -> dict | None:
    """``state/last.pt`` (else ``prev.pt``) when it belongs to this run; a state of another run is
    deleted (the workflow reruns a stage when its settings or inputs, e.g. the warm-up generator,
    change: that old state must not be continued)."""
    state = load_state(state_path, f"{stage} training")
    if state is not None and state.get("fingerprint") != fingerprint:
        log.warning("%s belongs to a run with other settings or inputs: starting afresh", state_path)
        shutil.rmtree(state_path.parent)
        return None
    return state


def _training_batches(cfg: dict, st: Stage, train_hr_dirs, scale: int, lr_patch: int, keep, labels,
                      total: int, start: int, seed: int, dev: torch.device,
                      ddp: distributed.Dist = distributed.SINGLE):
    """Iterator over the batches of iterations ``start + 1 ... total`` (deterministic per sample)."""
    data_kw = dict(length=total * cfg["batch_size"], seed=seed, lr_source=cfg["lr_source"],
                   cache_mb=cfg["cache_mb"], augment=cfg["augment"])
    if st.data == "refsr":  # target patches with the same window of a reference (LR made on the fly)
        dataset: Dataset = RefPairDataset(train_hr_dirs, scale, lr_patch, length=data_kw["length"], seed=seed,
                                          levels=cfg["reference_levels"], augment=cfg["augment"])
    elif keep is None and labels is None:
        dataset = PatchDataset(train_hr_dirs, scale, lr_patch, **data_kw)
    else:
        dataset = ManifestPatchDataset(train_hr_dirs, scale, lr_patch, keep=keep, labels=labels, **data_kw)
    # under DDP each rank gets its contiguous share of every global batch
    return iter(make_loader(dataset, cfg["batch_size"], start_iteration=start,
                            num_workers=cfg["num_workers"], seed=seed, device=dev, world=ddp.world,
                            rank=ddp.rank))


def _validate(parts: Parts, book: TrainLog, iteration: int, valid: Sequence[ValidationImage],
              valid_labels: Sequence[int | None], bicubic: dict[str, float], scale: int,
              dev: torch.device, best: dict, out_dir: Path, spec: dict, stage: str) -> dict:
    """Validate the (EMA) generator (and LR head), log it, write ``best.pt`` when it is the best so
    far (not at iteration 0); returns the best record."""
    metrics = validate(parts.eval_generator, valid, scale, dev)
    if parts.head is not None:
        c: FrozenClassifier = parts.classifier
        metrics["head_top1"] = validate_head(parts.eval_trainable, valid, valid_labels, c.model,
                                             (c.size, c.resize), scale, dev)
    book.validation(iteration, metrics, bicubic)
    if iteration > 0 and metrics["psnr_y"] > best["psnr_y"]:
        best = {"psnr_y": metrics["psnr_y"], "ssim_y": metrics["ssim_y"], "iteration": iteration}
        save_generator(out_dir / "best.pt", parts.eval_generator, spec, stage=stage, **best)
    return best


def _checkpoint(state_path: Path, run: dict, iteration: int, parts: Parts, best: dict, book: TrainLog) -> int:
    """Save the training state of ``iteration`` (atomically, the previous one kept) and the log so
    far; returns ``iteration``."""
    save_state(state_path, {**run, "iteration": iteration, **parts.state(), "rng": rng_state(),
                            "best": best, "elapsed_s": book.elapsed_s(), "log": book.rows})
    io.write_csv(state_path.parent.parent / "train_log.csv", book.frame())
    return iteration


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


def _write_outputs(out_dir: Path, st: Stage, cfg: dict, parts: Parts, book: TrainLog, *, spec: dict,
                   seed: int, flags: dict, dev: torch.device, best: dict, weights: dict, init_checkpoint,
                   train_hr_dirs, valid_hr_dirs, classifier_checkpoint, labels_used: bool,
                   lr_patch: int, world: int = 1) -> None:
    """train_log.csv, (LR head: lr_head.pt), provenance.json and, last, generator.pt."""
    elapsed = book.elapsed_s()
    waits = [r["data_wait_fraction"] for r in book.rows
             if not pd.isna(r.get("data_wait_fraction", math.nan))]
    if waits:
        log.info("%s: mean fraction of step time waiting for data %.1f%%", st.name, 100 * float(np.mean(waits)))
    io.write_csv(out_dir / "train_log.csv", book.frame())
    c: FrozenClassifier | None = parts.classifier
    semantic_info = None
    if c is not None:
        semantic_info = {"classifier_checkpoint": str(classifier_checkpoint),
                         "classifier_sha256": file_sha256(classifier_checkpoint),
                         "classifier_input_size": c.size, "classifier_resize_size": c.resize,
                         "class_ids": c.meta.get("class_ids"), "labels_used": labels_used,
                         "lr_patch": lr_patch}
    if parts.head is not None:
        save_lr_head(out_dir / st.outputs["head"], parts.eval_trainable.head,
                     in_features=parts.generator.num_features, classifier_meta=c.meta, scale=cfg["scale"],
                     classifier_sizes=(c.size, c.resize), mode=cfg["shared"]["mode"], generator=spec,
                     classifier_checkpoint=str(classifier_checkpoint), iterations=cfg["iterations"],
                     ema=parts.ema is not None)
    found_best = math.isfinite(best["psnr_y"])
    provenance.write(out_dir / "provenance.json", config=cfg, seed=seed, stage=st.name,
                     init_checkpoint=str(init_checkpoint) if init_checkpoint else None,
                     train_hr_dirs=[str(d) for d in train_hr_dirs],
                     valid_hr_dirs=[str(d) for d in valid_hr_dirs],
                     device=str(dev), speed_flags=flags, iterations=cfg["iterations"], loss_weights=weights,
                     parameters=count_parameters(parts.generator),
                     head_parameters=count_parameters(parts.head) if parts.head is not None else None,
                     discriminator_parameters=count_parameters(parts.disc) if parts.disc is not None else None,
                     ema=parts.ema is not None, best=best if found_best else None,
                     semantic=semantic_info, training_time_s=elapsed,
                     **({"processes": world} if world > 1 else {}))
    save_generator(out_dir / "generator.pt", parts.eval_generator, spec, stage=st.name,
                   iterations=cfg["iterations"], ema=parts.ema is not None, training_time_s=elapsed,
                   best_psnr_y=best["psnr_y"] if found_best else None)
