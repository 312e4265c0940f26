"""Render: files built with the writer (no model), PNGs checked pixel by pixel against the data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from pipeline.errors import IncompleteFileError, InputError, OutputExistsError, UsageError
from pipeline.records import BatchResult, StageInfo
from pipeline.rendering import painting
from pipeline.rendering.colormaps import CMAPS, lut, to_indices
from pipeline.rendering.png import encode_indexed, encode_rgb
from pipeline.rendering.run import RenderConfig, colorize, render
from pipeline.rendering.selection import image_folders, safe_folder
from pipeline.rendering.tiling import GUTTER, blend
from pipeline.storage.format import schema
from pipeline.storage.reading.store import open_store
from pipeline.storage.writing.writer import ShardWriter, WritePlan

REPO = Path(__file__).resolve().parent.parent
QUICK_KEYS = ["astronaut.jpg", "camera.png", "chelsea.jpg", "coffee.jpg", "more/rocket.jpg"]


def smooth_maps(rng, n: int, channels: int, height: int, width: int) -> np.ndarray:
    """(n, C, H, W) float32 smooth post-ReLU-like maps (coarse noise, upsampled, clipped at 0)."""
    coarse = rng.standard_normal((n, channels, height // 4 + 1, width // 4 + 1)).astype(np.float32)
    fine = np.repeat(np.repeat(coarse, 4, axis=2), 4, axis=3)[:, :, :height, :width]
    return np.maximum(fine + 0.1 * rng.standard_normal(fine.shape).astype(np.float32), 0) * 3


def write_store(
    path: Path, keys: list[str], maps: dict[int, np.ndarray], *, failed=(), done=None, root=None, orig_hw=(64, 64)
):
    """An fmpipe file written by the real writer from float32 maps {stage: (N, C, H, W)}.

    Stats come from the float32 maps (as on the device), data is stored as float16.
    `done`: rows to write (default all); without all rows the file stays `.partial`.
    `orig_hw`: the sources' recorded (H, W), the same for every image.
    """
    stages = [
        StageInfo(i, f"blocks.{i}", a.shape[1], 2 ** (i + 1), a.shape[2], a.shape[3], "forward_hook")
        for i, a in maps.items()
    ]
    first = next(iter(maps.values()))
    attrs = {"input_size": [first.shape[2] * 2, first.shape[3] * 2], "images_root": str(root or "/nonexistent")}
    plan = WritePlan(keys, stages, "float16", "zstd", "fp-render-test", {"t": 1}, attrs)
    writer = ShardWriter.open(path, plan, overwrite=True, threads=1)
    rows = np.arange(len(keys)) if done is None else np.asarray(done)
    ok = np.array([r for r in rows if r not in failed], dtype=np.int64)
    data = {i: a[ok].astype(np.float16) for i, a in maps.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN/inf test maps
        stats = {
            i: np.stack([a[ok].min((2, 3)), a[ok].max((2, 3)), a[ok].mean((2, 3))]).astype(np.float32)
            for i, a in maps.items()
        }
    hw = np.tile(np.asarray(orig_hw, np.int32), (len(rows), 1))
    writer.submit(BatchResult(rows, ok, hw, [(int(r), "broken") for r in failed], data, stats))
    if done is None:
        return writer.finalize()
    writer.drain()
    writer.close()
    return Path(f"{path}.partial")


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> Path:
    """The quick-start file's shape: 5 keys, stage 2 = (40, 28, 28), stage 4 = (320, 7, 7)."""
    rng = np.random.default_rng(1)
    maps = {2: smooth_maps(rng, 5, 40, 28, 28), 4: rng.standard_normal((5, 320, 7, 7)).astype(np.float32)}
    return write_store(tmp_path_factory.mktemp("quick") / "out.h5", QUICK_KEYS, maps)


def draw(path: Path, stage: int, out: Path, **options):
    """Render in this process unless `workers` says otherwise."""
    return render(RenderConfig(str(path), stage, out=str(out), **{"workers": 1, **options}))


def pixels(path: Path, mode: str = "RGB") -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert(mode))


def stored(path: Path, stage: int):
    with open_store(path) as store:
        view = store.stage(stage)
        return view.data[:], view.min[:], view.max[:], view.mean[:]


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=120
    )


