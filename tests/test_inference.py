"""Tests of sfsr.inference (bicubic / model upscaling, tiling, files) and the upscale/evaluate CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from sfsr import io
from sfsr.cli import main
from sfsr.data.bicubic import imresize
from sfsr.data.images import read_image
from sfsr.errors import ConfigError, DataError
from sfsr.inference import resolve_device, upscale_image, upscale_path
from sfsr.models import build_generator, generator_spec, save_generator


class Spread(nn.Module):
    """Wraps a random-init generator so its output spans [0, 1] (random init outputs ~0 +- 0.05,
    which clamping would mostly flatten and hide tiling errors)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 + 4.0 * self.inner(x)


def _tiny_shuffle_model(scale: int = 2) -> nn.Module:
    """Receptive-field radius 2 LR pixels."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale),
                         nn.Sigmoid())


@pytest.fixture(scope="module")
def lr_image(shared_data):
    """A real LR photo (MATLAB-made Set5 x4 LR of 'bird', 72x72), cropped to a non-square size."""
    return read_image(shared_data / "benchmark" / "Set5" / "LR_bicubic_matlab" / "X4" / "bird.png")[:, :61]


def test_bicubic_upscale_is_matlab_imresize_and_keeps_gray(lr_image):
    out = upscale_image(lr_image, scale=3)
    assert out.shape == (72 * 3, 61 * 3, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, imresize(lr_image, 3))
    gray = upscale_image(lr_image[:, :, 1], scale=2)
    assert gray.shape == (144, 122)


@pytest.mark.parametrize("tile", [16, 25])
def test_tiled_equals_whole_srresnet(lr_image, tile):
    torch.manual_seed(0)
    model = Spread(build_generator("srresnet", 2, num_blocks=2, num_features=16))
    whole = upscale_image(lr_image, scale=2, model=model)
    assert whole.shape == (144, 122, 3) and 0.05 < (whole.std() / 255)
    tiled = upscale_image(lr_image, scale=2, model=model, tile=tile, tile_overlap=16)
    diff = np.abs(whole.astype(int) - tiled.astype(int))
    assert diff.max() <= 1
    # Without overlap the tile seams differ: the comparison above is able to fail.
    seams = upscale_image(lr_image, scale=2, model=model, tile=tile, tile_overlap=0)
    assert np.abs(whole.astype(int) - seams.astype(int)).max() > 1


def _upscale_before(image, model, scale, tile=None, overlap=16):
    """upscale_image as it was before the output was quantized tile by tile into a preallocated
    uint8 image: a full float32 output, then one to_uint8 of all of it (with today's tiles;
    their shapes are pinned by test_tiles_are_balanced)."""
    from sfsr.inference import tile_bounds
    from sfsr.metrics import to_uint8
    from sfsr.tensors import to_float

    x = to_float(image)
    h, w = image.shape[:2]
    with torch.inference_mode():
        model.eval()
        if tile is None:
            return to_uint8(model(x).float())
        out = torch.empty(1, 3, h * scale, w * scale)
        for y0, y1 in tile_bounds(h, tile):
            ya, yb = max(y0 - overlap, 0), min(y1 + overlap, h)
            for x0, x1 in tile_bounds(w, tile):
                xa, xb = max(x0 - overlap, 0), min(x1 + overlap, w)
                y = model(x[:, :, ya:yb, xa:xb]).float()
                out[:, :, y0 * scale:y1 * scale, x0 * scale:x1 * scale] = \
                    y[:, :, (y0 - ya) * scale:(y1 - ya) * scale, (x0 - xa) * scale:(x1 - xa) * scale]
        return to_uint8(out)


@pytest.mark.parametrize("tile", [None, 16, 25, 100])
def test_tiles_quantized_in_place_give_the_same_bytes_as_before(lr_image, monkeypatch, tile):
    """The preallocated uint8 output, quantized tile by tile and band by band, holds exactly the
    bytes of the former full float output quantized at once."""
    import sfsr.inference as inference

    monkeypatch.setattr(inference, "_QUANTIZE_VALUES", 3 * 61 * 2 * 5)  # several bands per tile
    torch.manual_seed(0)
    model = Spread(build_generator("srresnet", 2, num_blocks=2, num_features=16))
    got = upscale_image(lr_image, scale=2, model=model, tile=tile, tile_overlap=16)
    np.testing.assert_array_equal(got, _upscale_before(lr_image, model, 2, tile))


class RecordInputs(nn.Module):
    """Records the (h, w) of every input of the wrapped model."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.shapes: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append((x.shape[2], x.shape[3]))
        return self.inner(x)


