"""`open_dataset`: one stage or layer of an fmpipe file as a lazy xarray Dataset.

    ds = pipeline.open_dataset("out.h5", 2)              # nothing read yet
    cat = ds["data"].sel(image="chelsea.jpg").values     # (C, H, W) float32, = store.read(2, key)

The maps are read through the store (its checks of merged files' sources, its one decoder), so
`data` is float32 whatever the storage dtype; with dask installed they come as dask arrays in row
blocks, otherwise as xarray's own lazy arrays. Needs xarray only (`pip install 'fmpipe[xarray]'`).
"""

from __future__ import annotations

import os
import threading

import numpy as np
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing

from ..errors import UsageError
from ..storage.format import schema
from ..storage.reading.store import StageView, Store, decoded_maps, open_store

CHUNK_BYTES = 64 * 1024 * 1024  # dask: rows per block so that a block of float32 maps is about this size


def open_dataset(path: str | os.PathLike, ref: int | str, *, chunks: int | None = None):
    """Stage `ref` (an int index, negative from the last) or layer `ref` (a str) as an `xarray.Dataset`.

    Variables: `data` (image, channel, y, x) float32, decoded; `min`, `max`, `mean` (image, channel)
    float32. Coordinates: `image` (the keys, row order), `channel`, `y`, `x` (indices). Attributes:
    the stage's (index, module, stride, ...) and the file's model and dtype. Failed and unfinished
    rows read as NaN. Lazy: values are read when asked for (`.values`, `.compute()`); with dask
    installed every variable is a dask array of `chunks` rows per block (default: about 64 MB of
    maps). `ds.close()` closes the file.
    """
    if chunks is not None and chunks < 1:
        raise UsageError(f"chunks must be at least 1 (images per dask block), got {chunks}.")
    store = open_store(path)
    try:
        view = store.view(ref)
        dataset = _dataset(store, view)
    except BaseException:
        store.close()
        raise
    if _has_dask():
        rows = chunks or max(1, CHUNK_BYTES // max(1, 4 * int(np.prod(view.data.shape[1:]))))
        dataset = dataset.chunk({"image": rows})
    dataset.set_close(store.close)
    return dataset


def _dataset(store: Store, view: StageView) -> xr.Dataset:
    lock = threading.Lock()

    def lazy(name: str, dims: tuple[str, ...]):
        array = _MapArray(store, view, name, lock)
        return xr.Variable(dims, indexing.LazilyIndexedArray(array))

    variables = {schema.DATA: lazy(schema.DATA, schema.DIMS)}
    for stat in schema.STAT_NAMES:
        variables[stat] = lazy(stat, schema.DIMS[:2])
    _, channels, height, width = view.data.shape
    coords = {
        schema.DIM_IMAGE: np.asarray(store.keys, dtype=object),
        schema.DIM_CHANNEL: np.arange(channels),
        schema.DIM_Y: np.arange(height),
        schema.DIM_X: np.arange(width),
    }
    run = store.run
    attrs = {
        "stage": view.index if view.layer is None else view.layer,
        "module": view.module,
        "stride": view.stride,
        "model": run.model or "",
        "storage_dtype": run.dtype or "",
        "source": str(store.path),
    }
    return xr.Dataset(variables, coords=coords, attrs=attrs)


class _MapArray(BackendArray):
    """xarray's view of one dataset of a stage: `data` decoded by the store's decoder, statistics as stored."""

    def __init__(self, store: Store, view: StageView, name: str, lock: threading.Lock):
        self.store, self.view, self.name, self.lock = store, view, name, lock
        self.shape = getattr(view, name).shape
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, key):
        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.BASIC, self._read)

    def __dask_tokenize__(self):
        return (str(self.store.path), self.view.key, self.name)

    def _read(self, key: tuple) -> np.ndarray:
        """`key`: one int or slice per axis (xarray's basic indexing)."""
        self.store.file  # noqa: B018  (raises ClosedStoreError after ds.close())
        # Ints become one-element slices, so the decoder always sees (rows, channels) blocks.
        slices = tuple(slice(k, k + 1) if isinstance(k, int | np.integer) else k for k in key)
        with self.lock:
            stored = getattr(self.view, self.name)[slices]
        if self.name == schema.DATA:
            values = decoded_maps(self.view, slices[0], stored, slices[1])
        else:
            values = stored.astype(np.float32, copy=False)
        return values[tuple(0 if isinstance(k, int | np.integer) else slice(None) for k in key)]


def _has_dask() -> bool:
    try:
        import dask.array  # noqa: F401
    except ImportError:
        return False
    return True