# -- must show 1: the documented tree ------------------------------------------------------


def test_cli_render_writes_the_documented_tree(quick, tmp_path):
    out = tmp_path / "renders"
    run = run_cli("render", quick, "--stage", "2", "--out", out, "--workers", "1")
    assert run.returncode == 0, run.stderr
    assert "205 PNGs written (5 grids) for 5 images" in run.stdout
    for key in QUICK_KEYS:
        folder = out / "stage2" / key.rsplit(".", 1)[0]
        assert sorted(p.name for p in folder.iterdir()) == [f"c{c:04d}.png" for c in range(40)] + ["grid.png"]
    channel = Image.open(out / "stage2" / "more" / "rocket" / "c0007.png")
    assert channel.size == (140, 140)  # 28×28 upscaled 5× (nearest) to pass 128 px
    grid = Image.open(out / "stage2" / "chelsea" / "grid.png")
    assert grid.mode == "RGB" and "channels 0,1,2,3" in grid.info["Description"]
    again = run_cli("render", quick, "--stage", "2", "--out", out)
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr


def test_default_out_dir_is_beside_the_file(quick):
    summary = render(RenderConfig(str(quick), 4, images="0", top_k=2, layout="channels", workers=1, overwrite=True))
    assert summary.out_dir == quick.with_name("out-render") and summary.pngs == 2


# -- must show 2: gray + channel normalisation reproduce the stored data --------------------


def gray_pixels(data: np.ndarray, lo: np.ndarray, hi: np.ndarray, row: int, c: int) -> np.ndarray:
    """(H, W) float64 gray levels render draws for (row, channel c) with per-channel normalisation."""
    x = data[row, c].astype(np.float64)
    return np.clip(np.round(255 * (x - lo[row, c]) / (hi[row, c] - lo[row, c])), 0, 255)


def test_gray_channel_pixels_equal_the_stored_map(quick, tmp_path):
    draw(quick, 2, tmp_path, cmap="gray", scale=1, layout="channels")
    data, lo, hi, _ = stored(quick, 2)
    for row, key in enumerate(QUICK_KEYS):
        for c in (0, 7, 39):
            expected = gray_pixels(data, lo, hi, row, c)
            got = pixels(tmp_path / "stage2" / key.rsplit(".", 1)[0] / f"c{c:04d}.png", "L")
            assert np.abs(got.astype(int) - expected).max() <= 1, (key, c)
            assert got.max() >= 254 and got.min() <= 1  # the full range is used


def test_automatic_scale_is_a_nearest_neighbour_upscale(quick, tmp_path):
    draw(quick, 4, tmp_path, images="chelsea.jpg", channels="3", cmap="gray", layout="channels")
    big = pixels(tmp_path / "stage4" / "chelsea" / "c0003.png", "L")
    assert big.shape == (133, 133)  # 7 × 19
    small = big[::19, ::19]
    np.testing.assert_array_equal(big, np.repeat(np.repeat(small, 19, 0), 19, 1))


def test_image_and_stage_normalisation_share_one_scale(quick, tmp_path):
    data, lo, hi, _ = stored(quick, 2)
    for mode in ("image", "stage"):
        out = tmp_path / mode
        draw(quick, 2, out, cmap="gray", scale=1, normalize=mode, layout="channels", channels="0,5")
        for row in (1, 3):
            low, high = (lo[row].min(), hi[row].max()) if mode == "image" else (lo.min(), hi.max())
            for c in (0, 5):
                x = data[row, c].astype(np.float64)
                expected = np.clip(np.round(255 * (x - low) / (high - low)), 0, 255)
                got = pixels(out / "stage2" / QUICK_KEYS[row].rsplit(".", 1)[0] / f"c{c:04d}.png", "L")
                assert np.abs(got.astype(int) - expected).max() <= 1, (mode, row, c)


def test_colour_pixels_are_the_lookup_table(quick, tmp_path):
    draw(quick, 2, tmp_path, cmap="magma", scale=1, layout="channels", channels="4", images="0")
    gray = np.asarray(Image.open(tmp_path / "stage2" / "astronaut" / "c0004.png"))  # palette indices
    np.testing.assert_array_equal(pixels(tmp_path / "stage2" / "astronaut" / "c0004.png"), lut("magma")[gray])


