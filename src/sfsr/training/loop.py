"""The iteration-based SR training loop: PSNR-oriented warm-up and GAN fine-tuning.

``train(stage, cfg, ...)`` trains one model stage and writes to ``out_dir``:

* ``state/last.pt``: the full training state (generator, EMA, discriminator, optimisers,
  schedulers, iteration, RNG states, best metric, log rows), written atomically every
  ``checkpoint_every`` iterations; a later call with the same ``out_dir`` resumes from it.
* ``best.pt``: the validated generator with the best PSNR-Y (``save_generator`` format).
* ``train_log.csv``: iteration, each loss term, lr, data_wait_fraction, val_psnr_y, val_ssim_y,
  elapsed_s (one row per ``log_every`` iterations; losses are means over those iterations).
* ``provenance.json`` and, written last, ``generator.pt`` (EMA weights when EMA is on).

``cfg`` is the flat settings dict of one model stage (see :func:`stage_config`): ``arch``, ``scale``,
``kwargs`` plus the keys of :data:`TRAINING_DEFAULTS`.
"""

from __future__ import annotations

import contextlib
import copy
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
from sfsr.models import (build_discriminator, build_generator, count_parameters, generator_spec,
                         save_generator)
from sfsr.training.data import (PatchDataset, ValidationImage, load_validation_set, make_loader,
                                make_lr_batch, to_float)
from sfsr.training.ema import make_ema

log = logging.getLogger("sfsr.training")

STAGES = ("warmup", "gan")
STATE_FORMAT = 1

#: Defaults of the ``training`` config section; a model's ``warmup``/``gan`` section overrides them
#: (dict-valued keys are merged one level deep). Mirrors config.schema.yaml (checked by a test).
TRAINING_DEFAULTS: dict[str, Any] = {
    "device": "auto",
    "batch_size": 16,
    "lr_patch": 24,
    "iterations": 100000,
    "optimizer": "adam",
    "lr": 2.0e-4,
    "betas": [0.9, 0.99],
    "weight_decay": 0.0,
    "scheduler": "multistep",
    "milestones": [0.5],
    "gamma": 0.5,
    "eta_min": 1.0e-7,
    "grad_clip": None,
    "ema_decay": 0.999,
    "log_every": 100,
    "val_every": 5000,
    "checkpoint_every": 5000,
    "bf16": True,
    "channels_last": True,
    "compile": False,
    "num_workers": 4,
    "lr_source": "on_the_fly",
    "cache_mb": 4096,
    "pixel_loss": "l1",
    "loss_preset": "esrgan",
    "loss_weights": {},
    "perceptual": {"net": "vgg19", "weights": "imagenet", "layer": None},
    "discriminator": {"arch": "vgg", "kwargs": {}, "lr": None},
    "tensorboard": False,
    "threads": 4,
    "gpus": 1,
    "mem_mb": 16000,
    "runtime": 720,
}
MODEL_KEYS = ("arch", "scale", "kwargs")
LOSS_TERMS = ("pixel", "perceptual", "adversarial")


# ------------------------------------------------------------------------------------ settings
def _merge(base: dict, override: dict | None) -> dict:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "loss_weights":
            out[key] = {**out[key], **copy.deepcopy(value)}
        else:
            out[key] = copy.deepcopy(value)
    return out


def stage_config(config: dict, model: str, stage: str) -> dict:
    """Flat settings of ``models.<model>.<stage>``: TRAINING_DEFAULTS < ``training`` < the stage
    section, plus the model's ``arch``, ``scale`` and ``kwargs``."""
    if stage not in STAGES:
        raise ConfigError(f"unknown training stage {stage!r}; valid: {', '.join(STAGES)}")
    models = config.get("models") or {}
    if model not in models:
        raise ConfigError(f"model {model!r} is not defined under 'models' (defined: "
                          f"{', '.join(sorted(models)) or 'none'})")
    entry = models[model]
    section = entry.get(stage, {} if stage == "warmup" else None)
    if section is None:
        raise ConfigError(f"config key 'models.{model}.{stage}' is null: this model has no {stage} "
                          "stage; give it a mapping (possibly {}) to train it")
    cfg = _merge(_merge(TRAINING_DEFAULTS, config.get("training")), section)
    cfg.update(arch=entry["arch"], scale=int(entry["scale"]), kwargs=dict(entry.get("kwargs") or {}))
    return cfg


