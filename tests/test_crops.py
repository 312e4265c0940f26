"""Receptive-field crops: the stored peak of every (image, channel) and the crops `top --crop` cuts
around it, checked against the maps and the source photos themselves."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
from conftest import REPO, write_images
from helpers import fmpipe
from PIL import Image, ImageOps

import pipeline
from pipeline.errors import InputError
from pipeline.viewer.crops import CROP_STRIDES, MIN_CROP_INPUT, crop_at

STAGE, CHANNEL = 2, 6  # the README's channel: the cat's eyes


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """The quick-start file: the five sample photos through the default model."""
    out = tmp_path_factory.mktemp("sample") / "out.h5"
    run = fmpipe(["extract", REPO / "data" / "images", out, "--workers", "0"])
    assert run.returncode == 0, run.stderr
    return out


def _source(key: str) -> np.ndarray:
    with Image.open(REPO / "data" / "images" / key) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


@pytest.mark.slow
def test_stored_argmax_is_where_each_map_peaks(sample):
    with h5py.File(sample) as f:
        for index in f["stages"]:
            data = f[f"stages/{index}/data"][:].astype(np.float32)
            flat = data.reshape(*data.shape[:2], -1)
            argmax = f[f"stages/{index}/argmax"][:]
            assert argmax.dtype == np.int32 and argmax.shape == data.shape[:2]
            at_peak = np.take_along_axis(flat, argmax[..., None].astype(np.int64), axis=2)[..., 0]
            # computed before float16 rounding: the value there is the stored map's maximum
            assert np.array_equal(at_peak, flat.max(axis=2)), index
            assert np.array_equal(at_peak, f[f"stages/{index}/max"][:].astype(np.float16).astype(np.float32))


@pytest.mark.slow
def test_crop_centres_are_the_stored_peaks_mapped_to_source_pixels(sample, tmp_path):
    result = pipeline.top(sample, stage=STAGE, channel=CHANNEL, k=5, crop=True)
    assert [c.row for c in result.crops] == [t.row for t in result.items] and len(result.crops) == 5
    with h5py.File(sample) as f:
        group = f[f"stages/{STAGE}"]
        stride, width = int(group.attrs["stride"]), int(group.attrs["width"])
        in_h, in_w = (int(v) for v in f.attrs["input_size"])
        for item, crop in zip(result.items, result.crops, strict=True):
            y, x = divmod(int(group["argmax"][item.row, CHANNEL]), width)
            src_h, src_w = (int(v) for v in f["images/orig_hw"][item.row])
            assert crop.peak_yx == (y, x)
            assert crop.centre_xy == pytest.approx(
                ((x + 0.5) * stride * src_w / in_w, (y + 0.5) * stride * src_h / in_h)
            )
            x0, y0, x1, y1 = crop.box
            assert 0 <= x0 <= crop.centre_xy[0] <= x1 <= src_w and 0 <= y0 <= crop.centre_xy[1] <= y1 <= src_h
            side = max(MIN_CROP_INPUT, CROP_STRIDES * stride)
            assert (x1 - x0, y1 - y0) == (round(side * src_w / in_w), round(side * src_h / in_h))
    cat = next(c for c, t in zip(result.crops, result.items, strict=True) if t.key == "chelsea.jpg")
    assert 140 <= cat.centre_xy[0] <= 230 and 90 <= cat.centre_xy[1] <= 160  # the cat's left eye (451x300)
    table = fmpipe(["top", sample, "--stage", STAGE, "--channel", CHANNEL, "-k", "5", "--crop"])
    assert table.returncode == 0, table.stderr
    assert "{},{}-{},{}".format(*cat.box) in table.stdout and "{},{}".format(*cat.peak_yx) in table.stdout


@pytest.mark.slow
def test_top_out_crop_draws_the_source_pixels_of_each_box(sample, tmp_path):
    plain, cropped = tmp_path / "plain.png", tmp_path / "crop.png"
    pipeline.top(sample, stage=STAGE, channel=CHANNEL, k=1, out=str(plain))
    result = pipeline.top(sample, stage=STAGE, channel=CHANNEL, k=1, out=str(cropped), crop=True)
    with Image.open(plain) as a, Image.open(cropped) as b:
        assert b.height == a.height and b.width == a.width + 224 + 6  # a 224-pixel tile beside the picture
        tile = np.asarray(b.convert("RGB"))[22 : 22 + 224, a.width : a.width + 224].astype(int)
    x0, y0, x1, y1 = result.crops[0].box
    patch = _source(result.items[0].key)[y0:y1, x0:x1]
    grow = 224 / max(patch.shape[:2])
    size = (round(patch.shape[1] * grow), round(patch.shape[0] * grow))
    expected = np.asarray(Image.fromarray(patch).resize(size, Image.Resampling.BICUBIC)).astype(int)
    top, left = (224 - size[1]) // 2, (224 - size[0]) // 2
    assert np.abs(tile[top : top + size[1], left : left + size[0]] - expected).max() <= 1


def test_each_box_frames_its_crop_on_a_photo_shown_in_its_own_shape(sample, tmp_path):
    """Every image's box in `top --out --crop` lies where its crop is on the photo as drawn: the photo
    keeps its aspect in its 224×224 cell (centred across, at the top), so a 451×300 photo's box is
    scaled by 224/451 both ways, not squeezed into the cell's height."""
    from pipeline.viewer.examples import GUTTER, LABEL_HEIGHT, TITLE_HEIGHT

    figure = tmp_path / "crops.png"
    result = pipeline.top(sample, stage=STAGE, channel=CHANNEL, k=5, out=str(figure), crop=True)
    with Image.open(figure) as image:
        canvas = np.asarray(image.convert("RGB")).astype(int)
    cols, side = 3, 224  # ceil(sqrt(5)) columns of a square picture cell and a square crop tile
    shapes = set()
    for n, (item, crop) in enumerate(zip(result.items, result.crops, strict=True)):
        x, y = (
            GUTTER + (n % cols) * (2 * side + 2 * GUTTER),
            TITLE_HEIGHT + (n // cols) * (side + LABEL_HEIGHT + GUTTER),
        )
        cell = canvas[y : y + side, x : x + side]
        src_h, src_w = _source(item.key).shape[:2]
        shapes.add(src_h == src_w)
        scale = min(side / src_h, side / src_w)
        left = (side - round(src_w * scale)) // 2
        red = np.argwhere((cell == (255, 64, 64)).all(axis=2))
        assert len(red), item.key
        (ry0, rx0), (ry1, rx1) = red.min(axis=0), red.max(axis=0)
        x0, y0, x1, y1 = crop.box
        want = (y0 * scale, left + x0 * scale, y1 * scale - 1, left + x1 * scale - 1)
        assert np.abs(np.array([ry0, rx0, ry1, rx1]) - want).max() <= 2, (item.key, (ry0, rx0, ry1, rx1), want)
    assert shapes == {True, False}  # square and oblong photos both checked


def test_crop_windows_stay_inside_the_photo_at_its_edges():
    corner = crop_at(0, 0, 0, (7, 7), 32, (224, 224), (300, 451))  # peak at map (0, 0)
    assert corner.box == (0, 0, 258, 171) and corner.centre_xy == pytest.approx((16 * 451 / 224, 16 * 300 / 224))
    far = crop_at(0, 0, 48, (7, 7), 32, (224, 224), (300, 451))  # map (6, 6)
    assert far.box == (451 - 258, 300 - 171, 451, 300)
    tiny = crop_at(0, 0, 3, (2, 2), 0, (32, 32), (10, 12))  # stride unknown; photo smaller than the window
    assert tiny.box == (0, 0, 12, 10) and tiny.centre_xy == pytest.approx((24 * 12 / 32, 24 * 10 / 32))


@pytest.mark.slow
def test_merged_files_keep_the_peaks_and_files_without_them_say_so(tmp_path):
    images = tmp_path / "images"
    write_images(images, 20, size=(40, 56))
    args = ["--model", "resnet18", "--random-init", "--size", "32", "--workers", "0", "--batch-size", "4"]
    assert fmpipe(["extract", images, tmp_path / "one.h5", *args]).returncode == 0
    for index in (0, 1):
        shard = fmpipe(["extract", images, tmp_path / "arr.h5", *args, "--shard-index", index, "--num-shards", 2])
        assert shard.returncode == 0, shard.stderr
    for mode in ([], ["--copy"]):
        merged = fmpipe(["merge", tmp_path / "arr.h5", "--overwrite", *mode])
        assert merged.returncode == 0, merged.stderr
        with h5py.File(tmp_path / "one.h5") as one, h5py.File(tmp_path / "arr.h5") as arr:
            for index in one["stages"]:
                assert np.array_equal(arr[f"stages/{index}/argmax"][:], one[f"stages/{index}/argmax"][:]), mode
    old = tmp_path / "old.h5"
    shutil.copy(tmp_path / "one.h5", old)
    with h5py.File(old, "r+") as f:
        del f["stages/1/argmax"]
    assert pipeline.top(old, stage=1, channel=0, k=2).items  # ranking still works
    with pytest.raises(InputError, match="no peak positions"):
        pipeline.top(old, stage=1, channel=0, k=2, crop=True)


@pytest.mark.slow
def test_the_viewers_dataset_examples_show_each_crop_beside_the_overlay(sample):
    import io
    import re

    from pipeline.viewer.catalog import Catalog
    from pipeline.viewer.routes import App

    result = pipeline.top(sample, stage=STAGE, channel=CHANNEL, k=5, crop=True)
    with Catalog(sample) as catalog:
        app = App(catalog)
        page = app.get(f"/examples/{STAGE}/{CHANNEL}?k=5")
        assert page.status == 200
        boxes = re.findall(r'data-crop="([\d,]+)"', page.body.decode())
        assert boxes == [",".join(map(str, c.box)) for c in result.crops]
        for item, crop in zip(result.items, result.crops, strict=True):
            assert f'src="/crop/{STAGE}/{item.row}/{CHANNEL}.png"' in page.body.decode()
            picture = app.get(f"/crop/{STAGE}/{item.row}/{CHANNEL}.png")
            assert picture.status == 200
            x0, y0, x1, y1 = crop.box  # the sample photos' crops are under 448 pixels: sent as they are
            with Image.open(io.BytesIO(picture.body)) as image:
                assert np.array_equal(np.asarray(image.convert("RGB")), _source(item.key)[y0:y1, x0:x1])
        assert app.get(f"/crop/{STAGE}/99/{CHANNEL}.png").status == 404
        assert app.get(f"/crop/{STAGE}/0/9999.png").status == 404


@pytest.mark.slow
def test_a_row_without_a_stored_peak_gets_no_crop(sample, tmp_path):
    damaged = tmp_path / "no-peak.h5"
    shutil.copy(sample, damaged)
    with h5py.File(damaged, "r+") as f:
        f[f"stages/{STAGE}/argmax"][2] = -1  # chelsea.jpg: as a row written without peaks reads
        f[f"stages/{STAGE}/argmax"][0, CHANNEL] = 10**6  # astronaut.jpg: outside the map (a hostile file)
    result = pipeline.top(damaged, stage=STAGE, channel=CHANNEL, k=5, crop=True)
    missing = {t.key for t, c in zip(result.items, result.crops, strict=True) if c is None}
    assert missing == {"chelsea.jpg", "astronaut.jpg"}
    line = next(ln for ln in result.table().splitlines() if ln.endswith("chelsea.jpg"))
    assert line.split()[-3:] == ["-", "-", "chelsea.jpg"], line
    out = tmp_path / "grid.png"
    assert pipeline.top(damaged, stage=STAGE, channel=CHANNEL, k=5, crop=True, out=str(out)).out == out
