"""One optimisation step of any training stage: the generator's weighted loss terms, its update (and
EMA), then the discriminator's update when the stage has one."""

from __future__ import annotations

import torch
from torch import nn

from sfsr.losses import total_loss
from sfsr.semantic import shared_classification_loss
from sfsr.training.lr_head import resize_square
from sfsr.training.parts import Parts


def _clip(module: nn.Module, grad_clip: float | None) -> None:
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)


def generator_terms(p: Parts, lr: torch.Tensor, hr: torch.Tensor, label: torch.Tensor | None,
                    ref: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SR output and the generator's loss terms (only those with a weight). ``ref``: the HR
    reference of a reference-based generator (``forward(lr, ref)``)."""
    w = p.weights
    if p.head is not None:
        sr, logits = p.g_fwd(lr)
    elif ref is not None:
        sr = p.g_fwd(lr, ref)
    else:
        sr = p.g_fwd(lr)
    terms = {}
    if "pixel" in w:
        terms["pixel"] = p.pixel(sr.float(), hr)
    if "perceptual" in w:
        terms["perceptual"] = p.perceptual(sr.float(), hr).float()
    if "adversarial" in w:
        fake = p.d_fwd(sr).float()
        real = p.d_fwd(hr).float().detach() if p.ragan else None
        terms["adversarial"] = p.adversarial(real, fake, for_discriminator=False)
    if p.prior is not None:
        terms.update({k: v for k, v in p.prior(sr.float(), hr).items() if k in w})
    if "shared_cls" in w:
        terms["shared_cls"] = shared_classification_loss(
            logits, resize_square(hr, p.classifier.size), p.classifier.model, labels=label,
            mode=p.shared["mode"], temperature=p.shared["temperature"])
    return sr, terms


def train_step(p: Parts, lr: torch.Tensor, hr: torch.Tensor, label: torch.Tensor | None,
               ref: torch.Tensor | None = None) -> torch.Tensor:
    """One optimisation step; returns the detached loss terms in ``p.columns`` order (and, for a
    reference-based generator, the mean absolute offset of its deformable layers)."""
    if p.disc is not None:
        p.disc.requires_grad_(False)
    with p.autocast():
        sr, terms = generator_terms(p, lr, hr, label, ref)
        g_loss = total_loss(terms, p.weights)
    if "offset" in p.columns:  # logged, not a loss term
        terms["offset"] = torch.stack(p.generator.offset_magnitudes).mean()
    p.opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    _clip(p.trainable, p.grad_clip)
    p.opt_g.step()
    p.sched_g.step()
    if p.ema is not None:
        p.ema.update_parameters(p.trainable)
    terms["g_total"] = g_loss
    if p.disc is not None:
        p.disc.requires_grad_(True)
        with p.autocast():
            d_loss = p.adversarial(p.d_fwd(hr).float(), p.d_fwd(sr.detach()).float(), for_discriminator=True)
        p.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        _clip(p.disc, p.grad_clip)
        p.opt_d.step()
        p.sched_d.step()
        terms["d_loss"] = d_loss
    return torch.stack([terms[k].float() for k in p.columns]).detach()
