"""Image policy of sfsr.data.images.read_image and folder listing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFile

from sfsr.data.images import list_images, read_image
from sfsr.data.sources import BUILTIN_IMAGES, load_builtin
from sfsr.errors import DataError, ImageError


def _rgb(h=20, w=24, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rgb_and_gray_kept(tmp_path):
    rgb = _rgb()
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and np.array_equal(out, rgb)
    gray = rgb[:, :, 0]
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.ndim == 2 and np.array_equal(out, gray)


def test_rgba_opaque_alpha_dropped(tmp_path):
    rgba = np.dstack([_rgb(), np.full((20, 24), 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "o.png")
    out = read_image(tmp_path / "o.png")
    assert out.shape == (20, 24, 3) and np.array_equal(out, rgba[:, :, :3])


def test_rgba_transparent_composited_over_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = [200, 0, 100]
    rgba[..., 3] = [[0, 255, 128, 64]] * 4
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    out = read_image(tmp_path / "t.png")
    assert out.shape == (4, 4, 3)
    assert out[0, 0].tolist() == [255, 255, 255]  # fully transparent -> white
    assert out[0, 1].tolist() == [200, 0, 100]    # opaque -> colour
    a = 128 / 255                                 # half: c*a + 255*(1-a)
    expected = np.round(np.array([200, 0, 100]) * a + 255 * (1 - a))
    assert np.abs(out[0, 2].astype(int) - expected).max() <= 1


def test_palette_converted_to_rgb(tmp_path):
    rgb = _rgb(16, 16)
    Image.fromarray(rgb).quantize(8).save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    out = read_image(tmp_path / "p.png")
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert np.array_equal(out, np.asarray(Image.open(tmp_path / "p.png").convert("RGB")))


def test_palette_with_transparency_composited(tmp_path):
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 10, 20, 30] + [0, 0, 0] * 254)
    image.putpixel((0, 0), 0)
    image.save(tmp_path / "pt.png", transparency=0)
    out = read_image(tmp_path / "pt.png")
    assert out.shape == (4, 4, 3)
    assert out[0, 0].tolist() == [255, 255, 255] and out[1, 1].tolist() == [10, 20, 30]


def test_cmyk_jpeg_converted_to_rgb(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    out = read_image(tmp_path / "c.jpg")
    assert out.shape == (8, 8, 3)
    assert out[..., 0].mean() > 200 and out[..., 1].mean() < 50  # red


def test_sixteen_bit_gray_scaled(tmp_path):
    values = np.array([[0, 257, 65535, 257 * 100 + 128]], np.uint16).repeat(4, 0)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    out = read_image(tmp_path / "g16.png")
    assert out.dtype == np.uint8 and out.ndim == 2
    assert out[0].tolist() == [0, 1, 255, 100]


def test_float_image_rejected_with_name(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ImageError, match="f.tif.*mode 'F'"):
        read_image(tmp_path / "f.tif")


@pytest.mark.parametrize("fmt,suffix", [("PNG", "png"), ("JPEG", "jpg")])
def test_truncated_file_raises_image_error(tmp_path, fmt, suffix):
    path = tmp_path / f"cut.{suffix}"
    Image.fromarray(_rgb(64, 64)).save(path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=f"cut.{suffix}.*truncated or corrupt"):
        read_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_raises_even_if_pillow_was_told_to_pad(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    path = tmp_path / "cut.jpg"
    Image.fromarray(_rgb(64, 64)).save(path)
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(ImageError, match="cut.jpg"):
        read_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored


def test_text_file_named_png(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ImageError, match="notes.png.*not a readable image"):
        read_image(tmp_path / "notes.png")


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="nope.png.*not found"):
        read_image(tmp_path / "nope.png")


def test_list_images_sorted_case_insensitive(tmp_path):
    for name in ["b.PNG", "a.jpg", "c.Jpeg", "d.txt", ".hidden.png"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    names = [p.name for p in list_images(tmp_path, [".png", "JPG", ".jpeg"])]
    assert names == ["a.jpg", "b.PNG", "c.Jpeg"]


def test_list_images_errors(tmp_path):
    with pytest.raises(DataError, match="missing.*does not exist"):
        list_images(tmp_path / "missing")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(DataError, match=r"no images in .*\.png, \.jpg"):
        list_images(tmp_path, [".png", ".jpg"])


@pytest.mark.parametrize("name", ["camera", "chelsea", "stereo_motorcycle", "china"])
def test_builtin_images_load(name):
    image = load_builtin(name)
    assert image.dtype == np.uint8 and image.ndim in (2, 3) and min(image.shape[:2]) >= 100


def test_builtin_names_complete_and_unknown_name_lists_them():
    assert {"astronaut", "microaneurysms", "stereo_motorcycle", "china", "flower"} <= set(BUILTIN_IMAGES)
    assert len(BUILTIN_IMAGES) == 22
    with pytest.raises(DataError, match="unknown builtin image 'lena'.*astronaut.*flower"):
        load_builtin("lena")


def test_sixteen_bit_rgb_png_keeps_high_byte(tmp_path):
    """Pillow decodes 16-bit colour PNGs to their high byte (documented in docs/data.md)."""
    import struct
    import zlib

    values = np.array([[[65535, 0, 0x80FF]]], np.uint16).repeat(2, 0).repeat(2, 1)
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 2, 2, 16, 2, 0, 0, 0)
    (tmp_path / "rgb16.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                                         + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    out = read_image(tmp_path / "rgb16.png")
    assert out.dtype == np.uint8 and out[0, 0].tolist() == [255, 0, 0x80]