def test_colorize_matches_the_png(quick, tmp_path):
    draw(quick, 2, tmp_path, layout="channels", channels="9", images="2")
    png = pixels(tmp_path / "stage2" / "chelsea" / "c0009.png")
    array = colorize(quick, "chelsea.jpg", 2, 9, scale=5)
    assert array.dtype == np.uint8 and array.shape == (140, 140, 3)
    np.testing.assert_array_equal(array, png)
    with open_store(quick) as store:  # an open store and a row work too
        np.testing.assert_array_equal(colorize(store, 2, 2, 9, scale=5), png)


# -- colours, PNG encoder, normalisation edge cases -----------------------------------------


def test_lookup_tables():
    for name in CMAPS:
        table = lut(name)
        assert table.shape == (256, 3) and table.dtype == np.uint8
    np.testing.assert_array_equal(lut("gray")[:, 0], np.arange(256))
    # matplotlib's 8-bit viridis ends, as `cmap(i, bytes=True)` gives them
    assert lut("viridis")[0].tolist() == [68, 1, 84] and lut("viridis")[255].tolist() == [253, 231, 36]
    assert lut("turbo")[0].tolist() == [48, 18, 59]
    with pytest.raises(UsageError, match="viridis"):
        lut("jet")


def test_png_encoder_round_trips():
    rng = np.random.default_rng(0)
    indices = rng.integers(0, 256, (33, 17), dtype=np.uint8)
    with Image.open(__import__("io").BytesIO(encode_indexed(indices, lut("plasma"), text="hi"))) as image:
        assert image.mode == "P" and image.info["Description"] == "hi"
        np.testing.assert_array_equal(np.asarray(image), indices)
    rgb = rng.integers(0, 256, (5, 9, 3), dtype=np.uint8)
    with Image.open(__import__("io").BytesIO(encode_rgb(rgb))) as image:
        np.testing.assert_array_equal(np.asarray(image), rgb)


def test_constant_nan_and_inf_maps_never_crash(tmp_path):
    maps = np.zeros((2, 4, 6, 6), np.float32)
    maps[:, 0] = 3.0  # constant
    maps[:, 1, 0, 0] = np.nan  # one NaN; stats become NaN
    maps[:, 2] = np.inf  # all inf
    maps[:, 3, 2, 2], maps[:, 3, 3, 3] = 1.0, 1e-30  # tiny range
    path = write_store(tmp_path / "odd.h5", ["a.png", "b.png"], {0: maps})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for mode in ("channel", "image", "stage"):
            draw(path, 0, tmp_path / mode, cmap="gray", scale=1, normalize=mode)
    constant = pixels(tmp_path / "channel" / "stage0" / "a" / "c0000.png", "L")
    assert (constant == 0).all()
    assert (pixels(tmp_path / "channel" / "stage0" / "a" / "c0001.png", "L") == 0).all()
    assert to_indices(np.array([[np.nan, np.inf, -np.inf, 5]], np.float32), 0, 10).tolist() == [[0, 255, 0, 128]]
    assert to_indices(np.ones((2, 2), np.float16), np.nan, np.inf).tolist() == [[0, 0], [0, 0]]


# -- selection -----------------------------------------------------------------------------


def test_images_channels_and_top_k(quick, tmp_path):
    _, _, _, mean = stored(quick, 4)
    summary = draw(quick, 4, tmp_path, images="0:2,more/rocket.jpg", top_k=3)
    assert summary.images == 3 and summary.pngs == 3 * 4
    for row, folder in ((0, "astronaut"), (1, "camera"), (4, "more/rocket")):
        best = np.argsort(-mean[row], kind="stable")[:3]
        names = sorted(p.name for p in (tmp_path / "stage4" / folder).iterdir())
        assert names == sorted([f"c{c:04d}.png" for c in best] + ["grid.png"])
        grid = Image.open(tmp_path / "stage4" / folder / "grid.png")
        assert grid.info["Description"].endswith(",".join(map(str, best)))  # labelled rank order
    assert not (tmp_path / "stage4" / "chelsea").exists()
    summary = draw(quick, 4, tmp_path / "c", channels="-1,5", layout="grid")
    assert (
        summary.pngs == 5 and "channels 319,5" in Image.open(tmp_path / "c/stage4/coffee/grid.png").info["Description"]
    )
    with pytest.raises(UsageError, match="exclude each other"):
        RenderConfig(str(quick), 4, channels="1", top_k=2)
    with pytest.raises(UsageError, match=r"stage 4 \(320 channels"):
        draw(quick, 4, tmp_path / "d", channels="320")


