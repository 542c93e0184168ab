"""Figures and the summary table (sfsr.plots), on tables computed from a real photograph.

The per-image table is measured with sfsr.metrics on crops of skimage's astronaut/coffee photos:
bicubic (MATLAB-exact, sfsr.data.bicubic), a mildly noisy "srresnet" output, a strongly noisy
"srgan" output and a blurred "semantic_srgan" output. Training logs come from a tiny real fit.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from PIL import Image
from scipy import ndimage
from skimage import data as skdata

from sfsr import io, plots
from sfsr.data.bicubic import imresize, modcrop
from sfsr.errors import DataError
from sfsr.classification import accuracy_table
from sfsr.evaluation import summarize, summary_markdown
from sfsr.metrics import image_metrics, psnr, rgb_to_y, to_uint8

MODELS = ["bicubic", "srresnet", "srgan", "semantic_srgan"]
SCALES = [2, 4]
CROP = 72


def _crops(image: np.ndarray, n: int) -> list[np.ndarray]:
    h, w = image.shape[:2]
    tops = np.linspace(0, h - CROP, n).astype(int)
    lefts = np.linspace(0, w - CROP, n).astype(int)[::-1]
    return [image[t:t + CROP, l:l + CROP].copy() for t, l in zip(tops, lefts)]


def _outputs(hr: np.ndarray, scale: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    hr = modcrop(hr, scale)
    bic = imresize(imresize(hr, 1 / scale), output_shape=hr.shape[:2])
    f = hr.astype(np.float64)
    return {
        "bicubic": bic,
        "srresnet": np.clip(f + rng.normal(0, 2.0, f.shape), 0, 255).round().astype(np.uint8),
        "srgan": np.clip(f + rng.normal(0, 7.0, f.shape), 0, 255).round().astype(np.uint8),
        "semantic_srgan": ndimage.gaussian_filter(f, sigma=(1.0, 1.0, 0)).round().astype(np.uint8),
    }


@pytest.fixture(scope="module")
def images() -> dict[str, list[np.ndarray]]:
    return {"astro": _crops(skdata.astronaut(), 3), "coffee": _crops(skdata.coffee(), 3)}


@pytest.fixture(scope="module")
def per_image(images) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for dataset, hrs in images.items():
        for scale in SCALES:
            for i, hr in enumerate(hrs):
                for model, sr in _outputs(hr, scale, rng).items():
                    rows.append({"model": model, "dataset": dataset, "scale": scale,
                                 "image": f"img{i}", **image_metrics(hr, sr, scale),
                                 "resizer": "matlab"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def summary(per_image) -> pd.DataFrame:
    return summarize(per_image, n_boot=200)


@pytest.fixture(scope="module")
def acc(summary) -> pd.DataFrame:
    metrics = summary[(summary["dataset"] == "astro") & (summary["scale"] == 4)]
    accuracies = {"hr": {"top1": 0.80, "top5": 0.95, "n": 40},
                  "bicubic": {"top1": 0.40, "top5": 0.70, "n": 40},
                  "srresnet": {"top1": 0.55, "top5": 0.80, "n": 40},
                  "srgan": {"top1": 0.60, "top5": 0.85, "n": 40},
                  "semantic_srgan": {"top1": 0.70, "top5": 0.90, "n": 40},
                  "lr_head": {"top1": 0.50, "top5": 0.75, "n": 40}}
    return accuracy_table(accuracies, metrics)


@pytest.fixture(scope="module")
def logs(images) -> dict[str, pd.DataFrame]:
    """Two tiny real fits (one 3x3 conv refining bicubic), logged like train_log.csv."""
    hr = modcrop(images["astro"][0], 2)
    lr = imresize(hr, 1 / 2)
    x = torch.from_numpy(imresize(lr, output_shape=hr.shape[:2])).permute(2, 0, 1)[None] / 255.0
    y = torch.from_numpy(hr).permute(2, 0, 1)[None].float() / 255.0
    out = {}
    for label, lr_rate in (("srresnet", 0.05), ("srgan", 0.01)):
        torch.manual_seed(0)
        net = torch.nn.Conv2d(3, 3, 3, padding=1)
        opt = torch.optim.Adam(net.parameters(), lr=lr_rate)
        rows = []
        for it in range(1, 31):
            pred = x + net(x)
            l1 = (pred - y).abs().mean()
            mse = ((pred - y) ** 2).mean()
            opt.zero_grad()
            (l1 + mse).backward()
            opt.step()
            row = {"iteration": it, "pixel": l1.item(), "mse": mse.item(), "lr": lr_rate,
                   "data_wait_fraction": 0.0, "val_psnr_y": math.nan, "val_ssim_y": math.nan,
                   "elapsed_s": 0.01 * it}
            if it % 10 == 0:
                with torch.no_grad():
                    m = image_metrics(hr, to_uint8(x + net(x)), 2)
                row.update(val_psnr_y=m["psnr_y"], val_ssim_y=m["ssim_y"])
            rows.append(row)
        out[label] = pd.DataFrame(rows)
    return out


def _assert_saved(paths, tmp_path) -> None:
    png, pdf = paths
    assert png.suffix == ".png" and pdf.suffix == ".pdf" and png.stem == pdf.stem
    assert png.parent == tmp_path and pdf.read_bytes()[:5] == b"%PDF-"
    assert not list(tmp_path.glob(".*.tmp*")), "temporary files left behind"
    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=np.float64)
    assert pixels.std() > 20, "figure looks blank"
    assert (pixels < 250).any(axis=2).mean() > 0.03, "figure is (almost) all white"


def _legend_texts(fig) -> set[str]:
    return {t.get_text() for leg in fig.legends for t in leg.get_texts()} | {
        t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()}


def _legend_colors(fig) -> dict[str, str]:
    """Legend label -> colour of its handle (lines: line colour; patches: face colour); a leading
    point number ("3  srgan", the trade-off figure) is dropped."""
    out = {}
    for leg in fig.legends:
        for handle, text in zip(leg.legend_handles, leg.get_texts()):
            color = handle.get_color() if hasattr(handle, "get_color") and not hasattr(
                handle, "get_facecolor") else handle.get_facecolor()
            out[text.get_text().split("  ", 1)[-1]] = to_hex(color)
    return out


# ------------------------------------------------------------------------------ colours, families

def test_model_colors_consistent_across_subsets():
    universe = ["hr", "bicubic", "srresnet", "edsr", "srgan", "esrgan", "semantic_srgan",
                "shared_head", "refsr_ttsr", "lr_head"]
    full = plots.model_colors(universe)
    assert full["hr"] == "#000000" and full["bicubic"] == "#8c8c8c"
    assert len(set(full.values())) == len(universe), "two models share a colour"
    for subset in (["srgan", "bicubic"], ["refsr_ttsr", "edsr", "hr"], universe[::-1]):
        assert plots.model_colors(subset, universe=universe) == {m: full[m] for m in subset}
    # order of the list does not matter; fixed colours do not depend on the universe
    assert plots.model_colors(["srgan", "edsr"]) == plots.model_colors(["edsr", "srgan"])
    assert plots.model_colors(["bicubic", "srgan"])["bicubic"] == full["bicubic"]


def test_families_passed_in_decide_the_order_not_the_names():
    """The workflow passes each name's family (from the stage table); names need not say it."""
    fams = {"hr": "hr", "bicubic": "bicubic", "zeta": "psnr", "alpha": "shared", "mid": "gan",
            "mid_lr_head": "lr_head"}
    given = plots.model_colors(list(fams), families=fams)
    assert list(given) == ["hr", "bicubic", "mid_lr_head", "zeta", "mid", "alpha"]
    guessed = plots.model_colors(list(fams))  # ad hoc: 'other' for all three, then by name
    assert list(guessed) == ["hr", "bicubic", "mid_lr_head", "alpha", "mid", "zeta"]
    assert plots.family_lookup(fams)("alpha") == "shared" and plots.family_lookup(fams)("x") == "other"
    # figures and the summary table follow the families' order
    summary = pd.DataFrame({"model": ["alpha", "zeta", "bicubic"], "dataset": "d", "scale": 2,
                            "psnr_y": 1.0, "ssim_y": 0.5, "convention": "y"})
    table = plots.summary_table(summary, families=fams)
    assert table["model"].tolist() == ["bicubic", "zeta", "alpha"]


