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
  (decoding is forced with ``load()``; truncated files are never padded). The message says what
  happened: missing, a dangling symlink or a symlink loop, permission denied, not an image,
  truncated or corrupt, or too many pixels.
* Images of more than ``max_image_pixels`` pixels (default 89,478,485, Pillow's own warning
  threshold) are refused before decoding: a guard against decompression bombs, raised per run with
  the config key ``max_image_pixels`` or the CLI option ``--max-image-pixels`` (see
  :func:`set_max_image_pixels`).
* EXIF orientation is not applied (pixels as stored, like MATLAB ``imread``); multi-frame files
  (GIF, TIFF) give their first frame.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from sfsr.errors import (BAD_IMAGE_HINTS, FOLDER_HINTS, TOO_LARGE_HINTS, DataError, ImageError,
                         path_problem)

DEFAULT_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

_TO_RGB_MODES = {"CMYK", "YCbCr", "LAB", "HSV", "RGBX"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


#: Pillow's own warning threshold (``Image.MAX_IMAGE_PIXELS``: 1 GiB of 32-bit pixels / 3).
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
_max_image_pixels = DEFAULT_MAX_IMAGE_PIXELS


def set_max_image_pixels(limit: int | None) -> None:
    """Set the pixel limit of :func:`read_image` for this process (None: the default). The workflow
    sets it from the config key ``max_image_pixels``, the CLI from ``--max-image-pixels``."""
    global _max_image_pixels
    if limit is None:
        limit = DEFAULT_MAX_IMAGE_PIXELS
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise DataError(f"max_image_pixels must be a positive integer, got {limit!r}")
    _max_image_pixels = limit


def max_image_pixels() -> int:
    return _max_image_pixels


@contextlib.contextmanager
def _strict_decoding() -> Iterator[None]:
    """Make Pillow raise on truncated files while reading, and leave the pixel limit to
    :func:`read_image` (Pillow's own check would warn, or raise at twice its threshold whatever our
    limit is). Restores the previous settings."""
    truncated, bomb = ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = truncated, bomb


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


def _bad(path: Path, what: str) -> ImageError:
    return ImageError(f"{path}: {what}", hints=BAD_IMAGE_HINTS)


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as uint8 HxWx3 (RGB) or HxW (gray) under the image policy.

    Raises :class:`ImageError` naming ``path`` and what happened: missing, a dangling symlink or
    symlink loop, a folder, permission denied, not an image, truncated or corrupt, or more pixels
    than ``max_pixels`` (default: :func:`max_image_pixels`), checked from the header before decoding.
    """
    path = Path(path)
    limit = _max_image_pixels if max_pixels is None else max_pixels
    problem = path_problem(path)
    if problem:
        raise _bad(path, problem)
    if path.is_dir():
        raise _bad(path, "is a folder, not an image file")
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise _bad(path, "image file not found") from None
    except PermissionError:
        raise ImageError(f"{path}: cannot read the image, permission denied; check the file's "
                         f"permissions") from None
    except OSError as exc:
        raise _bad(path, f"cannot read the image ({exc.strerror})") from None
    try:
        with fh, _strict_decoding(), Image.open(fh) as image:
            width, height = image.size
            if width * height > limit:
                raise ImageError(f"{path}: image is {width}x{height} = {width * height:,} pixels, "
                                 f"more than the limit of {limit:,} (a guard against decompression "
                                 f"bombs)", hints=TOO_LARGE_HINTS)
            image.load()
            return pil_to_array(image, path)
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise _bad(path, f"not a readable image ({exc})") from exc
    except MemoryError:
        raise ImageError(f"{path}: not enough memory to decode the image", hints=TOO_LARGE_HINTS) from None
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EIO, errno.ENOSPC):
            raise _bad(path, f"cannot read the image ({exc.strerror})") from exc
        raise _bad(path, f"cannot decode the image, the file is truncated or corrupt ({exc})") from exc
    except (SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise _bad(path, f"cannot decode the image, the file is truncated or corrupt ({exc})") from exc


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


def list_images(folder: str | os.PathLike, extensions: Iterable[str] = DEFAULT_EXTENSIONS,
                what: str = "image") -> list[Path]:
    """Image files directly inside ``folder`` (not recursive), sorted by name.

    Extensions match case-insensitively; hidden files (names starting with ``.``, e.g. macOS
    ``._x.jpg`` resource forks in archives) are ignored. Symlinks that lead nowhere (dangling, or a
    loop) are listed like files, so reading them reports them as bad images instead of dropping
    them in silence. Raises :class:`DataError` when the folder does not exist or holds no image; the
    message calls it the ``<what>`` folder (image, input, HR, SR, ...).
    """
    folder = Path(folder)
    exts = normalize_extensions(extensions)
    problem = path_problem(folder)
    if problem:
        raise DataError(f"{what} folder {folder} {problem}", hints=FOLDER_HINTS)
    if not folder.is_dir():
        raise DataError(f"{what} folder {folder} does not exist (or is not a folder)", hints=FOLDER_HINTS)
    try:
        entries = list(folder.iterdir())
    except PermissionError:
        raise DataError(f"{what} folder {folder}: cannot list it, permission denied; check the "
                        f"folder's permissions") from None
    files = sorted(p for p in entries
                   if not p.name.startswith(".") and p.suffix.lower() in exts
                   and (p.is_file() or path_problem(p) is not None))
    if not files:
        raise DataError(f"no images in {what} folder {folder}: looked for extensions {', '.join(exts)}",
                        hints=FOLDER_HINTS)
    return files


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Gray HxW (or HxWx1) -> HxWx3 by replication; RGB passes through."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image


def images_by_stem(folder: str | os.PathLike, extensions: Iterable[str] = DEFAULT_EXTENSIONS,
                   what: str = "image") -> dict[str, Path]:
    """:func:`list_images` keyed by file stem (outputs are ``<stem>.png``, and SR/HR pairs are
    matched by stem); two files with one stem raise :class:`DataError` naming both."""
    by_stem: dict[str, Path] = {}
    for path in list_images(folder, extensions, what):
        if path.stem in by_stem:
            raise DataError(f"{what} folder {Path(folder)} holds two images with the stem "
                            f"{path.stem!r}: {by_stem[path.stem].name} and {path.name}; keep one")
        by_stem[path.stem] = path
    return by_stem
