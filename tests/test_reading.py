"""Reading maps: `store.read` by key, row, list and slice (decoded float32), O(1) `row`, errors that
are also KeyError / FileNotFoundError, closed stores, `repr`; and `pipeline.open_dataset` in a
fresh interpreter on single, merged (virtual) and copied files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import write_images
from helpers import fmpipe

import pipeline
from pipeline.errors import ClosedStoreError, FmpipeError, InputError, UsageError
from pipeline.jobs import merge
from pipeline.storage.format import schema
from pipeline.storage.writing import files

OPTIONS = dict(model="tiny_models:plain_net", size=(32, 32), batch_size=4, workers=0, device="cpu")
BROKEN = "img004b.png"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    base = tmp_path_factory.mktemp("reading")
    images = base / "images"
    write_images(images, 20, size=(24, 24))
    (images / BROKEN).write_bytes(b"not an image")
    pipeline.extract(str(images), str(base / "single.h5"), **OPTIONS)
    pipeline.extract(str(images), str(base / "f32.h5"), dtype="float32", **OPTIONS)
    for index in range(2):
        pipeline.extract(str(images), str(base / "merged.h5"), shard_index=index, num_shards=2, **OPTIONS)
    merge.merge(base / "merged.h5")
    shutil.copytree(files.shards_folder(base / "merged.h5"), files.shards_folder(base / "copied.h5"))
    merge.merge(base / "copied.h5", copy=True)
    shutil.rmtree(files.shards_folder(base / "copied.h5"))  # the copy stands alone
    return base


@pytest.mark.parametrize("name", ["single.h5", "f32.h5", "merged.h5", "copied.h5"])
def test_read_by_key_row_list_and_slice_agree_with_the_stored_values(outputs, name):
    with pipeline.open_store(outputs / name) as store:
        keys = store.keys
        assert len(keys) == 21 and store.row(BROKEN) == keys.index(BROKEN)
        for view in store.maps:
            stored = view.data[:].astype(np.float32)  # (N, C, H, W) as h5py reads it
            for row, key in enumerate(keys):
                by_key, by_row = store.read(view.key, key), store.read(view.key, row)
                assert by_key.dtype == np.float32 and by_key.shape == view.shape
                np.testing.assert_array_equal(by_key, by_row)
                np.testing.assert_array_equal(by_key, stored[row])
            picked = store.read(view.key, [keys[5], 2, keys[5], -1])  # any order, repeats, negative rows
            np.testing.assert_array_equal(picked, stored[[5, 2, 5, 20]])
            np.testing.assert_array_equal(store.read(view.key, slice(3, 9)), stored[3:9])
            np.testing.assert_array_equal(store.read(view.key, slice(None, None, 4)), stored[::4])
            assert store.read(view.key, []).shape == (0, *view.shape)
            assert np.isnan(store.read(view.key, BROKEN)).all()  # a failed row reads as NaN
            assert np.isfinite(store.read(view.key, keys[0])).all()


def test_float32_and_float16_files_read_the_same_maps_within_float16_rounding(outputs):
    with pipeline.open_store(outputs / "single.h5") as half, pipeline.open_store(outputs / "f32.h5") as full:
        a, b = half.read(1, "img000.jpg"), full.read(1, "img000.jpg")
        assert full.stage(1).data.dtype == np.float32 and half.stage(1).data.dtype == np.float16
        np.testing.assert_allclose(a, b, rtol=2**-10, atol=1e-6)
        assert not np.array_equal(a, b)  # the float32 file really holds other (unrounded) values


def test_an_unknown_key_is_a_key_error_and_an_fmpipe_error(outputs):
    with pipeline.open_store(outputs / "single.h5") as store:
        with pytest.raises(KeyError) as caught:
            store.row("nope.jpg")
        assert isinstance(caught.value, InputError) and caught.value.exit_code == 2
        assert "no image with key 'nope.jpg'" in str(caught.value) and "img000.jpg" in str(caught.value)
        with pytest.raises(KeyError):
            store.read(0, ["img000.jpg", "nope.jpg"])
        with pytest.raises(IndexError, match=r"rows 0\.\.20"):
            store.read(0, 21)
        with pytest.raises(TypeError):
            store.read(0, 1.5)
        with pytest.raises(FmpipeError, match="stage 7 is not in"):
            store.read(7, 0)


def test_row_answers_every_key_from_one_dict(outputs, monkeypatch):
    with pipeline.open_store(outputs / "single.h5") as store:
        keys = store.keys
        assert store.row(keys[3]) == 3
        monkeypatch.setattr(type(store), "_key_list", lambda self: pytest.fail("keys read again"))
        assert [store.row(key) for key in keys] == list(range(len(keys)))


def test_a_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        pipeline.open_store(tmp_path / "none.h5")
    assert isinstance(caught.value, InputError) and "does not exist" in str(caught.value)


def test_a_closed_store_says_it_is_closed(outputs):
    with pipeline.open_store(outputs / "single.h5") as store:
        store.row("img000.jpg")
    for read in (lambda: store.read(0, 0), lambda: store.row("img000.jpg"), lambda: store.keys):
        with pytest.raises(ClosedStoreError, match=r"single\.h5 is closed"):
            read()
    assert repr(store).endswith("closed>")
    store.close()  # twice is harmless


def test_repr_says_what_the_file_holds(outputs):
    with pipeline.open_store(outputs / "merged.h5") as store:
        text = repr(store)
    assert "merged.h5" in text and "21 images (complete, 1 failed)" in text
    assert "stages [0, 1, 2]" in text and "tiny_models:plain_net, float16" in text


# A fresh interpreter that imports nothing but pipeline: every stage opens in xarray, and the data of
# every key equals store.read (failed rows read as NaN).
FRESH = """
import sys
import pipeline
path = sys.argv[1]
with pipeline.open_store(path) as store:
    keys, ok, refs = store.keys, store.ok, [view.key for view in store.maps]
    for ref in refs:
        with pipeline.open_dataset(path, ref) as ds:
            assert ds["data"].dims == ("image", "channel", "y", "x") and ds["data"].dtype == "float32"
            assert list(ds["image"].values) == keys
            assert ds.sizes["channel"] == store.view(ref).channels
            for row, key in enumerate(keys):
                got = ds["data"].sel(image=key).values
                if ok[row]:
                    assert (got == store.read(ref, key)).all(), (ref, key)
                    assert (ds["max"].sel(image=key).values == store.view(ref).max[row]).all()
                else:
                    assert ds["data"].sel(image=key).isnull().all()
            assert float(ds["data"].isel(channel=1).max()) == float(store.read(ref, slice(None))[ok, 1].max())
