"""`fmpipe export`: one (C, H, W) float32 .npy per image named by its render folder, and a gzip HDF5
copy that a fresh interpreter reads with h5py alone (no hdf5plugin, no fmpipe)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import write_images
from helpers import fmpipe

import pipeline
from pipeline.errors import OutputExistsError, UsageError
from pipeline.jobs import merge
from pipeline.rendering.selection import image_folders

OPTIONS = dict(model="tiny_models:plain_net", size=(32, 32), batch_size=4, workers=0, device="cpu")
BROKEN = "img003b.png"
CLASHING = ["a.jpg", "a.png", "sub/x.npy.jpg", "x.npy/b.jpg", "x.jpg"]  # folders a, a_png, x_npy/b ...


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    base = tmp_path_factory.mktemp("export")
    images = base / "images"
    write_images(images, 8, size=(24, 24))
    (images / BROKEN).write_bytes(b"broken")
    for key in CLASHING:
        (images / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(images / "img000.jpg", images / key)
    pipeline.extract(str(images), str(base / "single.h5"), stages=(0, 1, 2), layers=("body.0",), **OPTIONS)
    for index in range(2):
        pipeline.extract(str(images), str(base / "merged.h5"), shard_index=index, num_shards=2, **OPTIONS)
    merge.merge(base / "merged.h5")
    return base


def test_npy_per_image_named_by_its_render_folder(outputs, tmp_path):
    dest = tmp_path / "npy"
    summary = pipeline.export(outputs / "single.h5", dest, stage=1)
    with pipeline.open_store(outputs / "single.h5") as store:
        folders = image_folders(store)
        ok, keys = store.ok, store.keys
        expected = {f"{folders.folder(row, key)}.npy": row for row, key in enumerate(keys) if ok[row]}
        written = {str(p.relative_to(dest)) for p in dest.rglob("*.npy")}
        assert written == set(expected) and len(written) == len(keys) - 1  # the failed image is left out
        assert {"a.npy", "a_png.npy", "x.npy", "x_npy/b.npy", "sub/x_npy.npy"} <= written  # no clash
        for name, row in expected.items():
            maps = np.load(dest / name)
            assert maps.dtype == np.float32 and maps.shape == store.stage(1).shape
            np.testing.assert_array_equal(maps, store.read(1, row))
    assert summary.images == len(expected) and summary.skipped == 1
    assert not [p for p in dest.rglob("*") if p.name.startswith(".")]  # no temporary file left


def test_npy_of_chosen_images_and_of_a_layer(outputs, tmp_path):
    pipeline.export(outputs / "single.h5", tmp_path, stage="body.0", images="0:2,x.jpg")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.npy")) == ["a.npy", "a_png.npy", "x.npy"]
    with pipeline.open_store(outputs / "single.h5") as store:
        np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), store.read("body.0", "x.jpg"))


def test_npy_never_replaces_files_without_overwrite(outputs, tmp_path):
    (tmp_path / "a.npy").write_bytes(b"mine")
    with pytest.raises(OutputExistsError, match="1 of the"):
        pipeline.export(outputs / "single.h5", tmp_path, stage=0)
    assert (tmp_path / "a.npy").read_bytes() == b"mine" and not (tmp_path / "x.npy").exists()
    pipeline.export(outputs / "single.h5", tmp_path, stage=0, overwrite=True)
    assert np.load(tmp_path / "a.npy").shape == (4, 16, 16)


def test_bad_options_are_usage_errors(outputs, tmp_path):
    with pytest.raises(UsageError, match="give --stage"):
        pipeline.export(outputs / "single.h5", tmp_path)
    with pytest.raises(UsageError, match="--format"):
        pipeline.export(outputs / "single.h5", tmp_path, stage=0, format="mat")
    with pytest.raises(UsageError, match="drop --images"):
        pipeline.export(outputs / "single.h5", tmp_path / "c.h5", format="hdf5", images="0:2")


# A fresh interpreter with h5py only: the copy's filters are built in (HDF5_PLUGIN_PATH unset, no
# hdf5plugin), its dimension scales name the axes; it dumps every stage's maps for the test to compare.
PLAIN_H5PY = """
import json, sys
import h5py, numpy as np
path, dump = sys.argv[1], sys.argv[2]
arrays = {}
with h5py.File(path, "r") as f:
    groups = [f"stages/{name}" for name in f["stages"]] + [f"layers/{name}" for name in f.get("layers", {})]
    for group in groups:
        data = f[group + "/data"]
        assert data.compression == "gzip" and data.compression_opts == 4, group
        assert [dim[0].name.rsplit("/", 1)[1] for dim in data.dims] == ["image", "channel", "y", "x"]
        assert list(data.dims[0][0].asstr()[:]) == list(f["images/key"].asstr()[:])
        arrays[group] = data[:].astype(np.float32)
        arrays[group + "/max"] = f[group + "/max"][:]
