"""Lazy read-only view of an fmpipe file: a single shard, a merged (virtual) or a copied file.

Nothing is read until asked: `store.read(2, "cats/a.jpg")` reads only that image's chunks of
stage 2 and returns them decoded, (C, H, W) float32; `store.stage(2).data[i]` is the stored array.
A virtual file's sources are checked before any read, because HDF5 silently returns
fill values for a missing source.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers the zstd filter for reading)
import numpy as np

from ...errors import (
    ClosedStoreError,
    IncompleteFileError,
    InputError,
    MissingFileError,
    RowOutOfRange,
    UnknownKeyError,
)
from ...records import StageInfo
from ..format import schema
from ..format.encoding import DecodedMaps, Encoding, encoding_of, maps_reader
from ..format.metadata import RunInfo, run_info
from ..format.structure import check_fmpipe, open_hdf5
from .virtual import check_virtual_sources

# One row of chunks of a large stage fits (docs/hdf5.md: a chunk larger than the cache
# is decoded again on every partial read).
CHUNK_CACHE_BYTES = 64 * 1024 * 1024
# What a pass that reads every chunk once (export, reduce) needs: a full cache only keeps chunks
# that are never read again, and memory would grow with the images read, up to the 64 MB.
STREAM_CACHE_BYTES = 1024 * 1024
PARTIAL_OPEN_TRIES = 6  # a file being written is opened again up to this many times
PARTIAL_RETRY_S = 0.05  # first wait before opening it again (doubled each time)


@dataclass(frozen=True, kw_only=True)
class StageView(StageInfo):
    """One stored stage: its `StageInfo` plus lazy h5py datasets."""

    data: h5py.Dataset | DecodedMaps  # (N, C, H, W) float16/float32 as stored; uint8 files read as float32
    min: h5py.Dataset  # (N, C) float32
    max: h5py.Dataset  # (N, C) float32
    mean: h5py.Dataset  # (N, C) float32
    argmax: h5py.Dataset | None = None  # (N, C) int32 y * W + x of each maximum; None in older files


# An image as `read` takes it: a key, a row, a slice of rows, or a sequence of keys and rows.
Images = str | int | slice | Iterable[str | int]


class Store:
    """An open fmpipe file. Use as a context manager or call `close()`.

    `read(ref, image)` gives decoded maps as float32 numpy arrays; `row(key)` a key's row in O(1);
    `stage(i)`, `layer(name)` the stored datasets, lazily. Reads after `close()` raise `ClosedStoreError`.
    """

    def __init__(
        self, path: str | os.PathLike, require_complete: bool = False, chunk_cache_bytes: int = CHUNK_CACHE_BYTES
    ):
        self.path = Path(path)
        self._closed = False
        self._keys: list[str] | None = None  # read once, on first use
        self._rows: dict[str, int] | None = None  # key → row, built on the first row() call
        if not self.path.exists():
            raise MissingFileError(f"{self.path} does not exist.")
        # OUT.partial may be being written: a view of it can be outgrown by the writer's next flush
        # while it is checked ("addr overflow"); a fresh open then sees the flushed file.
        tries = PARTIAL_OPEN_TRIES if self.path.name.endswith(".partial") else 1
        for attempt in range(tries):
            self._keys, self._rows = None, None  # nothing cached from an outgrown view
            self._file = open_hdf5(self.path, locking="best-effort", rdcc_nbytes=chunk_cache_bytes, rdcc_nslots=10007)
            try:
                self._validate(require_complete)
                return
            except InputError:
                self._file.close()
                if attempt + 1 == tries:
                    raise
            except Exception:
                self._file.close()
                raise
            time.sleep(PARTIAL_RETRY_S * 2**attempt)

    @property
    def file(self) -> h5py.File:
        """The open h5py file (read-only); `ClosedStoreError` once the store is closed."""
        if self._closed:
            raise self._closed_error()
        return self._file

    def _closed_error(self) -> ClosedStoreError:
        return ClosedStoreError(
            f"{self.path} is closed: read it before closing it (inside its `with` block), or open it again."
        )

    def _validate(self, require_complete: bool) -> None:
        run = check_fmpipe(self.path, self.file)
        self.check_sources()
        if require_complete and not run.complete:
            raise IncompleteFileError(
                f"{self.path} is not complete ({self.done_count} of {len(self)} images done). "
                "Finish it by rerunning the same extract command, or pass --allow-partial."
            )

    def check_sources(self) -> None:
        """Raise unless every virtual source (data and statistics) is present, inside this
        file's folder, complete and of the same run: HDF5 would read a missing one as fill values."""
        check_virtual_sources(self.path, self.file)

    # -- metadata -----------------------------------------------------------------------

    @property
    def attrs(self) -> dict:
        """The raw root attributes; prefer the typed `run`."""
        return dict(self.file.attrs)

    @property
    def run(self) -> RunInfo:
        """The run that wrote this file: model, weights, input size, storage, shards, images root."""
        return run_info(self.file.attrs, self.path)

    @property
    def encoding(self) -> Encoding:
        """How the maps are stored: dtype (uint8 reads decoded), --keep-bits, byte shuffle, --pool."""
        return encoding_of(self.file.attrs)

    @property
    def complete(self) -> bool:
        return self.run.complete

    @property
    def config(self) -> dict:
        return self.run.config

    @property
    def keys(self) -> list[str]:
        """Image keys, row order (sorted relative POSIX paths); read from the file once."""
        return list(self._key_list())

    def _key_list(self) -> list[str]:
        if self._closed:
            raise self._closed_error()
        if self._keys is None:
            self._keys = [schema.text(k) for k in self.file[schema.KEY][:]]
        return self._keys

    def __len__(self) -> int:
        return self.file[schema.KEY].shape[0]

    @property
    def done(self) -> np.ndarray:
        return self.file[schema.DONE][:].astype(bool)

    @property
    def done_count(self) -> int:
        return int(self.done.sum())

    @property
    def orig_hw(self) -> np.ndarray:
        """(N, 2) int32 height, width of each source image before resizing (-1: failed)."""
        return self.file[schema.ORIG_HW][:]

    @property
    def failures(self) -> list[tuple[str, str]]:
        """(key, reason) of every image that could not be used."""
        keys = self.file[schema.FAILURE_KEY][:]
        reasons = self.file[schema.FAILURE_REASON][:]
        return [(schema.text(k), schema.text(r)) for k, r in zip(keys, reasons, strict=True)]

    @property
    def ok(self) -> np.ndarray:
        """(N,) bool: rows that are done and hold data (not failures)."""
        mask = self.done
        mask[self.file[schema.FAILURE_INDEX][:]] = False
        return mask

    @property
    def stage_indices(self) -> list[int]:
        return sorted(int(name) for name in self.file[schema.STAGES])

    @property
    def layer_names(self) -> list[str]:
        """Stored layers (`--layers`), in the order they were asked for."""
        prefix = f"{schema.LAYERS}/"
        return [path[len(prefix) :] for path in schema.map_groups(self.file) if path.startswith(prefix)]

    def stage(self, index: int) -> StageView:
        """The stage with this index (negative counts from the last stored stage)."""
        indices = self.stage_indices
        if index < 0 and -len(indices) <= index:
            index = indices[index]
        if index not in indices:
            stored = ", ".join(map(str, indices)) or "none"
            layers = f"; layers: {', '.join(self.layer_names)}" if self.layer_names else ""
            raise InputError(f"stage {index} is not in {self.path}; stored stages: {stored}{layers}.")
        return self._view(schema.stage_group(index), None)

    def layer(self, name: str) -> StageView:
        """The layer stored under this name (as given to --layers, e.g. `layer1.0.relu:2`)."""
        if name not in self.layer_names:
            stored = ", ".join(self.layer_names) or "none"
            raise InputError(f"layer {name!r} is not in {self.path}; stored layers: {stored}.")
        return self._view(schema.layer_group(name), name)

    def view(self, ref: int | str) -> StageView:
        """A stage by its index (an int) or a layer by its name (a str, even `"0"`)."""
        return self.layer(ref) if isinstance(ref, str) else self.stage(int(ref))

    def _view(self, path: str, layer: str | None) -> StageView:
        group = self.file[path]
        a = group.attrs
        return StageView(
            int(a[schema.ATTR_STAGE_INDEX]),
            str(a[schema.ATTR_STAGE_MODULE]),
            int(a[schema.ATTR_CHANNELS]),
            int(a[schema.ATTR_STRIDE]),
            int(a[schema.ATTR_HEIGHT]),
            int(a[schema.ATTR_WIDTH]),
            str(a.get(schema.ATTR_CAPTURE, "")),
            layer,
            data=maps_reader(group),
            min=group[schema.STAT_MIN],
            max=group[schema.STAT_MAX],
            mean=group[schema.STAT_MEAN],
            argmax=group[schema.STAT_ARGMAX] if _same_shape(group, schema.STAT_ARGMAX, schema.STAT_MAX) else None,
        )

    @property
    def stages(self) -> list[StageView]:
        """The model's declared stages stored in the file."""
        return [self.stage(i) for i in self.stage_indices]

    @property
    def layers(self) -> list[StageView]:
        """The layers stored by name (`--layers`)."""
        return [self.layer(name) for name in self.layer_names]

    @property
    def maps(self) -> list[StageView]:
        """Every stored map group: the stages, then the layers."""
        return self.stages + self.layers

    def row(self, key: str) -> int:
        """Row of an image key, in O(1): a dict of every key is built on the first call (about 70
        bytes per image beside the cached keys). An unknown key raises `UnknownKeyError`, a `KeyError`."""
        if self._closed:
            raise self._closed_error()
        rows = self._rows
        if rows is None:
            rows = {}
            for row, name in enumerate(self._key_list()):
                rows.setdefault(name, row)  # a (damaged) file with a key twice: its first row
            self._rows = rows
        found = rows.get(key) if isinstance(key, str) else None
        if found is None:
            example = f" (e.g. {self._key_list()[0]!r})" if self._key_list() else ""
            raise UnknownKeyError(
                f"no image with key {key!r} in {self.path}: keys are paths relative to the extracted "
                f"folder, with extension{example}; `store.keys` lists all {len(rows)}."
            )
        return found

    def read(self, ref: int | str, images: Images) -> np.ndarray:
        """Decoded maps of stage `ref` (an int index, negative from the last) or layer `ref` (a str).

        `images` is a key (str) or a row (int, negative from the end) → (C, H, W) float32; a list
        of keys and rows (repeats allowed, any order) or a slice of rows → (N, C, H, W) float32, in
        that order. Values are decoded from the file's storage dtype (float16, float32, ...); rows
        that failed or are not done yet read as NaN (`store.ok` says which hold maps). Reads only
        the chunks of the rows asked for.
        """
        view = self.view(ref)
        if isinstance(images, slice):
            start, stop, step = images.indices(len(self))
            if step == 1:
                return decoded_maps(view, slice(start, stop), view.data[start:stop])
            return self._read_rows(view, list(range(start, stop, step)))
        if isinstance(images, str | int | np.integer):
            row = self._row_of(images)
            return decoded_maps(view, slice(row, row + 1), view.data[row : row + 1])[0]
        return self._read_rows(view, [self._row_of(image) for image in images])

    def _read_rows(self, view: StageView, rows: list[int]) -> np.ndarray:
        """(len(rows), C, H, W) float32 of any rows: each distinct row read once, in ascending order (h5py's rule)."""
        if not rows:
            return np.empty((0, *view.data.shape[1:]), np.float32)
        unique, inverse = np.unique(np.asarray(rows, np.int64), return_inverse=True)
        return decoded_maps(view, unique, view.data[unique])[inverse.reshape(-1)]

    def _row_of(self, image: str | int) -> int:
        """A key's or a row number's row (negative rows count from the end)."""
        if isinstance(image, str):
            return self.row(image)
        if isinstance(image, bool) or not isinstance(image, int | np.integer):
            raise TypeError(f"an image is a key (str) or a row (int), not {type(image).__name__}: {image!r}.")
        n = len(self)
        if not -n <= image < n:
            raise RowOutOfRange(f"row {image} is not in {self.path}: it holds {n} images (rows 0..{n - 1}).")
        return int(image) % n

    def close(self) -> None:
        """Close the file; later reads raise `ClosedStoreError`. Closing twice is harmless."""
        self._closed = True
        self._file.close()

    def __repr__(self) -> str:
        if self._closed:
            return f"<fmpipe Store {str(self.path)!r}, closed>"
        try:
            failed = self.file[schema.FAILURE_INDEX].shape[0]
            state = "complete" if self.complete else f"partial, {self.done_count} done"
            maps = f"stages {self.stage_indices}" + (f", layers {self.layer_names}" if self.layer_names else "")
            recorded = self.run
            run = f"{_or_unknown(recorded.model)}, {_or_unknown(recorded.dtype)}"
            return f"<fmpipe Store {str(self.path)!r}: {len(self)} images ({state}, {failed} failed), {maps}; {run}>"
        except Exception:  # a repr never raises, even on a damaged file
            return f"<fmpipe Store {str(self.path)!r}>"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _or_unknown(value: str | None) -> str:
    return "?" if value is None else value