def resolve_config(cfg: dict) -> dict:
    """``cfg`` with defaults filled in; unknown keys and bad values raise ConfigError."""
    unknown = sorted(set(cfg) - set(TRAINING_DEFAULTS) - set(MODEL_KEYS))
    if unknown:
        raise ConfigError(f"unknown training setting(s) {unknown}; valid: "
                          f"{', '.join(sorted([*TRAINING_DEFAULTS, *MODEL_KEYS]))}")
    missing = [k for k in ("arch", "scale") if k not in cfg]
    if missing:
        raise ConfigError(f"training settings lack {missing} (the model's arch and scale)")
    out = _merge(TRAINING_DEFAULTS, cfg)
    out.setdefault("kwargs", {})
    checks = [("optimizer", ("adam", "adamw")), ("scheduler", ("multistep", "cosine", "constant")),
              ("lr_source", ("on_the_fly", "prepared"))]
    for key, allowed in checks:
        if out[key] not in allowed:
            raise ConfigError(f"training setting '{key}' is {out[key]!r}; allowed: {', '.join(allowed)}")
    for key in ("iterations", "batch_size", "lr_patch", "log_every", "val_every", "checkpoint_every"):
        if not isinstance(out[key], int) or out[key] < 1:
            raise ConfigError(f"training setting '{key}' must be a positive integer, got {out[key]!r}")
    if any(not 0 < m < 1 for m in out["milestones"]):
        raise ConfigError(f"training setting 'milestones' holds fractions of the iterations in (0, 1), "
                          f"got {out['milestones']}")
    bad = sorted(set(out["loss_weights"]) - set(LOSS_TERMS))
    if bad:
        raise ConfigError(f"training setting 'loss_weights' has unknown term(s) {bad}; valid: "
                          f"{', '.join(LOSS_TERMS)}")
    if out["ema_decay"] is not None and not 0 <= out["ema_decay"] < 1:
        raise ConfigError(f"training setting 'ema_decay' must be in [0, 1) or null, got {out['ema_decay']}")
    return out


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
@torch.no_grad()
def validate(model: nn.Module, images: Sequence[ValidationImage], scale: int,
             device: torch.device) -> dict[str, float]:
    """Mean PSNR-Y / SSIM-Y of ``model`` on whole images (float32, outputs quantised to uint8)."""
    was_training = model.training
    model.eval()
    psnrs, ssims = [], []
    try:
        for item in images:
            lr = torch.from_numpy(item.lr).permute(2, 0, 1)[None].to(device).float().div_(255.0)
            sr = to_uint8(model(lr)[0])
            hr = item.hr[:, :, 0] if item.gray else item.hr
            m = image_metrics(hr, sr, scale)
            psnrs.append(m["psnr_y"])
            ssims.append(m["ssim_y"])
    finally:
        model.train(was_training)
    return {"psnr_y": float(np.mean(psnrs)), "ssim_y": float(np.mean(ssims))}


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


#: Settings that do not change what a run computes (where and how fast it runs, how often it logs,
#: how long it goes on): a resumed state stays valid when only these differ.
RUN_NEUTRAL_KEYS = ("device", "num_workers", "threads", "gpus", "mem_mb", "runtime", "log_every",
                    "val_every", "checkpoint_every", "tensorboard", "iterations", "cache_mb")


