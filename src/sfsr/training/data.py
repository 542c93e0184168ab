"""Training and validation data for SR training.

* :class:`PatchDataset`: random HR patches (``lr_patch * scale`` pixels) from HR folders with random
  horizontal/vertical flips and 90-degree rotations (``augment``: or horizontal flips only, or none). Sample ``k`` is drawn from its own random
  generator seeded with ``(seed, k)``, so the data of iteration ``i`` is the same whatever the number
  of workers and whether the run was interrupted and resumed. LR patches come either from the
  prepared ``LR_bicubic/X{s}`` files (aligned crop) or are made on the training device from the batch
  of uint8 HR patches with the MATLAB-exact bicubic (:func:`make_lr_batch`).
* :func:`make_loader`: a DataLoader over samples ``[start_iteration * batch, iterations * batch)``
  (under DDP, each rank's contiguous share of every batch).
* :func:`load_validation_set`: whole validation images (HR cropped to a multiple of the scale, LR).
* Reference-based SR: :class:`RefPairDataset` (a target patch with the same window of one of its
  references) and :func:`load_reference_validation` (each target with its most similar reference),
  from the groups of :func:`sfsr.data.manifest.reference_levels`.
* Manifest splits and labels of prepared classification sets: :func:`select_training_images`,
  :class:`ManifestPatchDataset` (patches of the selected images, with labels),
  :func:`load_validation_items` (validation images of one split, with labels),
  :func:`whole_image_lr_patch`.

Prepared layout: ``{data_dir}/prepared/{dataset}/HR/{stem}.png`` and
``{data_dir}/prepared/{dataset}/LR_bicubic/X{s}/{stem}.png``.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from sfsr.data.bicubic import imresize, modcrop
from sfsr.data.images import list_images, read_image, to_rgb  # noqa: F401  (to_rgb: also this module's API)
from sfsr.data.manifest import manifest_path, read_manifest, reference_groups, reference_levels
from sfsr.errors import ConfigError, DataError

log = logging.getLogger("sfsr.training")

LR_SOURCES = ("on_the_fly", "prepared")


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
                 length: int, seed: int = 0, lr_source: str = "on_the_fly", augment: bool | str = True,
                 cache_mb: float = 2048, extensions: Iterable[str] | None = None) -> None:
        if lr_source not in LR_SOURCES:
            raise ConfigError(f"training key 'lr_source' is {lr_source!r}; allowed: {', '.join(LR_SOURCES)}")
        if not hr_dirs:
            raise ConfigError("no training HR folders given; list training datasets under 'train'")
        self.scale, self.lr_patch, self.hr_patch = int(scale), int(lr_patch), int(lr_patch) * int(scale)
        self.length, self.seed, self.lr_source = int(length), int(seed), lr_source
        self.augment = False if augment == "none" else augment  # True / 'dihedral', 'hflip' or off
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
            hflip, vflip, rot = _flips(rng, self.augment)
            patches = [augment_patch(a, hflip, vflip, rot) for a in patches]
        out = {"hr": torch.from_numpy(np.ascontiguousarray(patches[0].transpose(2, 0, 1)))}
        if lr is not None:
            out["lr"] = torch.from_numpy(np.ascontiguousarray(patches[1].transpose(2, 0, 1)))
        return out


def _flips(rng: np.random.Generator, augment: bool | str) -> tuple[bool, bool, bool]:
    """(hflip, vflip, rot90) of one sample; ``augment`` True / 'dihedral': all three drawn, 'hflip':
    the horizontal flip only (the same draws, so a sample's crop does not depend on the mode)."""
    hflip, vflip, rot = (bool(v) for v in rng.integers(2, size=3))
    if augment == "hflip":
        return hflip, False, False
    if augment not in (True, "dihedral"):
        raise ConfigError(f"training setting 'augment' is {augment!r}; valid: dihedral, hflip, none")
    return hflip, vflip, rot


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


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed python/numpy from the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class GlobalBatches(Sampler):
    """Batch sampler over iterations ``start + 1 ... n_items // batch_size``: iteration ``i`` is
    samples ``[i * batch_size, (i + 1) * batch_size)``, of which rank ``rank`` of ``world`` processes
    takes the contiguous ``batch_size // world`` at ``rank * batch_size // world`` (world 1: all)."""

    def __init__(self, n_items: int, batch_size: int, start: int = 0, world: int = 1, rank: int = 0) -> None:
        self.per_rank = batch_size // world
        self.batch_size, self.rank, self.start = batch_size, rank, start
        self.iterations = n_items // batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for it in range(self.start, self.iterations):
            first = it * self.batch_size + self.rank * self.per_rank
            yield list(range(first, first + self.per_rank))

    def __len__(self) -> int:
        return max(0, self.iterations - self.start)


def make_loader(dataset: Dataset, batch_size: int, *, start_iteration: int = 0,
                num_workers: int = 0, seed: int = 0, device: torch.device | str = "cpu",
                world: int = 1, rank: int = 0) -> DataLoader:
    """Batches for iterations ``start_iteration + 1 ... len(dataset) // batch_size`` in order;
    under DDP (``world`` > 1) this rank's share of each (:class:`GlobalBatches`)."""
    return DataLoader(dataset, batch_sampler=GlobalBatches(len(dataset), batch_size, int(start_iteration),
                                                           world, rank),
                      num_workers=num_workers, pin_memory=torch.device(device).type == "cuda",
                      worker_init_fn=seed_worker, generator=torch.Generator().manual_seed(int(seed)),
                      persistent_workers=False, prefetch_factor=4 if num_workers > 0 else None)


@dataclass
class ValidationImage:
    """One validation image: ``hr`` uint8 HxWx3 (modcropped), ``lr`` uint8 HxWx3, ``gray`` source;
    ``ref``: the HR reference (uint8 HxWx3, any size) for a reference-based generator."""
    name: str
    hr: np.ndarray
    lr: np.ndarray
    gray: bool
    ref: np.ndarray | None = None


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


# ------------------------------------------------------------------ manifests, splits, labels
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
        frame = read_manifest(folder)
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
        frame = read_manifest(folder)
        stems = _split_stems(frame, split)
        by_stem = _labels_by_stem(frame, class_to_index) if class_to_index is not None else None
        for item in load_validation_set([folder], scale):
            stem = item.name.split("/", 1)[1]
            if stems is not None and stem not in stems:
                continue
            images.append(item)
            labels.append(by_stem.get(stem) if by_stem else None)
    return images, labels


# ------------------------------------------------------------------ reference-based SR
def _ranges(levels: list[int]) -> str:
    """``[1, 2, 3, 5]`` -> ``"1..3, 5"``."""
    runs: list[list[int]] = []
    for k in levels:
        if runs and k == runs[-1][-1] + 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    return ", ".join(f"{r[0]}..{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs)


def fit_reference(ref: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A reference resized (bicubic) to ``shape`` (h, w) when its size differs; RGB uint8."""
    ref = to_rgb(ref)
    if ref.shape[:2] == tuple(shape):
        return ref
    from PIL import Image

    return np.asarray(Image.fromarray(ref).resize((shape[1], shape[0]), Image.BICUBIC))


class RefPairDataset(Dataset):
    """Training samples of reference-based SR: item ``k`` (deterministic given ``(seed, k)``) draws
    a group, one of its references, an HR window of ``lr_patch * scale`` pixels of the target and
    the same window of the reference (resized to the target's size first when it differs), and
    one dihedral augmentation for both. ``levels``: draw only references of these levels (1 = the
    most similar; groups without one are left out). ``random_references``: the fraction of items
    whose reference is one of *another* group's (drawn per item; needs two groups), cut at the
    same window. Items: ``hr`` and ``ref`` uint8 CHW tensors."""

    def __init__(self, hr_dirs: Sequence[str | os.PathLike], scale: int, lr_patch: int, *, length: int,
                 seed: int = 0, augment: bool | str = True, levels: Sequence[int] | None = None,
                 random_references: float = 0.0) -> None:
        if not hr_dirs:
            raise ConfigError("no reference-based training sets given; list them under 'refsr_train'")
        self.scale, self.lr_patch, self.hr_patch = int(scale), int(lr_patch), int(lr_patch) * int(scale)
        self.length, self.seed = int(length), int(seed)
        self.augment = False if augment == "none" else augment  # True / 'dihedral', 'hflip' or off
        self.groups: list[tuple[np.ndarray, list[np.ndarray]]] = []
        too_small = []
        held: set[int] = set()  # the levels the data holds (the check of ``levels`` below)
        for folder in hr_dirs:
            for group, target_path, leveled in reference_levels(folder):
                held.update(k for k, _ in leveled)
                target = to_rgb(modcrop(read_image(target_path), self.scale))
                if min(target.shape[:2]) < self.hr_patch:
                    too_small.append(group)
                    continue
                ref_paths = [r for k, r in leveled if levels is None or k in set(levels)]
                if not ref_paths:  # references of these levels only (1 = most similar)
                    continue
                refs = [fit_reference(read_image(r), target.shape[:2]) for r in ref_paths]
                self.groups.append((np.ascontiguousarray(target), refs))
        if too_small:
            log.warning("left out %d reference group(s) whose target is smaller than the %d px HR patch: %s",
                        len(too_small), self.hr_patch, ", ".join(too_small[:10]))
        if levels is not None and not held & set(levels):
            raise ConfigError(f"training setting 'reference_levels' is {list(levels)}, but the reference "
                              f"groups in {', '.join(map(str, hr_dirs))} hold level(s) "
                              f"{_ranges(sorted(held))}; choose among those, or null for every reference")
        if not self.groups:
            raise DataError(f"no reference group in {', '.join(map(str, hr_dirs))} has a target of at least "
                            f"{self.hr_patch} px (lr_patch {lr_patch} x scale {scale}); lower lr_patch")
        self.random_references = float(random_references)
        if not 0 <= self.random_references <= 1:
            raise ConfigError(f"training setting 'random_references' must be a fraction in [0, 1], got {random_references!r}")
        if self.random_references and len(self.groups) < 2:
            raise ConfigError("training setting 'random_references' takes references from other groups, but the "
                              f"reference sets in {', '.join(map(str, hr_dirs))} hold one group; set it to 0")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(k)])
        index = int(rng.integers(len(self.groups)))
        target, refs = self.groups[index]
        ref = refs[int(rng.integers(len(refs)))]
        if self.random_references and rng.random() < self.random_references:  # another group's reference
            other = (index + 1 + int(rng.integers(len(self.groups) - 1))) % len(self.groups)
            others = self.groups[other][1]
            ref = fit_reference(others[int(rng.integers(len(others)))], target.shape[:2])
        s, p = self.scale, self.lr_patch
        y = int(rng.integers(target.shape[0] // s - p + 1)) * s
        x = int(rng.integers(target.shape[1] // s - p + 1)) * s
        patches = [target[y:y + p * s, x:x + p * s], ref[y:y + p * s, x:x + p * s]]
        if self.augment:
            hflip, vflip, rot = _flips(rng, self.augment)
            patches = [augment_patch(a, hflip, vflip, rot) for a in patches]
        return {key: torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))
                for key, a in zip(("hr", "ref"), patches)}


def load_reference_validation(hr_dirs: Sequence[str | os.PathLike], scale: int) -> list[ValidationImage]:
    """Each target of the reference sets (HR modcropped, its MATLAB-exact bicubic LR) with its most
    similar reference (``ref1``) at HR."""
    out = []
    for folder in hr_dirs:
        for group, target_path, ref_paths in reference_groups(folder):
            raw = modcrop(read_image(target_path), scale)
            out.append(ValidationImage(f"{Path(folder).name}/{group}", to_rgb(raw),
                                       to_rgb(imresize(raw, scale=1.0 / scale)), raw.ndim == 2,
                                       ref=to_rgb(read_image(ref_paths[0]))))
    return out
