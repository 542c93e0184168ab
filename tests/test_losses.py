"""Tests for sfsr.losses: pixel, perceptual, adversarial losses, presets and the weighted total.
Never touches the network: VGG19 is built with weights=None; the ImageNet path is made to fail."""

from __future__ import annotations

import math
import urllib.error

import pytest
import torch
from torch import nn

from sfsr.errors import ConfigError, SfsrError
from sfsr.losses import (LOSS_PRESETS, PerceptualLoss, _resolve_vgg_layer, adversarial_loss,
                         charbonnier_loss, gan_loss_vanilla, l1_loss, mse_loss, pixel_loss,
                         relativistic_average_loss, total_loss)
from sfsr.models import build_classifier


# ----------------------------------------------------------------------------------------- pixel
def test_pixel_losses_on_constant_images() -> None:
    a = torch.full((2, 3, 8, 8), 0.25)
    b = torch.full((2, 3, 8, 8), 0.75)
    assert l1_loss(a, b).item() == pytest.approx(0.5)
    assert mse_loss(a, b).item() == pytest.approx(0.25)
    assert charbonnier_loss(a, b).item() == pytest.approx(math.sqrt(0.25 + 1e-6))
    assert charbonnier_loss(a, a).item() == pytest.approx(1e-3)
    assert charbonnier_loss(a, b, eps=0.5).item() == pytest.approx(math.sqrt(0.25 + 0.25))
    assert pixel_loss("charbonnier") is charbonnier_loss and pixel_loss("l1") is l1_loss
    with pytest.raises(ValueError, match="charbonnier"):
        pixel_loss("huber")


# ----------------------------------------------------------------------------------- adversarial
def test_vanilla_gan_loss_values() -> None:
    zeros = torch.zeros(4, 1)
    assert gan_loss_vanilla(None, zeros, for_discriminator=False).item() == pytest.approx(math.log(2))
    assert gan_loss_vanilla(zeros, zeros, for_discriminator=True).item() == pytest.approx(2 * math.log(2))
    confident_d = gan_loss_vanilla(torch.full((4, 1), 20.0), torch.full((4, 1), -20.0), for_discriminator=True)
    assert confident_d.item() < 1e-6
    fooled_g = gan_loss_vanilla(None, torch.full((4, 1), -20.0), for_discriminator=False)
    assert fooled_g.item() == pytest.approx(20.0, rel=1e-3)  # -log(sigmoid(-20)) ~ 20
    with pytest.raises(ValueError):
        gan_loss_vanilla(None, zeros, for_discriminator=True)


def test_ragan_symmetric_case_is_log2() -> None:
    logits = torch.full((3, 1), 1.7)
    for for_d in (True, False):
        value = relativistic_average_loss(logits, logits.clone(), for_discriminator=for_d)
        assert value.item() == pytest.approx(math.log(2))


def test_ragan_matches_formula() -> None:
    real = torch.tensor([[2.0], [0.0]])
    fake = torch.tensor([[1.0], [-1.0]])
    d_real = torch.sigmoid(real - fake.mean())  # D_Ra(x_r, x_f)
    d_fake = torch.sigmoid(fake - real.mean())  # D_Ra(x_f, x_r)
    expected_d = (-torch.log(d_real).mean() - torch.log(1 - d_fake).mean()) / 2
    expected_g = (-torch.log(1 - d_real).mean() - torch.log(d_fake).mean()) / 2
    assert relativistic_average_loss(real, fake, for_discriminator=True).item() == pytest.approx(expected_d.item())
    assert relativistic_average_loss(real, fake, for_discriminator=False).item() == pytest.approx(expected_g.item())
    assert adversarial_loss("ragan") is relativistic_average_loss
    assert adversarial_loss("vanilla") is gan_loss_vanilla


def test_presets() -> None:
    assert LOSS_PRESETS["srgan"]["pixel"] == ("mse", 0.0) and LOSS_PRESETS["srgan"]["adversarial"] == 1e-3
    assert LOSS_PRESETS["esrgan"]["pixel"] == ("l1", 1e-2) and LOSS_PRESETS["esrgan"]["adversarial"] == 5e-3
    for preset in LOSS_PRESETS.values():
        adversarial_loss(preset["gan_type"])
        pixel_loss(preset["pixel"][0])


