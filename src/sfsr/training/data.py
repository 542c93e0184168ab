"""Training and validation data for SR training.

* :class:`PatchDataset`: random HR patches (``lr_patch * scale`` pixels) from HR folders with random
  horizontal/vertical flips and 90-degree rotations. Sample ``k`` is drawn from its own random
  generator seeded with ``(seed, k)``, so the data of iteration ``i`` is the same whatever the number
  of workers and whether the run was interrupted and resumed. LR patches come either from the
  prepared ``LR_bicubic/X{s}`` files (aligned crop) or are made on the training device from the batch
  of uint8 HR patches with the MATLAB-exact bicubic (:func:`make_lr_batch`).
* :func:`make_loader`: a DataLoader over samples ``[start_iteration * batch, iterations * batch)``.
* :func:`load_validation_set`: whole validation images (HR cropped to a multiple of the scale, LR).

Prepared layout: ``{data_dir}/prepared/{dataset}/HR/{stem}.png`` and
``{data_dir}/prepared/{dataset}/LR_bicubic/X{s}/{stem}.png``.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sfsr.data.bicubic import imresize, modcrop
from sfsr.data.images import list_images, read_image
from sfsr.errors import ConfigError, DataError

log = logging.getLogger("sfsr.training")

LR_SOURCES = ("on_the_fly", "prepared")


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Gray HxW -> HxWx3 by replication; RGB passes through."""
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image


def prepared_lr_path(hr_path: str | os.PathLike, scale: int) -> Path:
    """``.../HR/{stem}.png`` -> ``.../LR_bicubic/X{scale}/{stem}.png`` (prepared layout)."""
    hr_path = Path(hr_path)
    return hr_path.parent.parent / "LR_bicubic" / f"X{scale}" / f"{hr_path.stem}.png"


