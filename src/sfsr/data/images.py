"""Reading images under one policy, and listing image folders.

Image policy (also in docs/data.md): every image becomes uint8, either HxWx3 RGB or HxW gray.

* RGB: kept. Gray (``L``) and bilevel (``1``, mapped to 0/255): kept as one channel, HxW.
* RGBA / LA / PA: composited over white when some pixel is not fully opaque,
  ``round((c*a + 255*(255-a)) / 255)``; the alpha channel is dropped as is when all pixels are
  opaque. LA stays gray.
* Palette (``P``): converted to RGB; with a transparency entry it goes through RGBA and the rule above.
* CMYK, YCbCr, LAB, HSV, RGBX: converted to RGB by Pillow.
* 16-bit gray (``I;16*``): scaled to 8 bit with ``round(v / 257)`` (65535 -> 255). 16-bit colour
  PNGs are decoded by Pillow to their high byte (``v >> 8``, at most one level from the scaling).
* 32-bit integer (``I``) and float (``F``) images are rejected (convert them to 8 bit first).
* Unreadable, unknown or truncated files raise :class:`sfsr.errors.ImageError` naming the path
  (decoding is forced with ``load()``; truncated files are never padded).
* EXIF orientation is not applied (pixels as stored, like MATLAB ``imread``); multi-frame files
  (GIF, TIFF) give their first frame.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from sfsr.errors import DataError, ImageError

DEFAULT_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

_TO_RGB_MODES = {"CMYK", "YCbCr", "LAB", "HSV", "RGBX"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


@contextlib.contextmanager
def _strict_decoding() -> Iterator[None]:
    """Make Pillow raise on truncated files while reading (restores the previous setting)."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _composite_over_white(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """uint8 colour (HxW or HxWxC) over a white background with uint8 alpha (HxW)."""
    if color.ndim == 3:
        alpha = alpha[:, :, None]
    a = alpha.astype(np.uint32)
    out = (color.astype(np.uint32) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def _drop_or_composite(array: np.ndarray) -> np.ndarray:
    """Last channel is alpha: drop it if all opaque, else composite over white."""
    color, alpha = array[..., :-1], array[..., -1]
    if color.shape[-1] == 1:
        color = color[..., 0]
    if np.all(alpha == 255):
        return np.ascontiguousarray(color)
    return _composite_over_white(color, alpha)


def pil_to_array(image: Image.Image, path: str | os.PathLike = "<image>") -> np.ndarray:
    """Apply the image policy to a loaded PIL image: uint8 HxWx3 RGB or HxW gray."""
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image, dtype=np.uint8)
    if mode == "L":
        return np.asarray(image, dtype=np.uint8)
    if mode == "1":
        return np.asarray(image.convert("L"), dtype=np.uint8)
    if mode in ("RGBA", "RGBa"):
        return _drop_or_composite(np.asarray(image.convert("RGBA"), dtype=np.uint8))
    if mode in ("LA", "La"):
        return _drop_or_composite(np.asarray(image.convert("LA"), dtype=np.uint8))
    if mode in ("P", "PA"):
        if mode == "PA" or "transparency" in image.info:
            return _drop_or_composite(np.asarray(image.convert("RGBA"), dtype=np.uint8))
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if mode in _TO_RGB_MODES:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.uint32)
        return ((values * 2 + 257) // 514).astype(np.uint8)  # round(v / 257), half up
    raise ImageError(f"{path}: image mode {mode!r} is not supported (32-bit integer or float "
                     f"images); convert it to 8-bit RGB or grayscale PNG first")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 HxWx3 (RGB) or HxW (gray) under the image policy.

    Raises :class:`ImageError` naming ``path`` when the file is missing, unreadable or truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: image file not found")
    try:
        with _strict_decoding(), Image.open(path) as image:
            image.load()
            return pil_to_array(image, path)
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageError(f"{path}: not a readable image ({exc}); replace or remove the file, or set "
                         f"on_bad_image: skip") from exc
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{path}: cannot decode image, the file is truncated or corrupt ({exc}); "
                         f"download it again or remove it, or set on_bad_image: skip") from exc


def normalize_extensions(extensions: Iterable[str]) -> tuple[str, ...]:
    """Lower-case extensions with a leading dot (``"PNG"`` -> ``".png"``)."""
    out = []
    for ext in extensions:
        ext = str(ext).strip().lower()
        if ext and not ext.startswith("."):
            ext = "." + ext
        if ext:
            out.append(ext)
    return tuple(dict.fromkeys(out))


def list_images(folder: str | os.PathLike,
                extensions: Iterable[str] = DEFAULT_EXTENSIONS) -> list[Path]:
    """Image files directly inside ``folder`` (not recursive), sorted by name.

    Extensions match case-insensitively; hidden files (names starting with ``.``, e.g. macOS
    ``._x.jpg`` resource forks in archives) are ignored. Raises :class:`DataError` when the folder
    does not exist or holds no image.
    """
    folder = Path(folder)
    exts = normalize_extensions(extensions)
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist (or is not a folder); check the path "
                        f"(dataset 'root' / 'path' settings)")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in exts)
    if not files:
        raise DataError(f"no images in {folder}: looked for extensions {', '.join(exts)}; check the "
                        f"folder or the dataset's 'extensions' / 'root' settings")
    return files


def images_by_stem(folder: str | os.PathLike, extensions: Iterable[str] = DEFAULT_EXTENSIONS,
                   what: str = "image") -> dict[str, Path]:
    """:func:`list_images` keyed by file stem (outputs are ``<stem>.png``, and SR/HR pairs are
    matched by stem); two files with one stem raise :class:`DataError` naming both."""
    by_stem: dict[str, Path] = {}
    for path in list_images(folder, extensions):
        if path.stem in by_stem:
            raise DataError(f"{what} folder {Path(folder)} holds two images with the stem "
                            f"{path.stem!r}: {by_stem[path.stem].name} and {path.name}; keep one")
        by_stem[path.stem] = path
    return by_stem
