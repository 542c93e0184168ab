"""Offline reference groups for reference-based SR, made from real photographs (layout
``builtin_refgroups``; the RefSR stage and its tests use them where CUFED is not at hand).

A group is a target crop and ``LEVELS`` references of increasing difficulty, each another view of
the same photo: the crop window shifted, rotated and rescaled, the colours jittered, by the known
amounts of :data:`LEVELS` (level 1: a slightly shifted window; level 4: far, turned, zoomed and
recoloured). For ``stereo_motorcycle`` the references come from the *right* image of the stereo
pair (``skimage.data.stereo_motorcycle``): a truly different view of the scene, with level 1 the
right view as it is and levels 2..4 adding the transforms of levels 2..4. File names follow the
``refgroups`` layout: ``<group>_0`` the target, ``<group>_<k>`` its level-k reference. The
transforms are listed per file in ``references.csv`` beside the manifest.

The *random reference* control is not made here: evaluation pairs a target with a reference of
another group (:func:`random_reference_group`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from sfsr.data.images import to_rgb
from sfsr.data.sources import load_builtin
from sfsr.errors import ConfigError, DataError


@dataclass(frozen=True)
class View:
    """How a reference window differs from its target's: shift in HR pixels (as a fraction of the
    crop size), rotation in degrees, zoom factor, brightness offset and contrast factor."""
    shift: float
    angle: float
    zoom: float
    brightness: float
    contrast: float


#: Reference levels, most similar first (like CUFED5's 1..5 ranking).
LEVELS: tuple[View, ...] = (
    View(shift=0.05, angle=0.0, zoom=1.0, brightness=0.0, contrast=1.0),
    View(shift=0.15, angle=5.0, zoom=1.05, brightness=0.03, contrast=1.05),
    View(shift=0.30, angle=12.0, zoom=1.15, brightness=0.06, contrast=1.10),
    View(shift=0.50, angle=25.0, zoom=1.30, brightness=0.10, contrast=1.20),
)
STEREO = "stereo_motorcycle"


def _photo_pair(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(photo the targets come from, photo the references come from)."""
    if name == STEREO:
        import skimage.data

        left, right, _ = skimage.data.stereo_motorcycle()
        return to_rgb(left), to_rgb(right)
    photo = to_rgb(load_builtin(name))
    return photo, photo


def _window(photo: np.ndarray, cy: float, cx: float, size: int, view: View, direction: float,
            ) -> np.ndarray:
    """A ``size`` x ``size`` window of ``photo`` centred at (cy, cx) moved by ``view`` (bicubic
    sampling, reflected at the borders), colours jittered; uint8."""
    from skimage.transform import AffineTransform, warp

    dy, dx = np.sin(direction) * view.shift * size, np.cos(direction) * view.shift * size
    half = (size - 1) / 2
    # output pixel (c, r) -> photo coordinates: centre, rotate, zoom, move to the shifted window
    transform = (AffineTransform(translation=(-half, -half))
                 + AffineTransform(scale=1 / view.zoom, rotation=np.deg2rad(view.angle))
                 + AffineTransform(translation=(cx + dx, cy + dy)))
    out = warp(photo, transform, output_shape=(size, size), order=3, mode="reflect", preserve_range=True)
    out = (out - 127.5) * view.contrast + 127.5 + 255 * view.brightness
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def synthetic_groups(dataset: str, images: list[str], hr_size: int, groups_per_image: int,
                     seed: int = 0) -> list[dict]:
    """Every file of the groups: dicts ``stem, group, role ('target' | 'ref<k>'), level (0 for the
    target), photo, top, left`` (the target window in the photo), ``image`` and the view's fields. Crops sit on a grid over each photo, far enough
    from the border for the level-4 window; directions of the shifts are drawn with ``seed``."""
    if hr_size < 16:
        raise ConfigError(f"datasets.{dataset}.hr_size: builtin_refgroups needs hr_size >= 16, got {hr_size}")
    if groups_per_image < 1:
        raise ConfigError(f"datasets.{dataset}.samples_per_class: builtin_refgroups needs at least one "
                          f"group per photo, got {groups_per_image}")
    if not images or len(set(images)) != len(images):
        raise ConfigError(f"datasets.{dataset}.images: give each builtin photo once")
    rng = np.random.default_rng(seed)
    margin = int(np.ceil(hr_size * (LEVELS[-1].shift + 0.75)))  # room for the farthest window
    rows = []
    for name in images:
        target_photo, ref_photo = _photo_pair(name)
        h, w = target_photo.shape[:2]
        if min(h, w) < 2 * margin + 1:
            raise DataError(f"dataset {dataset}: builtin photo {name!r} ({h}x{w}) is too small for "
                            f"hr_size {hr_size} (needs sides of {2 * margin + 1} px); lower hr_size")
        ys = np.linspace(margin, h - margin - 1, num=max(1, int(np.ceil(np.sqrt(groups_per_image)))))
        xs = np.linspace(margin, w - margin - 1, num=max(1, int(np.ceil(groups_per_image / len(ys)))))
        centres = [(y, x) for y in ys for x in xs][:groups_per_image]
        for i, (cy, cx) in enumerate(centres):
            group = f"{name}{i:02d}"
            top, left = int(round(cy - (hr_size - 1) / 2)), int(round(cx - (hr_size - 1) / 2))
            target = np.ascontiguousarray(target_photo[top:top + hr_size, left:left + hr_size])
            rows.append({"stem": f"{group}_0", "group": group, "role": "target", "level": 0,
                         "photo": name, "top": top, "left": left, "image": target,
                         **asdict(View(0.0, 0.0, 1.0, 0.0, 1.0))})
            for k, view in enumerate(LEVELS, start=1):
                if name == STEREO and k == 1:
                    view = View(0.0, 0.0, 1.0, 0.0, 1.0)  # the other camera's view, as it is
                direction = float(rng.uniform(0, 2 * np.pi))
                ref = _window(ref_photo, (hr_size - 1) / 2 + top, (hr_size - 1) / 2 + left, hr_size,
                              view, direction)
                rows.append({"stem": f"{group}_{k}", "group": group, "role": f"ref{k}", "level": k,
                             "photo": name, "top": top, "left": left, "image": ref, **asdict(view)})
    return rows


def random_reference_group(groups: list[str], photos: dict[str, str], group: str) -> str:
    """The group whose reference serves as ``group``'s random reference: the next group (in the
    given order) cut from another photo; deterministic, never the same photo."""
    start = groups.index(group)
    for step in range(1, len(groups)):
        other = groups[(start + step) % len(groups)]
        if photos[other] != photos[group]:
            return other
    raise DataError(f"no group from another photo than {photos[group]!r} to take a random reference "
                    f"from; add groups of at least two photos")