def test_safe_folder_names():
    assert safe_folder("cats/a.jpg") == ("cats/a", "jpg")
    assert safe_folder("../../etc/passwd.png")[0] == "__/__/etc/passwd"
    assert safe_folder("/abs//./x.JPG")[0] == "abs/x"
    assert safe_folder("..")[0] == "__" and safe_folder(".hidden")[0] == ".hidden"
    assert safe_folder("a\\b:c\x00.png")[0] == "a/b_c_"
    assert safe_folder("x/c0000.png.jpg")[0] == "x/c0000_png"  # never a PNG's name
    assert len(safe_folder("é" * 300 + ".jpg")[0].encode()) < 255


CLASHING = sorted(["a.jpg", "a.png", "A.jpg", "a_png.gif", "b.jpg", "sub/x.png", "sub/x.PNG", "sub/X.jpg"])


def test_folder_names_are_a_function_of_the_key_list(tmp_path):
    path = write_store(tmp_path / "k.h5", CLASHING, {0: np.ones((len(CLASHING), 1, 2, 2), np.float32)})
    with open_store(path) as store:
        folders = image_folders(store)
    names = {key: folders.folder(row, key) for row, key in enumerate(CLASHING)}
    # Row order (sorted keys) decides: the first keeps the plain name; a_png belongs to a_png.gif.
    assert names == {
        "A.jpg": "A",
        "a.jpg": "a_jpg",
        "a.png": "a~2",
        "a_png.gif": "a_png",
        "b.jpg": "b",
        "sub/X.jpg": "sub/X",
        "sub/x.PNG": "sub/x_PNG",
        "sub/x.png": "sub/x~7",
    }
    assert sorted(folders.renamed) == [1, 2, 6, 7]  # only the renamed keys are held
    copy = write_store(tmp_path / "copy.h5", CLASHING, {0: np.zeros((len(CLASHING), 2, 3, 3), np.float32)})
    with open_store(copy) as store:  # other maps, same keys: same names
        assert image_folders(store) == folders


def test_clashing_keys_render_to_one_folder_whatever_is_asked(tmp_path):
    rng = np.random.default_rng(7)
    path = write_store(tmp_path / "c.h5", CLASHING, {0: rng.standard_normal((len(CLASHING), 2, 6, 6), np.float32)})
    data, lo, hi, _ = stored(path, 0)
    options = {"cmap": "gray", "scale": 1, "layout": "both"}
    for key in CLASHING:  # one at a time, alphabetical; never "already exists"
        draw(path, 0, tmp_path / "forward", images=key, **options)
    for key in reversed(CLASHING):
        draw(path, 0, tmp_path / "reverse", images=key, **options)
    draw(path, 0, tmp_path / "all", **options)
    tree = sorted(p.relative_to(tmp_path / "all") for p in (tmp_path / "all").rglob("*.png"))
    assert len(tree) == len(CLASHING) * 3
    for other in ("forward", "reverse"):
        assert sorted(p.relative_to(tmp_path / other) for p in (tmp_path / other).rglob("*.png")) == tree
        for png in tree:
            assert (tmp_path / other / png).read_bytes() == (tmp_path / "all" / png).read_bytes()
    folders = {png.parent for png in tree}
    assert len(folders) == len(CLASHING) == len({str(f).casefold() for f in folders})
    for row, key in enumerate(CLASHING):
        [folder] = [
            f for f in folders if repr(key) in Image.open(tmp_path / "all" / f / "grid.png").info["Description"]
        ]
        for c in range(2):
            got = pixels(tmp_path / "all" / folder / f"c{c:04d}.png", "L").astype(int)
            assert np.abs(got - gray_pixels(data, lo, hi, row, c)).max() <= 1, (key, folder, c)
            others = [r for r in range(len(CLASHING)) if r != row]
            assert all(np.abs(got - gray_pixels(data, lo, hi, r, c)).max() > 1 for r in others)


