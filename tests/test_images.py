"""Tests of introspect.images: loading odd and broken files, preprocessing, drawing."""

from __future__ import annotations

import struct
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from introspect import drawing, images
from introspect.drawing import colorize, label_image, normalize01, overlay, tile_grid
from introspect.errors import ImageError, IntrospectWarning, UsageError
from introspect.images import (
    IMAGE_SUFFIXES,
    find_images,
    load_image,
    load_images,
    preprocess,
    to_display,
)

SAMPLES = Path(__file__).resolve().parent.parent / "sample_images"


def _rgb(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    a = np.asarray(img)
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
    return a


def _save_rgb(path: Path, color=(200, 100, 50), size=(16, 12)) -> Path:
    Image.new("RGB", size, color).save(path)
    return path


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _noise(w: int, h: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- bad files


def test_suffixes_are_lower_case_and_complete():
    assert {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"} == set(
        IMAGE_SUFFIXES
    )
    assert isinstance(IMAGE_SUFFIXES, frozenset)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="not found") as e:
        load_image(tmp_path / "nope.png")
    assert "nope.png" in str(e.value)
    assert e.value.exit_code == 2
    assert "\n" not in str(e.value)


def test_directory(tmp_path):
    with pytest.raises(ImageError, match="folder") as e:
        load_image(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match="empty") as e:
        load_image(p)
    assert "empty.png" in str(e.value)


def test_text_file_named_png(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("this is not an image\n")
    with pytest.raises(ImageError, match="not an image") as e:
        load_image(p)
    assert "notes.png" in str(e.value)
    assert "\n" not in str(e.value)


def test_truncated_png(tmp_path):
    p = tmp_path / "cut.png"
    Image.fromarray(_noise(64, 64)).save(p)
    _truncate(p)
    with pytest.raises(ImageError, match="truncated or corrupt") as e:
        load_image(p)
    assert "cut.png" in str(e.value)


def test_truncated_jpeg(tmp_path):
    p = tmp_path / "cut.jpg"
    Image.fromarray(_noise(64, 64)).save(p, quality=95)
    _truncate(p)
    with pytest.raises(ImageError, match="truncated or corrupt") as e:
        load_image(p)
    assert "cut.jpg" in str(e.value)


def test_corrupt_png_chunk(tmp_path):
    p = tmp_path / "bad.png"
    Image.fromarray(_noise(32, 32)).save(p)
    data = bytearray(p.read_bytes())
    data[60:80] = b"\x00" * 20  # inside the pixel data: the CRC no longer matches
    p.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="bad.png"):
        load_image(p)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims a huge size, with no pixel data at all."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    p = _png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(ImageError, match="too large") as e:
        load_image(p)
    assert "bomb.png" in str(e.value)
    # PIL's own global limit is restored afterwards
    assert Image.MAX_IMAGE_PIXELS == int(1024 * 1024 * 1024 // 4 // 3)


# --------------------------------------------------------------------------- odd files


def test_plain_rgb_png_and_jpeg(tmp_path):
    a = _noise(40, 30)
    Image.fromarray(a).save(tmp_path / "a.png")
    np.testing.assert_array_equal(_rgb(load_image(tmp_path / "a.png")), a)
    Image.fromarray(a).save(tmp_path / "a.jpg")
    assert load_image(tmp_path / "a.jpg").size == (40, 30)


def test_cmyk_jpeg(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (20, 10), (0, 255, 255, 0)).save(p, quality=95)  # pure red in CMYK
    with Image.open(p) as raw:
        assert raw.mode == "CMYK"
    a = _rgb(load_image(p))
    assert a.shape == (10, 20, 3)
    r, g, b = a[5, 10].astype(int)
    assert r > 240 and g < 20 and b < 20


def test_16bit_png_ramp_spans_full_8bit_range(tmp_path):
    p = tmp_path / "ramp16.png"
    ramp = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (4, 1))
    Image.fromarray(ramp).save(p)
    with Image.open(p) as raw:
        assert raw.mode.startswith("I;16")
    a = _rgb(load_image(p))
    assert a.shape == (4, 256, 3)
    assert a.min() == 0 and a.max() == 255
    row = a[0, :, 0].astype(int)
    assert np.all(np.diff(row) >= 0)  # monotonic: nothing clipped
    assert len(np.unique(row)) == 256  # every level distinct
    assert np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 1], a[..., 2])


def test_12bit_data_in_16bit_png_is_scaled_by_its_actual_maximum(tmp_path):
    p = tmp_path / "ramp12.png"
    ramp = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (2, 1))  # 0..4080
    Image.fromarray(ramp).save(p)
    a = _rgb(load_image(p))
    assert a.min() == 0 and a.max() == 255  # not a near-black image


