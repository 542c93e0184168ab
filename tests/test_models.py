"""Tests for sfsr.models: shapes, parameter counts vs the papers, discriminators, classifiers and
generator checkpoints. CPU only, tiny configurations (standard ones only on the meta device)."""

from __future__ import annotations

import urllib.error

import pytest
import torch
from torch import nn

from sfsr.errors import DataError, SfsrError
from sfsr.config import load_schema
from sfsr.model_options import GENERATOR_KWARGS, SUPPORTED_SCALES
from sfsr.model_options import REFERENCE_GENERATORS
from sfsr.models import (GENERATOR_NAMES, GENERATORS, build_classifier, build_discriminator, build_generator,
                         classifier_features, count_parameters, generator_spec, load_generator,
                         save_generator)
from sfsr.models.blocks import pixel_shuffle_upsampler, upsampling_factors
from sfsr.models.classifier import vgg_layer_names

#: The single-image generators (forward(lr)); the reference-based ones have tests/test_ssen.py.
SISR_NAMES = tuple(n for n in GENERATOR_NAMES if n not in REFERENCE_GENERATORS)

TINY = {
    "ssen": {"num_blocks": 1, "num_features": 8, "extract_blocks": 1, "offset_features": 8},
    "srresnet": {"num_blocks": 1, "num_features": 8},
    "msrresnet": {"num_blocks": 1, "num_features": 8},
    "edsr_baseline": {"num_blocks": 2, "num_features": 8},
    "edsr": {"num_blocks": 2, "num_features": 16},
    "rrdbnet": {"num_blocks": 1, "num_features": 8, "growth": 4},
    "autoencoder": {"num_blocks": 1, "num_features": 8},
}


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
@pytest.mark.parametrize("name", SISR_NAMES)
def test_generator_shapes(name: str, scale: int) -> None:
    torch.manual_seed(0)
    model = build_generator(name, scale, **TINY[name]).eval()
    lr = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        sr = model(lr)
        feats = model.encode(lr)
        again = model.decode(feats, lr)
    assert sr.shape == (1, 3, 12 * scale, 12 * scale)
    assert feats.shape == (1, model.num_features, 12, 12)
    assert model.num_features == TINY[name]["num_features"]
    assert torch.isfinite(sr).all()
    assert torch.allclose(sr, again)


@pytest.mark.parametrize("name", SISR_NAMES)
def test_generator_odd_sizes_and_gradients(name: str) -> None:
    model = build_generator(name, 3, **TINY[name])
    lr = torch.rand(2, 3, 11, 13)
    sr = model(lr)
    assert sr.shape == (2, 3, 33, 39)
    sr.mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_msrresnet_has_no_batchnorm_and_srresnet_does() -> None:
    def has_bn(m: nn.Module) -> bool:
        return any(isinstance(x, nn.BatchNorm2d) for x in m.modules())

    assert has_bn(build_generator("srresnet", 4, **TINY["srresnet"]))
    assert not has_bn(build_generator("msrresnet", 4, **TINY["msrresnet"]))


def _conv(cin: int, cout: int, k: int = 3) -> list[tuple[int, ...]]:
    return [(cout, cin, k, k), (cout,)]


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_msrresnet_is_basicsrs_graph(scale: int) -> None:
    """BasicSR's MSRResNet (basicsr/archs/srresnet_arch.py) layer by layer: conv_first 3x3, 16 blocks
    of two 3x3 convs, upconv1 (x2, x3) or upconv1+upconv2 (x4), conv_hr, conv_last 3x3; its x4
    parameter count is BasicSR's 1,517,571; ReLU in the blocks, LeakyReLU(0.1) elsewhere, no PReLU."""
    with torch.device("meta"):
        model = build_generator("msrresnet", scale)
    f = 64
    up = _conv(f, f * scale * scale) if scale in (2, 3) else _conv(f, 4 * f) * 2
    expected = _conv(3, f) + _conv(f, f) * 32 + up + _conv(f, f) + _conv(f, 3)
    assert [tuple(p.shape) for p in model.parameters()] == expected
    if scale == 4:
        assert count_parameters(model) == 1_517_571
    acts = [type(m) for m in model.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU, nn.PReLU))]
    assert acts.count(nn.ReLU) == 16 and nn.PReLU not in acts
    assert {m.negative_slope for m in model.modules() if isinstance(m, nn.LeakyReLU)} == {0.1}