def test_model_family():
    expected = {"bicubic": "bicubic", "srresnet": "psnr", "msrresnet": "psnr",
                "edsr_baseline": "psnr",
                "rrdbnet": "psnr", "autoencoder": "psnr", "srgan": "gan", "esrgan": "gan",
                "semantic_srgan": "semantic", "srgan_sem": "semantic", "shared_srresnet": "shared",
                "refsr_ttsr": "refsr", "mystery": "other"}
    assert {m: plots.model_family(m) for m in expected} == expected


# ------------------------------------------------------------------------------ figures

def test_training_curves(logs, tmp_path):
    fig = plots.make_training_curves(logs, title="warm-up")
    assert {"srresnet", "srgan", "pixel", "mse"} <= _legend_texts(fig)
    ax_loss, ax_val, ax_time = fig.axes[:3]
    assert "minutes" in ax_time.get_xlabel()
    # PSNR against wall-clock minutes: the same values at elapsed_s / 60
    d = logs["srresnet"].dropna(subset=["val_psnr_y"])
    np.testing.assert_allclose(ax_time.get_lines()[0].get_xdata(), d["elapsed_s"] / 60)
    np.testing.assert_allclose(ax_time.get_lines()[0].get_ydata(), d["val_psnr_y"])
    assert ax_loss.get_yscale() == "log"
    assert "dB" in ax_val.get_ylabel()
    # one validation line per model, holding exactly the logged validation points
    val_lines = ax_val.get_lines()
    assert len(val_lines) == 2
    np.testing.assert_allclose(val_lines[0].get_ydata(), logs["srresnet"]["val_psnr_y"].dropna())
    assert len(ax_loss.get_lines()) == 4  # 2 models x 2 loss terms
    paths = plots.plot_training_curves(logs, tmp_path / "curves.png", title="warm-up")
    _assert_saved(paths, tmp_path)