@pytest.mark.parametrize(("tile", "overlap", "rows", "cols"), [
    # 72 rows, 61 columns: tiles of 25 are 24+24+24 x 20+20+21, not 25+25+22 x 25+25+11
    (25, 0, [24, 24, 24], [20, 20, 21]),
    (25, 4, [28, 32, 28], [24, 28, 25]),  # + 4 px of context inside the image
    (16, 3, [17, 20, 21, 20, 18], [18, 21, 21, 19]),  # cores 14,14,15,14,15 x 15,15,15,16
    (40, 2, [38, 38], [32, 33]),
])
def test_tiles_are_balanced(lr_image, tile, overlap, rows, cols):
    """Each axis is split into ceil(n / tile) tiles of nearly equal size (differing by at most one
    pixel, none above ``tile``): the same tile count as steps of ``tile``, a smaller largest tile."""
    model = RecordInputs(_tiny_shuffle_model(2))
    out = upscale_image(lr_image, scale=2, model=model, tile=tile, tile_overlap=overlap)
    assert out.shape == (144, 122, 3)
    assert model.shapes == [(r, c) for r in rows for c in cols]


def test_tiled_equals_whole_tiny_model_and_gray_input(lr_image):
    model = _tiny_shuffle_model(2)
    gray = lr_image[:, :, 0]
    whole = upscale_image(gray, scale=2, model=model)
    assert whole.shape == (144, 122, 3)  # models always give RGB
    tiled = upscale_image(gray, scale=2, model=model, tile=10, tile_overlap=3)
    assert np.abs(whole.astype(int) - tiled.astype(int)).max() <= 1
    # The gray image goes in replicated: same as feeding the RGB replica.
    np.testing.assert_array_equal(whole, upscale_image(np.repeat(gray[:, :, None], 3, 2), scale=2,
                                                       model=model))


def test_model_mode_restored_and_wrong_scale_refused(lr_image):
    model = build_generator("srresnet", 2, num_blocks=1, num_features=8)
    model.train()
    upscale_image(lr_image[:20, :20], scale=2, model=model)
    assert model.training
    with pytest.raises(DataError, match="x4"):
        upscale_image(lr_image[:20, :20], scale=4, model=model)


def test_upscale_path_file_and_folder(lr_image, tmp_path):
    io.save_image(tmp_path / "in" / "a.png", lr_image)
    io.save_image(tmp_path / "in" / "b.png", lr_image[:30, :20, 0])
    written = upscale_path(tmp_path / "in", tmp_path / "out", scale=2, progress=False)
    assert [p.name for p in written] == ["a.png", "b.png"]
    assert read_image(tmp_path / "out" / "a.png").shape == (144, 122, 3)
    assert read_image(tmp_path / "out" / "b.png").shape == (60, 40)
    one = upscale_path(tmp_path / "in" / "a.png", tmp_path / "single.png", scale=4, progress=False)
    assert one == [tmp_path / "single.png"] and read_image(one[0]).shape == (288, 244, 3)
    with pytest.raises(ConfigError, match="png"):
        upscale_path(tmp_path / "in" / "a.png", tmp_path / "x.jpg", scale=2, progress=False)
    with pytest.raises(DataError, match="missing_dir"):
        upscale_path(tmp_path / "missing_dir", tmp_path / "o", scale=2, progress=False)
    with pytest.raises(ConfigError, match="overwrite"):
        upscale_path(tmp_path / "in", tmp_path / "in", scale=2, progress=False)