def test_hostile_keys_stay_inside_the_output(tmp_path):
    keys = ["../escape.jpg", "/abs.png", "dup.jpg", "dup.png"]
    path = write_store(tmp_path / "h.h5", keys, {0: np.ones((4, 1, 4, 4), np.float32)})
    out = tmp_path / "out"
    draw(path, 0, out)
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert written == [
        f"stage0/{f}/{n}" for f in ("__/escape", "abs", "dup", "dup_png") for n in ("c0000.png", "grid.png")
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.h5", "out"]


# -- files: incomplete, failed rows, virtual, overwrite ------------------------------------


def test_incomplete_file_is_refused_unless_allowed(tmp_path):
    maps = {1: smooth_maps(np.random.default_rng(2), 4, 3, 8, 8)}
    partial = write_store(tmp_path / "p.h5", ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], maps, done=[0, 1, 2], failed=(1,))
    with pytest.raises(IncompleteFileError, match="--allow-partial"):
        draw(partial, 1, tmp_path / "o")
    summary = draw(partial, 1, tmp_path / "o", allow_partial=True)
    assert summary.images == 2  # b failed, d not done
    assert sorted(p.name for p in (tmp_path / "o" / "stage1").iterdir()) == ["a", "c"]
    run = run_cli("render", partial, "--stage", "1", "--out", tmp_path / "cli")
    assert run.returncode == 2 and "--allow-partial" in run.stderr
    # While extraction runs only p.h5.partial exists: the final name explains, and can be used.
    with pytest.raises(IncompleteFileError, match="not finished yet"):
        draw(tmp_path / "p.h5", 1, tmp_path / "q")
    summary = render(RenderConfig(str(tmp_path / "p.h5"), 1, allow_partial=True, workers=1))
    assert summary.out_dir == tmp_path / "p-render" and summary.images == 2
    with pytest.raises(InputError, match="failed, or is not done"):
        colorize(partial, 1, 1, 0)


def test_virtual_file_renders_like_its_source_and_refuses_a_missing_one(quick, tmp_path):
    folder = tmp_path / "merged"
    folder.mkdir()
    source = folder / "shard-00000-of-00001.h5"
    source.write_bytes(quick.read_bytes())
    virtual = folder / "out.h5"
    _virtual_copy(source, virtual)
    draw(quick, 2, tmp_path / "a", images="1")
    draw(virtual, 2, tmp_path / "b", images="1")
    for png in (tmp_path / "a" / "stage2" / "camera").iterdir():
        assert png.read_bytes() == (tmp_path / "b" / "stage2" / "camera" / png.name).read_bytes()
    source.rename(folder / "moved.h5")
    with pytest.raises(InputError, match="missing"):
        draw(virtual, 2, tmp_path / "c")


def _virtual_copy(source: Path, target: Path) -> None:
    """A file whose stage datasets are virtual datasets over `source` (as a merge makes)."""
    with h5py.File(source) as src, h5py.File(target, "w") as dst:
        for name, value in src.attrs.items():
            dst.attrs[name] = value
        for name in (schema.IMAGES, schema.FAILURES):
            src.copy(name, dst)
        for index in src[schema.STAGES]:
            group = dst.create_group(schema.stage_group(int(index)))
            for name, value in src[schema.stage_group(int(index))].attrs.items():
                group.attrs[name] = value
            for name in (schema.DATA, *schema.STAT_NAMES):
                dset = src[f"{schema.stage_group(int(index))}/{name}"]
                layout = h5py.VirtualLayout(dset.shape, dset.dtype)
                layout[...] = h5py.VirtualSource(source.name, dset.name, dset.shape)
                group.create_virtual_dataset(name, layout, fillvalue=np.nan)


def test_overwrite_replaces_the_earlier_render(quick, tmp_path):
    draw(quick, 4, tmp_path, images="0", top_k=5)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        draw(quick, 4, tmp_path, images="0", top_k=2)
    draw(quick, 4, tmp_path, images="0", top_k=2, overwrite=True)
    assert len(list((tmp_path / "stage4" / "astronaut").glob("c*.png"))) == 2  # no stale PNGs
    draw(quick, 4, tmp_path, images="0", top_k=2, layout="grid", overwrite=True)