def _same_shape(group: h5py.Group, name: str, like: str) -> bool:
    """An optional dataset is used only when present with the shape of a required one (hostile files)."""
    found = group.get(name)
    return isinstance(found, h5py.Dataset) and found.shape == group[like].shape and found.dtype.kind == "i"


def open_store(
    path: str | os.PathLike, require_complete: bool = False, chunk_cache_bytes: int = CHUNK_CACHE_BYTES
) -> Store:
    """Open an fmpipe HDF5 file lazily (see `Store`)."""
    return Store(path, require_complete=require_complete, chunk_cache_bytes=chunk_cache_bytes)


def decoded_maps(
    view: StageView, rows: slice | np.ndarray, stored: np.ndarray, channels: slice = slice(None)
) -> np.ndarray:
    """Stored map values → float32: `stored` is `view.data[rows, channels]` (any y, x subset), 4-d.

    Every read of map values (`Store.read`, `open_dataset`, export, reduce) passes here. Decoding a
    storage choice happens one step before, in `view.data` itself: for uint8 files it is an
    `encoding.DecodedMaps`, whose reads go through `encoding.decode_maps` (the one decoder, which the
    viewer's blocks, render and verify use too); what remains here is the cast of float16 to float32."""
    return stored.astype(np.float32, copy=False)
