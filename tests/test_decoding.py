"""Decoding: every image mode becomes upright 8-bit RGB; bad files become precise reasons."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import pipeline
from pipeline.decoding import DecodeError, decode

SIZE = (24, 32)


def _save(path, image: Image.Image, **kw):
    image.save(path, **kw)
    return str(path)


def test_grayscale_rgba_palette_and_16bit_convert_correctly(tmp_path):
    gray = np.arange(SIZE[0] * SIZE[1], dtype=np.uint8).reshape(SIZE)
    out = decode(_save(tmp_path / "g.png", Image.fromarray(gray)), SIZE).pixels
    assert out.shape == (*SIZE, 3) and np.array_equal(out[..., 0], gray) and np.array_equal(out[..., 2], gray)

    wide = gray.astype(np.uint16) * 257  # 16-bit: 255*257 = 65535 → 255
    out16 = decode(_save(tmp_path / "w.png", Image.fromarray(wide)), SIZE).pixels
    np.testing.assert_array_equal(out16[..., 1], gray)

    rgba = np.zeros((*SIZE, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :16, 3] = 255  # left half opaque red, right half transparent → white
    out_a = decode(_save(tmp_path / "a.png", Image.fromarray(rgba, "RGBA")), SIZE).pixels
    assert tuple(out_a[0, 0]) == (200, 0, 0) and tuple(out_a[0, 31]) == (255, 255, 255)

    palette = Image.fromarray(rgba[..., :3]).convert("P")
    palette.info["transparency"] = 0
    out_p = decode(_save(tmp_path / "p.png", palette, transparency=0), SIZE).pixels
    assert out_p.shape == (*SIZE, 3)

    one_bit = Image.fromarray(gray > 127).convert("1")
    out_1 = decode(_save(tmp_path / "b.png", one_bit), SIZE).pixels
    assert set(np.unique(out_1)) <= {0, 255}


def test_cmyk_jpeg_converts_to_rgb(tmp_path):
    rgb = Image.new("RGB", (SIZE[1], SIZE[0]), (255, 0, 0))
    path = _save(tmp_path / "c.jpg", rgb.convert("CMYK"), quality=95)
    out = decode(path, SIZE).pixels
    assert out[..., 0].mean() > 230 and out[..., 1].mean() < 30 and out[..., 2].mean() < 30


def test_exif_rotation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # left half white
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    path = _save(tmp_path / "r.png", img, exif=exif.tobytes())
    decoded = decode(path, (40, 20))
    assert decoded.orig_hw == (40, 20)
    expected = np.rot90(pixels, k=-1)
    np.testing.assert_array_equal(decoded.pixels, expected)


def test_gif_uses_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (SIZE[1], SIZE[0]), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    out = decode(str(path), SIZE).pixels
    assert out[..., 0].mean() > 200 and out[..., 2].mean() < 50


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.jpg", b"", "empty file"),
        ("text.jpg", b"<html><body>not an image</body></html>", "not an image"),
        ("truncated.png", None, "corrupt|cannot decode|truncated"),
    ],
)
def test_bad_files_raise_precise_reasons(tmp_path, name, content, reason):
    path = tmp_path / name
    if content is None:
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
        content = buf.getvalue()[: len(buf.getvalue()) // 2]
    path.write_bytes(content)
    with pytest.raises(DecodeError, match=reason):
        decode(str(path), SIZE)


def test_decompression_bomb_is_refused_without_decoding(tmp_path):
    path = _save(tmp_path / "big.png", Image.new("L", (2000, 2000)))
    with pytest.raises(DecodeError, match="decompression bomb"):
        decode(path, SIZE, max_pixels=1_000_000)


def test_mixed_folder_finishes_and_lists_every_failure(tmp_path):
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    good = {
        "rgb.jpg": Image.new("RGB", (40, 30), (10, 200, 30)),
        "gray.png": Image.new("L", (40, 30), 77),
        "cmyk.jpg": Image.new("CMYK", (40, 30), (0, 255, 255, 0)),
        "sub/rgba.png": Image.new("RGBA", (40, 30), (0, 0, 255, 128)),
        "pal.gif": Image.new("P", (40, 30), 3),
        "wide16.tif": Image.fromarray(np.full((30, 40), 40000, np.uint16)),
        "really_png.jpg": Image.new("RGB", (40, 30), (1, 2, 3)),
    }
    for key, img in good.items():
        img.save(folder / key, format="PNG" if key == "really_png.jpg" else None)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("just text")
    (folder / "half.jpg").write_bytes((folder / "rgb.jpg").read_bytes()[:100])
    (folder / "readme.txt").write_text("ignored: not an image suffix")
    out = tmp_path / "mixed.h5"
    summary = pipeline.extract(folder, out, model="tiny_models:plain_net", size=(32, 32), workers=2, batch_size=4)
    assert summary.stored == len(good) and summary.failed == 3
    with pipeline.open_store(out, require_complete=True) as store:
        failures = dict(store.failures)
        assert set(failures) == {"empty.png", "notes.jpg", "half.jpg"}
        assert "empty file" in failures["empty.png"]
        assert "not an image" in failures["notes.jpg"]
        assert failures["half.jpg"]
        ok = store.ok
        assert sorted(k for k, good_row in zip(store.keys, ok, strict=True) if good_row) == sorted(good)
        data = store.stage(0).data
        for row, key in enumerate(store.keys):
            finite = np.isfinite(data[row]).all()
            assert finite == (key in good), key  # failed rows read as NaN, good rows hold data
        orig = dict(zip(store.keys, store.orig_hw.tolist(), strict=True))
        assert orig["gray.png"] == [30, 40] and orig["empty.png"] == [-1, -1]


def test_large_jpeg_draft_decoding_stays_close_and_keeps_the_original_size(tmp_path):
    # A smooth 1600x1200 gradient: draft decoding at 1/4 scale, then resizing, must stay
    # close to a full decode + resize, and orig_hw must be the file's real size.
    yy, xx = np.mgrid[0:1200, 0:1600]
    pixels = np.stack([xx * 255 // 1600, yy * 255 // 1200, (xx + yy) * 255 // 2800], -1).astype(np.uint8)
    path = _save(tmp_path / "big.jpg", Image.fromarray(pixels), quality=95)
    decoded = decode(path, (224, 224))
    assert decoded.orig_hw == (1200, 1600)
    full = np.asarray(Image.open(path).convert("RGB").resize((224, 224), Image.Resampling.BICUBIC))
    assert np.abs(decoded.pixels.astype(int) - full.astype(int)).mean() < 1.5
