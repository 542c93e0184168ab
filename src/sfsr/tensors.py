"""Small torch helpers shared by training, evaluation and inference: the device resolver, the
eval-mode context and the uint8 -> float conversion.

This module imports torch; light modules (``sfsr.data.prepare``, ``sfsr.evaluation``, ...) import
it inside the functions that run a model, never at module level.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch
from torch import nn

from sfsr.data.images import to_rgb
from sfsr.errors import ConfigError


def resolve_device(device: str | torch.device = "auto", setting: str = "--device") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an unknown name or CUDA on a machine without it
    raises :class:`ConfigError` (``setting`` names where the device was chosen)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"unknown device {str(device)!r} ({setting}); use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {str(device)!r} ({setting}) asked but CUDA is not available on this "
                          f"machine; use auto or cpu")
    return dev


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Run ``module`` in eval mode, restoring its previous mode afterwards (also on errors)."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def to_float(images: torch.Tensor | np.ndarray, device: torch.device | str | None = None,
             channels_last: bool = False) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1] on ``device`` (default: where they are). A tensor is taken
    as it is (e.g. an NCHW batch); a numpy ``HxW`` or ``HxWxC`` image becomes a ``1xCxHxW`` batch
    (gray replicated to three channels). ``channels_last`` sets that memory format."""
    if isinstance(images, np.ndarray):
        images = to_rgb(images)
        images = torch.from_numpy(np.array(images)).permute(2, 0, 1)[None]  # copy: may be read-only
    if device is not None:
        images = images.to(device, non_blocking=True)
    x = images.float().div(255.0)  # not in place: float input would be changed
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