def test_training_curves_draw_the_bicubic_line(logs):
    """val_bicubic_psnr_y (written by the loop) is one dashed black line when all models share it,
    one per model in the model's colour when they differ (other images or scales)."""
    same = {k: v.assign(val_bicubic_psnr_y=30.5) for k, v in logs.items()}
    fig = plots.make_training_curves(same)
    for ax in fig.axes[1:3]:
        dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
        assert len(dashed) == 1 and list(dashed[0].get_ydata()) == [30.5, 30.5]
    assert "bicubic, same images" in _legend_texts(fig)
    differ = {"srresnet": logs["srresnet"].assign(val_bicubic_psnr_y=30.5),
              "srgan": logs["srgan"].assign(val_bicubic_psnr_y=28.0)}
    fig = plots.make_training_curves(differ)
    dashed = {ln.get_ydata()[0] for ln in fig.axes[1].get_lines() if ln.get_linestyle() == "--"}
    assert dashed == {30.5, 28.0}


def _assert_inside_figure(fig) -> None:
    """Every legend and text lies inside the rendered figure (nothing clipped), and no two legend
    entries overlap."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    box = fig.bbox
    artists = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    artists += [t for ax in fig.axes for t in ax.texts]
    for artist in artists:
        b = artist.get_window_extent(renderer)
        assert b.x0 >= box.x0 - 1 and b.x1 <= box.x1 + 1 and b.y0 >= box.y0 - 1 and b.y1 <= box.y1 + 1, \
            f"{artist} is clipped: {b} outside {box}"
    for leg in fig.legends:
        boxes = [t.get_window_extent(renderer) for t in leg.get_texts()]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert not a.overlaps(b), "legend entries overlap"


def test_tradeoff_and_curves_stay_readable_with_twelve_models(acc, logs):
    base = acc.set_index("input")
    rows = []
    names = [f"{arch}_x4{suffix}" for arch in ("srresnet", "edsr_baseline", "rrdbnet", "autoencoder")
             for suffix in ("", "_gan", "_semantic")][:11]
    for i, name in enumerate(names):
        rows.append({**base.loc["srresnet"].to_dict(), "input": name,
                     "psnr_y": 28.0 + 0.05 * i, "top1": 0.5 + 0.01 * (i % 3)})
    many = pd.concat([acc, pd.DataFrame(rows)], ignore_index=True)
    assert (many["psnr_y"].notna() & ~many["input"].isin(["hr", "lr_head"])).sum() >= 12
    _assert_inside_figure(plots.make_tradeoff(many))
    twelve = {name: logs["srresnet"] for name in names + ["srgan"]}
    _assert_inside_figure(plots.make_training_curves(twelve))


def test_training_curves_tolerant(logs):
    # an adversarial term with negative values -> symlog; a log without val columns still plots
    a = logs["srgan"].assign(adversarial=-0.1)
    b = logs["srresnet"].drop(columns=["val_psnr_y", "val_ssim_y"])
    fig = plots.make_training_curves({"gan": a, "psnr": b})
    assert fig.axes[0].get_yscale() == "symlog"
    assert len(fig.axes[1].get_lines()) == 1
    assert len(fig.axes[2].get_lines()) == 1


def test_metric_bars(summary, per_image, tmp_path):
    fig = plots.make_metric_bars(summary)
    assert set(MODELS) <= _legend_texts(fig)
    axes = [ax for ax in fig.axes if ax.get_xticklabels()]
    assert len(axes) == 4  # 2 datasets x 2 scales
    ax = axes[0]  # astro x2
    assert "astro" in ax.get_title() and "2" in ax.get_title() and "dB" in ax.get_ylabel()
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert set(ticks) == set(MODELS)
    # the drawn points are the per-image means of the measured table
    sub = per_image[(per_image["dataset"] == "astro") & (per_image["scale"] == 2)]
    means = sub.groupby("model")["psnr_y"].mean()
    drawn = {ticks[int(round(line.get_xdata()[0]))]: line.get_ydata()[0] for line in ax.get_lines()
             if len(line.get_xdata()) == 1 and line.get_marker() == "o"}
    assert drawn == pytest.approx(means.to_dict())
    paths = plots.plot_metric_bars(summary, tmp_path / "psnr.png")
    _assert_saved(paths, tmp_path)
    _assert_saved(plots.plot_metric_bars(summary, tmp_path / "ssim.png", metric="ssim_y"), tmp_path)


def test_same_colours_in_every_figure(summary, acc):
    universe = ["hr", "lr_head", *MODELS]
    colors = plots.model_colors(universe)
    for fig in (plots.make_metric_bars(summary, colors=colors),
                plots.make_accuracy(acc, colors=colors), plots.make_tradeoff(acc, colors=colors)):
        drawn = _legend_colors(fig)
        for m in MODELS:
            if m in drawn:
                assert drawn[m] == colors[m], (m, fig)
        assert sum(m in drawn for m in MODELS) >= 3


def test_accuracy(acc, tmp_path):
    fig = plots.make_accuracy(acc)
    texts = _legend_texts(fig)
    assert {"hr", "bicubic", "lr_head", *MODELS} <= texts and {"top-1", "top-5"} <= texts
    ax = fig.axes[0]
    assert "%" in ax.get_ylabel()
    notes = [t.get_text() for t in ax.texts]
    gap = acc.set_index("input").loc["semantic_srgan", "gap_closed"]
    assert any(f"gap {gap:.2f}" in n for n in notes)
    assert any("80.0%" in n for n in notes)  # HR top-1
    # bar heights are the accuracies in %
    heights = sorted(round(p.get_height(), 6) for p in ax.patches)
    expected = sorted(round(100 * v, 6) for v in list(acc["top1"]) + list(acc["top5"]))
    assert heights == expected
    _assert_saved(plots.plot_accuracy(acc, tmp_path / "accuracy.png"), tmp_path)


def test_tradeoff(acc, tmp_path):
    fig = plots.make_tradeoff(acc)
    ax = fig.axes[0]
    assert "dB" in ax.get_xlabel() and "%" in ax.get_ylabel()
    labels = {t.get_text() for t in ax.texts}
    assert any(t.startswith("hr ") for t in labels) and any(t.startswith("lr_head") for t in labels)
    texts = _legend_texts(fig)
    assert {"gan family", "psnr family", "semantic family", "bicubic family"} <= texts  # markers
    # each point carries a number; the legend below says which model it is
    numbered = {t.split("  ", 1)[1]: t.split("  ", 1)[0] for t in texts if "  " in t}
    assert set(numbered) == {"bicubic", "srresnet", "srgan", "semantic_srgan"}
    assert set(numbered.values()) <= labels
    # one point per model with a PSNR, at (psnr_y, 100 * top1); markers differ between families
    points = {c.get_label(): c for c in ax.collections}
    assert set(points) == {"bicubic", "srresnet", "srgan", "semantic_srgan"}
    row = acc.set_index("input").loc["srgan"]
    np.testing.assert_allclose(points["srgan"].get_offsets()[0], [row["psnr_y"], 100 * row["top1"]])
    paths_by_family = {plots.model_family(m): points[m].get_paths()[0].vertices.tobytes()
                       for m in points}
    assert len(set(paths_by_family.values())) == len(paths_by_family)
    _assert_saved(plots.plot_tradeoff(acc, tmp_path / "tradeoff.png"), tmp_path)


def test_tradeoff_model_lr_head_is_a_reference_line_not_a_numbered_point(acc):
    """The pipeline names the LR head of a shared model '<model>_lr_head' (no PSNR): it is drawn as
    a dotted accuracy line like 'lr_head', and the legend numbers only drawn points."""
    renamed = acc.replace({"input": {"lr_head": "srresnet_x4_lr_head"}})
    fig = plots.make_tradeoff(renamed)
    ax = fig.axes[0]
    assert any(t.get_text().startswith("srresnet_x4_lr_head ") for t in ax.texts)
    dotted = [ln for ln in ax.get_lines() if ln.get_linestyle() == ":"]
    row = renamed.set_index("input").loc["srresnet_x4_lr_head"]
    assert len(dotted) == 1 and dotted[0].get_ydata()[0] == pytest.approx(100 * row["top1"])
    numbered = sorted(t.split("  ", 1)[1] for t in _legend_texts(fig) if "  " in t)
    assert numbered == sorted(c.get_label() for c in ax.collections)
    assert "srresnet_x4_lr_head" not in numbered


def test_refsr(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    for model, base in (("refsr_ttsr", 30.0), ("refsr_srntt", 29.0)):
        for k, level in enumerate(["ref1", "ref2", "ref3", "ref10"]):
            for image in range(4):
                value = base - 0.4 * k + rng.normal(0, 0.2)
                rows.append({"model": model, "level": level, "psnr_y": value})
    rows += [{"model": "esrgan", "level": np.nan, "psnr_y": 27.5 + 0.1 * i} for i in range(4)]
    table = pd.DataFrame(rows)
    fig = plots.make_refsr(table)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["ref1", "ref2", "ref3", "ref10"]
    assert {"refsr_ttsr", "refsr_srntt", "esrgan"} <= _legend_texts(fig)
    means = table[table["model"] == "refsr_ttsr"].groupby("level")["psnr_y"].mean()
    line = next(ln for ln in ax.get_lines() if len(ln.get_xdata()) == 4
                and np.isclose(ln.get_ydata()[0], means["ref1"]))
    np.testing.assert_allclose(line.get_ydata(), means[["ref1", "ref2", "ref3", "ref10"]])
    _assert_saved(plots.plot_refsr(table, tmp_path / "refsr.png"), tmp_path)


# ------------------------------------------------------------------------------ visual grids

def test_choose_crop_finds_planted_difference(images):
    hr = images["astro"][1]
    rng = np.random.default_rng(2)
    a = np.clip(hr + rng.normal(0, 2, hr.shape), 0, 255).astype(np.uint8)
    b = np.clip(hr + rng.normal(0, 2, hr.shape), 0, 255).astype(np.uint8)
    b[40:56, 10:26] = 255 - b[40:56, 10:26]  # one model fails badly in one 16x16 block
    top, left = plots.choose_crop(hr, {"a": a, "b": b}, size=16)
    assert abs(top - 40) <= 2 and abs(left - 10) <= 2
    top, left = plots.choose_crop(hr, [a, b], size=24, border=4)
    assert 4 <= top and top + 24 <= hr.shape[0] - 4 and top <= 40 and top + 24 >= 56
    assert left <= 10 and left + 24 >= 26
    with pytest.raises(DataError, match="does not fit"):
        plots.choose_crop(hr, [a], size=200)


def test_visual_grid(images, tmp_path):
    scale = 2
    hr = modcrop(images["coffee"][0], scale)
    lr = imresize(hr, 1 / scale)
    outs = _outputs(hr, scale, np.random.default_rng(3))
    outs["srgan"][20:36, 30:46] = 0  # planted failure
    io.save_image(tmp_path / "hr" / "cup.png", hr)
    io.save_image(tmp_path / "lr" / "cup.png", lr)
    sr_paths = {}
    for m in ("srresnet", "srgan"):
        io.save_image(tmp_path / m / "cup.png", outs[m])
        sr_paths[m] = tmp_path / m / "cup.png"
    fig = plots.make_visual_grid(tmp_path / "hr" / "cup.png", sr_paths, scale,
                                 lr_path=tmp_path / "lr" / "cup.png", size=16)
    top, left, size = fig.sfsr_crop
    assert size == 16 and abs(top - 20) <= 2 and abs(left - 30) <= 2
    titles = [ax.get_title() for ax in fig.axes]
    for m in ("bicubic", "srresnet", "srgan"):  # bicubic computed from the LR file
        title = next(t for t in titles if t.startswith(m + "\n"))
        window = (slice(top, top + size), slice(left, left + size))
        img = outs[m] if m != "bicubic" else imresize(lr, output_shape=hr.shape[:2])
        expected = psnr(rgb_to_y(hr[window]), rgb_to_y(img[window]))
        assert title == f"{m}\n{expected:.2f} dB"
    assert "HR (reference)" in titles and any(t.startswith("LR") for t in titles)
    paths = plots.plot_visual_grid(tmp_path / "hr" / "cup.png", sr_paths, tmp_path / "grid.png",
                                   scale, crop=(8, 8, 24))
    _assert_saved(paths, tmp_path)
    with pytest.raises(DataError, match="outside"):
        plots.make_visual_grid(tmp_path / "hr" / "cup.png", sr_paths, scale, crop=(60, 60, 24))


def test_visual_grid_gray_image(tmp_path):
    """A gray HR image is compared on its gray values (the metric convention), SR may be RGB."""
    hr = modcrop(skdata.camera()[200:280, 200:280], 4)
    rgb_sr = np.repeat(imresize(imresize(hr, 1 / 4), output_shape=hr.shape)[:, :, None], 3, axis=2)
    rgb_sr[8:24, 40:56, 0] = 255  # a red blotch: visible in gray
    io.save_image(tmp_path / "hr.png", hr)
    io.save_image(tmp_path / "sr.png", rgb_sr)
    fig = plots.make_visual_grid(tmp_path / "hr.png", {"srresnet": tmp_path / "sr.png"}, 4, size=16)
    top, left, size = fig.sfsr_crop
    assert abs(top - 8) <= 2 and abs(left - 40) <= 2
    window = (slice(top, top + size), slice(left, left + size))
    gray = rgb_sr[window].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    expected = psnr(hr[window].astype(np.float64), gray)
    assert any(ax.get_title() == f"srresnet\n{expected:.2f} dB" for ax in fig.axes)


def test_pick_images(per_image):
    picked = plots.pick_images(per_image, n=2)
    assert len(picked) == 2 and {"dataset", "scale", "image", "spread_db"} <= set(picked.columns)
    assert picked["spread_db"].is_monotonic_decreasing
    # plant: one image where srgan collapses to 5 dB becomes the top pick
    planted = per_image.copy()
    hit = (planted["dataset"] == "coffee") & (planted["scale"] == 4) & (planted["image"] == "img1")
    natural_max = planted.groupby(["dataset", "scale", "image"])["psnr_y"].agg(np.ptp).max()
    planted.loc[hit & (planted["model"] == "srgan"), "psnr_y"] = 5.0
    top = plots.pick_images(planted, n=1).iloc[0]
    picked_key = (top["dataset"], top["scale"], top["image"], top["worst"])
    assert picked_key == ("coffee", 4, "img1", "srgan")
    assert top["spread_db"] > natural_max


# ------------------------------------------------------------------------------ summary table

def test_summary_table(summary, acc):
    acc4 = acc.assign(scale=4)
    table = plots.summary_table(
        summary, accuracy=acc4, params={"srresnet": 1_549_462, "srgan": 1_549_462},
        train_time=pd.DataFrame({"model": ["srgan"], "training_time_s": [12.5]}))
    assert len(table) == len(MODELS) * 2 * len(SCALES)
    assert not table.duplicated(["model", "dataset", "scale"]).any()
    assert set(map(tuple, table[["model", "dataset", "scale"]].values)) == {
        (m, d, s) for m in MODELS for d in ("astro", "coffee") for s in SCALES}
    for col in ("psnr_y", "psnr_y_ci_low", "psnr_y_ci_high", "ssim_y_ci_low", "top1", "gap_closed",
                "params", "train_time_s", "convention"):
        assert col in table.columns, col
    assert table.columns[-1] == "convention" and table["convention"].nunique() == 1
    s4 = table[(table["model"] == "srgan") & (table["scale"] == 4)]
    assert (s4["top1"] == 0.60).all() and (s4["train_time_s"] == 12.5).all()
    assert table[table["scale"] == 2]["top1"].isna().all()  # accuracy measured at x4 only
    assert table[table["model"] == "bicubic"]["params"].isna().all()
    assert table.iloc[0]["model"] == "bicubic"  # canonical order: bicubic first
    text = summary_markdown(table)
    assert "PSNR-Y (dB)" in text and "top1" in text
    with pytest.raises(DataError, match="several rows"):
        plots.summary_table(pd.concat([summary, summary]))


def test_missing_columns_are_user_errors(summary):
    with pytest.raises(DataError, match="dataset"):
        plots.make_metric_bars(summary.drop(columns=["dataset"]))
    with pytest.raises(DataError, match="input"):
        plots.make_accuracy(pd.DataFrame({"top1": [0.5]}))
    with pytest.raises(DataError, match=r"\.png"):
        plots.save_figure(plots.make_accuracy(pd.DataFrame({"input": ["hr"], "top1": [0.5]})),
                          "x.pdf")


# ------------------------------------------------------------------------------ report captions

@pytest.mark.parametrize("wildcards", [{}, {"model": "srgan", "stage": "gan", "scale": "4",
                                            "dataset": "set5", "image": "baby", "metric": "psnr_y"}])
def test_report_captions_render(repo_root, wildcards):
    """Every report/*.rst renders as Snakemake renders it (Jinja2, then docutils) without warnings."""
    import yaml
    from docutils.core import publish_parts
    from jinja2 import Environment
    from snakemake.iocontainers import Wildcards

    from sfsr.config import validate

    # the config Snakemake's report sees: validated, so the schema's defaults and the catalogue are in it
    config = validate(yaml.safe_load((repo_root / "config.yaml").read_text()))
    config["classification"] = ["flowers102"]

    class Snakemake:  # the attributes Snakemake's report passes to captions
        pass

    Snakemake.config = config
    Snakemake.wildcards = Wildcards(fromdict=wildcards)
    env = Environment(trim_blocks=True, lstrip_blocks=True)
    files = sorted((repo_root / "report").glob("*.rst"))
    assert {"workflow", "training_curves", "metrics_bars", "accuracy", "tradeoff", "visual_grid",
            "refsr", "summary_table"} <= {f.stem for f in files}
    for path in files:
        text = env.from_string(path.read_text(encoding="utf-8")).render(snakemake=Snakemake)
        html = publish_parts(text, writer="html",
                             settings_overrides={"halt_level": 2, "report_level": 5})["html_body"]
        assert len(html) > 200, path
        if path.stem == "workflow":
            assert config["experiment"] in html and "flowers102" in html
        if path.stem == "visual_grid" and wildcards:
            assert "baby" in html and "set5" in html


def test_accuracy_bars_carry_the_paired_interval_when_given():
    import matplotlib.container

    from sfsr.plots import make_accuracy

    acc = pd.DataFrame({"input": ["hr", "bicubic", "m"], "top1": [0.9, 0.5, 0.7], "n": 10,
                        "top1_diff_low": [np.nan, np.nan, 0.1], "top1_diff_high": [np.nan, np.nan, 0.3]})
    ax = make_accuracy(acc).axes[0]
    bars = [c for c in ax.containers if isinstance(c, matplotlib.container.BarContainer)]
    with_err = [c for c in bars if c.errorbar is not None]
    assert len(with_err) == 1  # only the model with a paired interval
    segment = with_err[0].errorbar.lines[2][0].get_segments()[0]
    assert [round(y, 6) for _, y in segment] == [60.0, 80.0]  # 50% + [10, 30] points


# ------------------------------------------------------------------------------ semantic examples

def _semantic_study(tmp_path, model_right, control_right):
    """A toy classification test split of 8 stems (3 classes, 16 px PNGs per input folder) and the
    classify records of hr, bicubic, control and semantic; ``*_right``: per stem, is that input right."""
    from sfsr.plots.semantic import read_record

    stems = [f"img{k}" for k in range(8)]
    manifest = pd.DataFrame({"stem": stems + ["train0", "train1"], "class_id": [7, 3, 5, 3, 7, 5, 3, 7, 9, 9],
                             "class_name": ["rose", "daisy", "lily", "daisy", "rose", "lily", "daisy", "rose",
                                            "tulip", "tulip"], "split": ["test"] * 8 + ["train"] * 2})
    index = {cid: i for i, cid in enumerate(sorted(manifest["class_id"].unique()))}  # 3,5,7,9
    labels = [index[c] for c in manifest["class_id"][:8]]
    rng = np.random.default_rng(0)
    right = {"hr": [True] * 8, "bicubic": [False] * 8, "sem_control": control_right, "sem": model_right}
    records, folders = {}, {}
    for name, ok in right.items():
        folder = tmp_path / name
        folder.mkdir()
        for stem in stems:
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{stem}.png")
        pred = [y if r else (y + 1) % 4 for y, r in zip(labels, ok)]
        order = list(range(8))[::-1] if name == "sem_control" else list(range(8))  # pairing is by stem
        path = tmp_path / f"{name}.json"
        io.write_json(path, {"input": name, "judge": "mobilenet_v2", "images": [stems[i] for i in order],
                             "correct_top1": [ok[i] for i in order], "label": [labels[i] for i in order],
                             "pred_top1": [pred[i] for i in order]})
        records[name], folders[name] = read_record(path), folder
    return records, folders, manifest


def test_semantic_examples_pick_fixed_then_broken_test_images(tmp_path):
    """Fixed: semantic right, control wrong; broken: the reverse; first 3 of each by stem, paired by
    stem whatever the records' order; rows fixed then broken; class names as the classifier numbers them."""
    from sfsr.plots.semantic import class_names
    from sfsr.training.classifier import read_class_manifest

    model_right = [True, True, False, True, True, False, True, False]
    control_right = [True, False, True, False, False, True, False, False]
    records, folders, manifest = _semantic_study(tmp_path, model_right, control_right)
    fixed, broken = plots.pick_semantic_examples(records["sem"], records["sem_control"])
    assert fixed == ["img1", "img3", "img4"]  # img6 is fixed too: capped at 3
    assert broken == ["img2", "img5"]
    assert plots.pick_semantic_examples(records["sem"], records["sem_control"], n=10)[0] == \
        ["img1", "img3", "img4", "img6"]
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    assert class_names(manifest) == read_class_manifest(tmp_path)[2] == ["daisy", "lily", "rose", "tulip"]

    fig = plots.make_semantic_examples(records, folders, manifest, "sem", "sem_control", 8, judge="mobilenet_v2")
    assert fig.sfsr_examples == (["img1", "img3", "img4"], ["img2", "img5"])
    rows = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert [r.split("\n")[0] for r in rows] == ["FIXED"] * 3 + ["BROKEN"] * 2
    assert rows[0] == "FIXED\ntrue: daisy\nimg1"  # class_id 3 -> index 0 -> daisy
    titles = [ax.get_title() for ax in fig.axes[:4]]  # first row: HR | bicubic | control | semantic
    assert titles[0].startswith("HR\n✓ daisy") and titles[2].endswith("✗ lily") and titles[3].endswith("✓ daisy")
    assert "4 fixed, 2 broken" in fig.get_suptitle()
    out = plots.plot_semantic_examples(records, folders, manifest, "sem", "sem_control", 8,
                                       tmp_path / "semantic_examples.png")
    assert [p.suffix for p in out] == [".png", ".pdf"] and all(p.stat().st_size > 0 for p in out)


def test_semantic_examples_without_broken_images_say_so(tmp_path):
    records, folders, manifest = _semantic_study(tmp_path, [True] * 8, [True, False] + [True] * 6)
    fig = plots.make_semantic_examples(records, folders, manifest, "sem", "sem_control", 8)
    assert fig.sfsr_examples == (["img1"], [])
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts == ["no broken image: no test image where the semantic model is wrong, the control right"]


def test_semantic_examples_need_per_image_predictions(tmp_path):
    from sfsr.plots.semantic import read_record

    path = tmp_path / "old.json"
    io.write_json(path, {"input": "sem", "images": ["a"], "correct_top1": [True]})
    with pytest.raises(DataError, match=r"old\.json.*rerun its classify job"):
        read_record(path)