# ----------------------------------------------------------------------------------------- total
def test_total_loss_sums_every_term_and_gradients_flow() -> None:
    start = {"pixel": 1.0, "perceptual": 2.0, "adversarial": 3.0}
    params = {k: torch.tensor(v, requires_grad=True) for k, v in start.items()}
    terms = {k: p * p for k, p in params.items()}
    weights = {"pixel": 0.5, "perceptual": 1.0, "adversarial": 1e-3}
    total = total_loss(terms, weights)
    assert total.item() == pytest.approx(0.5 * 1 + 1.0 * 4 + 1e-3 * 9)
    total.backward()
    for key, p in params.items():
        assert p.grad.item() == pytest.approx(weights[key] * 2 * p.item())


def test_total_loss_mismatches_raise() -> None:
    terms = {"pixel": torch.tensor(1.0)}
    with pytest.raises(ConfigError, match="adversarial"):
        total_loss(terms, {"pixel": 1.0, "adversarial": 1.0})
    with pytest.raises(ConfigError, match="pixel"):
        total_loss(terms, {})
    with pytest.raises(ValueError, match="scalar"):
        total_loss({"pixel": torch.ones(2)}, {"pixel": 1.0})


# ------------------------------------------------------------------------------------ perceptual
@pytest.fixture(scope="module")
def vgg_loss() -> PerceptualLoss:
    torch.manual_seed(0)
    return PerceptualLoss("vgg19", layer="conv5_4", weights=None)


def test_perceptual_zero_for_identical_positive_otherwise(vgg_loss: PerceptualLoss) -> None:
    torch.manual_seed(1)
    hr = torch.rand(1, 3, 32, 32)
    sr = (hr + 0.1 * torch.randn_like(hr)).requires_grad_(True)
    assert vgg_loss(hr, hr.clone()).item() == 0.0
    loss = vgg_loss(sr, hr)
    assert loss.item() > 0
    loss.backward()
    assert sr.grad is not None and sr.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in vgg_loss.net.parameters())


def test_perceptual_layer_mapping_and_frozen_mode(vgg_loss: PerceptualLoss) -> None:
    assert len(vgg_loss.net) == 35 and isinstance(vgg_loss.net[-1], nn.Conv2d)  # vgg19.features[34]
    vgg_loss.train()
    assert not vgg_loss.net.training
    # '54' shorthands (building a second VGG19 would cost seconds; the name->index mapping of
    # relu5_4 = features[35] is checked in test_models)
    assert _resolve_vgg_layer("54", before_relu=False) == "relu5_4"
    assert _resolve_vgg_layer("VGG54", before_relu=True) == "conv5_4"
    assert _resolve_vgg_layer("relu2_2", before_relu=True) == "relu2_2"
    with pytest.raises(ValueError, match="conv5_4"):
        PerceptualLoss("vgg19", layer="conv6_1", weights=None)


def test_perceptual_feature_scale_and_mse() -> None:
    clf = build_classifier("resnet18", 3)
    hr, sr = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    base = PerceptualLoss(clf, layer="layer1", criterion="mse")(sr, hr)
    scaled = PerceptualLoss(clf, layer="layer1", criterion="mse", feature_scale=1 / 12.75)(sr, hr)
    assert scaled.item() == pytest.approx(base.item() / 12.75**2, rel=1e-4)


def test_perceptual_with_pipeline_classifier() -> None:
    torch.manual_seed(0)
    clf = build_classifier("resnet18", 3)
    loss_fn = PerceptualLoss(clf, layer="layer2")
    hr = torch.rand(2, 3, 32, 32)
    sr = torch.rand(2, 3, 32, 32, requires_grad=True)
    assert loss_fn(hr, hr).item() == 0.0
    value = loss_fn(sr, hr)
    assert value.item() > 0
    value.backward()
    assert sr.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in loss_fn.net.parameters())
    assert all(p.requires_grad for p in clf.parameters())  # the caller's model is untouched
    callable_fn = PerceptualLoss(clf, layer=lambda net, x: net.features[:5](net.normalize(x)))
    assert callable_fn(sr.detach(), hr).item() > 0
    with pytest.raises(ValueError, match="layer4"):
        PerceptualLoss(clf, layer="conv5_4")


def test_perceptual_with_generic_module() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    loss_fn = PerceptualLoss(net, layer="1")
    x = torch.rand(1, 3, 16, 16)
    assert loss_fn(x, x).item() == 0.0
    assert loss_fn(x, torch.rand(1, 3, 16, 16)).item() > 0


def test_perceptual_imagenet_offline_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.models._api as api

    def fail(*args, **kwargs):
        raise urllib.error.URLError("no network (test)")

    monkeypatch.setattr(api, "load_state_dict_from_url", fail)
    with pytest.raises(SfsrError) as info:
        PerceptualLoss("vgg19", weights="imagenet")
    message = str(info.value)
    assert "local path" in message and "classifier" in message
