"""Tests for sfsr.semantic: the label-free semantic prior (KL over classes of a frozen HR classifier),
its loading from the pipeline's classifier checkpoint, and the LR classification head on the
generator's shared encoder.

Four tests pin the bug classes of the public prototype:
(a) the prior must load the fine-grained classifier's own weights, not ImageNet ones;
(b) the total loss must be the weighted SUM of all terms, never overwritten by one of them;
(c) the shared-feature classification loss must back-propagate into the encoder;
(d) the softmax of the KL must run over classes (dim 1), not over the batch.
No network access: classifiers are built with weights=None.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sfsr import io
from sfsr.errors import DataError
from sfsr.losses import l1_loss, total_loss
from sfsr.metrics import topk_accuracy
from sfsr.models import build_classifier, build_generator, classifier_features, generator_spec, save_generator
from sfsr.models.classifier import checkpoint_dict, eval_transform, load_classifier, read_classifier_checkpoint
from sfsr.semantic import (LRClassificationHead, SemanticPriorLoss, SharedFeatureModel,
                           load_semantic_prior, pseudo_labels, semantic_kl, shared_classification_loss,
                           soft_targets, straight_through_clamp)
from sfsr.training.classifier import CLASSIFIER_DEFAULTS

NUM_CLASSES = 5


@pytest.fixture(scope="module")
def classifier() -> nn.Module:
    """A resnet18 classifier from scratch whose BN statistics were set on random images (so its
    eval-mode logits are of a sane size), in eval mode."""
    torch.manual_seed(0)
    model = build_classifier("resnet18", NUM_CLASSES, weights=None)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, 3, 32, 32))
    return model.eval()


def _images(n: int = 2, size: int = 32, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(n, 3, size, size, generator=g)
    sr = (hr + 0.2 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    return sr, hr


class ChannelMeanLogits(nn.Module):
    """Stub classifier: logits = per-channel mean of the image (3 'classes'), so logits can be set
    exactly by constant images."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def _constant_images(logits: np.ndarray, size: int = 4) -> torch.Tensor:
    t = torch.tensor(logits, dtype=torch.float32)
    return t[:, :, None, None].expand(-1, -1, size, size).clone()