def run_fingerprint(stage: str, cfg: dict, seed: int, train_hr_dirs: Sequence[str | os.PathLike],
                    init_checkpoint: str | os.PathLike | None) -> str:
    """SHA-256 of everything that defines a run: stage, settings (less RUN_NEUTRAL_KEYS), seed,
    training folders and the content of the initial checkpoint."""
    init = None
    if init_checkpoint is not None and Path(init_checkpoint).is_file():
        h = hashlib.sha256()
        with open(init_checkpoint, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        init = h.hexdigest()
    payload = {"stage": stage, "seed": seed, "init": init,
               "train": sorted(str(Path(d).resolve()) for d in train_hr_dirs),
               "cfg": {k: v for k, v in cfg.items() if k not in RUN_NEUTRAL_KEYS}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def train(stage: str, cfg: dict, *, train_hr_dirs: Sequence[str | os.PathLike],
          valid_hr_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
          init_checkpoint: str | os.PathLike | None = None, device: str = "auto", seed: int = 0,
          max_iterations: int | None = None, feature_net: nn.Module | None = None) -> Path:
    """Train one model stage; returns ``out_dir/generator.pt`` (or ``out_dir/state/last.pt`` when
    stopped early by ``max_iterations``).

    ``stage``: 'warmup' (pixel loss) or 'gan' (generator initialised from ``init_checkpoint``, the
    warm-up ``generator.pt``; discriminator; loss preset ``loss_preset`` with ``loss_weights``
    overrides). ``device='auto'`` defers to ``cfg['device']``. ``max_iterations``: stop after that
    iteration, leaving a resumable state and no ``generator.pt``. ``feature_net``: a module to use as
    the perceptual feature network (e.g. the pipeline's classifier, with ``perceptual.layer``).
    An existing ``out_dir/state/last.pt`` is resumed. A non-finite loss raises SfsrError naming the
    iteration and term; the last saved state stays as it was."""
    if stage not in STAGES:
        raise ConfigError(f"unknown training stage {stage!r}; valid: {', '.join(STAGES)}")
    cfg = resolve_config(cfg)
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

    # ---- models, losses, optimisers
    spec = generator_spec(cfg["arch"], scale, **cfg["kwargs"])
    generator = build_generator(cfg["arch"], scale, **cfg["kwargs"])
    fingerprint = run_fingerprint(stage, cfg, seed, train_hr_dirs, init_checkpoint)
    state = torch.load(state_path, map_location="cpu", weights_only=True) if state_path.is_file() else None
    if state is not None and state.get("fingerprint") != fingerprint:
        # The workflow reruns a stage when its settings or inputs (e.g. the warm-up generator)
        # change; the old state belongs to that other run and must not be continued.
        log.warning("%s belongs to a run with other settings or inputs: starting afresh", state_path)
        shutil.rmtree(state_path.parent)
        state = None
    resuming = state is not None
    if stage == "gan" and init_checkpoint is None and not resuming:
        raise ConfigError("the gan stage needs init_checkpoint (the warm-up generator.pt)")
    if init_checkpoint is not None and not resuming:
        _load_init(generator, Path(init_checkpoint), spec)
    generator = generator.to(dev, memory_format=memory_format).train()
    ema = make_ema(generator, cfg["ema_decay"]) if cfg["ema_decay"] is not None else None
    opt_g = make_optimizer(generator.parameters(), cfg, cfg["lr"])
    sched_g = make_scheduler(opt_g, cfg)
    pix = pixel_loss(cfg["pixel_loss"])
    disc = opt_d = sched_d = perceptual = adv = None
    if stage == "warmup":
        weights = {"pixel": float(cfg["loss_weights"].get("pixel", 1.0))}
    else:
        if cfg["loss_preset"] not in LOSS_PRESETS:
            raise ConfigError(f"training setting 'loss_preset' is {cfg['loss_preset']!r}; allowed: "
                              f"{', '.join(LOSS_PRESETS)}")
        preset = LOSS_PRESETS[cfg["loss_preset"]]
        weights = {"pixel": preset["pixel"][1], "perceptual": preset["perceptual"],
                   "adversarial": preset["adversarial"], **cfg["loss_weights"]}
        weights = {k: float(v) for k, v in weights.items() if v}
        if "perceptual" in weights:
            pcfg = cfg["perceptual"]
            if feature_net is None and pcfg["net"] != "vgg19":
                raise ConfigError(f"perceptual.net {pcfg['net']!r} needs the feature network passed by "
                                  "the workflow (the trained classifier); use vgg19 or set "
                                  "loss_weights.perceptual: 0")
            layer = pcfg["layer"] or (preset["perceptual_layer"] if feature_net is None else None)
            if layer is None:
                raise ConfigError("perceptual.layer must name a layer of the given feature network")
            perceptual = PerceptualLoss(feature_net if feature_net is not None else "vgg19", layer=layer,
                                        weights=pcfg["weights"], criterion=preset["perceptual_criterion"],
                                        feature_scale=preset["perceptual_feature_scale"]).to(dev)
        dcfg = cfg["discriminator"]
        disc = build_discriminator(dcfg["arch"], **(dcfg.get("kwargs") or {}))
        disc = disc.to(dev, memory_format=memory_format).train()
        opt_d = make_optimizer(disc.parameters(), cfg, dcfg.get("lr") or cfg["lr"])
        sched_d = make_scheduler(opt_d, cfg)
        adv = adversarial_loss(preset["gan_type"])
        ragan = preset["gan_type"] == "ragan"
    g_fwd = torch.compile(generator) if flags["compile"] else generator
    d_fwd = torch.compile(disc) if (flags["compile"] and disc is not None) else disc
    columns = [*weights] + (["g_total", "d_loss"] if stage == "gan" else [])

    # ---- resume
    start, best, elapsed, rows = 0, {"psnr_y": -math.inf, "iteration": 0}, 0.0, []
    if resuming:
        if state.get("format") != STATE_FORMAT or state["stage"] != stage or state["spec"] != spec:
            raise ConfigError(f"{state_path} holds the state of another run (stage {state.get('stage')}, "
                              f"model {state.get('spec')}); delete {out_dir} to start this one afresh")
        generator.load_state_dict(state["generator"])
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
        io.torch_save(state_path, {
            "format": STATE_FORMAT, "stage": stage, "spec": spec, "iteration": iteration,
            "fingerprint": fingerprint,
            "iterations": total, "generator": generator.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "discriminator": disc.state_dict() if disc is not None else None,
            "opt_g": opt_g.state_dict(), "sched_g": sched_g.state_dict(),
            "opt_d": opt_d.state_dict() if opt_d is not None else None,
            "sched_d": sched_d.state_dict() if sched_d is not None else None,
            "rng": rng_state(), "best": best, "elapsed_s": elapsed + (time.perf_counter() - t0),
            "log": rows})
        io.write_csv(out_dir / "train_log.csv", pd.DataFrame(rows, columns=_log_columns(columns)))
        saved["iteration"] = iteration

    # ---- data
    if start < stop:
        dataset = PatchDataset(train_hr_dirs, scale, cfg["lr_patch"], length=total * cfg["batch_size"],
                               seed=seed, lr_source=cfg["lr_source"], cache_mb=cfg["cache_mb"])
        loader = iter(make_loader(dataset, cfg["batch_size"], start_iteration=start,
                                  num_workers=cfg["num_workers"], seed=seed, device=dev))
    valid = load_validation_set(valid_hr_dirs, scale) if valid_hr_dirs else []
    if not valid:
        log.info("no validation images: best.pt is not written")
    eval_model = ema.module if ema is not None else generator
    writer = _tensorboard(cfg["tensorboard"], out_dir / "tensorboard")
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if flags["bf16"] \
        else contextlib.nullcontext

    def clip(module: nn.Module) -> None:
        if cfg["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(module.parameters(), cfg["grad_clip"])

    def step(lr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        """One optimisation step; returns the detached loss terms (``columns`` order)."""
        if stage == "warmup":
            with autocast():
                sr = g_fwd(lr)
            terms = {"pixel": pix(sr.float(), hr)}
            loss = total_loss(terms, weights)
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            clip(generator)
            opt_g.step()
            sched_g.step()
            if ema is not None:
                ema.update_parameters(generator)
            return torch.stack([terms[k] for k in columns]).detach()
        disc.requires_grad_(False)
        with autocast():
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
            g_loss = total_loss(terms, weights)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        clip(generator)
        opt_g.step()
        sched_g.step()
        if ema is not None:
            ema.update_parameters(generator)
        disc.requires_grad_(True)
        with autocast():
            d_loss = adv(d_fwd(hr).float(), d_fwd(sr.detach()).float(), for_discriminator=True)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        clip(disc)
        opt_d.step()
        sched_d.step()
        terms.update(g_total=g_loss, d_loss=d_loss)
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
               "val_psnr_y": math.nan, "val_ssim_y": math.nan, "elapsed_s": elapsed + now - t0}
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
        if not rows or rows[-1]["iteration"] != iteration:
            rows.append({"iteration": iteration, "elapsed_s": elapsed + time.perf_counter() - t0})
        rows[-1].update(val_psnr_y=metrics["psnr_y"], val_ssim_y=metrics["ssim_y"])
        if writer is not None:
            writer.add_scalar(f"{stage}/val_psnr_y", metrics["psnr_y"], iteration)
            writer.add_scalar(f"{stage}/val_ssim_y", metrics["ssim_y"], iteration)
        bar.write(f"[{stage}] iteration {iteration}: validation PSNR-Y {metrics['psnr_y']:.3f} dB, "
                  f"SSIM-Y {metrics['ssim_y']:.4f}")
        if metrics["psnr_y"] > best["psnr_y"]:
            best = {"psnr_y": metrics["psnr_y"], "ssim_y": metrics["ssim_y"], "iteration": iteration}
            save_generator(out_dir / "best.pt", eval_model, spec, stage=stage, **best)

    iteration = start
    try:
        for iteration in range(start + 1, stop + 1):
            t_wait = time.perf_counter()
            batch = next(loader)
            wait += time.perf_counter() - t_wait
            hr_u8 = batch["hr"].to(dev, non_blocking=True)
            lr_u8 = batch["lr"].to(dev, non_blocking=True) if "lr" in batch else make_lr_batch(hr_u8, scale)
            window_lr.append(opt_g.param_groups[0]["lr"])
            window.append(step(to_float(lr_u8, dev, flags["channels_last"]),
                               to_float(hr_u8, dev, flags["channels_last"])))
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
    io.write_csv(out_dir / "train_log.csv", pd.DataFrame(rows, columns=_log_columns(columns)))
    final_model = eval_model
    provenance.write(out_dir / "provenance.json", config=cfg, seed=seed, stage=stage,
                     init_checkpoint=str(init_checkpoint) if init_checkpoint else None,
                     train_hr_dirs=[str(d) for d in train_hr_dirs],
                     valid_hr_dirs=[str(d) for d in valid_hr_dirs],
                     device=str(dev), speed_flags=flags, iterations=total,
                     parameters=count_parameters(generator),
                     discriminator_parameters=count_parameters(disc) if disc is not None else None,
                     ema=ema is not None, best=best if math.isfinite(best["psnr_y"]) else None,
                     training_time_s=elapsed)
    save_generator(out_dir / "generator.pt", final_model, spec, stage=stage, iterations=total,
                   ema=ema is not None, training_time_s=elapsed,
                   best_psnr_y=best["psnr_y"] if math.isfinite(best["psnr_y"]) else None)
    return out_dir / "generator.pt"


def _log_columns(terms: Sequence[str]) -> list[str]:
    return ["iteration", *terms, "lr", "data_wait_fraction", "val_psnr_y", "val_ssim_y", "elapsed_s"]