def test_old_msrresnet_checkpoints_load_as_the_graph_they_were_trained_as(tmp_path) -> None:
    """Until 2026-12-07 ``msrresnet`` named SRResNet without batch norm: such a checkpoint loads as
    that graph (srresnet, use_bn false) and gives the outputs it gave; a GAN stage refuses to start
    from it with a message that says what to do."""
    from sfsr.errors import ConfigError
    from sfsr.training.parts import load_init
    torch.manual_seed(0)
    old = build_generator("srresnet", 4, num_blocks=1, num_features=8, use_bn=False, base="bilinear").eval()
    path = tmp_path / "old.pt"
    save_generator(path, old, {"name": "msrresnet", "scale": 4, "kwargs": {"num_blocks": 1, "num_features": 8}})
    loaded, scale = load_generator(path)
    lr = torch.rand(1, 3, 10, 10)
    with torch.no_grad():
        assert scale == 4 and torch.equal(loaded(lr), old(lr))
    assert type(loaded).__name__ == "SRResNet" and loaded.base.mode == "bilinear"
    spec = generator_spec("msrresnet", 4, num_blocks=1, num_features=8)
    with pytest.raises(ConfigError, match=r"holds srresnet x4 .*'use_bn': False.*builds msrresnet x4 .*"
                                          "delete the stale checkpoint"):
        load_init(build_generator("msrresnet", 4, num_blocks=1, num_features=8), path,
                  {**spec, "kwargs": {"num_blocks": 1, "num_features": 8}})
    new = build_generator("msrresnet", 4, num_blocks=1, num_features=8)
    save_generator(tmp_path / "new.pt", new, spec)
    assert type(load_generator(tmp_path / "new.pt")[0]).__name__ == "MSRResNet"


def test_unknown_generator_name_and_options() -> None:
    with pytest.raises(ValueError, match="rrdbnet") as info:
        build_generator("unet", 4)
    assert all(n in str(info.value) for n in GENERATOR_NAMES)
    with pytest.raises(ValueError, match="growth"):
        build_generator("edsr", 4, growth=4)
    with pytest.raises(ValueError, match="scale"):
        build_generator("edsr", 5)


def _meta_count(name: str, scale: int = 4) -> int:
    with torch.device("meta"):
        return count_parameters(build_generator(name, scale))


@pytest.mark.parametrize(("name", "paper", "rel_tol"), [
    ("srresnet", 1.55e6, 0.03),       # SRGAN generator, ~1.5M
    ("edsr_baseline", 1.52e6, 0.03),  # EDSR paper table 1: baseline 1.5M
    ("edsr", 43.1e6, 0.03),           # EDSR paper table 1: 43M
    ("rrdbnet", 16.70e6, 0.01),       # ESRGAN RRDBNet x4: 16,697,987
])
def test_standard_parameter_counts(name: str, paper: float, rel_tol: float) -> None:
    assert _meta_count(name) == pytest.approx(paper, rel=rel_tol)


def test_standard_config_structure() -> None:
    with torch.device("meta"):
        edsr = build_generator("edsr", 4)
        rrdb = build_generator("rrdbnet", 4)
    assert len(edsr.blocks) == 32 and edsr.num_features == 256
    assert edsr.blocks[0].res_scale == 0.1
    assert len(rrdb.body) == 23 and rrdb.num_features == 64
    # x3 and x8 change only the upsampler: x8 (3 stages) > x4 (2 stages) > x2 (1 stage)
    assert _meta_count("edsr_baseline", 8) > _meta_count("edsr_baseline", 4) > _meta_count("edsr_baseline", 2)


def test_count_parameters_simple() -> None:
    assert count_parameters(nn.Conv2d(3, 8, 3)) == 3 * 8 * 9 + 8


# --------------------------------------------------------------------------------- discriminators
@pytest.mark.parametrize("size", [32, 96, 128])
def test_vgg_discriminator_any_patch_size(size: int) -> None:
    disc = build_discriminator("vgg", num_features=8, dense_features=16)
    out = disc(torch.rand(2, 3, size, size))
    assert out.shape == (2, 1)
    out.sum().backward()
    assert disc.classifier[1].weight.grad is not None