def test_32bit_integer_and_float_greyscale(tmp_path):
    p = tmp_path / "int32.tif"
    Image.fromarray(np.array([[-100_000, 0], [50_000, 100_000]], dtype=np.int32), mode="I").save(p)
    a = _rgb(load_image(p))[..., 0]
    assert a[0, 0] == 0 and a[1, 1] == 255 and 0 < a[0, 1] < a[1, 0] < 255

    q = tmp_path / "float.tif"
    f = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32)
    Image.fromarray(f, mode="F").save(q)
    b = _rgb(load_image(q))[..., 0]
    np.testing.assert_array_equal(b, np.rint(f * 255).astype(np.uint8))

    r = tmp_path / "float_nan.tif"
    Image.fromarray(np.array([[np.nan, np.inf], [-5.0, 7.0]], dtype=np.float32), mode="F").save(r)
    c = _rgb(load_image(r))
    assert c.shape == (2, 2, 3)


def test_rgba_transparent_pixel_becomes_white(tmp_path):
    p = tmp_path / "rgba.png"
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 0] = 255
    a[..., 3] = 255
    a[0, 0, 3] = 0  # fully transparent red -> white
    a[1, 1, 3] = 128  # half transparent red -> pink
    Image.fromarray(a, "RGBA").save(p)
    out = _rgb(load_image(p))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[2, 2]) == (255, 0, 0)
    assert out[1, 1, 0] == 255 and 120 <= out[1, 1, 1] <= 135


def test_la_and_palette_with_transparency(tmp_path):
    la = tmp_path / "la.png"
    Image.fromarray(np.stack([np.zeros((3, 3), np.uint8), np.full((3, 3), 0, np.uint8)], -1), "LA").save(la)
    assert tuple(_rgb(load_image(la))[1, 1]) == (255, 255, 255)

    pt = tmp_path / "pt.png"
    img = Image.new("P", (3, 3), 1)
    img.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.save(pt, transparency=0)
    out = _rgb(load_image(pt))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[2, 2]) == (0, 0, 255)


def test_greyscale_and_bilevel(tmp_path):
    p = tmp_path / "grey.png"
    g = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(g, "L").save(p)
    out = _rgb(load_image(p))
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], g)

    q = tmp_path / "bw.png"
    Image.fromarray(np.array([[0, 255]], np.uint8)).convert("1").save(q)
    assert _rgb(load_image(q)).tolist() == [[[0, 0, 0], [255, 255, 255]]]


def test_palette(tmp_path):
    p = tmp_path / "pal.png"
    a = _noise(20, 20)
    Image.fromarray(a).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(p)
    with Image.open(p) as raw:
        assert raw.mode == "P"
    out = _rgb(load_image(p))
    assert out.shape == (20, 20, 3)
    assert len(np.unique(out.reshape(-1, 3), axis=0)) <= 16


def test_one_by_one(tmp_path):
    p = _save_rgb(tmp_path / "dot.png", (1, 2, 3), (1, 1))
    img = load_image(p)
    assert img.size == (1, 1)
    assert _rgb(img).tolist() == [[[1, 2, 3]]]