def _np_softmax(z: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _hand_kl(hr_logits: np.ndarray, sr_logits: np.ndarray, t: float, axis: int = 1) -> float:
    """T^2 * mean over samples of sum_c p log(p/q), softmax along ``axis``, in float64."""
    p = _np_softmax(hr_logits / t, axis)
    q = _np_softmax(sr_logits / t, axis)
    return float(t * t * np.sum(p * np.log(p / q)) / hr_logits.shape[0])


# ------------------------------------------------------------ (a) the prior's own weights
def test_prior_loads_the_fine_grained_classifier_weights_not_fresh_or_imagenet(tmp_path, classifier) -> None:
    trained = build_classifier("resnet18", NUM_CLASSES, weights=None)
    trained.load_state_dict(classifier.state_dict())
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    cfg = {**CLASSIFIER_DEFAULTS, "arch": "resnet18", "weights": None, "input_size": 32}
    path = tmp_path / "classifier.pt"
    io.torch_save(path, checkpoint_dict(trained, cfg, [10, 20, 30, 40, 50], list("abcde"), val_top1=0.5))

    prior = load_semantic_prior(path, "cpu", temperature=2.0)
    saved = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    loaded = prior.classifier.state_dict()
    assert set(loaded) == set(saved)
    for key, value in saved.items():
        assert torch.equal(loaded[key], value), key
    torch.manual_seed(123)
    fresh = build_classifier("resnet18", NUM_CLASSES, weights=None).state_dict()
    for key in ("features.conv1.weight", "features.layer4.1.conv2.weight", "head.weight"):
        assert not torch.equal(loaded[key], fresh[key]), key
    # the perturbation is what was loaded, not the unperturbed starting point either
    assert not torch.equal(loaded["features.conv1.weight"], classifier.state_dict()["features.conv1.weight"])
    assert prior.meta["class_ids"] == [10, 20, 30, 40, 50]
    assert prior.meta["class_to_index"][30] == 2
    assert prior.temperature == 2.0

    # ImageNet weights, when cached on this machine, must differ too (never downloaded here)
    hub = torch.hub.get_dir()
    from torchvision.models import ResNet18_Weights
    cached = __import__("pathlib").Path(hub) / "checkpoints" / ResNet18_Weights.DEFAULT.url.rsplit("/", 1)[1]
    if cached.is_file():
        imagenet = torch.load(cached, map_location="cpu", weights_only=True)
        assert not torch.equal(loaded["features.conv1.weight"], imagenet["conv1.weight"])


def test_prior_refuses_a_checkpoint_that_is_not_a_classifier(tmp_path) -> None:
    gen = build_generator("srresnet", 2, num_blocks=1, num_features=8)
    gen_path = tmp_path / "generator.pt"
    save_generator(gen_path, gen, generator_spec("srresnet", 2, num_blocks=1, num_features=8))
    with pytest.raises(DataError, match="generator.pt"):
        load_semantic_prior(gen_path)
    raw = tmp_path / "resnet18.pth"
    io.torch_save(raw, build_classifier("resnet18", 3).state_dict())
    with pytest.raises(DataError, match="resnet18.pth"):
        load_semantic_prior(raw)
    with pytest.raises(DataError, match="missing.pt"):
        load_semantic_prior(tmp_path / "missing.pt")


def test_load_classifier_is_frozen_and_in_eval_mode(tmp_path, classifier) -> None:
    cfg = {**CLASSIFIER_DEFAULTS, "arch": "resnet18", "weights": None, "input_size": 32}
    path = tmp_path / "c.pt"
    io.torch_save(path, checkpoint_dict(classifier, cfg, list(range(NUM_CLASSES)), list("abcde")))
    model, meta = load_classifier(path)
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert meta["arch"] == {"name": "resnet18", "num_classes": NUM_CLASSES, "input_size": 32}
    assert "state_dict" not in meta and "state_dict" in read_classifier_checkpoint(path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), classifier(x))


# ------------------------------------------------------------ (b) weighted SUM of all terms
def test_total_loss_sums_pixel_and_semantic_terms_and_their_gradients(classifier) -> None:
    prior = SemanticPriorLoss(classifier, temperature=2.0)
    sr0, hr = _images()
    weights = {"pixel": 1.0, "semantic_kl": 0.5}

    def grad_of(fn) -> tuple[torch.Tensor, torch.Tensor]:
        sr = sr0.clone().requires_grad_(True)
        value = fn(sr)
        (grad,) = torch.autograd.grad(value, sr)
        return value.detach(), grad

    pix, g_pix = grad_of(lambda sr: l1_loss(sr, hr))
    kl, g_kl = grad_of(lambda sr: prior(sr, hr)["semantic_kl"])
    total, g_total = grad_of(lambda sr: total_loss({"pixel": l1_loss(sr, hr), **prior(sr, hr)}, weights))
    assert pix > 0 and kl > 0
    assert g_pix.abs().sum() > 0 and g_kl.abs().sum() > 0
    assert total.item() == pytest.approx(pix.item() + 0.5 * kl.item(), rel=1e-5)
    torch.testing.assert_close(g_total, g_pix + 0.5 * g_kl, rtol=1e-4, atol=1e-7)
    # neither term alone explains the total (an overwrite would)
    assert not torch.allclose(g_total, g_pix) and not torch.allclose(g_total, 0.5 * g_kl)