def test_vgg_discriminator_is_paper_network_at_96() -> None:
    disc = build_discriminator("vgg", num_features=8)
    feats = disc.features(torch.rand(1, 3, 96, 96))
    assert feats.shape == (1, 64, 6, 6)  # 8*nf channels, 96 / 2**4
    assert torch.equal(disc.pool(feats), feats)  # adaptive pooling is the identity here
    strides = [m.stride[0] for m in disc.features if isinstance(m, nn.Conv2d)]
    assert strides == [1, 2, 1, 2, 1, 2, 1, 2]


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


@pytest.mark.parametrize("size", [32, 96, 128])
def test_patchgan_logit_map(size: int) -> None:
    disc = build_discriminator("patchgan", num_features=8)
    out = disc(torch.rand(2, 3, size, size))
    expected = size
    for stride in (2, 2, 2, 1, 1):
        expected = _conv_out(expected, 4, stride, 1)
    assert out.shape == (2, 1, expected, expected)


def test_unknown_discriminator() -> None:
    with pytest.raises(ValueError, match="patchgan"):
        build_discriminator("stylegan")


# ------------------------------------------------------------------------------------ classifiers
def test_classifier_resnet18_and_features() -> None:
    torch.manual_seed(0)
    model = build_classifier("resnet18", 5).eval()
    x = torch.rand(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 5)
    assert isinstance(model.head, nn.Conv2d) and model.head.kernel_size == (1, 1)
    feats = classifier_features(model, x, ["layer2", "layer4"])
    assert feats["layer2"].shape == (2, 128, 4, 4)
    assert feats["layer4"].shape == (2, 512, 1, 1)
    # GAP + 1x1 conv on layer4 reproduces the logits
    manual = model.head(feats["layer4"].mean((2, 3), keepdim=True)).flatten(1)
    assert torch.allclose(manual, logits, atol=1e-6)
    with pytest.raises(ValueError, match="layer4"):
        classifier_features(model, x, ["fc"])


def test_classifier_vgg19_bn_layer_names() -> None:
    with torch.device("meta"):
        model = build_classifier("vgg19_bn", 3)
    names = model.layer_names
    assert names[:4] == ["conv1_1", "bn1_1", "relu1_1", "conv1_2"]
    assert names[-4:] == ["conv5_4", "bn5_4", "relu5_4", "pool5"]
    assert sum(n.startswith("conv") for n in names) == 16
    assert model.head.out_channels == 3


def test_classifier_mobilenet_v2_features_and_logits() -> None:
    torch.manual_seed(0)
    model = build_classifier("mobilenet_v2", 5).eval()
    assert model.layer_names == [str(i) for i in range(19)] and model.feature_channels == 1280
    assert not any(getattr(m, "inplace", False) for m in model.features.modules())  # features stay readable
    x = torch.rand(2, 3, 64, 64)
    feats = classifier_features(model, x, ["18"])
    manual = model.head(feats["18"].mean((2, 3), keepdim=True)).flatten(1)
    assert torch.allclose(manual, model(x), atol=1e-5) and model(x).shape == (2, 5)


def test_vgg19_layer_names_match_torchvision_indices() -> None:
    import torchvision

    with torch.device("meta"):
        features = torchvision.models.vgg19().features
    names = vgg_layer_names(features)
    assert names[34] == "conv5_4" and names[35] == "relu5_4" and names[36] == "pool5"
    assert isinstance(features[34], nn.Conv2d) and isinstance(features[35], nn.ReLU)


def test_classifier_imagenet_offline_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.models._api as api

    def fail(*args, **kwargs):
        raise urllib.error.URLError("no network (test)")

    monkeypatch.setattr(api, "load_state_dict_from_url", fail)
    with pytest.raises(SfsrError) as info:
        build_classifier("resnet18", 4, weights="imagenet")
    message = str(info.value)
    assert "local path" in message and "weights: null" in message