def test_upscale_path_checkpoint_scale(lr_image, tmp_path):
    torch.manual_seed(0)
    model = build_generator("srresnet", 2, num_blocks=1, num_features=8)
    ckpt = tmp_path / "g.pt"
    save_generator(ckpt, model, generator_spec("srresnet", 2, num_blocks=1, num_features=8))
    io.save_image(tmp_path / "lr.png", lr_image[:24, :30, 0])
    out = upscale_path(tmp_path / "lr.png", tmp_path / "out", checkpoint=ckpt, device="cpu",
                       progress=False)
    assert read_image(out[0]).shape == (48, 60, 3)
    np.testing.assert_array_equal(read_image(out[0]),
                                  upscale_image(lr_image[:24, :30, 0], scale=2, model=model.eval()))
    with pytest.raises(ConfigError, match=r"--scale 4.*x2"):
        upscale_path(tmp_path / "lr.png", tmp_path / "o2", scale=4, checkpoint=ckpt, device="cpu",
                     progress=False)
    with pytest.raises(DataError, match="nothere.pt"):
        upscale_path(tmp_path / "lr.png", tmp_path / "o3", checkpoint=tmp_path / "nothere.pt",
                     progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_requested_without_cuda():
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_tiled_close_to_cpu(lr_image):
    torch.manual_seed(0)
    model = Spread(build_generator("srresnet", 2, num_blocks=2, num_features=16))
    cpu = upscale_image(lr_image, scale=2, model=model, device="cpu")
    gpu = upscale_image(lr_image, scale=2, model=model, device="cuda", tile=24)
    assert np.abs(cpu.astype(int) - gpu.astype(int)).max() <= 1
    bf16 = upscale_image(lr_image, scale=2, model=model, device="cuda", tile=24, bf16=True)
    assert np.abs(cpu.astype(int) - bf16.astype(int)).mean() < 3


# ------------------------------------------------------------------------------------ CLI --------

def test_cli_upscale_then_evaluate_reproduces_published_set5_x2(shared_data, tmp_path, capsys):
    """MATLAB-made LR (golden fixture) -> `sfsr upscale` bicubic -> `sfsr evaluate`: the published
    Set5 x2 bicubic row (33.66 dB / 0.9299)."""
    set5 = shared_data / "benchmark" / "Set5"
    assert main(["upscale", "--scale", "2", "--quiet",
                 str(set5 / "LR_bicubic_matlab" / "X2"), str(tmp_path / "sr")]) == 0
    assert read_image(tmp_path / "sr" / "baby.png").shape == (512, 512, 3)
    assert read_image(tmp_path / "sr" / "woman.png").shape == (344, 228, 3)
    capsys.readouterr()
    assert main(["evaluate", "--hr", str(set5 / "HR"), "--sr", str(tmp_path / "sr"), "--scale", "2",
                 "--json", "--csv", str(tmp_path / "per_image.csv")]) == 0
    means = json.loads(capsys.readouterr().out)
    assert set(means) == {"n", "psnr_y", "ssim_y", "psnr_rgb", "n_psnr_capped"} and means["n"] == 5
    assert means["n_psnr_capped"] == 0
    assert abs(means["psnr_y"] - 33.66) <= 0.02 and abs(means["ssim_y"] - 0.9299) <= 0.002
    assert (tmp_path / "per_image.csv").read_text().count("\n") == 6


def test_cli_errors_exit_2_and_name_the_path(tmp_path, capsys):
    assert main(["upscale", "--scale", "2", str(tmp_path / "no_such_input"), str(tmp_path / "o")]) == 2
    assert "no_such_input" in capsys.readouterr().err
    assert main(["evaluate", "--hr", str(tmp_path / "no_hr"), "--sr", str(tmp_path), "--scale", "2"]) == 2
    assert "no_hr" in capsys.readouterr().err
    assert main(["upscale", str(tmp_path), str(tmp_path / "o")]) == 2
    assert "--scale" in capsys.readouterr().err


def test_cli_upscale_method_bicubic_is_still_accepted(lr_image, tmp_path, capsys):
    """`--method bicubic` (the README's form before the option was dropped from the help) gives the
    same bytes as the plain bicubic command; with --checkpoint it is refused in one line."""
    io.save_image(tmp_path / "lr.png", lr_image)
    assert main(["upscale", "--scale", "2", "--quiet", str(tmp_path / "lr.png"), str(tmp_path / "a.png")]) == 0
    assert main(["upscale", "--scale", "2", "--method", "bicubic", "--quiet", str(tmp_path / "lr.png"),
                 str(tmp_path / "b.png")]) == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    with pytest.raises(SystemExit):
        main(["upscale", "--help"])
    assert "--method" not in capsys.readouterr().out  # not shown: there is nothing to choose
    model = build_generator("srresnet", 2, num_blocks=1, num_features=8)
    save_generator(tmp_path / "g.pt", model, generator_spec("srresnet", 2, num_blocks=1, num_features=8))
    assert main(["upscale", "--method", "bicubic", "--checkpoint", str(tmp_path / "g.pt"), "--quiet",
                 str(tmp_path / "lr.png"), str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    assert "--method bicubic and --checkpoint" in err and err.count("\n") == 1
    assert not (tmp_path / "c.png").exists()
    with pytest.raises(SystemExit):  # argparse: bicubic is the only method
        main(["upscale", "--scale", "2", "--method", "lanczos", str(tmp_path / "lr.png"), str(tmp_path / "d.png")])


@pytest.mark.parametrize("existing", [False, True])
def test_cli_upscale_and_make_lr_leave_no_partial_output_on_a_bad_image(lr_image, tmp_path, capsys,
                                                                        existing):
    """A folder with a good image first and a broken one after: exit 2 naming the bad file, and the
    output folder is as it was (absent, or holding only what it held), with no temporary left."""
    src = tmp_path / "in"
    src.mkdir()
    io.save_image(src / "a_good.png", lr_image)
    (src / "b_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "mine.txt").write_text("keep me")
    for argv in (["upscale", "--scale", "2", "--quiet", str(src), str(out)],
                 ["make-lr", "--scale", "2", "--quiet", str(src), str(out)]):
        assert main(argv) == 2, argv
        assert "b_broken.png" in capsys.readouterr().err
        assert sorted(p.name for p in tmp_path.iterdir()) == (["in", "out"] if existing else ["in"])
        if existing:
            assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
