"""fmpipe top: the images that drive a channel most, as text, JSON and a labelled grid of overlays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_render import smooth_maps, write_store

from pipeline.errors import OutputExistsError, UsageError
from pipeline.viewer.config import TopConfig
from pipeline.viewer.examples import CELL_SIDE, GUTTER, LABEL_HEIGHT, TITLE_HEIGHT, top

KEYS = [f"photo{i}.jpg" for i in range(7)]


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> dict:
    """7 images (row 2 failed), sources for rows 0-4 only, and stage 0 maps with known maxima."""
    base = tmp_path_factory.mktemp("top")
    root = base / "photos"
    root.mkdir()
    rng = np.random.default_rng(11)
    for key in KEYS[:5]:
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / key)
    maps = smooth_maps(rng, len(KEYS), 4, 8, 8)
    maps[:, 1] = 0.0
    maps[:, 1, 3, 3] = [5.0, 2.0, 9.0, 2.0, 7.0, 1.0, 7.0]  # channel 1: ties at 7 (rows 4, 6) and 2 (rows 1, 3)
    path = write_store(base / "out.h5", KEYS, {0: maps}, failed=(2,), root=root)
    return {"path": path, "root": root, "maps": maps}


def test_ranking_is_by_value_then_row_and_skips_failed_rows(collection):
    result = top(TopConfig(str(collection["path"]), 0, 1, k=6))
    assert [(t.row, t.key, t.value) for t in result.items] == [
        (4, "photo4.jpg", 7.0),
        (6, "photo6.jpg", 7.0),
        (0, "photo0.jpg", 5.0),
        (1, "photo1.jpg", 2.0),
        (3, "photo3.jpg", 2.0),
        (5, "photo5.jpg", 1.0),
    ]  # row 2 (9.0) failed: never listed
    assert json.loads(result.to_json()) == {
        "items": [{"row": t.row, "key": t.key, "value": t.value} for t in result.items]
    }
    lines = result.table().splitlines()
    assert lines[0].startswith("stage 0, channel 1: top 6 images by max") and len(lines) == 2 + 6
    assert lines[2].split() == ["1", "4", "7", "photo4.jpg"]


def test_by_mean_equals_a_ranking_of_the_stored_maps(collection):
    maps = collection["maps"].astype(np.float16).astype(np.float32)
    rows = np.array([0, 1, 3, 4, 5, 6])
    for channel in (0, 2, 3):
        means = maps[rows, channel].mean(axis=(1, 2))
        want = rows[np.lexsort((rows, -means))][:3]
        got = top(TopConfig(str(collection["path"]), 0, channel, k=3, by="mean")).items
        assert [t.row for t in got] == [int(r) for r in want]
        np.testing.assert_allclose([t.value for t in got], np.sort(means)[::-1][:3], rtol=2e-3, atol=1e-3)


def test_out_writes_one_labelled_grid_of_overlays(collection, tmp_path):
    out = tmp_path / "figs" / "grid.png"
    result = top(TopConfig(str(collection["path"]), 0, 1, k=4, out=str(out)))
    assert result.out == out
    with Image.open(out) as image:
        grid = np.asarray(image.convert("RGB"))
        description = image.info["Description"]
    cell = CELL_SIDE  # the model's input is square (16×16): each picture is CELL_SIDE square
    assert grid.shape == (TITLE_HEIGHT + 2 * (cell + LABEL_HEIGHT + GUTTER) + GUTTER, 2 * (cell + GUTTER) + GUTTER, 3)
    assert '"row": 4' in description and "photo6.jpg" in description
    # Row 6 has no source: its picture is the map alone (two colours: the peak and the zeros).
    y, x = TITLE_HEIGHT, GUTTER + cell + GUTTER
    alone = grid[y : y + cell, x : x + cell].reshape(-1, 3)
    assert len(np.unique(alone, axis=0)) == 2  # enlarged without smoothing
    over = grid[y : y + cell, GUTTER : GUTTER + cell].reshape(-1, 3)  # row 4: over its photo
    assert len(np.unique(over, axis=0)) > 50
    with pytest.raises(OutputExistsError, match="--overwrite"):
        top(TopConfig(str(collection["path"]), 0, 1, k=4, out=str(out)))
    top(TopConfig(str(collection["path"]), 0, 1, k=2, out=str(out), overwrite=True))
    with Image.open(out) as image:
        assert image.size[0] == 2 * (cell + GUTTER) + GUTTER and '"row": 6' in image.info["Description"]


def test_negative_stage_counts_from_the_last(collection):
    result = top(TopConfig(str(collection["path"]), -1, 1, k=2))
    assert result.stage == 0 and [t.row for t in result.items] == [4, 6]


def test_sources_that_moved_are_found_with_images_root(collection, tmp_path):
    moved = tmp_path / "moved"
    collection["root"].rename(moved)
    try:
        out = tmp_path / "grid.png"
        top(TopConfig(str(collection["path"]), 0, 1, k=1, out=str(out), images_root=str(moved)))
        with Image.open(out) as image:
            pixels = np.asarray(image.convert("RGB"))[TITLE_HEIGHT : TITLE_HEIGHT + CELL_SIDE, GUTTER:-GUTTER]
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # photo4 found below --images-root
    finally:
        moved.rename(collection["root"])


@pytest.mark.parametrize(
    ("stage", "channel", "k", "by", "message"),
    [
        (3, 0, 3, "max", "stage 3 is not in"),
        (0, 4, 3, "max", "channel 4 does not exist"),
        (0, 0, 0, "max", "-k must be 1"),
        (0, 0, 3, "median", "--by must be one of max, mean"),
    ],
)
def test_bad_options_are_usage_errors(collection, stage, channel, k, by, message):
    with pytest.raises(UsageError, match=message):
        top(TopConfig(str(collection["path"]), stage, channel, k=k, by=by))


def test_partial_file_ranks_its_done_rows(tmp_path):
    rng = np.random.default_rng(2)
    maps = smooth_maps(rng, 5, 2, 4, 4)
    write_store(tmp_path / "p.h5", [f"k{i}.png" for i in range(5)], {0: maps}, done=[1, 3, 4])
    result = top(TopConfig(str(tmp_path / "p.h5"), 0, 0, k=5))
    assert result.path == Path(f"{tmp_path / 'p.h5'}.partial")
    assert sorted(t.row for t in result.items) == [1, 3, 4]