def test_classifier_local_weights(tmp_path) -> None:
    import torchvision

    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    model = build_classifier("resnet18", 4, weights=str(path))
    assert torch.equal(model.features.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    with pytest.raises(DataError, match="missing.pth"):
        build_classifier("resnet18", 4, weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="resnet50"):
        build_classifier("alexnet", 4)


# ------------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("name", ["srresnet", "rrdbnet", "edsr_baseline", "autoencoder"])
def test_checkpoint_round_trip(tmp_path, name: str) -> None:
    torch.manual_seed(0)
    spec = generator_spec(name, 2, **TINY[name])
    model = build_generator(name, 2, **TINY[name])
    model.train()
    model(torch.rand(2, 3, 12, 12))  # updates BN running stats where there is BN
    model.eval()
    path = tmp_path / "ckpt" / "gen.pt"
    save_generator(path, model, spec, epoch=3)
    loaded, scale = load_generator(path)
    assert scale == 2 and not loaded.training
    x = torch.rand(1, 3, 10, 10)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["arch"] == spec and ckpt["epoch"] == 3


def test_generator_spec_validates() -> None:
    assert generator_spec("edsr", 4, num_blocks=2) == {"name": "edsr", "scale": 4,
                                                       "kwargs": {"num_blocks": 2, "base": "none"}}
    with pytest.raises(ValueError):
        generator_spec("edsr", 4, use_bn=True)


def test_load_generator_errors_name_the_path(tmp_path) -> None:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"this is not a checkpoint")
    with pytest.raises(DataError, match="corrupt.pt"):
        load_generator(corrupt)
    with pytest.raises(DataError, match="absent.pt"):
        load_generator(tmp_path / "absent.pt")
    wrong = tmp_path / "wrong.pt"
    torch.save({"state_dict": {}}, wrong)
    with pytest.raises(DataError, match="wrong.pt"):
        load_generator(wrong)
    mismatch = tmp_path / "mismatch.pt"
    model = build_generator("edsr_baseline", 2, **TINY["edsr_baseline"])
    save_generator(mismatch, model, generator_spec("edsr_baseline", 2, num_blocks=3, num_features=8))
    with pytest.raises(DataError, match="mismatch.pt"):
        load_generator(mismatch)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_generators_and_checkpoint_on_gpu(tmp_path) -> None:
    torch.manual_seed(0)
    for name in SISR_NAMES:
        model = build_generator(name, 4, **TINY[name]).cuda().eval()
        lr = torch.rand(1, 3, 12, 12, device="cuda")
        with torch.no_grad():
            assert model(lr).shape == (1, 3, 48, 48)
    path = tmp_path / "gen.pt"
    save_generator(path, model.cpu(), generator_spec(name, 4, **TINY[name]))
    loaded, _ = load_generator(path, device="cuda")
    assert next(loaded.parameters()).is_cuda
    x = torch.rand(1, 3, 10, 10)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x.cuda()).cpu(), atol=1e-4)


# ---------------------------------------------------------------------- global residual learning
def _set5_pairs(shared_data, scale: int):
    import numpy as np
    from PIL import Image

    from sfsr.data.bicubic import imresize, modcrop
    for path in sorted((shared_data / "benchmark" / "Set5" / "HR").glob("*.png")):
        hr = modcrop(np.asarray(Image.open(path).convert("RGB")), scale)
        yield path.stem, hr, imresize(hr, 1 / scale)


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
@pytest.mark.parametrize("name", SISR_NAMES)
def test_untrained_bicubic_residual_model_is_bicubic_on_set5(shared_data, name: str, scale: int) -> None:
    """base=bicubic: the residual branch's last layer starts at zero, so an untrained generator of
    every architecture scores the bicubic baseline's PSNR-Y (to 0.01 dB on Set5); base=none does not."""
    import numpy as np

    from sfsr.data.bicubic import imresize
    from sfsr.metrics import image_metrics, to_uint8
    torch.manual_seed(0)
    kw = dict(num_blocks=1, num_features=8)
    residual = build_generator(name, scale, base="bicubic", **kw).eval()
    plain = build_generator(name, scale, base="none", **kw).eval()
    gaps, plain_gaps = [], []
    for _, hr, lr in _set5_pairs(shared_data, scale):
        bicubic = image_metrics(hr, imresize(lr, scale), scale)["psnr_y"]
        x = torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            gaps.append(image_metrics(hr, to_uint8(residual(x)[0]), scale)["psnr_y"] - bicubic)
            plain_gaps.append(image_metrics(hr, to_uint8(plain(x)[0]), scale)["psnr_y"] - bicubic)
    assert abs(float(np.mean(gaps))) < 0.01, gaps
    assert max(abs(g) for g in gaps) < 0.02, gaps
    assert min(plain_gaps) < -1.0, "an untrained plain generator should be far from bicubic"


def test_bicubic_upsample_matches_imresize_and_is_differentiable() -> None:
    import numpy as np

    from sfsr.data.bicubic import imresize
    from sfsr.models import bicubic_upsample
    rng = np.random.default_rng(0)
    lr = rng.random((2, 3, 7, 10))
    for scale in (2, 3, 4, 8):
        up = bicubic_upsample(torch.from_numpy(lr), scale).numpy()
        ref = np.stack([imresize(np.ascontiguousarray(img.transpose(1, 2, 0)), scale).transpose(2, 0, 1)
                        for img in lr])
        assert up.shape == (2, 3, 7 * scale, 10 * scale)
        np.testing.assert_allclose(up, ref, rtol=0, atol=1e-12)
    x = torch.rand(1, 3, 5, 6, requires_grad=True)
    bicubic_upsample(x, 4).sum().backward()
    # every output pixel's weights sum to 1 along each axis: d(sum)/dx sums to the number of outputs
    assert float(x.grad.sum()) == pytest.approx(3 * 16 * 5 * 6, rel=1e-5)


@pytest.mark.parametrize("base", ["bilinear", "bicubic"])
def test_residual_generators_learn_and_decode_matches_forward(base: str) -> None:
    """The zeroed last layer still gets gradients (training can start), and decode(encode(lr), lr)
    is forward (the shared-feature stage relies on it)."""
    from sfsr.semantic import LRClassificationHead, SharedFeatureModel
    for name in SISR_NAMES:
        g = build_generator(name, 2, base=base, num_blocks=1, num_features=8)
        lr = torch.rand(2, 3, 9, 11)
        sr = g(lr)
        assert torch.equal(sr, g.decode(g.encode(lr), lr))
        ((sr - torch.rand_like(sr)) ** 2).mean().backward()
        last = [p for p in g.parameters() if p.grad is not None][-2]  # weight of the last layer
        assert last.abs().max() == 0 and last.grad.abs().max() > 0, name
        shared = SharedFeatureModel(g, LRClassificationHead(g.num_features, 3))
        with torch.no_grad():
            assert torch.equal(shared(lr)[0], g(lr))


def test_paper_bases_and_spec_records_the_base() -> None:
    from sfsr.models import generator_spec
    assert build_generator("msrresnet", 4, num_blocks=1).base.mode == "bilinear"  # BasicSR
    for name in ("srresnet", "edsr_baseline", "edsr", "rrdbnet", "autoencoder"):
        assert build_generator(name, 4, num_blocks=1).base.mode == "none"
    assert generator_spec("srresnet", 4, num_blocks=2)["kwargs"] == {"num_blocks": 2, "base": "none"}
    assert generator_spec("msrresnet", 4)["kwargs"]["base"] == "bilinear"
    with pytest.raises(ValueError, match="unknown base 'lanczos'.*none, bilinear, bicubic"):
        build_generator("edsr", 4, base="lanczos")


# ------------------------------------------------------------------------ the generators table
def test_schema_arch_values_are_the_generators_table():
    """config.schema.yaml's ``arch`` enum, the torch-free defaults and the models table name the
    same generators, in the same order."""
    arch = load_schema()["$defs"]["sr_model"]["properties"]["arch"]["enum"]
    assert arch == list(GENERATORS) == list(GENERATOR_KWARGS) == list(GENERATOR_NAMES)
    assert list(load_schema()["$defs"]["sr_model"]["properties"]["scale"]["enum"]) == list(SUPPORTED_SCALES)


@pytest.mark.parametrize("name", GENERATOR_NAMES)
def test_table_pairs_each_class_with_its_defaults(name):
    cls, defaults = GENERATORS[name]
    assert defaults is GENERATOR_KWARGS[name]
    model = build_generator(name, 2, **TINY[name])
    assert type(model) is cls
    assert model.base.mode == defaults["base"]


@pytest.mark.parametrize("scale", SUPPORTED_SCALES)
def test_upsampling_blocks_reach_the_scale(scale):
    factors = upsampling_factors(scale)
    assert int(torch.tensor(factors).prod()) == scale
    up = pixel_shuffle_upsampler(4, scale, nn.PReLU)
    assert len(up) == 3 * len(factors)
    assert up(torch.zeros(1, 4, 5, 5)).shape == (1, 4, 5 * scale, 5 * scale)
    with pytest.raises(ValueError, match="supported scales"):
        upsampling_factors(5)