# -- overlay -------------------------------------------------------------------------------


def test_overlay_blends_onto_the_source_and_explains_a_move(tmp_path):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    rng = np.random.default_rng(3)
    for key in ("a.png", "sub/b.jpg"):
        Image.fromarray(rng.integers(0, 256, (50, 40, 3), dtype=np.uint8)).save(photos / key)
    maps = {0: smooth_maps(rng, 3, 2, 16, 16)}
    path = write_store(tmp_path / "o.h5", ["a.png", "gone.png", "sub/b.jpg"], maps, root=photos, orig_hw=(50, 40))
    summary = draw(path, 0, tmp_path / "o", overlay=True)
    assert [k for k, _ in summary.failed] == ["gone.png"] and "not found" in summary.failed[0][1]
    overlay = pixels(tmp_path / "o" / "stage0" / "sub" / "b" / "c0001-overlay.png")
    assert overlay.shape == (50, 40, 3)  # the photo's own shape, not the model's 32×32
    assert (tmp_path / "o" / "stage0" / "a" / "grid-overlay.png").exists()
    moved = photos.rename(tmp_path / "elsewhere")
    with pytest.raises(InputError, match="--images-root"):
        draw(path, 0, tmp_path / "p", overlay=True)
    summary = draw(path, 0, tmp_path / "p", overlay=True, images_root=str(moved), images="a.png")
    assert summary.pngs == 3 and not summary.failed


def test_overlay_keeps_the_source_aspect_ratio(tmp_path):
    """A map over a 451×300 photo is resized to the photo's shape; the photo is never squashed to the
    model's square input. The map's left half (high) lands on the photo's left half, and so on."""
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.full((300, 451, 3), 128, np.uint8)).save(photos / "wide.png")
    maps = np.zeros((1, 1, 8, 8), np.float32)
    maps[0, 0, :, :4] = 1.0  # the left half of the model's view
    path = write_store(tmp_path / "w.h5", ["wide.png"], {0: maps}, root=photos, orig_hw=(300, 451))
    draw(path, 0, tmp_path / "w", overlay=True, layout="both")
    overlay = pixels(tmp_path / "w" / "stage0" / "wide" / "c0000-overlay.png")
    assert overlay.shape == (300, 451, 3)
    table = lut("viridis")
    high, low = (blend(np.full((1, 1, 3), 128, np.uint8), np.array([[v]], np.uint8), table)[0, 0] for v in (255, 0))
    # cells are 451 / 8 = 56 px wide: bilinear between the centres of cells 3 and 4 (x 197 to 254) only
    assert (overlay[:, :196] == high).all() and (overlay[:, 255:] == low).all()
    grid = pixels(tmp_path / "w" / "stage0" / "wide" / "grid-overlay.png")
    height, width = grid.shape[0] - 2 * GUTTER, grid.shape[1] - 2 * GUTTER  # one tile inside the gutter
    assert abs(width / height - 451 / 300) < 0.02, grid.shape


def crafted_root(base: Path) -> tuple[Path, Path, list[Path]]:
    """(file, images root, files outside the root): a file whose keys climb out of its root, with a
    real photo at every place those keys reach, and one honest key (inside.jpg)."""
    root = base / "top" / "root"
    (root / "a").mkdir(parents=True)  # so that a/../../b.jpg resolves
    absolute = base / "abs" / "path.jpg"
    keys = ["../../outside.jpg", str(absolute), "a/../../b.jpg", "inside.jpg"]
    outside = [base / "outside.jpg", absolute, base / "top" / "b.jpg"]
    rng = np.random.default_rng(8)
    for photo in [*outside, root / "inside.jpg"]:
        photo.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(photo, "PNG")
    maps = {0: smooth_maps(rng, len(keys), 2, 8, 8)}
    return write_store(base / "crafted.h5", keys, maps, root=root), root, outside


def files_below(folder: Path, but: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if but not in p.parents and p != but}