print("checked", len(refs), "maps", "dask" in sys.modules)
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", ["single.h5", "merged.h5", "copied.h5"])
def test_open_dataset_works_in_a_fresh_interpreter(outputs, name):
    run = subprocess.run([sys.executable, "-c", FRESH, str(outputs / name)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["checked", "3", "maps", "True"]


def test_open_dataset_names_a_malformed_root_attribute(outputs, tmp_path):
    """The file's model and dtype come from `store.run`; a damaged attribute stops the open (check_structure)."""
    with pipeline.open_dataset(outputs / "single.h5", 0) as ds:
        assert ds.attrs["model"] == "tiny_models:plain_net" and ds.attrs["storage_dtype"] == "float16"
    damaged = Path(shutil.copy(outputs / "single.h5", tmp_path / "damaged.h5"))
    with h5py.File(damaged, "r+") as file:
        file.attrs[schema.ATTR_CONFIG] = "{not json"
    with pytest.raises(InputError, match="the root attribute 'config_json' is malformed"):
        pipeline.open_dataset(damaged, 0)


@pytest.mark.slow
def test_importing_pipeline_is_enough_for_plain_xarray(outputs):
    code = (
        "import sys, pipeline, xarray as xr\n"
        "ds = xr.open_dataset(sys.argv[1], engine='h5netcdf', group='stages/2')\n"
        "print(float(ds['data'].sel(image='img000.jpg').max()))"
    )
    run = subprocess.run([sys.executable, "-c", code, str(outputs / "single.h5")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    with pipeline.open_store(outputs / "single.h5") as store:
        assert float(run.stdout) == float(store.read(2, "img000.jpg").max())


@pytest.mark.slow
def test_cli_says_a_missing_file_does_not_exist(tmp_path):
    run = fmpipe(["reduce", tmp_path / "none.h5", "--stage", "0", "--method", "srp", "--dim", "4", "--out", "f.npz"])
    assert run.returncode == 2 and "fmpipe: error:" in run.stderr and "does not exist" in run.stderr


def test_uint8_files_read_decoded_by_key_and_by_row(outputs, tmp_path):
    """Active once `--dtype uint8` exists (the bytes branch): reads go through the one decoder."""
    try:
        pipeline.extract(str(outputs / "images"), str(tmp_path / "u8.h5"), dtype="uint8", **OPTIONS)
    except UsageError as err:
        pytest.skip(f"this fmpipe stores no uint8 yet ({err})")
    with pipeline.open_store(tmp_path / "u8.h5") as u8, pipeline.open_store(outputs / "f32.h5") as full:
        for view in u8.maps:
            for row, key in enumerate(u8.keys):
                got = u8.read(view.key, key)
                assert got.dtype == np.float32
                np.testing.assert_array_equal(got, u8.read(view.key, row))
                if not u8.ok[row]:
                    continue
                want = full.read(view.key, key)
                step = (want.max(axis=(1, 2)) - want.min(axis=(1, 2)))[:, None, None] / 255
                assert (np.abs(got - want) <= step * 0.51 + 1e-6).all()  # within half a quantisation step


def test_open_dataset_blocks_of_rows_and_a_layer_by_name(outputs):
    with pipeline.open_dataset(outputs / "single.h5", -1, chunks=7) as ds:
        assert ds["data"].chunks[0] == (7, 7, 7) and ds.attrs["stage"] == 2 and ds.attrs["module"] == "head"
        with pipeline.open_store(outputs / "single.h5") as store:
            np.testing.assert_array_equal(ds["data"][3:9, 1].values, store.read(2, slice(3, 9))[:, 1])
    with pytest.raises(UsageError, match="chunks must be at least 1"):
        pipeline.open_dataset(outputs / "single.h5", 0, chunks=0)
    with pytest.raises(FmpipeError, match="layer 'nope' is not in"):
        pipeline.open_dataset(outputs / "single.h5", "nope")
