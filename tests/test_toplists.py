"""Top lists: the images that drive each channel most, kept per stage at finalise and by merge."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from conftest import write_images

import pipeline
from pipeline.errors import UsageError
from pipeline.jobs import merge
from pipeline.storage.format import schema
from pipeline.storage.reading import toplists
from pipeline.storage.reading.toplists import TopList

OPTIONS = dict(model="resnet18", random_init=True, size=(32, 32), batch_size=4, workers=0, device="cpu")


def brute_force(store, stage: int, channel: int, by: str) -> list[tuple[int, float]]:
    """Rows by the stored maps' own max (or mean) of the channel, value desc then row asc."""
    view = store.stage(stage)
    ok = store.ok
    found = []
    for row in np.flatnonzero(ok):
        plane = view.data[row, channel].astype(np.float32)
        found.append((-float(plane.max() if by == "max" else plane.mean()), int(row)))
    return [(row, -value) for value, row in sorted(found)]


def test_random_blocks_with_ties_and_nan_match_a_sort():
    rng = np.random.default_rng(0)
    for _ in range(100):
        channels, n, k = int(rng.integers(1, 5)), int(rng.integers(1, 200)), int(rng.integers(1, 30))
        values = rng.integers(0, 3, (channels, n)).astype(np.float32)  # ties everywhere
        values[rng.random((channels, n)) < 0.1] = np.nan
        top = TopList.empty(channels, k)
        for lo in range(0, n, 23):
            top.add(np.arange(lo, min(n, lo + 23))[None, :], values[:, lo : lo + 23])
        for c in range(channels):
            want = sorted((-values[c, r], r) for r in range(n) if not np.isnan(values[c, r]))[:k]
            assert [int(r) for r in top.rows[c] if r >= 0] == [r for _, r in want]


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    """40 images (one broken), 3 shards of 16, 16 and 8, merged; and the unsharded run."""
    base = tmp_path_factory.mktemp("top")
    images = base / "images"
    write_images(images, 39, size=(24, 24))
    (images / "img007b.png").write_bytes(b"broken")
    pipeline.extract(str(images), str(base / "single.h5"), **OPTIONS)
    for index in range(3):
        pipeline.extract(str(images), str(base / "out.h5"), shard_index=index, num_shards=3, **OPTIONS)
    merge.merge(base / "out.h5")
    return base


@pytest.mark.parametrize("name", ["single.h5", "out.h5"])
@pytest.mark.parametrize("by", ["max", "mean"])
def test_top_images_equal_a_ranking_of_the_stored_maps(merged, name, by):
    with pipeline.open_store(merged / name) as store:
        assert schema.TOP in store.file[schema.stage_group(2)]
        for channel in (0, 5, 31):
            got = toplists.top_images(store, 2, channel, 10, by)
            want = brute_force(store, 2, channel, by)[:10]
            assert [r for r, _ in got] == [r for r, _ in want], (channel, got, want)
            # max: float16 maps, float32 stats of the unrounded values; mean likewise.
            np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=2e-3, atol=1e-3)
            broken = store.keys.index("img007b.png")
            assert broken not in [r for r, _ in toplists.top_images(store, 2, channel, 40, by)]


def test_merged_lists_equal_the_unsharded_runs(merged):
    with h5py.File(merged / "single.h5") as a, h5py.File(merged / "out.h5") as b:
        for stage in a[schema.STAGES]:
            top_a, top_b = a[f"stages/{stage}/top"], b[f"stages/{stage}/top"]
            for name in ("max_rows", "mean_rows", "max_counts"):
                np.testing.assert_array_equal(top_a[name][:], top_b[name][:])
            np.testing.assert_allclose(top_a["max_response"][:], top_b["max_response"][:], rtol=1e-5)


def test_files_without_lists_fall_back_to_the_statistics(merged, tmp_path):
    copy = tmp_path / "old.h5"
    copy.write_bytes((merged / "single.h5").read_bytes())
    with h5py.File(copy, "r+") as f:
        for stage in f[schema.STAGES]:
            del f[f"stages/{stage}/top"]
    with pipeline.open_store(copy) as old, pipeline.open_store(merged / "single.h5") as new:
        assert toplists.top_images(old, 1, 3, 7) == toplists.top_images(new, 1, 3, 7)
        order_old, _ = toplists.channel_ranking(old, 1)
        order_new, _ = toplists.channel_ranking(new, 1)
        np.testing.assert_array_equal(order_old, order_new)
        many = toplists.top_images(new, 1, 3, 300)  # more than the list holds: a pass over the stats
        assert len(many) == len(new) - 1


def test_channel_ranking_orders_by_the_mean_response(merged):
    with pipeline.open_store(merged / "single.h5") as store:
        order, response = toplists.channel_ranking(store, 3, "max")
        view = store.stage(3)
        want = np.nanmean(view.max[:], axis=0)
        np.testing.assert_allclose(response, want[order], rtol=1e-5)
        assert (np.diff(response) <= 0).all()


def test_bad_requests_are_usage_errors(merged):
    with pipeline.open_store(merged / "single.h5") as store:
        for args in ((2, 999, 5, "max"), (2, 0, 0, "max"), (2, 0, 5, "median")):
            with pytest.raises(UsageError):
                toplists.top_images(store, *args)