# ------------------------------------------------------------ (c) shared encoder gets the gradient
def test_shared_classification_loss_trains_the_encoder(classifier) -> None:
    torch.manual_seed(0)
    generator = build_generator("srresnet", 2, num_blocks=1, num_features=8)
    head = LRClassificationHead(generator.num_features, NUM_CLASSES)
    model = SharedFeatureModel(generator, head)
    calls = []
    encode = generator.encode
    generator.encode = lambda lr: calls.append(1) or encode(lr)
    lr = torch.rand(2, 3, 16, 16)
    hr = torch.rand(2, 3, 32, 32)
    sr, logits = model(lr)
    assert len(calls) == 1, "encode must run once for both outputs"
    assert sr.shape == (2, 3, 32, 32) and logits.shape == (2, NUM_CLASSES)
    with torch.no_grad():
        torch.testing.assert_close(sr, generator.upsample(encode(lr)))

    loss = shared_classification_loss(logits, hr, classifier, mode="pseudo")
    loss.backward()
    encoder = [*generator.head.parameters(), *generator.blocks.parameters(),
               *generator.body_tail.parameters()]
    assert all(p.grad is not None for p in encoder)
    # conv weights (a conv bias followed by BN has an exactly-zero gradient, so weights are checked)
    encoder = [p for p in encoder if p.dim() == 4]
    assert len(encoder) == 4 and all(p.grad.abs().sum() > 0 for p in encoder)
    # the classification loss alone does not reach the upsampling part
    assert all(p.grad is None for p in [*generator.upsampler.parameters(), *generator.tail.parameters()])
    assert all(p.grad is None for p in classifier.parameters())

    before = [p.detach().clone() for p in encoder]
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert all(not torch.equal(b, p) for b, p in zip(before, encoder))