def test_overlay_never_reads_a_key_outside_the_images_root(tmp_path, monkeypatch):
    path, root, outside = crafted_root(tmp_path)
    out = tmp_path / "out"
    opened = []
    real = painting.decode
    monkeypatch.setattr(painting, "decode", lambda p, *a, **k: opened.append(Path(p).resolve()) or real(p, *a, **k))
    before = files_below(tmp_path, out)
    summary = draw(path, 0, out, overlay=True)  # workers=1: decode runs in this process
    assert opened == [(root / "inside.jpg").resolve()]
    assert sorted(key for key, _ in summary.failed) == sorted(["../../outside.jpg", str(outside[1]), "a/../../b.jpg"])
    assert all("not found" in reason and "leaves the images root" in reason for _, reason in summary.failed)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "stage0/inside/c0000-overlay.png",
        "stage0/inside/c0001-overlay.png",
        "stage0/inside/grid-overlay.png",
    ]
    assert files_below(tmp_path, out) == before  # nothing written outside --out


# -- processes, memory, imports ------------------------------------------------------------


def test_two_workers_write_the_same_bytes_as_one(quick, tmp_path):
    one = draw(quick, 2, tmp_path / "one", channels="0:6")
    two = draw(quick, 2, tmp_path / "two", channels="0:6", workers=2)
    assert two.workers == 2 and one.pngs == two.pngs == 35
    for png in (tmp_path / "one").rglob("*.png"):
        assert png.read_bytes() == (tmp_path / "two" / png.relative_to(tmp_path / "one")).read_bytes()


def test_python_api_wrapper_stays_callable(quick, tmp_path):
    import pipeline.rendering.run  # importing the module must not shadow the pipeline.render function

    summary = pipeline.render(quick, stage=4, out=tmp_path, images="1", channels=[0, 1], workers=1)
    assert summary.pngs == 3 and callable(pipeline.render)


# Peak RSS of this process alone: VmHWM. getrusage's ru_maxrss would include the parent's
# peak, which Linux carries across fork and exec.
PEAK_RSS = """
import json, re, resource, sys
from pipeline.rendering.run import RenderConfig, render
render(RenderConfig(sys.argv[1], 0, out=sys.argv[2], images=sys.argv[3], workers=1))
try:
    with open("/proc/self/status") as status:
        peak_kb = int(re.search(r"VmHWM:\\s+(\\d+)", status.read()).group(1))
except OSError:
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_kb": peak_kb, "torch": "torch" in sys.modules}))
"""


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_number_of_images(tmp_path):
    # 200 images × 8 channels × 128×128 float16 = 52 MB of maps: reading them all (or letting
    # HDF5's chunk cache keep them) would add ~47 MB over rendering 20.
    rng = np.random.default_rng(4)
    keys = [f"img{i:03d}.jpg" for i in range(200)]
    path = write_store(tmp_path / "big.h5", keys, {0: smooth_maps(rng, 200, 8, 128, 128)})
    peaks = {}
    for count in (20, 200):
        run = subprocess.run(
            [sys.executable, "-c", PEAK_RSS, path, tmp_path / f"o{count}", f"0:{count}"],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        result = json.loads(run.stdout)
        assert not result["torch"]
        peaks[count] = result["peak_kb"]
    assert peaks[200] <= 1.2 * peaks[20], peaks


def test_render_merge_and_info_do_not_import_torch_and_start_fast(quick, tmp_path):
    code = (
        "import resource, sys, time\n"
        "import pipeline.cli\n"
        "for module in ('pipeline.jobs.merge', 'pipeline.storage.reading.info', 'pipeline.rendering.run'):\n"
        "    try:\n        __import__(module)\n    except ModuleNotFoundError:\n        pass\n"
        "usage = resource.getrusage(resource.RUSAGE_SELF)\n"
        "startup_cpu_s = usage.ru_utime + usage.ru_stime\n"
        f"sys.argv = ['fmpipe', 'render', {str(quick)!r}, '--stage', '4', '--top-k', '2', '--images', '0',"
        f" '--out', {str(tmp_path)!r}, '--workers', '1']\n"
        "try:\n    pipeline.cli.main()\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
        f"sys.argv = ['fmpipe', 'info', {str(quick)!r}]\n"
        "try:\n    pipeline.cli.main()\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('startup_cpu_s', startup_cpu_s)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert run.returncode == 0, run.stderr
    assert "3 PNGs written" in run.stdout
    startup = float(run.stdout.split("startup_cpu_s")[1])
    assert startup < 1.0, startup  # CPU seconds, so a busy machine does not make it flaky
