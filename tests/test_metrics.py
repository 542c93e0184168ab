"""Tests of the project's metric convention (sfsr.metrics).

The published bicubic table (README of the shared data, from the SR papers) is the spec: our
pipeline (MATLAB-exact bicubic both ways + these metrics) must land within 0.02 dB / 0.002 of it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from sfsr.data.bicubic import imresize, modcrop
from sfsr.data.images import read_image
from sfsr.errors import DataError
from sfsr.metrics import (CONVENTION, CONVENTION_INFO, image_metrics, psnr, rgb_to_gray, rgb_to_y, ssim,
                          to_uint8, topk_accuracy)

# Published bicubic PSNR / SSIM (Y channel), SRCNN / VDSR / EDSR tables: the spec, not our output.
PUBLISHED_BICUBIC = {
    ("Set5", 2): (33.66, 0.9299), ("Set5", 3): (30.39, 0.8682), ("Set5", 4): (28.42, 0.8104),
    ("Set14", 2): (30.24, 0.8688), ("Set14", 3): (27.55, 0.7742), ("Set14", 4): (26.00, 0.7027),
}


def _pixel(r: int, g: int, b: int) -> np.ndarray:
    return np.array([[[r, g, b]]], dtype=np.uint8)


# ------------------------------------------------------------------------------- colour ----------

def test_rgb_to_y_known_pixels_from_the_formula():
    assert rgb_to_y(_pixel(255, 255, 255))[0, 0] == pytest.approx(235.0, abs=1e-12)
    assert rgb_to_y(_pixel(0, 0, 0))[0, 0] == pytest.approx(16.0, abs=1e-12)
    assert rgb_to_y(_pixel(255, 0, 0))[0, 0] == pytest.approx(16 + 65.481, abs=1e-12)
    assert rgb_to_y(_pixel(0, 255, 0))[0, 0] == pytest.approx(16 + 128.553, abs=1e-12)
    assert rgb_to_y(_pixel(0, 0, 255))[0, 0] == pytest.approx(16 + 24.966, abs=1e-12)
    by_hand = 16 + (65.481 * 100 + 128.553 * 150 + 24.966 * 200) / 255  # = 136.8794...
    y = rgb_to_y(_pixel(100, 150, 200))
    assert y.dtype == np.float64 and y[0, 0] == pytest.approx(by_hand, abs=1e-12)
    assert y[0, 0] != round(by_hand)  # not rounded


def test_rgb_to_gray_is_full_range_luma():
    assert rgb_to_gray(_pixel(255, 255, 255))[0, 0] == pytest.approx(255.0)
    assert rgb_to_gray(_pixel(10, 20, 30))[0, 0] == pytest.approx(0.299 * 10 + 0.587 * 20 + 0.114 * 30)


def test_rgb_to_y_rejects_gray():
    with pytest.raises(ValueError, match="RGB"):
        rgb_to_y(np.zeros((4, 4), np.uint8))


# ------------------------------------------------------------------------------ to_uint8 --------

def test_to_uint8_rounds_half_away_from_zero_and_clamps():
    x = np.array([[-0.3, 0.0, 0.49 / 255, 0.5 / 255, 1.5 / 255, 2.5 / 255, 254.5 / 255, 1.0, 1.7]])
    assert to_uint8(x).tolist() == [[0, 0, 0, 1, 2, 3, 255, 255, 255]]  # 2.5 -> 3, not banker's 2
    assert to_uint8(x).dtype == np.uint8


def test_to_uint8_torch_is_channel_first():
    t = torch.zeros(1, 3, 2, 5)
    t[0, 0] = 1.0  # red
    t[0, 2, 1, 4] = 0.5  # one blue pixel 127.5 -> 128
    out = to_uint8(t)
    assert out.shape == (2, 5, 3)
    assert (out[..., 0] == 255).all() and out[1, 4, 2] == 128 and out[0, 0, 2] == 0
    assert to_uint8(t[0]).shape == (2, 5, 3)
    assert to_uint8(torch.full((1, 4, 6), 0.2)).shape == (4, 6)  # single channel -> HxW
    with pytest.raises(ValueError, match="batch"):
        to_uint8(torch.zeros(2, 3, 4, 4))


def test_to_uint8_numpy_is_channel_last():
    x = np.zeros((4, 6, 3))
    x[..., 1] = 1.0
    out = to_uint8(x)
    assert out.shape == (4, 6, 3) and (out[..., 1] == 255).all() and (out[..., 0] == 0).all()


# --------------------------------------------------------------------------- PSNR / SSIM --------

def test_psnr_known_mse():
    a = np.zeros((8, 8))
    assert psnr(a, a + 1.0) == pytest.approx(20 * np.log10(255.0))  # MSE 1
    assert psnr(a, a + 2.0) == pytest.approx(20 * np.log10(255.0) - 10 * np.log10(4.0))
    assert psnr(a, a) == float("inf")


def _real_y_pair(shared_data, name="butterfly", scale=3):
    hr = read_image(shared_data / "benchmark" / "Set5" / "HR" / f"{name}.png")
    hr = modcrop(hr, scale)
    sr = imresize(imresize(hr, 1 / scale), scale)
    return rgb_to_y(hr), rgb_to_y(sr)


def test_ssim_matches_skimage_on_real_images(shared_data):
    for name, scale in (("butterfly", 3), ("woman", 4)):
        a, b = _real_y_pair(shared_data, name, scale)
        ref = structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=255)
        ours = ssim(a, b)
        assert 0.5 < ours < 0.99
        assert ours == pytest.approx(ref, abs=1e-6)


def test_ssim_matches_skimage_on_noise_and_is_one_on_identity():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 255, (40, 53))
    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255)
    ref = structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False, data_range=255)
    assert ssim(a, b) == pytest.approx(ref, abs=1e-9)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_ssim_uses_only_the_valid_region():
    # A change at the very corner lies under the windows of the first 6x6 valid positions only;
    # with a 'same'-padded SSIM more positions would see it. Compare with a direct computation.
    a = np.full((30, 30), 100.0)
    a[::2] += 30
    b = a.copy()
    b[0, 0] += 50
    w = np.exp(-(np.arange(-5, 6) ** 2) / (2 * 1.5**2))
    w2 = np.outer(w, w) / np.outer(w, w).sum()
    vals = []
    for i in range(20):
        for j in range(20):
            pa, pb = a[i:i + 11, j:j + 11], b[i:i + 11, j:j + 11]
            ma, mb = (w2 * pa).sum(), (w2 * pb).sum()
            va, vb = (w2 * pa * pa).sum() - ma**2, (w2 * pb * pb).sum() - mb**2
            cab = (w2 * pa * pb).sum() - ma * mb
            c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
            vals.append((2 * ma * mb + c1) * (2 * cab + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    assert ssim(a, b) == pytest.approx(np.mean(vals), abs=1e-12)
    assert ssim(a, b) < 1.0


def test_ssim_rejects_tiny_or_mismatched():
    with pytest.raises(ValueError, match="11x11"):
        ssim(np.zeros((10, 30)), np.zeros((10, 30)))
    with pytest.raises(ValueError, match="same shape"):
        ssim(np.zeros((20, 30)), np.zeros((20, 31)))


# -------------------------------------------------------------------------- image_metrics -------

def test_image_metrics_shaves_scale_pixels_and_modcrops():
    rng = np.random.default_rng(1)
    hr = rng.integers(0, 256, (41, 38, 3), dtype=np.uint8)  # modcrop x3 -> 39 x 36
    sr = modcrop(hr, 3).copy()
    sr[:3] = 0
    sr[:, -3:] = 255  # changes inside the 3-pixel border only
    m = image_metrics(hr, sr, 3)
    assert m["psnr_y"] == float("inf") and m["psnr_rgb"] == float("inf") and m["ssim_y"] == 1.0
    assert m["channel"] == "y" and m["crop_border"] == 3 and m["convention"] == CONVENTION
    sr[3, 3] = sr[3, 3] // 2  # first pixel inside the shaved region
    assert image_metrics(hr, sr, 3)["psnr_y"] < 100


def test_image_metrics_y_psnr_by_hand():
    hr = np.full((30, 30, 3), 100, np.uint8)
    sr = hr.copy()
    sr[..., 1] = 110  # Y differs by 10 * 128.553 / 255 everywhere; RGB MSE = 100 / 3
    m = image_metrics(hr, sr, 2)
    assert m["psnr_y"] == pytest.approx(10 * np.log10(255**2 / (10 * 128.553 / 255) ** 2))
    assert m["psnr_rgb"] == pytest.approx(10 * np.log10(255**2 / (100 / 3)))


def test_image_metrics_size_mismatch_names_both_sizes():
    hr = np.zeros((50, 41, 3), np.uint8)  # modcrop x2 -> 50 x 40
    with pytest.raises(DataError, match=r"41x50.*40x50"):
        image_metrics(hr, np.zeros((50, 41, 3), np.uint8), 2)


def test_image_metrics_requires_uint8():
    with pytest.raises(TypeError, match="to_uint8"):
        image_metrics(np.zeros((30, 30, 3), np.uint8), np.zeros((30, 30, 3)), 2)


def test_image_metrics_gray_hr_uses_own_gray_channel():
    rng = np.random.default_rng(2)
    hr = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    sr_gray = np.clip(hr.astype(int) + rng.integers(-8, 9, hr.shape), 0, 255).astype(np.uint8)
    m = image_metrics(hr, sr_gray, 2)
    assert m["channel"] == "gray"
    expected = psnr(hr[2:-2, 2:-2].astype(float), sr_gray[2:-2, 2:-2].astype(float))
    assert m["psnr_y"] == pytest.approx(expected)
    assert m["psnr_rgb"] == pytest.approx(expected)  # replicated gray on both sides
    # The same gray as a 3-channel SR image gives the same numbers (luma of equal channels).
    m3 = image_metrics(hr, np.repeat(sr_gray[:, :, None], 3, axis=2), 2)
    assert m3["psnr_y"] == pytest.approx(m["psnr_y"]) and m3["ssim_y"] == pytest.approx(m["ssim_y"])
    # A coloured SR output is compared through its full-range luma 0.299 R + 0.587 G + 0.114 B.
    sr_rgb = np.stack([sr_gray, hr, np.full_like(hr, 7)], axis=2)
    luma = 0.299 * sr_gray + 0.587 * hr + 0.114 * 7.0
    m_rgb = image_metrics(hr, sr_rgb, 2)
    assert m_rgb["psnr_y"] == pytest.approx(psnr(hr[2:-2, 2:-2], luma[2:-2, 2:-2]))
    assert m_rgb["psnr_rgb"] == pytest.approx(
        psnr(np.repeat(hr[2:-2, 2:-2, None], 3, axis=2), sr_rgb[2:-2, 2:-2]))


def test_convention_info_names_the_convention():
    assert CONVENTION_INFO["name"] == CONVENTION and CONVENTION.endswith("v1")


# ------------------------------------------------------------------ published bicubic table -----

@pytest.mark.parametrize("dataset", ["Set5", "Set14"])
def test_published_bicubic_table(shared_data, dataset):
    hr_paths = sorted((shared_data / "benchmark" / dataset / "HR").glob("*.png"))
    assert len(hr_paths) == {"Set5": 5, "Set14": 14}[dataset]
    hrs = [read_image(p) for p in hr_paths]
    for scale in (2, 3, 4):
        rows = []
        for hr in hrs:
            lr = imresize(modcrop(hr, scale), 1 / scale)
            rows.append(image_metrics(hr, imresize(lr, scale), scale))
        mean_psnr = np.mean([r["psnr_y"] for r in rows])
        mean_ssim = np.mean([r["ssim_y"] for r in rows])
        pub_psnr, pub_ssim = PUBLISHED_BICUBIC[(dataset, scale)]
        assert abs(mean_psnr - pub_psnr) <= 0.02, (dataset, scale, mean_psnr, pub_psnr)
        assert abs(mean_ssim - pub_ssim) <= 0.002, (dataset, scale, mean_ssim, pub_ssim)
        if dataset == "Set14":
            assert sum(r["channel"] == "gray" for r in rows) == 1  # bridge


# -------------------------------------------------------------------------- classification ------

def test_topk_accuracy_known_ranks():
    # sample i: the label sits at rank r_i (0 = best) among 8 classes
    ranks = [0, 1, 4, 5, 7, 0]
    logits = np.zeros((6, 8))
    labels = []
    rng = np.random.default_rng(3)
    for i, r in enumerate(ranks):
        order = rng.permutation(8)  # order[k] gets the k-th highest logit
        logits[i, order] = np.arange(8, 0, -1)
        labels.append(order[r])
    acc = topk_accuracy(logits, labels, ks=(1, 2, 5, 8))
    assert acc == {1: pytest.approx(2 / 6), 2: pytest.approx(3 / 6), 5: pytest.approx(4 / 6), 8: 1.0}
    acc_t = topk_accuracy(torch.tensor(logits), torch.tensor(labels))
    assert acc_t[1] == pytest.approx(2 / 6) and acc_t[5] == pytest.approx(4 / 6)


def test_topk_more_than_classes_counts_all():
    assert topk_accuracy(np.eye(3), [2, 0, 1], ks=(1, 5)) == {1: 0.0, 5: 1.0}


@pytest.mark.parametrize("threads", ["1", "2"])
def test_ssim_bit_identical_to_whole_image_ndimage_filter(monkeypatch, threads):
    """The banded numpy SSIM equals, bit for bit, filtering the whole images with
    scipy.ndimage.correlate1d (the definition kept in sfsr.metrics._filter_valid)."""
    from sfsr import metrics

    monkeypatch.setenv("SFSR_METRIC_THREADS", threads)
    rng = np.random.default_rng(7)
    w = metrics._gaussian_window_1d()
    for shape in [(11, 11), (12, 40), (97, 13), (300, 257)]:
        a = 16 + rng.random(shape) * 219
        b = np.clip(a + rng.normal(0, 8, shape), 0, 255)
        mu_a, mu_b = metrics._filter_valid(a, w), metrics._filter_valid(b, w)
        var_a = metrics._filter_valid(a * a, w) - mu_a**2
        var_b = metrics._filter_valid(b * b, w) - mu_b**2
        cov = metrics._filter_valid(a * b, w) - mu_a * mu_b
        ref = np.mean((2 * mu_a * mu_b + 6.5025) * (2 * cov + 58.5225)
                      / ((mu_a**2 + mu_b**2 + 6.5025) * (var_a + var_b + 58.5225)))
        assert ssim(a, b) == float(ref)


def test_psnr_rgb_integer_path_equals_float_psnr():
    from sfsr.metrics import _psnr_uint8

    rng = np.random.default_rng(8)
    for shape in [(5, 7, 3), (64, 33, 3), (300, 200, 3)]:
        a = rng.integers(0, 256, shape, dtype=np.uint8)
        b = rng.integers(0, 256, shape, dtype=np.uint8)
        assert _psnr_uint8(a, b) == psnr(a, b)
    assert _psnr_uint8(a, a) == float("inf")
