"""Exponential moving average (EMA) of the generator weights.

``ema = d * ema + (1 - d) * p`` after every optimiser step, built on
:class:`torch.optim.swa_utils.AveragedModel`. The decay is ramped up at the start,
``d_n = min(decay, (1 + n) / (10 + n))`` for the n-th update (the ``num_updates`` rule of
TensorFlow's ``ExponentialMovingAverage``), so short runs are not dominated by the random
initial weights; the first update copies the weights.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def effective_decay(decay: float, num_updates: int) -> float:
    """The decay used for update number ``num_updates`` (0-based count of earlier updates)."""
    return min(float(decay), (1.0 + num_updates) / (10.0 + num_updates))


def ema_update_(ema_params: list[torch.Tensor], params: list[torch.Tensor], decay: float) -> None:
    """In place ``ema = decay * ema + (1 - decay) * p`` for every floating-point pair (one fused
    foreach call); integer tensors (e.g. BatchNorm's ``num_batches_tracked``) are copied."""
    floats = [(e, p) for e, p in zip(ema_params, params) if e.is_floating_point()]
    for e, p in zip(ema_params, params):
        if not e.is_floating_point():
            e.copy_(p)
    if floats:
        torch._foreach_lerp_([e for e, _ in floats], [p.to(e.dtype) for e, p in floats],
                             1.0 - float(decay))


def _multi_avg_fn(decay: float) -> Callable:
    def fn(ema_params: list[torch.Tensor], params: list[torch.Tensor],
           num_averaged: torch.Tensor) -> None:
        ema_update_(ema_params, params, effective_decay(decay, int(num_averaged)))
    return fn


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An EMA copy of ``model`` (parameters and buffers averaged, gradients off, eval mode).

    Call ``ema.update_parameters(model)`` after each optimiser step; ``ema.module`` is the
    averaged network; ``ema.state_dict()`` holds the update count for resuming."""
    if not 0.0 <= float(decay) < 1.0:
        raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
    ema = AveragedModel(model, multi_avg_fn=_multi_avg_fn(decay), use_buffers=True)
    ema.eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema
