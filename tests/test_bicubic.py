"""MATLAB-exact bicubic imresize: golden MATLAB outputs, numpy/torch agreement, shapes, invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from sfsr.data.bicubic import imresize, modcrop

SET5 = ["baby", "bird", "butterfly", "head", "woman"]
GOLDEN = [(s, name) for s in (2, 3, 4) for name in SET5]


def _golden_pair(shared_data, scale, name):
    root = shared_data / "benchmark" / "Set5"
    hr = np.asarray(Image.open(root / "HR" / f"{name}.png"))
    lr = np.asarray(Image.open(root / "LR_bicubic_matlab" / f"X{scale}" / f"{name}.png"))
    return hr, lr


def _torch_hwc(image: np.ndarray, scale: int, device: str = "cpu") -> np.ndarray:
    t = torch.from_numpy(np.array(image)).permute(2, 0, 1).to(device)
    return imresize(t, 1 / scale).permute(1, 2, 0).cpu().numpy()


@pytest.mark.parametrize("scale,name", GOLDEN)
def test_matches_matlab_numpy(shared_data, scale, name):
    hr, lr = _golden_pair(shared_data, scale, name)
    out = imresize(modcrop(hr, scale), 1 / scale)
    assert out.dtype == np.uint8 and out.shape == lr.shape
    assert int(np.count_nonzero(out != lr)) == 0


@pytest.mark.parametrize("scale,name", GOLDEN)
def test_matches_matlab_torch_cpu(shared_data, scale, name):
    hr, lr = _golden_pair(shared_data, scale, name)
    out = _torch_hwc(modcrop(hr, scale), scale)
    assert out.dtype == np.uint8 and out.shape == lr.shape
    assert int(np.count_nonzero(out != lr)) == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("scale,name", GOLDEN)
def test_matches_matlab_torch_cuda(shared_data, scale, name):
    hr, lr = _golden_pair(shared_data, scale, name)
    assert int(np.count_nonzero(_torch_hwc(modcrop(hr, scale), scale, "cuda") != lr)) == 0


def test_per_pass_rounding_matters(shared_data):
    """Rounding only at the end (float path) must differ from MATLAB somewhere: the golden test
    really checks the uint8 per-pass conversion."""
    hr, lr = _golden_pair(shared_data, 3, "baby")
    once = imresize(modcrop(hr, 3).astype(np.float64), 1 / 3)
    once = np.clip(np.floor(once + 0.5), 0, 255).astype(np.uint8)
    assert np.count_nonzero(once != lr) > 0


@pytest.mark.parametrize("scale", [1 / 4, 1 / 3, 1 / 2, 2, 3, 8])
def test_torch_float_matches_numpy_float(scale):
    rng = np.random.default_rng(0)
    image = rng.random((3, 37, 29))
    ref = np.stack([imresize(c, scale) for c in image])
    t32 = imresize(torch.from_numpy(image).float(), scale)
    t64 = imresize(torch.from_numpy(image), scale)
    assert t32.dtype == torch.float32 and t64.dtype == torch.float64
    np.testing.assert_allclose(t32.numpy(), ref, atol=1e-5)
    np.testing.assert_allclose(t64.numpy(), ref, atol=1e-10)


def test_torch_batch_dims_match_single_images():
    rng = np.random.default_rng(1)
    batch = torch.from_numpy(rng.integers(0, 256, (2, 3, 24, 20), dtype=np.uint8))
    out = imresize(batch, 1 / 4)
    assert out.shape == (2, 3, 6, 5) and out.dtype == torch.uint8
    for i in range(2):
        single = imresize(batch[i].permute(1, 2, 0).numpy(), 1 / 4)
        assert np.array_equal(out[i].permute(1, 2, 0).numpy(), single)


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
@pytest.mark.parametrize("shape", [(7, 11), (10, 9, 3)])
def test_upscale_output_shape(scale, shape):
    image = np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)
    out = imresize(image, scale)
    assert out.shape == (shape[0] * scale, shape[1] * scale) + shape[2:]
    assert out.dtype == np.uint8


def test_downscale_output_shape_is_ceil():
    image = np.zeros((10, 13), np.uint8)
    assert imresize(image, 1 / 3).shape == (math.ceil(10 / 3), math.ceil(13 / 3))
    assert imresize(image, output_shape=(4, 9)).shape == (4, 9)
    assert imresize(torch.zeros(2, 10, 13), output_shape=(4, 9)).shape == (2, 4, 9)


@pytest.mark.parametrize("scale", [1 / 4, 1 / 3, 1 / 2, 2, 3, 8])
def test_constant_image_stays_constant(scale):
    image = np.full((13, 17, 3), 173, np.uint8)
    out = imresize(image, scale)
    assert np.all(out == 173)
    out_f = imresize(np.full((13, 17), 0.3), scale)
    np.testing.assert_allclose(out_f, 0.3, atol=1e-12)
    out_t = imresize(torch.full((3, 13, 17), 173, dtype=torch.uint8), scale)
    assert bool(torch.all(out_t == 173))


@pytest.mark.parametrize("scale", [1 / 4, 1 / 3, 1 / 2, 2, 3])
def test_ramp_follows_matlab_coordinate_mapping(scale):
    """Cubic convolution (and its normalised, stretched version) reproduces linear functions, so
    away from the borders a ramp img[i] = i lands exactly on MATLAB's mapping
    u = x/scale + 0.5*(1 - 1/scale) (1-based)."""
    n = 64
    ramp = np.tile(np.arange(n, dtype=np.float64)[:, None], (1, 5))
    out = imresize(ramp, scale)[:, 0]
    x = np.arange(1, out.size + 1)
    expected = x / scale + 0.5 * (1 - 1 / scale) - 1
    margin = int(math.ceil(2 / min(scale, 1))) + 2
    inner = (expected > margin) & (expected < n - 1 - margin)
    assert inner.sum() > 5
    np.testing.assert_allclose(out[inner], expected[inner], atol=1e-9)


def test_modcrop_numpy_and_torch():
    image = np.zeros((13, 17, 3), np.uint8)
    assert modcrop(image, 4).shape == (12, 16, 3)
    assert modcrop(image[:, :, 0], 3).shape == (12, 15)
    assert modcrop(torch.zeros(2, 3, 13, 17), 4).shape == (2, 3, 12, 16)


def test_bad_arguments():
    with pytest.raises(ValueError):
        imresize(np.zeros((4, 4)), 2, output_shape=(8, 8))
    with pytest.raises(ValueError):
        imresize(np.zeros((4, 4)))
    with pytest.raises(TypeError):
        imresize(np.zeros((4, 4), np.int32), 2)
