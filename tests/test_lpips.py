"""LPIPS as an optional evaluation metric (sfsr.perceptual_metrics, rule perceptual_metrics).

The real lpips code path runs on locally made backbone weights: torchvision's AlexNet with a seeded
random init, saved under a temporary ``TORCH_HOME/hub/checkpoints/<torchvision's file name>``
(the classifier's large linear layers as stride-0 tensors, so the file stays small: lpips only uses
the features). Without the file, LPIPS is skipped with one line naming it, never downloaded.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest
import torch

from sfsr import io
from sfsr.errors import DataError
from sfsr.evaluation import add_lpips, summarize, summary_markdown
from sfsr.perceptual_metrics import (LPIPS_COLUMNS, backbone_file, load_lpips, lpips_available,
                                     lpips_pair, lpips_table, skipped_table)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def alex_home(tmp_path_factory):
    """A TORCH_HOME holding a locally made alexnet-owt-7be5be79.pth; returns (home, features)."""
    import torchvision

    home = tmp_path_factory.mktemp("torch_home")
    torch.manual_seed(0)
    state = torchvision.models.alexnet(weights=None).state_dict()
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    small = {k: features.get(k, torch.zeros(1).expand(v.shape)) for k, v in state.items()}
    path = home / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    path.parent.mkdir(parents=True)
    torch.save(small, path)
    return home, features


@pytest.fixture
def with_weights(alex_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(alex_home[0]))
    return alex_home


@pytest.fixture
def without_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    return tmp_path / "empty_torch_home" / "hub" / "checkpoints"


@pytest.fixture(scope="module")
def photos(tmp_path_factory, photo_saver):
    """Real photographs (crops of scikit-image's samples, one gray) as uint8 arrays by name."""
    from sfsr.data.images import read_image

    folder = photo_saver(tmp_path_factory.mktemp("photos"), "astronaut", "coffee", "camera")
    return {p.stem: read_image(p) for p in sorted(folder.glob("*.png"))}


def _noisy(img: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).round().astype(np.uint8)


def test_the_backbone_comes_from_the_cache_file_and_the_linear_layers_from_the_package(with_weights):
    import lpips

    _, features = with_weights
    assert lpips_available("alex")[0]
    model = load_lpips("alex")
    loaded = dict(model.net.named_parameters())
    # lpips' slices keep torchvision's feature indices: slice1.0 is features.0, slice5.10 features.10
    assert torch.equal(loaded["slice1.0.weight"], features["features.0.weight"])
    assert torch.equal(loaded["slice5.10.weight"], features["features.10.weight"])
    shipped = torch.load(__import__("pathlib").Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth",
                         map_location="cpu")
    assert torch.equal(model.lin0.model[1].weight, shipped["lin0.model.1.weight"])
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_identical_is_zero_and_more_distortion_scores_higher(with_weights, photos):
    model = load_lpips("alex")
    for name, hr in photos.items():
        assert lpips_pair(model, hr, hr, 2) == 0.0, name
        slight = lpips_pair(model, hr, _noisy(hr, 4), 2)
        strong = lpips_pair(model, hr, _noisy(hr, 40), 2)
        assert 0 < slight < strong, (name, slight, strong)
        assert lpips_pair(model, hr, _noisy(hr, 40), 2) == strong  # deterministic


def test_table_is_per_stem_and_matches_the_pairs(with_weights, photos, tmp_path):
    from sfsr.data.bicubic import modcrop

    sigmas = {"astronaut": 2, "camera": 30, "coffee": 10}
    for name, hr in photos.items():
        io.save_image(tmp_path / "HR" / f"{name}.png", hr)
        io.save_image(tmp_path / "SR" / f"{name}.png", _noisy(modcrop(hr, 3), sigmas[name]))
    table = lpips_table(tmp_path / "HR", tmp_path / "SR", 3)
    assert list(table.columns) == LPIPS_COLUMNS
    assert table["image"].tolist() == sorted(photos)
    assert (table["crop_border"] == 3).all() and (table["net"] == "alex").all()
    assert (table["skipped"] == "").all()
    model = load_lpips("alex")
    for row in table.itertuples():
        sr = _noisy(modcrop(photos[row.image], 3), sigmas[row.image])
        assert row.lpips == lpips_pair(model, photos[row.image], sr, 3)
    by_stem = table.set_index("image")["lpips"]
    assert by_stem["astronaut"] < by_stem["coffee"]  # sigma 2 < sigma 10 on colour photos
    again = lpips_table(tmp_path / "HR", tmp_path / "SR", 3, model=model)
    pd.testing.assert_frame_equal(table, again)  # deterministic


def test_the_border_crop_is_the_psnr_one(with_weights, photos):
    """Only the outer ``scale`` pixels differ: 0 with the default crop, more than 0 without."""
    model = load_lpips("alex")
    hr = photos["astronaut"]
    sr = hr.copy()
    rng = np.random.default_rng(1)
    s = 4
    for region in (np.s_[:s], np.s_[-s:], np.s_[:, :s], np.s_[:, -s:]):
        sr[region] = rng.integers(0, 256, sr[region].shape, dtype=np.uint8)
    assert lpips_pair(model, hr, sr, s) == 0.0
    assert lpips_pair(model, hr, sr, s, crop_border=0) > 0.0
    assert lpips_pair(model, hr, sr, s, crop_border=s - 1) > 0.0


def test_sr_of_the_wrong_size_and_mismatched_stems_are_named(with_weights, photos, tmp_path):
    hr = photos["coffee"]  # 120 x 130: modcrop x4 -> 120 x 128
    io.save_image(tmp_path / "HR" / "coffee.png", hr)
    io.save_image(tmp_path / "SR" / "coffee.png", hr)
    with pytest.raises(DataError, match=r"coffee\.png.*130x120.*128x120"):
        lpips_table(tmp_path / "HR", tmp_path / "SR", 4)
    io.save_image(tmp_path / "SR" / "other.png", hr)
    with pytest.raises(DataError, match="other"):
        lpips_table(tmp_path / "HR", tmp_path / "SR", 4)


def test_without_the_weights_lpips_is_skipped_with_the_file_named_and_nothing_downloaded(
        without_weights, monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    for net, file in (("alex", "alexnet-owt-7be5be79.pth"), ("vgg", "vgg16-397923af.pth")):
        ok, message = lpips_available(net)
        assert not ok
        assert message.startswith("LPIPS skipped:") and "\n" not in message
        assert f"place {file} in {without_weights}" in message
        assert f"https://download.pytorch.org/models/{file}" in message
        assert "evaluation.lpips: null" in message
        assert backbone_file(net) == without_weights / file
        with pytest.raises(DataError, match=file):
            load_lpips(net)
    img = np.zeros((40, 40, 3), np.uint8)
    for side in ("HR", "SR"):
        for stem in ("b", "a"):
            io.save_image(tmp_path / side / f"{stem}.png", img)
    table = skipped_table(tmp_path / "HR", tmp_path / "SR", 2, "the reason")
    assert list(table.columns) == LPIPS_COLUMNS and table["image"].tolist() == ["a", "b"]
    assert table["lpips"].isna().all() and (table["skipped"] == "the reason").all()


def test_the_workflow_finds_the_same_file_without_torch(tmp_path, monkeypatch):
    """sfsr.config (parse time, no torch) names the file torch.hub and torchvision would use."""
    import sfsr.config

    for env in ({"TORCH_HOME": str(tmp_path / "th")}, {"XDG_CACHE_HOME": str(tmp_path / "xdg")}, {}):
        for key in ("TORCH_HOME", "XDG_CACHE_HOME"):
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        for net in ("alex", "vgg"):
            assert sfsr.config.lpips_backbone_path(net) == backbone_file(net)
    assert set(sfsr.config.LPIPS_BACKBONE_FILES) == {"alex", "vgg"}


def test_a_corrupt_cache_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match=r"alexnet-owt-7be5be79\.pth.*replace the file"):
        load_lpips("alex")


def _per_image():
    rows = []
    for model, base in (("bicubic", 30.0), ("m", 32.0)):
        for i in range(4):
            rows.append({"model": model, "dataset": "d", "scale": 2, "image": f"i{i}",
                         "psnr_y": base + i, "ssim_y": 0.8, "psnr_rgb": base, "convention": "c"})
    return pd.DataFrame(rows)


def test_summary_gains_lpips_columns_and_keeps_the_others():
    per_image = _per_image()
    summary = summarize(per_image, n_boot=200)
    lpips = pd.DataFrame([{"model": "bicubic", "dataset": "d", "scale": 2, "image": f"i{i}",
                           "lpips": 0.1 * (i + 1), "net": "alex"} for i in range(4)]
                         + [{"model": "m", "dataset": "d", "scale": 2, "image": f"i{i}",
                             "lpips": math.nan, "net": "alex", "skipped": "no weights"}
                            for i in range(4)])
    out = add_lpips(summary, lpips, n_boot=200)
    pd.testing.assert_frame_equal(out[list(summary.columns)], summary)
    assert list(out.columns[len(summary.columns):]) == ["lpips", "lpips_ci_low", "lpips_ci_high",
                                                         "lpips_net"]
    bic = out.set_index("model").loc["bicubic"]
    assert bic["lpips"] == pytest.approx(0.25) and bic["lpips_ci_low"] <= 0.25 <= bic["lpips_ci_high"]
    assert math.isnan(out.set_index("model").loc["m", "lpips"])
    text = summary_markdown(out)
    assert "LPIPS-alex" in text and "skipped" in text and "0.2500 [" in text
    assert summary_markdown(summary) == summary_markdown(out.drop(
        columns=["lpips", "lpips_ci_low", "lpips_ci_high", "lpips_net"]))


def test_the_study_summary_keeps_lpips_and_leaves_rows_without_it_blank():
    """plots.summary_table carries the LPIPS columns; a row never measured (no lpips_net, e.g. a
    RefSR row joined later) is blank in the Markdown, a skipped one says so."""
    from sfsr.plots import summary_table

    summary = summarize(_per_image(), n_boot=200)
    summary["lpips"] = [0.25, math.nan]
    summary["lpips_ci_low"], summary["lpips_ci_high"] = [0.2, math.nan], [0.3, math.nan]
    summary["lpips_net"] = ["alex", math.nan]
    table = summary_table(summary, families={"bicubic": "bicubic", "m": "psnr"})
    assert {"lpips", "lpips_ci_low", "lpips_ci_high", "lpips_net"} <= set(table.columns)
    lines = summary_markdown(table).splitlines()
    row_m = next(line for line in lines if line.startswith("| m "))
    assert "skipped" not in row_m and row_m.split("|")[-2].strip() == ""
    summary.loc[1, "lpips_net"] = "alex"
    assert "skipped" in summary_markdown(summary_table(summary, families={"bicubic": "bicubic", "m": "psnr"}))


def test_without_lpips_tables_the_summary_markdown_is_as_before():
    summary = summarize(_per_image(), n_boot=200)
    text = summary_markdown(summary)
    assert "LPIPS" not in text and "skipped" not in text


@pytest.mark.slow
def test_workflow_job_skips_offline_with_one_line_and_the_summary_says_so(tmp_path, monkeypatch):
    """A tiny study (builtin test set, bicubic, x2) without the weights: the perceptual_metrics
    job succeeds, its log has one warning naming the file, the table and summary say skipped."""
    from helpers import NO_REFSR, run_snakemake

    home = tmp_path / "empty_torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))  # run_snakemake passes os.environ on
    proc = run_snakemake(tmp_path, "evaluate", config={
        "scales": [2], "train": [], "valid": [], "test": ["builtin_test"], "classification": [],
        "sr_models": [], "evaluation": {"lpips": "alex"}, **NO_REFSR})
    results = tmp_path / "results" / "default"
    log = (results / "logs" / "perceptual_metrics" / "bicubic" / "builtin_test_x2.log").read_text()
    warnings = [line for line in log.splitlines() if "WARNING" in line]
    assert len(warnings) == 1
    assert f"place alexnet-owt-7be5be79.pth in {home / 'hub' / 'checkpoints'}" in warnings[0]
    assert "LPIPS skipped" in proc.stdout + proc.stderr
    table = pd.read_csv(results / "metrics" / "bicubic" / "builtin_test_x2_lpips.csv")
    assert len(table) == 6 and table["lpips"].isna().all()
    assert table["skipped"].str.contains("alexnet-owt-7be5be79.pth").all()
    summary = pd.read_csv(results / "metrics" / "summary.csv")
    assert math.isnan(summary.loc[0, "lpips"]) and summary.loc[0, "lpips_net"] == "alex"
    assert "skipped" in (results / "metrics" / "summary.md").read_text()
    # the weights placed afterwards: the backbone file becomes an input, the skipped job reruns
    backbone = home / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    backbone.parent.mkdir(parents=True)
    backbone.write_bytes(b"")
    os.utime(backbone, (946684800, 946684800))  # copied with its old date (cp -p): older than outputs
    proc = run_snakemake(tmp_path, "-n", "evaluate", config={
        "scales": [2], "train": [], "valid": [], "test": ["builtin_test"], "classification": [],
        "sr_models": [], "evaluation": {"lpips": "alex"}, **NO_REFSR})
    assert "Set of input files has changed" in proc.stdout + proc.stderr
    assert str(backbone) in proc.stdout + proc.stderr


def test_with_lpips_null_no_lpips_job_is_planned(tmp_path):
    from helpers import run_snakemake

    proc = run_snakemake(tmp_path, "-n", "evaluate")  # config.yaml: lpips null (offline demo)
    assert "perceptual_metrics" not in proc.stdout + proc.stderr
    proc = run_snakemake(tmp_path, "-n", "evaluate", config={"evaluation": {"lpips": "alex"}})
    assert "perceptual_metrics" in proc.stdout + proc.stderr
