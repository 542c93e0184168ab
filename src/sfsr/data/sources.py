"""Builtin photographs: real images shipped inside the scikit-image and scikit-learn wheels.

They load offline, so the default study runs on a fresh machine without network. Every loader
returns uint8 HxWx3 (RGB) or HxW (gray).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from sfsr.errors import DataError


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()
    load.__doc__ = f"skimage.data.{name}()"
    return load


def _stereo_motorcycle_left() -> np.ndarray:
    """Left image of skimage.data.stereo_motorcycle()."""
    import skimage.data

    return skimage.data.stereo_motorcycle()[0]


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(filename)
    load.__doc__ = f"sklearn.datasets.load_sample_image({filename!r})"
    return load


BUILTIN_IMAGES: dict[str, Callable[[], np.ndarray]] = {
    **{name: _skimage(name) for name in (
        "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
        "retina", "brick", "grass", "gravel", "camera", "moon", "text", "coins", "page", "cell",
        "clock", "colorwheel", "microaneurysms")},
    "stereo_motorcycle": _stereo_motorcycle_left,
    "china": _sklearn("china.jpg"),
    "flower": _sklearn("flower.jpg"),
}


def load_builtin(name: str) -> np.ndarray:
    """Load builtin photo ``name`` as uint8 HxWx3 or HxW."""
    try:
        loader = BUILTIN_IMAGES[name]
    except KeyError:
        raise DataError(f"unknown builtin image {name!r}; valid names: "
                        f"{', '.join(sorted(BUILTIN_IMAGES))}") from None
    image = np.asarray(loader())
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise DataError(f"builtin image {name!r} is not uint8 HxW[x3] (got {image.dtype} "
                        f"{image.shape}); it cannot be used")
    return np.ascontiguousarray(image)