np.savez(dump, **{k.replace("/", "|"): v for k, v in arrays.items()})
print(json.dumps(sorted(arrays)))
print("hdf5plugin" in sys.modules, "pipeline" in sys.modules)
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", ["single.h5", "merged.h5"])
def test_gzip_copy_reads_with_plain_h5py_and_equals_the_decoded_maps(outputs, tmp_path, name):
    copy = tmp_path / "copy.h5"
    run = fmpipe(["export", outputs / name, copy, "--format", "hdf5", "--compression", "gzip"])
    assert run.returncode == 0, run.stderr
    assert "images in one file written" in run.stdout
    env = {k: v for k, v in os.environ.items() if k != "HDF5_PLUGIN_PATH"}
    dump = tmp_path / "dump.npz"
    read = subprocess.run(
        [sys.executable, "-c", PLAIN_H5PY, str(copy), str(dump)], capture_output=True, text=True, env=env
    )
    assert read.returncode == 0, read.stderr
    groups, loaded = read.stdout.splitlines()
    assert loaded == "False False"  # neither hdf5plugin nor fmpipe was imported
    got = np.load(dump)
    with pipeline.open_store(outputs / name) as store:
        assert json.loads(groups) == sorted([v.group for v in store.maps] + [f"{v.group}/max" for v in store.maps])
        for view in store.maps:
            np.testing.assert_array_equal(got[view.group.replace("/", "|")], store.read(view.key, slice(None)))
            np.testing.assert_array_equal(got[f"{view.group}/max".replace("/", "|")], view.max[:])
    with pipeline.open_store(copy) as again, h5py.File(copy) as raw:  # fmpipe reads the copy as any file
        assert again.keys == pipeline.open_store(outputs / name).keys and again.complete
        assert raw.attrs["compression"] == "gzip" and "merged_from" not in raw.attrs
        assert raw.attrs["exported_from"] == name
    verify = fmpipe(["verify", copy])  # every chunk's Adler-32 and the statistics hold in the copy
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_gzip_copy_of_one_stage_and_refusals(outputs, tmp_path):
    copy = tmp_path / "s2.h5"
    pipeline.export(outputs / "single.h5", copy, stage=2, format="hdf5")
    with pipeline.open_store(copy) as store, pipeline.open_store(outputs / "single.h5") as original:
        assert store.stage_indices == [2] and store.layer_names == []
        np.testing.assert_array_equal(store.read(2, slice(None)), original.read(2, slice(None)))
        assert store.failures == original.failures
    with pytest.raises(OutputExistsError):
        pipeline.export(outputs / "single.h5", copy, format="hdf5")
    with pytest.raises(pipeline.errors.InputError, match="being exported"):
        pipeline.export(outputs / "single.h5", outputs / "single.h5", format="hdf5", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s2.h5"]


@pytest.mark.slow
def test_cli_npy_export_and_its_usage_errors(outputs, tmp_path):
    run = fmpipe(["export", outputs / "single.h5", tmp_path / "maps", "--stage", "1", "--images", "0:2"])
    assert run.returncode == 0, run.stderr
    assert "maps: 2 files written" in run.stdout
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["a.npy", "a_png.npy"]
    both = fmpipe(["export", outputs / "single.h5", tmp_path / "m2", "--stage", "1", "--layer", "body.0"])
    assert both.returncode == 2 and "give --stage S or --layer NAME (one of them)" in both.stderr
    again = fmpipe(["export", outputs / "single.h5", tmp_path / "maps", "--stage", "1", "--images", "0:2"])
    assert again.returncode == 2 and "pass --overwrite" in again.stderr and "Traceback" not in again.stderr