# ------------------------------------------------------------ (d) softmax over classes
def test_kl_softmax_runs_over_classes_not_batch() -> None:
    hr_logits = np.array([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    sr_logits = np.array([[0.0, 1.0, 0.0], [1.0, -1.0, 2.0]])
    stub = ChannelMeanLogits()
    prior = SemanticPriorLoss(stub, temperature=1.0)
    hr, sr = _constant_images(hr_logits), _constant_images(sr_logits)

    ours = prior(sr, hr)["semantic_kl"].item()
    over_classes = _hand_kl(hr_logits, sr_logits, 1.0, axis=1)
    over_batch = _hand_kl(hr_logits, sr_logits, 1.0, axis=0)
    assert abs(over_classes - over_batch) > 0.1  # the case discriminates the two
    assert ours == pytest.approx(over_classes, rel=1e-5)

    # per-sample KL: the batch value is the mean of the single-sample values (a softmax over the
    # batch would give 0 for a batch of one), and permuting the batch changes nothing
    single = [prior(sr[i:i + 1], hr[i:i + 1])["semantic_kl"].item() for i in range(2)]
    assert min(single) > 0
    assert ours == pytest.approx(float(np.mean(single)), rel=1e-5)
    perm = torch.tensor([1, 0])
    assert prior(sr[perm], hr[perm])["semantic_kl"].item() == pytest.approx(ours, rel=1e-6)


def test_kl_zero_for_identical_images_and_positive_otherwise(classifier) -> None:
    prior = SemanticPriorLoss(classifier)
    sr, hr = _images()
    assert prior(hr.clone(), hr)["semantic_kl"].item() == pytest.approx(0.0, abs=1e-6)
    assert prior(sr, hr)["semantic_kl"].item() > 1e-6


@pytest.mark.parametrize("t", [1.0, 2.0, 4.0])
def test_temperature_scales_as_t_squared_kl(t: float) -> None:
    hr_logits = np.array([[3.0, 0.0, -2.0], [0.0, 4.0, 1.0], [1.0, 1.0, -3.0]])
    sr_logits = np.array([[1.0, 1.0, 0.0], [2.0, 0.0, 1.0], [-1.0, 2.0, 0.0]])
    prior = SemanticPriorLoss(ChannelMeanLogits(), temperature=t)
    value = prior(_constant_images(sr_logits), _constant_images(hr_logits))["semantic_kl"].item()
    assert value == pytest.approx(_hand_kl(hr_logits, sr_logits, t), rel=1e-5)
    raw = semantic_kl(torch.tensor(sr_logits), torch.tensor(hr_logits), t).item()
    assert raw == pytest.approx(value, rel=1e-5)


# ------------------------------------------------------------ prior: frozen, gradients to SR only
def test_prior_is_frozen_copy_and_gradient_reaches_sr_only(classifier) -> None:
    original = {k: v.clone() for k, v in classifier.state_dict().items()}
    requires = [p.requires_grad for p in classifier.parameters()]
    prior = SemanticPriorLoss(classifier, feature_layers=["layer1", "layer2"], feature_weight=0.5)
    prior.train()
    assert not prior.classifier.training
    assert all(not p.requires_grad for p in prior.classifier.parameters())
    assert [p.requires_grad for p in classifier.parameters()] == requires  # caller's model untouched
    sr, hr = _images()
    sr.requires_grad_(True)
    hr.requires_grad_(True)
    terms = prior(sr, hr)
    assert set(terms) == {"semantic_kl", "semantic_feat"} == set(prior.term_names)
    sum(terms.values()).backward()
    assert sr.grad is not None and sr.grad.abs().sum() > 0
    assert hr.grad is None
    assert all(p.grad is None for p in prior.classifier.parameters())
    for key, value in prior.classifier.state_dict().items():
        assert torch.equal(value, original[key]), key  # eval mode: BN statistics not updated


def test_feature_matching_term_matches_classifier_features(classifier) -> None:
    prior = SemanticPriorLoss(classifier, feature_layers=["layer1", "layer3"], feature_weight=0.25)
    sr, hr = _images()
    with torch.no_grad():
        got = prior(sr, hr)["semantic_feat"].item()
        fs = classifier_features(classifier, sr, ["layer1", "layer3"])
        fh = classifier_features(classifier, hr, ["layer1", "layer3"])
        kl_ref = semantic_kl(classifier(sr), classifier(hr)).item()
    expected = 0.25 * np.mean([F.l1_loss(fs[k], fh[k]).item() for k in ("layer1", "layer3")])
    assert got == pytest.approx(expected, rel=1e-5)
    assert prior(sr, hr)["semantic_kl"].item() == pytest.approx(kl_ref, rel=1e-5)
    assert prior(hr, hr)["semantic_feat"].item() == pytest.approx(0.0, abs=1e-7)
    assert SemanticPriorLoss(classifier).term_names == ["semantic_kl"]
    with pytest.raises(ValueError, match="layer9"):
        SemanticPriorLoss(classifier, feature_layers=["layer9"], feature_weight=1.0)


def test_prior_input_size_resizes_before_the_classifier(classifier) -> None:
    prior = SemanticPriorLoss(classifier, input_size=32)
    sr, hr = _images(size=48)
    sr.requires_grad_(True)
    value = prior(sr, hr)["semantic_kl"]
    value.backward()
    assert value.item() > 0 and sr.grad.abs().sum() > 0
    small = F.interpolate(sr.detach(), size=(32, 32), mode="bilinear", antialias=True)
    small_hr = F.interpolate(hr, size=(32, 32), mode="bilinear", antialias=True)
    with torch.no_grad():
        assert value.item() == pytest.approx(semantic_kl(classifier(small), classifier(small_hr)).item(),
                                             rel=1e-5)


def test_prior_sees_the_judges_view(classifier) -> None:
    """With resize_size the prior classifies exactly what the judge classifies (eval_transform:
    short side resized, centre crop), not the whole image squeezed into a square."""
    g = torch.Generator().manual_seed(3)
    hr = torch.rand(2, 3, 40, 56, generator=g)
    sr = (hr + 0.1 * torch.randn(hr.shape, generator=g)).clamp(0, 1).requires_grad_(True)
    prior = SemanticPriorLoss(classifier, input_size=32, resize_size=36)
    value = prior(sr, hr)["semantic_kl"]
    with torch.no_grad():
        judged = semantic_kl(classifier(eval_transform(32, 36)(sr)), classifier(eval_transform(32, 36)(hr)))
        squeezed = SemanticPriorLoss(classifier, input_size=32)(sr, hr)["semantic_kl"]
    assert value.item() == pytest.approx(judged.item(), rel=1e-6)
    assert value.item() != pytest.approx(squeezed.item(), rel=1e-3)  # the old square view differs
    value.backward()
    assert sr.grad.abs().sum() > 0  # differentiable through resize and crop


def test_prior_clamps_sr_with_a_straight_through_gradient(classifier) -> None:
    """The prior judges SR clamped to [0, 1] (what evaluation sees); out-of-range pixels still get
    the gradient of their clamped value (straight-through), instead of none (plain clamp)."""
    x = torch.tensor([-0.5, 0.25, 1.5], requires_grad=True)
    y = straight_through_clamp(x)
    assert y.tolist() == [0.0, 0.25, 1.0]
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert x.grad.tolist() == [1.0, 2.0, 3.0]
    sr, hr = _images(size=32)
    wild = sr.clone()
    wild[:, :, :8] = 1.8  # out of range: a top band the evaluation clamps to 1
    wild[:, :, -8:] = -0.7
    wild.requires_grad_(True)
    clamped = SemanticPriorLoss(classifier, clamp=True)(wild, hr)["semantic_kl"]
    with torch.no_grad():
        seen = SemanticPriorLoss(classifier)(wild.clamp(0, 1), hr)["semantic_kl"]
        unclamped = SemanticPriorLoss(classifier)(wild, hr)["semantic_kl"]
    assert clamped.item() == pytest.approx(seen.item(), rel=1e-6)
    assert clamped.item() != pytest.approx(unclamped.item(), rel=1e-3)
    clamped.backward()
    assert wild.grad[:, :, :8].abs().sum() > 0 and wild.grad[:, :, -8:].abs().sum() > 0


# ------------------------------------------------------------ pseudo labels, soft targets, head
def test_pseudo_labels_are_the_frozen_classifier_argmax_without_grad(classifier) -> None:
    _, hr = _images(n=6)
    hr.requires_grad_(True)
    labels = pseudo_labels(classifier, hr)
    with torch.no_grad():
        expected = classifier(hr).argmax(dim=1)
    assert labels.dtype == torch.long and not labels.requires_grad
    assert torch.equal(labels, expected)
    assert len(set(labels.tolist())) >= 1
    logits = torch.randn(6, NUM_CLASSES, requires_grad=True)
    loss = shared_classification_loss(logits, hr, classifier, mode="pseudo")
    assert loss.item() == pytest.approx(F.cross_entropy(logits, expected).item(), rel=1e-6)
    loss.backward()
    assert hr.grad is None and logits.grad is not None

    targets = soft_targets(classifier, hr, temperature=2.0)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(6))
    assert torch.equal(targets.argmax(dim=1), expected) and not targets.requires_grad
    soft = shared_classification_loss(logits, hr, classifier, mode="soft", temperature=2.0)
    ref = 4.0 * F.kl_div(F.log_softmax(logits / 2.0, 1), targets, reduction="batchmean")
    assert soft.item() == pytest.approx(ref.item(), rel=1e-6)

    true = torch.tensor([0, 1, 2, 3, 4, 0])
    assert shared_classification_loss(logits, mode="label", labels=true).item() == pytest.approx(
        F.cross_entropy(logits, true).item(), rel=1e-6)
    with pytest.raises(ValueError, match="labels"):
        shared_classification_loss(logits, hr, classifier, mode="label")
    with pytest.raises(ValueError, match="classifier"):
        shared_classification_loss(logits, hr, mode="pseudo")
    with pytest.raises(ValueError, match="pseudo"):
        shared_classification_loss(logits, hr, classifier, mode="hard")


def test_lr_head_shape_and_top1() -> None:
    head = LRClassificationHead(4, 3)
    assert head(torch.rand(5, 4, 7, 9)).shape == (5, 3)
    with torch.no_grad():
        head.fc.weight.copy_(torch.eye(3, 4))
        head.fc.bias.zero_()
    # features whose channel-means make class (i % 3) the largest for sample i
    feats = torch.zeros(6, 4, 3, 3)
    for i in range(6):
        feats[i, i % 3] = 1.0 + i
    logits = head(feats)
    torch.testing.assert_close(logits, feats.mean(dim=(2, 3))[:, :3])
    labels = torch.tensor([0, 1, 2, 0, 0, 0])  # 4 of 6 right
    assert topk_accuracy(logits, labels, ks=(1,))[1] == pytest.approx(4 / 6)
