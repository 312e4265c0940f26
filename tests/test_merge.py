"""Merge: 4 shards + merge (virtual or --copy) equal one unsharded run; bad shards fail clearly (exit 2)."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest
from conftest import write_images

import pipeline
from pipeline import sources
from pipeline.errors import InputError
from pipeline.jobs import merge
from pipeline.storage.format import schema
from pipeline.storage.reading.info import describe_store
from pipeline.storage.writing import files

REPO = Path(__file__).resolve().parent.parent
# 52 images in 4 shards of 16, 16, 16 and 4 (shards are cut at multiples of sources.SHARD_UNIT = 16),
# batches of 4: each image is computed in the same batch as in the unsharded run, so the results are
# bit-identical (oneDNN may round the last bits differently for other batch shapes; see docs/slurm.md).
OPTIONS = dict(model="resnet18", random_init=True, size=(32, 32), batch_size=4, workers=0, device="cpu")
SHARDS = 4


def fmpipe(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def extract_shards(images: Path, out: Path, num_shards: int = SHARDS, **extra) -> None:
    for index in range(num_shards):
        pipeline.extract(str(images), str(out), shard_index=index, num_shards=num_shards, **{**OPTIONS, **extra})


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> dict:
    """52 images (one broken: a failure to re-index), one unsharded run and the 4 shards of another."""
    root = tmp_path_factory.mktemp("merge")
    images = root / "images"
    write_images(images, 51, size=(40, 40))
    (images / "img004b.png").write_bytes(b"not an image")
    single = root / "single.h5"
    pipeline.extract(str(images), str(single), **OPTIONS)
    extract_shards(images, root / "pristine.h5")
    return {"root": root, "images": images, "single": single, "shards": root / "pristine.h5.shards"}


@pytest.fixture
def sharded(collection, tmp_path) -> Path:
    """OUT in a fresh folder, with a copy of the 4 complete shards in OUT.shards/."""
    out = tmp_path / "out.h5"
    shutil.copytree(collection["shards"], files.shards_folder(out))
    return out


def bits(array: np.ndarray) -> np.ndarray:
    """Floats as their raw bits: equal means identical, NaN included."""
    return array.view(f"u{array.dtype.itemsize}") if array.dtype.kind == "f" else array


def assert_same_content(got: Path, want: Path) -> None:
    with pipeline.open_store(got, require_complete=True) as a, pipeline.open_store(want) as b:
        assert a.keys == b.keys and len(a) == 52
        np.testing.assert_array_equal(a.orig_hw, b.orig_hw)
        assert a.done.all() and a.complete
        assert a.failures == b.failures == [("img004b.png", b.failures[0][1])]
        np.testing.assert_array_equal(a.file[schema.FAILURE_INDEX][:], b.file[schema.FAILURE_INDEX][:])
        np.testing.assert_array_equal(a.ok, b.ok)
        assert a.stage_indices == b.stage_indices
        for sa, sb in zip(a.stages, b.stages, strict=True):
            assert (sa.module, sa.shape, sa.stride) == (sb.module, sb.shape, sb.stride)
            for name in ("data", "min", "max", "mean"):
                np.testing.assert_array_equal(bits(getattr(sa, name)[:]), bits(getattr(sb, name)[:]), err_msg=name)
        for name in ("model", "weights", "fingerprint", "dtype", "compression", "total_images"):
            assert a.attrs[name] == b.attrs[name]


@pytest.mark.parametrize("copy", [False, True], ids=["virtual", "copy"])
def test_four_shards_merged_equal_the_unsharded_run(collection, sharded, copy):
    summary = merge.merge(sharded, copy=copy)
    assert (summary.num_shards, summary.images, summary.failed) == (4, 52, 1)
    assert_same_content(sharded, collection["single"])
    with pipeline.open_store(sharded) as store:
        attrs = store.attrs
        assert attrs[schema.ATTR_MERGED_FROM] == "out.h5.shards" and attrs[schema.ATTR_NUM_SHARDS] == 4
        assert attrs[schema.ATTR_MERGE_MODE] == ("copy" if copy else "virtual") and bool(attrs["complete"])
        assert store.stage(0).data.is_virtual is not copy
        text = describe_store(store)
    assert "complete" in text and f"4 of 4 merged ({summary.mode})" in text and "images done 52 of 52" in text


def test_copy_keeps_the_compressed_chunks_and_stands_alone(sharded):
    summary = merge.merge(sharded, copy=True)
    folder = files.shards_folder(sharded)
    with h5py.File(sharded) as merged, h5py.File(folder / files.shard_name(1, SHARDS)) as shard:
        start = int(shard.attrs["shard_start"])
        for name in merged[schema.STAGES]:
            dst, src = merged[f"stages/{name}/data"], shard[f"stages/{name}/data"]
            assert dst.compression_opts == src.compression_opts and dst.chunks == src.chunks
            assert dict(dst._filters) == dict(src._filters)
            offset = (0, 0, 0, 0)
            assert dst.id.read_direct_chunk((start, *offset[1:])) == src.id.read_direct_chunk(offset)
    assert summary.bytes_copied > 0
    shutil.rmtree(folder)
    with pipeline.open_store(sharded) as store:
        assert np.isfinite(store.stage(2).data[0]).all()


def test_hdf5_1_10_tools_read_the_merged_file(collection, sharded, tmp_path):
    if not (shutil.which("h5dump") and shutil.which("h5ls")):
        pytest.skip("h5dump/h5ls not installed (Debian: apt-get install hdf5-tools)")
    merge.merge(sharded)
    elsewhere = tmp_path / "elsewhere"  # relative sources resolve beside the file, not in the cwd
    elsewhere.mkdir()
    listing = subprocess.run(["h5ls", "-r", str(sharded)], capture_output=True, text=True, cwd=elsewhere)
    assert listing.returncode == 0 and "/stages/4/data" in listing.stdout, listing.stderr
    dump = tmp_path / "mean.bin"
    run = subprocess.run(
        ["h5dump", "-d", "/stages/4/mean", "-b", "LE", "-o", str(dump), str(sharded)],
        capture_output=True,
        cwd=elsewhere,
    )
    assert run.returncode == 0, run.stderr
    with pipeline.open_store(collection["single"]) as single:
        want_mean = single.stage(4).mean[:]
        want_data = single.stage(2).data[11, 5, 1, :4]
    np.testing.assert_array_equal(np.fromfile(dump, "<f4").reshape(want_mean.shape), want_mean)
    # The float16 maps decode through hdf5plugin's zstd filter, loaded as a plugin by the C tool.
    env = {**os.environ, "HDF5_PLUGIN_PATH": hdf5plugin.PLUGIN_PATH}
    cmd = ["h5dump", "-d", "/stages/2/data", "-s", "11,5,1,0", "-c", "1,1,1,4", str(sharded)]
    text = subprocess.run(cmd, capture_output=True, text=True, cwd=elsewhere, env=env).stdout
    values = re.search(r"\(11,5,1,0\): ([^\n]+)", text)
    assert values, text
    got = np.array([float(v) for v in values.group(1).split(",")], dtype=np.float16)
    np.testing.assert_array_equal(got, want_data)


def test_missing_shard_is_named_exit_2(sharded):
    (files.shards_folder(sharded) / files.shard_name(2, SHARDS)).unlink()
    run = fmpipe("merge", sharded)
    assert run.returncode == 2, run.stderr
    assert "shard 2 of 4 is missing (shard-00002-of-00004.h5)" in run.stderr and "--array=2" in run.stderr
    assert "Traceback" not in run.stderr and not sharded.exists()
    info = fmpipe("info", files.shards_folder(sharded))
    assert info.returncode == 0 and "3 of 4 shards complete; images done 36 of 52" in info.stdout
    assert "missing" in info.stdout


def test_incomplete_shard_is_named_exit_2(sharded):
    path = files.shards_folder(sharded) / files.shard_name(1, SHARDS)
    with h5py.File(path, "r+") as f:  # as a task killed after its first image
        f.attrs["complete"] = False
        f["images/done"][1:] = False
    path.rename(f"{path}.partial")
    run = fmpipe("merge", sharded)
    assert run.returncode == 2, run.stderr
    assert "shard 1 (shard-00001-of-00004.h5.partial) is incomplete (1 of 16 images done)" in run.stderr
    info = fmpipe("info", files.shards_folder(sharded))
    assert "partial" in info.stdout and "1 of 16 images done" in info.stdout


def test_shards_of_different_configurations_are_refused(collection, sharded):
    pipeline.extract(
        str(collection["images"]), str(sharded), shard_index=3, num_shards=SHARDS, overwrite=True,
        **{**OPTIONS, "dtype": "float32"},
    )  # fmt: skip
    run = fmpipe("merge", sharded)
    assert run.returncode == 2, run.stderr
    assert "shards 3 of 4 were made with a different configuration" in run.stderr
    assert "(shard 3 (shard-00003-of-00004.h5): --dtype float16 (this shard: float32))" in run.stderr


def test_a_deleted_source_is_an_error_never_fill_values(sharded, tmp_path, monkeypatch):
    merge.merge(sharded)
    folder = files.shards_folder(sharded)
    victim = folder / files.shard_name(0, SHARDS)
    # A same-named stray copy in the cwd would be read silently by HDF5: the store must not allow it.
    monkeypatch.chdir(tmp_path.parent)
    stray = Path(folder.name)
    stray.mkdir(exist_ok=True)
    shutil.copy(victim, stray / victim.name)
    victim.unlink()
    with pytest.raises(InputError, match=r"its shard 'out.h5.shards/shard-00000-of-00004.h5' is missing"):
        pipeline.open_store(sharded)
    run = fmpipe("info", sharded)
    assert run.returncode == 2 and "is missing" in run.stderr and "Traceback" not in run.stderr
    shutil.rmtree(stray)


def test_a_replaced_source_is_detected(collection, sharded):
    merge.merge(sharded)
    pipeline.extract(
        str(collection["images"]), str(sharded), shard_index=1, num_shards=SHARDS, overwrite=True,
        **{**OPTIONS, "dtype": "float32"},
    )  # fmt: skip
    with pytest.raises(InputError, match="holds a different run"):
        pipeline.open_store(sharded)


def test_non_fmpipe_hdf5_files_are_refused(sharded, tmp_path):
    foreign = tmp_path / "other.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    run = fmpipe("merge", foreign)
    assert run.returncode == 2 and "not an fmpipe file" in run.stderr, run.stderr
    shutil.copy(foreign, files.shards_folder(sharded) / files.shard_name(2, SHARDS))
    run = fmpipe("merge", sharded)
    said = "shard-00002-of-00004.h5 is an HDF5 file but not an fmpipe file (no format='fmpipe')."  # as verify says it
    assert run.returncode == 2 and said in run.stderr, run.stderr


def test_existing_output_is_kept_unless_it_is_an_earlier_merge(collection, sharded):
    shutil.copy(collection["single"], sharded)
    run = fmpipe("merge", sharded)
    assert run.returncode == 2 and "--overwrite" in run.stderr
    assert fmpipe("merge", sharded, "--overwrite").returncode == 0
    run = fmpipe("merge", files.shards_folder(sharded), "--copy")  # the folder names OUT too; re-merge is fine
    assert run.returncode == 0 and "4 shards, copy" in run.stdout, run.stderr


def test_merge_does_not_import_torch(sharded):
    code = f"import sys, pipeline.jobs.merge as m\nm.merge({str(sharded)!r})\nassert 'torch' not in sys.modules\n"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert run.returncode == 0, run.stderr


def test_more_shards_than_images_and_shard_names(tmp_path):
    from pipeline.storage.writing.files import shard_output

    images = tmp_path / "images"
    write_images(images, 3, size=(64, 64))
    out = tmp_path / "few.h5"
    extract_shards(images, out, num_shards=5)  # one unit: shard 0 holds it, shards 1 to 4 are empty
    assert merge.merge(out).images == 3
    with pipeline.open_store(out) as store:
        assert store.keys == sorted(p.name for p in images.iterdir()) and np.isfinite(store.stage(1).data[:]).all()
    assert shard_output(out, 3, 5) == files.shards_folder(out) / files.shard_name(3, 5)


@pytest.mark.parametrize(("count", "num_shards"), [(12, 4), (100, 7), (5, 4), (33, 3), (1000, 9)])
def test_shards_tile_the_collection_in_whole_units(count, num_shards):
    unit = sources.SHARD_UNIT
    bounds = [sources.shard_bounds(count, i, num_shards) for i in range(num_shards)]
    assert bounds[0][0] == 0 and bounds[-1][1] == count
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    assert all(start % unit == 0 or start == count for start, _ in bounds)
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= unit


def test_shards_cut_in_whole_units_equal_the_unsharded_run_bit_for_bit(tmp_path):
    # 36 images, 2 shards: 16 + 20 (three units, the partial last one in the shard with the extra
    # unit; cutting 32 + 4 would be unbalanced). Batches of 4 divide the shard unit of 16, so every
    # batch of the single run lies inside one shard and the maps are bit-identical.
    images = tmp_path / "images"
    write_images(images, 36, size=(64, 64))
    options = {**OPTIONS, "batch_size": 4}
    pipeline.extract(str(images), str(tmp_path / "single.h5"), **options)
    for index in range(2):
        pipeline.extract(str(images), str(tmp_path / "out.h5"), shard_index=index, num_shards=2, **options)
    merge.merge(tmp_path / "out.h5")
    with pipeline.open_store(tmp_path / "out.h5") as a, pipeline.open_store(tmp_path / "single.h5") as b:
        assert a.keys == b.keys
        for sa, sb in zip(a.stages, b.stages, strict=True):
            for name in ("data", "min", "max", "mean"):
                np.testing.assert_array_equal(bits(getattr(sa, name)[:]), bits(getattr(sb, name)[:]), err_msg=name)
    with h5py.File(files.shards_folder(tmp_path / "out.h5") / files.shard_name(1, 2)) as f:
        assert int(f.attrs["shard_start"]) == 16 and len(f[schema.KEY]) == 20
