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


# ------------------------------------------------------------------------------------------
# The reference implementation: the straightforward gather form of MATLAB's imresize (the code
# sfsr used before the strided kernels), kept here to prove the fast paths bit for bit.
# ------------------------------------------------------------------------------------------

def _ref_contributions(in_length, out_length, scale):
    kernel_width = 4.0
    if scale < 1:
        def kernel(x):
            return scale * _ref_cubic(scale * x)
        kernel_width = kernel_width / scale
    else:
        kernel = _ref_cubic
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    taps = int(math.ceil(kernel_width)) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    weights = kernel(u[:, None] - indices)
    weights = weights / np.sum(weights, axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])
    indices = mirror[np.mod(indices.astype(np.int64) - 1, mirror.size)]
    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], indices[:, keep]


def _ref_cubic(x):
    absx = np.abs(x)
    absx2 = absx * absx
    absx3 = absx2 * absx
    return ((1.5 * absx3 - 2.5 * absx2 + 1.0) * (absx <= 1)
            + (-0.5 * absx3 + 2.5 * absx2 - 4.0 * absx + 2.0) * ((absx > 1) & (absx <= 2)))


def _ref_plan(in_shape, scale, output_shape):
    if scale is not None:
        scales = (float(scale), float(scale))
        out_shape = (int(math.ceil(in_shape[0] * scale)), int(math.ceil(in_shape[1] * scale)))
    else:
        out_shape = tuple(output_shape)
        scales = (out_shape[0] / in_shape[0], out_shape[1] / in_shape[1])
    return out_shape, scales, sorted(range(2), key=lambda d: scales[d])


def _ref_round(x):
    r = np.floor(x)
    r += (x - r) >= 0.5
    return np.clip(r, 0, 255)


def ref_imresize_numpy(image, scale=None, output_shape=None):
    is_uint8 = image.dtype == np.uint8
    out_shape, scales, order = _ref_plan(image.shape[:2], scale, output_shape)
    x = image.astype(np.float64)
    for dim in order:
        weights, indices = _ref_contributions(x.shape[dim], out_shape[dim], scales[dim])
        moved = np.moveaxis(x, dim, 0)
        wshape = (weights.shape[0],) + (1,) * (moved.ndim - 1)
        acc = weights[:, 0].reshape(wshape) * moved[indices[:, 0]]
        for k in range(1, weights.shape[1]):
            acc += weights[:, k].reshape(wshape) * moved[indices[:, k]]
        if is_uint8:
            acc = _ref_round(acc)
        x = np.moveaxis(acc, 0, dim)
    return x.astype(np.uint8) if is_uint8 else x.astype(image.dtype, copy=False)


def ref_imresize_torch(image, scale=None, output_shape=None):
    is_uint8 = image.dtype == torch.uint8
    work = torch.float64 if is_uint8 else (image.dtype if image.dtype in (torch.float32, torch.float64)
                                           else torch.float32)
    out_shape, scales, order = _ref_plan(tuple(image.shape[-2:]), scale, output_shape)
    x = image.to(work)
    for dim in order:
        axis = x.ndim - 2 + dim
        weights, indices = _ref_contributions(x.shape[axis], out_shape[dim], scales[dim])
        w = torch.as_tensor(weights, dtype=work)
        idx = torch.as_tensor(indices, dtype=torch.long)
        wshape = [1] * x.ndim
        wshape[axis] = -1
        acc = x.index_select(axis, idx[:, 0]) * w[:, 0].view(wshape)
        for k in range(1, w.shape[1]):
            acc = acc + x.index_select(axis, idx[:, k]) * w[:, k].view(wshape)
        if is_uint8:
            r = torch.floor(acc)
            acc = torch.clamp(r + ((acc - r) >= 0.5).to(work), 0, 255)
        x = acc
    return x.to(image.dtype)


RANDOM_CASES = [((h, w), s) for s in (2, 3, 4, 8) for (h, w) in ((8, 8), (16, 24), (40, 33), (97, 130),
                                                                   (257, 300))]


@pytest.mark.parametrize("threads", ["1", "2"])
@pytest.mark.parametrize("shape,s", RANDOM_CASES)
def test_numpy_matches_reference_on_random_images(monkeypatch, threads, shape, s):
    from sfsr.data import bicubic

    monkeypatch.setenv("SFSR_RESIZE_THREADS", threads)
    monkeypatch.setattr(bicubic, "_THREADED_MIN_VALUES", 1)  # exercise the bands on small images
    monkeypatch.setattr(bicubic, "_BAND_VALUES", 97)
    rng = np.random.default_rng(hash((shape, s)) % 2**32)
    h, w = shape[0] - shape[0] % s, shape[1] - shape[1] % s
    for image in (rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
                  rng.integers(0, 256, (h, w), dtype=np.uint8),
                  (rng.random((h, w)) < 0.5).astype(np.uint8) * 255,  # edges: many ties
                  np.repeat(rng.integers(0, 256, (h, 1), dtype=np.uint8), w, axis=1)):
        out = imresize(image, 1 / s)
        assert np.count_nonzero(out != ref_imresize_numpy(image, 1 / s)) == 0
        f = image.astype(np.float64) / 255
        assert np.array_equal(imresize(f, 1 / s), ref_imresize_numpy(f, 1 / s))  # float: bit-identical
    up = rng.integers(0, 256, (min(h, 40), min(w, 40), 3), dtype=np.uint8)
    assert np.array_equal(imresize(up, s), ref_imresize_numpy(up, s))


@pytest.mark.parametrize("native", [None, True])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64, torch.bfloat16])
def test_torch_paths_match_reference_bit_for_bit(native, dtype):
    from sfsr.data.bicubic import _resize_torch

    rng = np.random.default_rng(5)
    for shape, s in [((2, 3, 48, 36), 4), ((3, 45, 30), 3), ((40, 26), 2), ((1, 3, 24, 24), 8)]:
        base = torch.from_numpy(rng.integers(0, 256, shape, dtype=np.uint8))
        image = base if dtype == torch.uint8 else (base.double() / 255).to(dtype)
        for kwargs in ({"scale": 1 / s}, {"scale": s}, {"output_shape": (7, 11)}):
            out = _resize_torch(image, kwargs.get("scale"), kwargs.get("output_shape"), native=native)
            ref = ref_imresize_torch(image, **kwargs)
            assert out.dtype == ref.dtype and out.shape == ref.shape
            assert torch.equal(out, ref), (shape, s, kwargs)


def test_torch_cpu_path_keeps_autograd():
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    y = imresize(x, 1 / 4)
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


def test_matrix_form_only_where_sums_are_exact():
    """x1/2, x1/4, x1/8 have dyadic weights (exact sums: the matrix form is used); x1/3 does not
    (the tap-by-tap form keeps the reference's order)."""
    from sfsr.data.bicubic import _strided_plan

    for s in (2, 4, 8):
        assert _strided_plan(96, 96 // s, 1 / s).exact_uint8
    assert not _strided_plan(96, 32, 1 / 3).exact_uint8
    assert _strided_plan(20, 40, 2.0) is None  # upscaling: weights vary per output pixel
