"""The real BasicSR metric code (XPixelGroup/BasicSR ``basicsr/metrics/psnr_ssim.py``), loaded from
its source without ``import basicsr``, to calibrate :mod:`benchmarks.basicsr_ref` and to time sfsr's
metrics against the real thing (``python -m benchmarks --only metrics_basicsr --basicsr-source
PATH``).

``import basicsr`` runs ``basicsr/__init__.py``, which imports its archs, data and models (torch,
torchvision; ``basicsr/data/degradations.py`` imports ``torchvision.transforms.functional_tensor``,
which new torchvision releases no longer have). The metrics need none of that: :func:`load_metrics`
registers the packages ``basicsr``, ``basicsr.utils`` and ``basicsr.metrics`` as empty package
modules whose ``__path__`` is the source's folders (their ``__init__.py`` files are *not* run), sets
``basicsr.utils.bgr2ycbcr`` from ``basicsr/utils/color_util.py`` (the one name of
``basicsr/utils/__init__.py`` that ``metric_util.py`` imports), then imports BasicSR's own
``basicsr/utils/color_util.py``, ``basicsr/utils/registry.py``, ``basicsr/metrics/metric_util.py`` and
``basicsr/metrics/psnr_ssim.py`` unchanged. ``psnr_ssim.py`` imports ``cv2`` (its SSIM filters with
``cv2.filter2D``) and torch (for its ``*_pt`` variants): both must be installed.

The source: ``pip download basicsr==1.4.2 --no-deps --no-build-isolation -d DIR`` gives
``DIR/basicsr-1.4.2.tar.gz``; PATH is that archive (the four files are extracted to a temporary
folder) or a folder holding ``basicsr/metrics/psnr_ssim.py`` (the extracted archive). It can also
come from ``SFSR_BASICSR_SOURCE``.

How BasicSR calls them (``basicsr/models/sr_model.py``, metric options ``crop_border: 4``,
``test_y_channel: true``): uint8 ``HxWx3`` **BGR** images (``tensor2img``), or ``HxW`` for a
single-channel image, as ``scripts/metrics/calculate_psnr_ssim.py`` reads a gray PNG
(``cv2.IMREAD_UNCHANGED``): :func:`basicsr_input` turns sfsr's RGB arrays into that.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.machinery
import os
import shutil
import sys
import tarfile
import tempfile
import types
from pathlib import Path
from typing import Any

import numpy as np

ENV = "SFSR_BASICSR_SOURCE"
#: The files of the source that the metrics run (relative to the folder holding ``basicsr/``).
FILES = ("basicsr/metrics/psnr_ssim.py", "basicsr/metrics/metric_util.py",
         "basicsr/utils/color_util.py", "basicsr/utils/registry.py")
_PACKAGES = ("basicsr", "basicsr.utils", "basicsr.metrics")


class Unavailable(RuntimeError):
    """The real BasicSR metrics cannot run here (no source, or cv2/torch missing); the message says why."""


def source_from(path: str | Path | None) -> Path | None:
    """The source given (``--basicsr-source``), else ``$SFSR_BASICSR_SOURCE``, else None."""
    if path:
        return Path(path)
    env = os.environ.get(ENV)
    return Path(env) if env else None


def source_root(source: Path, files: tuple[str, ...] = FILES) -> Path:
    """The folder holding ``basicsr/`` (a ``.tar.gz`` sdist: ``files`` extracted to a temporary
    folder, removed at exit; ``files[0]`` must be there)."""
    source = Path(source)
    if source.is_file() and source.name.endswith((".tar.gz", ".tgz")):
        tmp = Path(tempfile.mkdtemp(prefix="sfsr-basicsr-"))
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        with tarfile.open(source) as tar:
            members = [m for m in tar.getmembers()
                       if m.isfile() and m.name.split("/", 1)[-1] in files + ("VERSION",)]
            tar.extractall(tmp, members=members, filter="data")
        found = [p for p in tmp.iterdir() if (p / files[0]).is_file()]
        if not found:
            raise Unavailable(f"{source}: no {files[0]} in the archive")
        return found[0]
    for root in (source, source.parent):  # the extracted sdist, or its basicsr/ folder itself
        if (root / files[0]).is_file():
            return root
    raise Unavailable(f"{source}: no {files[0]} there (give the extracted basicsr-X.Y.Z folder or "
                      f"the basicsr-X.Y.Z.tar.gz from `pip download basicsr==1.4.2 --no-deps`)")


def light_package(name: str, folder: Path) -> types.ModuleType:
    """Register ``name`` as a package module whose ``__path__`` holds ``folder``, its ``__init__.py``
    not run; a light package already there (loaded for other BasicSR files, maybe from another
    extraction of the source) gets ``folder`` added to its ``__path__``. A real BasicSR package
    imported already raises :class:`Unavailable`."""
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = []
        module = types.ModuleType(name, f"light package for BasicSR's {folder} (its __init__.py not run)")
        module.__spec__ = spec
        module.__path__ = spec.submodule_search_locations
        module._sfsr_light = True
        sys.modules[name] = module
        if "." in name:
            parent, child = name.rsplit(".", 1)
            setattr(sys.modules[parent], child, module)
    elif not getattr(module, "_sfsr_light", False):
        raise Unavailable(f"a real {name} package is imported already; use it directly")
    if str(folder) not in module.__path__:
        module.__path__.append(str(folder))
    return module


def load_metrics(source: str | Path) -> types.ModuleType:
    """BasicSR's own ``basicsr.metrics.psnr_ssim`` module (``calculate_psnr``, ``calculate_ssim``),
    loaded from ``source`` without running ``basicsr/__init__.py`` (module docstring). Raises
    :class:`Unavailable` with the reason where it cannot."""
    loaded = sys.modules.get("basicsr.metrics.psnr_ssim")
    if loaded is not None:
        return loaded
    root = source_root(Path(source))
    for name in ("cv2", "torch"):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise Unavailable(f"BasicSR's psnr_ssim.py imports {name}, which is not installed here "
                              f"({exc}); pip install opencv-python-headless torch") from exc
    for name in _PACKAGES:
        light_package(name, root.joinpath(*name.split(".")))
    color_util = importlib.import_module("basicsr.utils.color_util")
    sys.modules["basicsr.utils"].bgr2ycbcr = color_util.bgr2ycbcr  # what basicsr/utils/__init__.py exports
    return importlib.import_module("basicsr.metrics.psnr_ssim")


def describe(module: types.ModuleType) -> dict[str, Any]:
    """Where the loaded code came from and the versions that run it (for the records)."""
    import cv2

    root = Path(module.__file__).resolve().parents[2]
    version = None
    for candidate in (root / "basicsr" / "version.py", root / "VERSION"):
        if candidate.is_file():
            text = candidate.read_text()
            version = text.strip() if candidate.name == "VERSION" else next(
                (line.split("=", 1)[1].strip().strip("'\"") for line in text.splitlines()
                 if line.startswith("__version__")), None)
            break
    return {"basicsr_version": version, "basicsr_psnr_ssim": str(module.__file__), "cv2": cv2.__version__,
            "cv2_threads": cv2.getNumThreads(),
            "loaded": "basicsr/metrics/psnr_ssim.py and its imports from the source, without "
                      "basicsr/__init__.py (benchmarks/basicsr_real.py)"}


def basicsr_input(img: np.ndarray) -> np.ndarray:
    """sfsr's uint8 RGB ``HxWx3`` (or ``HxW`` gray) as BasicSR holds it: ``HxWx3`` BGR (contiguous),
    gray unchanged."""
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 3:
        return np.ascontiguousarray(img[:, :, ::-1])
    return img


def psnr_ssim_y(module: types.ModuleType, hr_bgr: np.ndarray, sr_bgr: np.ndarray,
                crop_border: int) -> tuple[float, float]:
    """BasicSR's PSNR-Y and SSIM-Y as its validation computes them (two calls, each converting)."""
    return (float(module.calculate_psnr(hr_bgr, sr_bgr, crop_border, test_y_channel=True)),
            float(module.calculate_ssim(hr_bgr, sr_bgr, crop_border, test_y_channel=True)))
