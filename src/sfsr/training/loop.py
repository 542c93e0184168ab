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
resume, RNG, fingerprint), :mod:`~sfsr.training.runner` (resume, log rows, progress bar, checkpoint,
non-finite stop: shared with the classifier's training) and :mod:`~sfsr.training.lr_head` (the
shared stage's LR classifier).

``cfg`` is the flat settings dict of one model stage (see
:func:`~sfsr.training.settings.stage_config`): ``arch``, ``scale``, ``kwargs`` plus the keys of
:data:`~sfsr.training.settings.TRAINING_DEFAULTS`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from sfsr import io, provenance
from sfsr.errors import ConfigError
from sfsr.models import count_parameters, generator_spec, save_generator
from sfsr.tensors import resolve_device, to_float
from sfsr.training import distributed
from sfsr.training.data import (ManifestPatchDataset, PatchDataset, RefPairDataset, ValidationImage,
                                load_reference_validation, load_validation_items, make_loader, make_lr_batch,
                                select_training_images, whole_image_lr_patch)
from sfsr.training.lr_head import save_lr_head, validate_head
from sfsr.training.parts import FrozenClassifier, Parts, build_generator_part, build_parts, frozen_classifier
from sfsr.training.runner import NonFinite, Run, begin, check_finite, resumable_state
from sfsr.training.settings import resolve_config, stage_weights
from sfsr.training.speed import speed_flags
from sfsr.training.stages import STAGES, Stage
from sfsr.training.state import file_sha256, rng_state, run_fingerprint, set_rng_state
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
    if stage not in STAGES:
        raise ConfigError(f"unknown training stage {stage!r}; valid: {', '.join(STAGES)}")
    st = STAGES[stage]
    cfg = resolve_config(cfg, stage)
    weights = stage_weights(stage, cfg)
    if st.classifier and classifier_checkpoint is None:
        raise ConfigError(f"the {stage} stage needs classifier_checkpoint (the classifier.pt of the "
                          "classifier stage: the frozen fine-grained classifier)")
    dev = resolve_device(cfg["device"] if device == "auto" else device, "training.device")
    ddp, dev = distributed.setup(dev)  # started by torchrun: this rank's share (docs/multi_gpu.md)
    try:
        return _train(Job(
            stage, st, cfg, weights, Path(out_dir), dev, ddp, train_hr_dirs, valid_hr_dirs, init_checkpoint,
            classifier_checkpoint, feature_net, seed,
            stop=cfg["iterations"] if max_iterations is None else min(cfg["iterations"], int(max_iterations)),
            spec=generator_spec(cfg["arch"], cfg["scale"], **cfg["kwargs"]),
            fingerprint=run_fingerprint(stage, cfg, seed, train_hr_dirs, init_checkpoint, classifier_checkpoint)))
    finally:
        ddp.close()


@dataclass
class Job:
    """One model stage's training as :func:`train` was asked for it: settings resolved, device (and
    process group) set; ``stop``: the last iteration of this session; ``spec``: the generator's;
    ``fingerprint``: the run's (:func:`~sfsr.training.state.run_fingerprint`)."""
    stage: str
    st: Stage
    cfg: dict
    weights: dict
    out_dir: Path
    dev: torch.device
    ddp: distributed.Dist
    train_hr_dirs: Sequence[str | os.PathLike]
    valid_hr_dirs: Sequence[str | os.PathLike]
    init_checkpoint: str | os.PathLike | None
    classifier_checkpoint: str | os.PathLike | None
    feature_net: nn.Module | None
    seed: int
    stop: int
    spec: dict
    fingerprint: str

    @property
    def state_path(self) -> Path:
        return self.out_dir / "state" / "last.pt"

    @property
    def what(self) -> str:
        return f"{self.stage} training"


@dataclass
class Data:
    """The training batches (None when no iteration is left), the validation images (their labels:
    the LR head's) and bicubic's numbers on them."""
    batches: Iterator | None
    valid: list[ValidationImage]
    valid_labels: list[int | None]
    bicubic: dict[str, float] | None
    lr_patch: int
    labels_used: bool


def _train(job: Job) -> Path:
    """:func:`train` after the settings are checked and the device (and process group) is set."""
    cfg, ddp, total = job.cfg, job.ddp, job.cfg["iterations"]
    # ---- prepare: speed flags, seeds, the state to resume (if any), models, losses, optimisers
    flags, state, parts = _prepare(job)
    # ---- resume: weights, optimisers, RNG, log so far
    run = _resume(job, state, parts)
    # ---- batches: training patches (from iteration run.start on), validation images, bicubic line
    data = _data(job, parts.classifier, run.start)
    run.open_bar(total, run.start, f"{job.stage} {cfg['arch']} x{cfg['scale']}", enabled=ddp.main)
    book = TrainLog(parts.columns, ["val_head_top1"] if job.st.lr_head else [], run,
                    _tensorboard(cfg["tensorboard"] and ddp.main, job.out_dir / "tensorboard"), job.stage,
                    reduce=ddp.mean if ddp.active else None)
    iteration = run.start
    try:
        if run.start == 0 and data.valid:  # the starting point of the curve (a residual model: bicubic)
            _validate(job, parts, book, run, data, 0)
        for iteration in range(run.start + 1, job.stop + 1):
            # ---- step: the next batch, one optimisation step, its losses logged
            t_wait = time.perf_counter()
            batch = next(data.batches)
            wait = time.perf_counter() - t_wait
            lr_now = parts.opt_g.param_groups[0]["lr"]
            book.add(train_step(parts, *_on_device(batch, job.dev, cfg["scale"], flags)), lr_now, wait)
            run.bar.update(1)
            val_now = iteration % cfg["val_every"] == 0 or iteration == total
            ckpt_now = iteration % cfg["checkpoint_every"] == 0 or iteration == job.stop
            if iteration % cfg["log_every"] == 0 or val_now or ckpt_now:
                book.flush(iteration)
            # ---- validate: every val_every iterations and at the end
            if val_now and data.valid:
                _validate(job, parts, book, run, data, iteration)
            # ---- checkpoint: every checkpoint_every iterations and at the stop
            if ckpt_now:
                _checkpoint(job, run, parts, iteration)
    except NonFinite as exc:
        raise run.non_finite(exc, f"{job.stage} training of {cfg['arch']} x{cfg['scale']} in {job.out_dir}",
                             "Lower lr, set grad_clip or turn bf16 off") from None
    finally:
        run.close()
        book.close()
    if run.saved != iteration:  # e.g. max_iterations=0: record the initial state
        _checkpoint(job, run, parts, iteration)
    # ---- finish: stopped early (a resumable state), else the outputs (generator.pt last)
    if job.stop < total:
        if ddp.main:
            log.info("stopped at iteration %d of %d (max_iterations); state in %s", job.stop, total, job.state_path)
        return job.state_path
    if ddp.main:
        _write_outputs(job, parts, run, data, flags)
    ddp.barrier()
    return job.out_dir / "generator.pt"


# ------------------------------------------------------------------------------ the steps
def _prepare(job: Job) -> tuple[dict[str, bool], dict | None, Parts]:
    """The speed flags, the state to resume (None: start afresh) and the parts (models, losses,
    optimisers), after seeding; always in this order, so a run makes the same random draws."""
    cfg, ddp = job.cfg, job.ddp
    if cfg["batch_size"] % ddp.world:
        raise ConfigError(f"training.batch_size {cfg['batch_size']} (the batch of all processes together) "
                          f"must be a multiple of the {ddp.world} processes (gpus); change either")
    flags = speed_flags(cfg, job.dev)
    provenance.seed_everything(job.seed)
    classifier = frozen_classifier(job.st, cfg, job.weights, job.classifier_checkpoint, job.feature_net, job.dev)
    if not ddp.main:  # rank 0 first: it removes stale temporaries or a foreign state
        ddp.barrier()
    state = resumable_state(job.state_path, job.what, {"fingerprint": job.fingerprint})
    if ddp.main:
        ddp.barrier()
    generator = build_generator_part(job.st, cfg, job.spec, job.dev, flags, job.init_checkpoint,
                                     resuming=state is not None)
    parts = build_parts(job.st, cfg, job.weights, generator, job.dev, flags, classifier,
                        job.classifier_checkpoint, job.feature_net)
    distributed.wrap(parts, ddp, job.dev, flags)
    return flags, state, parts


def _resume(job: Job, state: dict | None, parts: Parts) -> Run:
    """A fresh run, or one continuing ``state``: weights, optimisers, RNG, best record, log so far."""
    if state is not None and (state.get("format") != STATE_FORMAT or state["stage"] != job.stage
                              or state["spec"] != job.spec):
        raise ConfigError(f"{job.state_path} holds the state of another run (stage {state.get('stage')}, "
                          f"model {state.get('spec')}); delete {job.out_dir} to start this one afresh")
    run = begin(state, job.state_path, job.what, "iteration", job.cfg["iterations"],
                _log_columns(parts.columns, ["val_head_top1"] if job.st.lr_head else []),
                {"psnr_y": -math.inf, "iteration": 0}, announce=job.ddp.main)
    if state is not None:
        parts.load_state(state)
        set_rng_state(state["rng"])
    return run


def _data(job: Job, classifier: FrozenClassifier | None, start: int) -> Data:
    """The training batches of iterations ``start + 1 ...`` (labelled for the LR head's ``label``
    mode), the validation images and bicubic's numbers on them."""
    st, cfg, scale = job.st, job.cfg, job.cfg["scale"]
    use_labels = st.lr_head and "shared_cls" in job.weights and cfg["shared"]["mode"] == "label"
    class_to_index = classifier.meta["class_to_index"] if classifier is not None else None
    keep, labels = select_training_images(job.train_hr_dirs, cfg["train_split"],
                                          class_to_index if use_labels else None)
    lr_patch = cfg["lr_patch"]
    if lr_patch is None:
        lr_patch = whole_image_lr_patch(job.train_hr_dirs, scale, keep)
        log.info("lr_patch null: LR patches of %d px (HR %d px)", lr_patch, lr_patch * scale)
    batches = (_training_batches(cfg, st, job.train_hr_dirs, scale, lr_patch, keep, labels, cfg["iterations"],
                                 start, job.seed, job.dev, job.ddp) if start < job.stop else None)
    if st.data == "refsr":  # each target with its most similar reference
        valid, valid_labels = load_reference_validation(job.valid_hr_dirs, scale), []
    else:
        valid, valid_labels = load_validation_items(job.valid_hr_dirs, scale, cfg["valid_split"],
                                                    class_to_index if st.lr_head else None)
    if not valid:
        log.info("no validation images: best.pt is not written")
    return Data(batches, valid, valid_labels, bicubic_reference(valid, scale) if valid else None, lr_patch,
                bool(use_labels))


def _on_device(batch: dict, dev: torch.device, scale: int, flags: dict[str, bool]) -> tuple:
    """A batch as :func:`~sfsr.training.step.train_step` takes it: float LR and HR images (LR made
    here when the batch has none), labels, reference."""
    hr_u8 = batch["hr"].to(dev, non_blocking=True)
    lr_u8 = batch["lr"].to(dev, non_blocking=True) if "lr" in batch else make_lr_batch(hr_u8, scale)
    label = batch["label"].to(dev, non_blocking=True) if "label" in batch else None
    ref = to_float(batch["ref"], dev, flags["channels_last"]) if "ref" in batch else None
    return (to_float(lr_u8, dev, flags["channels_last"]), to_float(hr_u8, dev, flags["channels_last"]), label,
            ref)


def _validate(job: Job, parts: Parts, book: TrainLog, run: Run, data: Data, iteration: int) -> None:
    """Validate the (EMA) generator (and LR head) on rank 0, log it, write ``best.pt`` when it is the
    best so far (not at iteration 0); the other ranks wait."""
    if job.ddp.main:
        scale = job.cfg["scale"]
        metrics = validate(parts.eval_generator, data.valid, scale, job.dev)
        if parts.head is not None:
            c: FrozenClassifier = parts.classifier
            metrics["head_top1"] = validate_head(parts.eval_trainable, data.valid, data.valid_labels, c.model,
                                                 (c.size, c.resize), scale, job.dev)
        book.validation(iteration, metrics, data.bicubic)
        if iteration > 0 and metrics["psnr_y"] > run.best["psnr_y"]:
            run.best = {"psnr_y": metrics["psnr_y"], "ssim_y": metrics["ssim_y"], "iteration": iteration}
            save_generator(job.out_dir / "best.pt", parts.eval_generator, job.spec, stage=job.stage, **run.best)
    job.ddp.barrier()


def _checkpoint(job: Job, run: Run, parts: Parts, iteration: int) -> None:
    """Rank 0 saves the training state of ``iteration`` (atomically, the previous one kept) and the
    log so far; the other ranks wait."""
    run.checkpoint(iteration, {"format": STATE_FORMAT, "stage": job.stage, "spec": job.spec,
                               "fingerprint": job.fingerprint, "iterations": job.cfg["iterations"],
                               "iteration": iteration, **parts.state(), "rng": rng_state()}
                   if job.ddp.main else None)
    job.ddp.barrier()


# ------------------------------------------------------------------------------ loop helpers
class TrainLog:
    """The rows of ``train_log.csv`` (kept by the :class:`~sfsr.training.runner.Run`): per-iteration
    losses gathered in a window and logged as one row of means per ``log_every`` iterations (a
    non-finite value stops the run), plus the validation numbers; mirrored to the progress bar and
    TensorBoard."""

    def __init__(self, columns: Sequence[str], val_extra: Sequence[str], run: Run, writer: Any, stage: str,
                 reduce: Any = None) -> None:
        self.columns, self.val_extra, self.run = list(columns), list(val_extra), run
        self.reduce = reduce  # distributed: the mean over the ranks of the window's losses
        self.writer, self.stage = writer, stage
        self._reset(time.perf_counter())

    def _reset(self, now: float) -> None:
        self.window: list[torch.Tensor] = []
        self.window_lr: list[float] = []
        self.wait, self.window_start = 0.0, now

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
        check_finite(values, self.columns, range(iteration - len(self.window) + 1, iteration + 1))
        now = time.perf_counter()
        rec = {"iteration": iteration, **dict(zip(self.columns, values.mean(axis=0).tolist())),
               "lr": self.window_lr[-1], "data_wait_fraction": self.wait / max(now - self.window_start, 1e-9),
               "val_psnr_y": math.nan, "val_ssim_y": math.nan, **{k: math.nan for k in self.val_extra},
               "elapsed_s": self.run.elapsed + now - self.run.t0}
        if rec.get("offset", 0.0) > OFFSET_WARN_PX:
            log.warning("%s: mean |offset| of the deformable layers is %.1f LR-feature pixels at iteration %d "
                        "(over %d: deformable alignment may be diverging; lower lr or set grad_clip)",
                        self.stage, rec["offset"], iteration, OFFSET_WARN_PX)
        self.run.add_row(rec, {k: f"{rec[k]:.4g}" for k in self.columns} | {
            "lr": f"{rec['lr']:.2e}", "wait": f"{rec['data_wait_fraction']:.0%}"})
        if self.writer is not None:
            for key in [*self.columns, "lr", "data_wait_fraction"]:
                self.writer.add_scalar(f"{self.stage}/{key}", rec[key], iteration)
        self._reset(now)

    def validation(self, iteration: int, metrics: dict[str, float], bicubic: dict[str, float]) -> None:
        """Record a validation (on the row of ``iteration``, added when there is none)."""
        rows = self.run.rows
        if not rows or rows[-1]["iteration"] != iteration:
            rows.append({"iteration": iteration, "elapsed_s": self.run.elapsed_s()})
        rows[-1].update(val_psnr_y=metrics["psnr_y"], val_ssim_y=metrics["ssim_y"],
                        val_bicubic_psnr_y=bicubic["psnr_y"], val_bicubic_ssim_y=bicubic["ssim_y"])
        if "head_top1" in metrics:
            rows[-1]["val_head_top1"] = metrics["head_top1"]
        if self.writer is not None:
            for key in ("psnr_y", "ssim_y", "head_top1"):
                if key in metrics:
                    self.writer.add_scalar(f"{self.stage}/val_{key}", metrics[key], iteration)
        head_text = f", LR-head top-1 {metrics['head_top1']:.3f}" if "head_top1" in metrics else ""
        self.run.say(f"[{self.stage}] iteration {iteration}: validation PSNR-Y {metrics['psnr_y']:.3f} dB "
                     f"(bicubic {bicubic['psnr_y']:.3f}), SSIM-Y {metrics['ssim_y']:.4f}{head_text}")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _log_columns(terms: Sequence[str], val_extra: Sequence[str] = ()) -> list[str]:
    return ["iteration", *terms, "lr", "data_wait_fraction", "val_psnr_y", "val_ssim_y",
            "val_bicubic_psnr_y", "val_bicubic_ssim_y", *val_extra, "elapsed_s"]


def _training_batches(cfg: dict, st: Stage, train_hr_dirs, scale: int, lr_patch: int, keep, labels,
                      total: int, start: int, seed: int, dev: torch.device,
                      ddp: distributed.Dist = distributed.SINGLE):
    """Iterator over the batches of iterations ``start + 1 ... total`` (deterministic per sample)."""
    data_kw = dict(length=total * cfg["batch_size"], seed=seed, lr_source=cfg["lr_source"],
                   cache_mb=cfg["cache_mb"], augment=cfg["augment"])
    if st.data == "refsr":  # target patches with the same window of a reference (LR made on the fly)
        dataset: Dataset = RefPairDataset(train_hr_dirs, scale, lr_patch, length=data_kw["length"], seed=seed,
                                          levels=cfg["reference_levels"], augment=cfg["augment"],
                                          random_references=cfg["random_references"])
    elif keep is None and labels is None:
        dataset = PatchDataset(train_hr_dirs, scale, lr_patch, **data_kw)
    else:
        dataset = ManifestPatchDataset(train_hr_dirs, scale, lr_patch, keep=keep, labels=labels, **data_kw)
    # under DDP each rank gets its contiguous share of every global batch
    return iter(make_loader(dataset, cfg["batch_size"], start_iteration=start,
                            num_workers=cfg["num_workers"], seed=seed, device=dev, world=ddp.world,
                            rank=ddp.rank))


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


def _write_outputs(job: Job, parts: Parts, run: Run, data: Data, flags: dict[str, bool]) -> None:
    """train_log.csv, (LR head: lr_head.pt), provenance.json and, last, generator.pt."""
    st, cfg, best, out_dir = job.st, job.cfg, run.best, job.out_dir
    elapsed = run.elapsed_s()
    waits = [r["data_wait_fraction"] for r in run.rows
             if not pd.isna(r.get("data_wait_fraction", math.nan))]
    if waits:
        log.info("%s: mean fraction of step time waiting for data %.1f%%", st.name, 100 * float(np.mean(waits)))
    io.write_csv(out_dir / "train_log.csv", run.frame())
    c: FrozenClassifier | None = parts.classifier
    semantic_info = None
    if c is not None:
        semantic_info = {"classifier_checkpoint": str(job.classifier_checkpoint),
                         "classifier_sha256": file_sha256(job.classifier_checkpoint),
                         "classifier_input_size": c.size, "classifier_resize_size": c.resize,
                         "class_ids": c.meta.get("class_ids"), "labels_used": data.labels_used,
                         "lr_patch": data.lr_patch}
    if parts.head is not None:
        save_lr_head(out_dir / st.outputs["head"], parts.eval_trainable.head,
                     in_features=parts.generator.num_features, classifier_meta=c.meta, scale=cfg["scale"],
                     classifier_sizes=(c.size, c.resize), mode=cfg["shared"]["mode"], generator=job.spec,
                     classifier_checkpoint=str(job.classifier_checkpoint), iterations=cfg["iterations"],
                     ema=parts.ema is not None)
    found_best = math.isfinite(best["psnr_y"])
    provenance.write(out_dir / "provenance.json", config=cfg, seed=job.seed, stage=st.name,
                     init_checkpoint=str(job.init_checkpoint) if job.init_checkpoint else None,
                     train_hr_dirs=[str(d) for d in job.train_hr_dirs],
                     valid_hr_dirs=[str(d) for d in job.valid_hr_dirs],
                     device=str(job.dev), speed_flags=flags, iterations=cfg["iterations"], loss_weights=job.weights,
                     parameters=count_parameters(parts.generator),
                     head_parameters=count_parameters(parts.head) if parts.head is not None else None,
                     discriminator_parameters=count_parameters(parts.disc) if parts.disc is not None else None,
                     ema=parts.ema is not None, best=best if found_best else None,
                     semantic=semantic_info, training_time_s=elapsed,
                     **({"processes": job.ddp.world} if job.ddp.world > 1 else {}))
    save_generator(out_dir / "generator.pt", parts.eval_generator, job.spec, stage=st.name,
                   iterations=cfg["iterations"], ema=parts.ema is not None, training_time_s=elapsed,
                   best_psnr_y=best["psnr_y"] if found_best else None)