def _read_pair(hr_path: Path, scale: int, lr_source: str) -> tuple[np.ndarray, np.ndarray | None]:
    """HR (RGB, cropped to a multiple of ``scale``) and, for ``prepared``, its LR (RGB)."""
    hr = to_rgb(modcrop(read_image(hr_path), scale))
    if lr_source != "prepared":
        return np.ascontiguousarray(hr), None
    lr_path = prepared_lr_path(hr_path, scale)
    if not lr_path.is_file():
        raise DataError(f"prepared LR image {lr_path} (for {hr_path}) not found; run the make_lr step "
                        "for this dataset and scale, or set lr_source: on_the_fly")
    lr = to_rgb(read_image(lr_path))
    if lr.shape[:2] != (hr.shape[0] // scale, hr.shape[1] // scale):
        raise DataError(f"prepared LR image {lr_path} is {lr.shape[1]}x{lr.shape[0]} but "
                        f"modcrop(HR, {scale}) of {hr_path} is {hr.shape[1]}x{hr.shape[0]}; "
                        "delete the prepared LR folder and re-run make_lr")
    return np.ascontiguousarray(hr), np.ascontiguousarray(lr)


def _image_size(path: Path) -> tuple[int, int, int]:
    """(height, width, channels) from the file header, without decoding the pixels."""
    from PIL import Image

    with Image.open(path) as im:
        return im.height, im.width, len(im.getbands())


class PatchDataset(Dataset):
    """Random (HR, LR) training patches; item ``k`` is deterministic given ``(seed, k)``.

    Items are dicts of uint8 CHW tensors: ``hr`` (3 x P*s x P*s) and, with ``lr_source='prepared'``,
    ``lr`` (3 x P x P). Images smaller than the HR patch are left out with a warning. Images are kept
    in memory (uint8) when their decoded size is at most ``cache_mb`` MiB, else read per sample."""

    def __init__(self, hr_dirs: Sequence[str | os.PathLike], scale: int, lr_patch: int, *,
                 length: int, seed: int = 0, lr_source: str = "on_the_fly", augment: bool = True,
                 cache_mb: float = 2048, extensions: Iterable[str] | None = None) -> None:
        if lr_source not in LR_SOURCES:
            raise ConfigError(f"training key 'lr_source' is {lr_source!r}; allowed: {', '.join(LR_SOURCES)}")
        if not hr_dirs:
            raise ConfigError("no training HR folders given; list training datasets under 'train'")
        self.scale, self.lr_patch, self.hr_patch = int(scale), int(lr_patch), int(lr_patch) * int(scale)
        self.length, self.seed, self.lr_source, self.augment = int(length), int(seed), lr_source, augment
        files: list[Path] = []
        for folder in hr_dirs:
            files += list_images(folder, extensions) if extensions else list_images(folder)
        self.files, too_small, total_bytes = [], [], 0
        for path in files:
            h, w, c = _image_size(path)
            if min(h, w) < self.hr_patch:
                too_small.append(f"{path.name} ({w}x{h})")
                continue
            self.files.append(path)
            total_bytes += h * w * 3
        if too_small:
            log.warning("left out %d training image(s) smaller than the %d px HR patch: %s",
                        len(too_small), self.hr_patch, ", ".join(too_small))
        if not self.files:
            raise DataError(f"no training image in {', '.join(map(str, hr_dirs))} is at least "
                            f"{self.hr_patch}x{self.hr_patch} (lr_patch {lr_patch} x scale {scale}); "
                            "lower training.lr_patch or add larger images")
        self.cached = total_bytes <= cache_mb * 2**20
        self._images = [_read_pair(p, self.scale, lr_source) for p in self.files] if self.cached else None

    def __len__(self) -> int:
        return self.length

    def _pair(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        if self._images is not None:
            return self._images[index]
        return _read_pair(self.files[index], self.scale, self.lr_source)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(k)])
        hr, lr = self._pair(int(rng.integers(len(self.files))))
        s, p = self.scale, self.lr_patch
        y = int(rng.integers(hr.shape[0] // s - p + 1))
        x = int(rng.integers(hr.shape[1] // s - p + 1))
        patches = [hr[y * s:(y + p) * s, x * s:(x + p) * s]]
        if lr is not None:
            patches.append(lr[y:y + p, x:x + p])
        if self.augment:
            hflip, vflip, rot = rng.integers(2, size=3)
            patches = [augment_patch(a, bool(hflip), bool(vflip), bool(rot)) for a in patches]
        out = {"hr": torch.from_numpy(np.ascontiguousarray(patches[0].transpose(2, 0, 1)))}
        if lr is not None:
            out["lr"] = torch.from_numpy(np.ascontiguousarray(patches[1].transpose(2, 0, 1)))
        return out


def augment_patch(a: np.ndarray, hflip: bool, vflip: bool, rot90: bool) -> np.ndarray:
    """Dihedral augmentation of an HxWxC patch (applied identically to HR and LR)."""
    if hflip:
        a = a[:, ::-1]
    if vflip:
        a = a[::-1]
    if rot90:
        a = a.transpose(1, 0, 2)
    return a


def make_lr_batch(hr_uint8: torch.Tensor, scale: int) -> torch.Tensor:
    """MATLAB-exact bicubic LR of a uint8 batch (N,3,H,W) on its device, as uint8."""
    return imresize(hr_uint8, scale=1.0 / scale)


def to_float(batch_uint8: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """uint8 NCHW -> float32 [0, 1] on ``device`` (optionally channels_last)."""
    x = batch_uint8.to(device, non_blocking=True).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed python/numpy from the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: PatchDataset, batch_size: int, *, start_iteration: int = 0,
                num_workers: int = 0, seed: int = 0, device: torch.device | str = "cpu") -> DataLoader:
    """Batches for iterations ``start_iteration + 1 ... len(dataset) // batch_size`` in order."""
    start = int(start_iteration) * int(batch_size)
    pin = torch.device(device).type == "cuda"
    generator = torch.Generator().manual_seed(int(seed))
    return DataLoader(dataset, batch_size=batch_size, sampler=range(start, len(dataset)),
                      drop_last=True, num_workers=num_workers, pin_memory=pin,
                      worker_init_fn=seed_worker, generator=generator,
                      persistent_workers=False, prefetch_factor=4 if num_workers > 0 else None)


@dataclass
class ValidationImage:
    """One validation image: ``hr`` uint8 HxWx3 (modcropped), ``lr`` uint8 HxWx3, ``gray`` source."""
    name: str
    hr: np.ndarray
    lr: np.ndarray
    gray: bool


def load_validation_set(hr_dirs: Sequence[str | os.PathLike], scale: int,
                        extensions: Iterable[str] | None = None) -> list[ValidationImage]:
    """Whole validation images; the LR is the prepared ``LR_bicubic/X{s}`` file when present, else
    ``imresize(modcrop(HR, s), 1/s)`` (identical by construction)."""
    out: list[ValidationImage] = []
    for folder in hr_dirs:
        for path in (list_images(folder, extensions) if extensions else list_images(folder)):
            raw = modcrop(read_image(path), scale)
            lr_path = prepared_lr_path(path, scale)
            lr = read_image(lr_path) if lr_path.is_file() else imresize(raw, scale=1.0 / scale)
            if lr.shape[:2] != (raw.shape[0] // scale, raw.shape[1] // scale):
                raise DataError(f"prepared LR image {lr_path} does not match modcrop(HR, {scale}) of "
                                f"{path}; delete the prepared LR folder and re-run make_lr")
            out.append(ValidationImage(f"{Path(folder).name}/{path.stem}", to_rgb(raw), to_rgb(lr),
                                       raw.ndim == 2))
    return out