def test_huge_png_is_loaded_then_shrunk_with_warning(tmp_path):
    p = tmp_path / "huge.png"
    Image.new("RGB", (10_000, 10_000), (10, 200, 30)).save(p, compress_level=1)
    assert p.stat().st_size < 5_000_000
    with pytest.warns(IntrospectWarning, match="10000x10000"):
        img = load_image(p)
    assert img.size == (4096, 4096)
    assert img.getpixel((100, 100)) == (10, 200, 30)
    assert Image.MAX_IMAGE_PIXELS == int(1024 * 1024 * 1024 // 4 // 3)


def test_large_jpeg_is_drafted_and_resized(tmp_path):
    p = tmp_path / "wide.jpg"
    Image.new("RGB", (2000, 1000), (0, 0, 255)).save(p)
    with pytest.warns(IntrospectWarning, match="resized to 300x150"):
        img = load_image(p, max_side=300)
    assert img.size == (300, 150)
    r, g, b = img.getpixel((150, 75))
    assert b > 240 and r < 15 and g < 15


def test_small_image_is_not_resized_and_no_warning(tmp_path):
    p = _save_rgb(tmp_path / "small.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(p, max_side=16).size == (16, 12)


def test_animated_gif_first_frame_with_warning(tmp_path):
    p = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (20, 20), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with pytest.warns(IntrospectWarning, match="first frame"):
        img = load_image(p)
    assert img.size == (20, 20)
    assert img.getpixel((10, 10)) == (255, 0, 0)


def test_exif_orientation_is_applied(tmp_path):
    p = tmp_path / "rotated.jpg"
    a = np.zeros((10, 30, 3), np.uint8)  # stored landscape 30x10
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(a).save(p, exif=exif)
    assert load_image(p).size == (10, 30)  # displayed portrait


def test_max_side_must_be_positive(tmp_path):
    with pytest.raises(ValueError):
        load_image(_save_rgb(tmp_path / "a.png"), max_side=0)


# --------------------------------------------------------------------------- finding and naming


def test_find_images_files_and_folders(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    for name in ["b.PNG", "a.jpg", "c.txt", "notes.md"]:
        (d / name).write_bytes(b"x")
    (d / "sub").mkdir()
    (d / "sub" / "deep.png").write_bytes(b"x")
    odd = tmp_path / "photo.raw"
    odd.write_bytes(b"x")
    found = find_images([odd, d])
    assert found == [odd, d / "a.jpg", d / "b.PNG"]  # named file kept, folder sorted, not recursive


def test_find_images_missing_and_empty_folder(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        find_images([tmp_path / "missing"])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no photos")
    with pytest.raises(ImageError, match="no image files") as e:
        find_images([empty])
    assert "empty" in str(e.value)


def test_find_images_drops_duplicates(tmp_path):
    p = _save_rgb(tmp_path / "a.png")
    assert find_images([p, tmp_path, str(p)]) == [p]


def test_load_images_folder_skips_bad_file_with_warning(tmp_path):
    _save_rgb(tmp_path / "good1.png")
    Image.fromarray(_noise(8, 8)).save(tmp_path / "good2.jpg")
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.warns(IntrospectWarning) as rec:
        out = load_images([tmp_path])
    assert [name for name, _ in out] == ["good1", "good2"]
    assert all(img.mode == "RGB" for _, img in out)
    skipped = [str(w.message) for w in rec if issubclass(w.category, IntrospectWarning)]
    assert len(skipped) == 1 and "bad.png" in skipped[0]


def test_load_images_explicit_bad_file_raises(tmp_path):
    good = _save_rgb(tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(ImageError, match="bad.png"):
        load_images([good, bad])


def test_load_images_nothing_loads(tmp_path):
    (tmp_path / "a.png").write_text("nope")
    (tmp_path / "b.jpg").write_bytes(b"")
    with pytest.warns(IntrospectWarning):
        with pytest.raises(ImageError, match="none of the images"):
            load_images([tmp_path])


def test_load_images_unique_tag_safe_names(tmp_path):
    d1, d2 = tmp_path / "one", tmp_path / "two"
    d1.mkdir()
    d2.mkdir()
    files = [
        _save_rgb(d1 / "cat.png"),
        _save_rgb(d2 / "cat.png"),
        _save_rgb(d2 / "cat.jpg"),
        _save_rgb(d1 / "cat_2.png"),
        _save_rgb(d1 / "my photo (1)!.png"),
        _save_rgb(d1 / "ünïcode.png"),
    ]
    names = [n for n, _ in load_images(files)]
    assert len(set(names)) == len(names)
    assert names[0] == "cat" and names[3] == "cat_2"  # a real cat_2 keeps its name
    assert set(names[1:3]) == {"cat_3", "cat_4"}
    assert names[4] == "my_photo__1__"
    for n in names:
        assert n and all(ch.isascii() and (ch.isalnum() or ch in "_.-") for ch in n)


def test_sample_images_load():
    out = load_images([SAMPLES])
    assert [n for n, _ in out] == ["astronaut", "cat", "coffee", "rocket"]
    assert load_image(SAMPLES / "cat.png").size == (451, 300)


# --------------------------------------------------------------------------- tensors


@pytest.fixture(scope="module")
def resnet_transform():
    from torchvision.models import ResNet18_Weights

    return ResNet18_Weights.DEFAULT.transforms()


def test_preprocess_shape_and_dtype(resnet_transform):
    img = Image.fromarray(_noise(300, 200))
    x = preprocess(img, resnet_transform)
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    assert torch.isfinite(x).all()


def test_preprocess_accepts_non_rgb_and_plain_transforms():
    from torchvision import transforms as T

    x = preprocess(Image.new("L", (10, 8), 128), T.ToTensor())
    assert x.shape == (1, 3, 8, 10)
    assert torch.allclose(x, torch.full_like(x, 128 / 255))
    y = preprocess(Image.new("RGB", (5, 4), (255, 0, 0)), T.PILToTensor())  # uint8 out
    assert y.dtype == torch.float32 and y.max() == 1.0


def test_to_display_round_trip_matches_resized_crop(resnet_transform):
    from torchvision.transforms import functional as F

    img = load_image(SAMPLES / "cat.png")
    x = preprocess(img, resnet_transform)
    shown = to_display(x, resnet_transform.mean, resnet_transform.std)
    assert shown.shape == (1, 224, 224, 3) and shown.dtype == np.uint8
    expected = F.center_crop(
        F.resize(img, resnet_transform.resize_size, interpolation=resnet_transform.interpolation, antialias=True),
        resnet_transform.crop_size,
    )
    diff = np.abs(shown[0].astype(int) - np.asarray(expected).astype(int))
    assert diff.max() <= 2  # within 2/255


def test_to_display_batch_and_clamping():
    x = torch.stack([torch.full((3, 4, 5), 10.0), torch.full((3, 4, 5), -10.0)])
    out = to_display(x, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    assert out.shape == (2, 4, 5, 3)
    assert (out[0] == 255).all() and (out[1] == 0).all()
    with pytest.raises(ValueError):
        to_display(torch.zeros(3, 4, 5), [0, 0, 0], [1, 1, 1])


# --------------------------------------------------------------------------- drawing


def test_normalize01_basic_constant_nan():
    out = normalize01(np.array([[1.0, 3.0], [2.0, 5.0]]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.0, 0.5], [0.25, 1.0]])
    for x in [np.full((3, 3), 7.0), np.full((2, 2), np.nan), np.array([np.inf, -np.inf]), np.zeros((0,))]:
        y = normalize01(x)
        assert y.shape == x.shape and y.dtype == np.float32
        assert not np.isnan(y).any() and (y == 0).all()
    mixed = normalize01(np.array([np.nan, 0.0, 2.0, np.inf]))
    np.testing.assert_array_equal(mixed, [0.0, 0.0, 1.0, 0.0])
    extreme = normalize01(np.array([-1e308, 1e308]))
    np.testing.assert_array_equal(extreme, [0.0, 1.0])


def test_colorize():
    v = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    out = colorize(v)
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    # jet: low values are blue, high values are red
    assert out[0, 0, 2] > out[0, 0, 0] and out[2, 3, 0] > out[2, 3, 2]
    bad = colorize(np.array([[np.nan, np.inf], [-np.inf, 0.0]]))
    assert (bad == bad[1, 1]).all()  # all treated as 0
    assert colorize(v, "viridis").shape == (3, 4, 3)
    with pytest.raises(UsageError, match="colormap"):
        colorize(v, "no-such-map")


def test_overlay_shapes_and_blend():
    rgb = np.full((40, 60, 3), 100, np.uint8)
    hm = np.random.default_rng(1).random((7, 7)).astype(np.float32)
    out = overlay(rgb, hm)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(overlay(rgb, hm, alpha=0.0), rgb)
    full = overlay(rgb, np.zeros((40, 60)), alpha=1.0)
    np.testing.assert_array_equal(full, np.broadcast_to(colorize(np.zeros((1, 1)))[0, 0], rgb.shape))
    assert overlay(rgb, np.full((40, 60), np.nan)).shape == (40, 60, 3)
    with pytest.raises(ValueError):
        overlay(rgb, hm, alpha=2.0)


def test_tile_grid_sizes():
    tiles = np.zeros((5, 8, 6), np.uint8)
    g = tile_grid(tiles)  # 3 columns, 2 rows, padding 2
    assert g.dtype == np.uint8 and g.shape == (2 * (8 + 2) + 2, 3 * (6 + 2) + 2, 3)
    assert (g[0] == 255).all() and (g[2:10, 2:8] == 0).all()
    g = tile_grid(tiles, ncols=5, padding=0)
    assert g.shape == (8, 30, 3)
    g = tile_grid(np.ones((4, 3, 3, 3), np.float32), ncols=2, padding=1, pad_value=0)
    assert g.shape == (2 * 4 + 1, 2 * 4 + 1, 3) and g.max() == 255 and g[0, 0, 0] == 0
    g = tile_grid(np.zeros((1, 2, 2)), ncols=10)
    assert g.shape == (6, 6, 3)


def test_tile_grid_scale_to_makes_small_kernels_visible():
    k = np.random.default_rng(0).random((16, 3, 3)).astype(np.float32)
    g = tile_grid(k, scale_to=64, padding=2)
    assert g.shape == (4 * (66 + 2) + 2, 4 * (66 + 2) + 2, 3)  # 3x3 -> 66x66 (factor 22)
    tile0 = g[2:68, 2:68, 0]
    assert (tile0[:22, :22] == tile0[0, 0]).all()  # nearest neighbour blocks
    assert tile_grid(np.zeros((2, 100, 50, 3), np.uint8), scale_to=64, padding=0).shape == (100, 100, 3)


def test_label_image():
    rgb = np.zeros((224, 224, 3), np.uint8)
    out = label_image(rgb, "tabby cat 0.87")
    assert out.dtype == np.uint8 and out.shape[1] == 224 and out.shape[2] == 3
    strip = out.shape[0] - 224
    assert strip > 5
    np.testing.assert_array_equal(out[strip:], rgb)
    assert (out[:strip] < 128).any() and (out[:strip] == 255).mean() > 0.5  # dark text on white
    tiny = label_image(np.zeros((10, 12), np.uint8), "a very long label that cannot fit\nat all")
    assert tiny.shape[1] == 12 and tiny.shape[2] == 3


# --------------------------------------------------------------------------- property test

# mode -> file formats that can store it
_FORMATS = {
    "L": ["png", "jpg", "bmp", "gif", "tif", "webp", "pgm"],
    "RGB": ["png", "jpg", "bmp", "gif", "tif", "webp", "ppm"],
    "RGBA": ["png", "tif", "webp", "gif"],
    "P": ["png", "gif", "bmp", "tif"],
    "CMYK": ["jpg", "tif"],
    "I;16": ["png", "tif", "pgm"],
    "F": ["tif"],
    "LA": ["png", "tif", "webp"],
    "1": ["png", "bmp", "tif", "gif", "ppm"],
}


def _random_image(mode: str, w: int, h: int, seed: int, kind: str) -> Image.Image:
    rng = np.random.default_rng(seed)
    if kind == "constant":
        rgb = np.full((h, w, 3), rng.integers(0, 256), np.uint8)
    else:
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    base = Image.fromarray(rgb)
    if mode == "I;16":
        hi = int(rng.choice([1, 255, 4095, 65535]))
        a = rng.integers(0, hi + 1, (h, w)) if kind != "constant" else np.full((h, w), hi)
        return Image.fromarray(a.astype(np.uint16))
    if mode == "F":
        scale = float(rng.choice([1.0, 255.0, 1e6]))
        return Image.fromarray((rng.standard_normal((h, w)) * scale).astype(np.float32), mode="F")
    if mode in ("RGBA", "LA"):
        alpha = rng.integers(0, 256, (h, w), dtype=np.uint8)
        rgba = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
        return rgba if mode == "RGBA" else rgba.convert("LA")
    if mode == "P":
        return base.convert("P", palette=Image.Palette.ADAPTIVE, colors=int(rng.integers(2, 257)))
    return base.convert(mode)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    w=st.integers(1, 300),
    h=st.integers(1, 300),
    mode_fmt=st.sampled_from([(m, f) for m, fs in _FORMATS.items() for f in fs]),
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["noise", "constant"]),
)
def test_property_any_saved_image_loads_and_preprocesses(w, h, mode_fmt, seed, kind):
    from torchvision.models import ResNet18_Weights

    mode, fmt = mode_fmt
    img = _random_image(mode, w, h, seed, kind)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"x.{fmt}"
        img.save(p)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", IntrospectWarning)
            out = load_image(p)
    assert out.mode == "RGB"
    a = np.asarray(out)
    assert a.dtype == np.uint8 and a.shape == (h, w, 3)
    x = preprocess(out, ResNet18_Weights.DEFAULT.transforms())
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    assert torch.isfinite(x).all()


def _top_level_imports(module) -> set[str]:
    import ast

    tree = ast.parse(Path(module.__file__).read_text())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            top.add(node.module.split(".")[0])
    return top


def test_module_imports_stay_lean():
    top = _top_level_imports(images)
    assert "matplotlib" not in top
    assert top - {"__future__", "math", "re", "threading", "warnings", "collections", "pathlib", "typing"} == {
        "numpy",
        "torch",
        "PIL",
        "introspect",
    }


def test_drawing_is_pure_and_lean():
    """drawing.py draws arrays: no torch, no file loading, matplotlib only inside colorize."""
    top = _top_level_imports(drawing)
    assert top - {"__future__", "functools", "math", "collections"} == {"numpy", "PIL", "introspect"}
    assert not {"load_image", "load_images", "find_images", "preprocess"} & set(vars(drawing))
    assert not {"colorize", "overlay", "tile_grid", "label_image", "labelled_panels"} & set(vars(images))
