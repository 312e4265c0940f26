"""Named axes: every stage of a single, a merged (virtual) and a copied file opens in xarray with
dimensions image, channel, y, x and the keys as the image coordinate; h5dump still reads it."""

from __future__ import annotations

import os
import shutil
import subprocess

import hdf5plugin
import numpy as np
import pytest
import xarray as xr
from conftest import write_images

import pipeline
from pipeline.jobs import merge
from pipeline.storage.writing import files

OPTIONS = dict(model="resnet18", random_init=True, size=(32, 32), batch_size=4, workers=0, device="cpu")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    base = tmp_path_factory.mktemp("dims")
    images = base / "images"
    write_images(images, 35, size=(24, 24))
    (images / "img003b.png").write_bytes(b"broken")
    pipeline.extract(str(images), str(base / "single.h5"), **OPTIONS)
    for index in range(3):
        pipeline.extract(str(images), str(base / "merged.h5"), shard_index=index, num_shards=3, **OPTIONS)
    merge.merge(base / "merged.h5")
    shutil.copytree(files.shards_folder(base / "merged.h5"), files.shards_folder(base / "copied.h5"))
    merge.merge(base / "copied.h5", copy=True)
    shutil.rmtree(files.shards_folder(base / "copied.h5"))  # the copy stands alone
    return base


@pytest.mark.parametrize("name", ["single.h5", "merged.h5", "copied.h5"])
def test_every_stage_opens_in_xarray_with_named_axes_and_keys(outputs, name):
    path = outputs / name
    with pipeline.open_store(path) as store:
        keys = store.keys
        assert len(keys) == 36
        for stage in store.stages:
            with xr.open_dataset(path, engine="h5netcdf", group=f"stages/{stage.index}") as ds:
                assert ds["data"].dims == ("image", "channel", "y", "x")
                sizes = {"image": 36, "channel": stage.channels, "y": stage.height, "x": stage.width}
                assert dict(ds.sizes) == sizes
                assert list(ds["image"].values) == keys
                for stat in ("min", "max", "mean"):
                    assert ds[stat].dims == ("image", "channel")
                key = keys[7]
                np.testing.assert_array_equal(ds["data"].sel(image=key).values, stage.data[7])
                np.testing.assert_array_equal(ds["max"].sel(image=key, channel=3).values, stage.max[7, 3])
                assert np.isnan(ds["data"].sel(image="img003b.png").values).all()  # the failure row


def test_h5dump_still_reads_a_stage(outputs):
    if shutil.which("h5dump") is None:
        pytest.skip("h5dump not installed (Debian: apt-get install hdf5-tools)")
    env = {**os.environ, "HDF5_PLUGIN_PATH": hdf5plugin.PLUGIN_PATH}  # h5dump needs the zstd filter too
    run = subprocess.run(
        ["h5dump", "-d", "/stages/1/data", "-s", "2,0,0,0", "-c", "1,1,1,2", str(outputs / "single.h5")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 0 and "(2,0,0,0):" in run.stdout, run.stdout + run.stderr
