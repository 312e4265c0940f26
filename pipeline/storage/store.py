"""Lazy read-only view of an fmpipe file: a single shard, a merged (virtual) or a copied file.

Nothing is read until asked: `store.stage(2).data[i]` reads only image i's chunks.
A virtual file's sources are checked before any read, because HDF5 silently returns
fill values for a missing source.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers the zstd filter for reading)
import numpy as np

from ..errors import IncompleteFileError, InputError
from ..records import StageInfo
from . import schema
from .metadata import RunInfo, run_info
from .structure import check_structure
from .virtual import check_virtual_sources

# One row of chunks of a large stage fits (notes/hdf5.md: a chunk larger than the cache
# is decoded again on every partial read).
CHUNK_CACHE_BYTES = 64 * 1024 * 1024
PARTIAL_OPEN_TRIES = 6  # a file being written is opened again up to this many times
PARTIAL_RETRY_S = 0.05  # first wait before opening it again (doubled each time)


@dataclass(frozen=True, kw_only=True)
class StageView(StageInfo):
    """One stored stage: its `StageInfo` plus lazy h5py datasets."""

    data: h5py.Dataset  # (N, C, H, W) float16/float32
    min: h5py.Dataset  # (N, C) float32
    max: h5py.Dataset  # (N, C) float32
    mean: h5py.Dataset  # (N, C) float32


class Store:
    """An open fmpipe file. Use as a context manager or call `close()`."""

    def __init__(self, path: str | os.PathLike, require_complete: bool = False):
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"{self.path} does not exist.")
        # OUT.partial may be being written: a view of it can be outgrown by the writer's next flush
        # while it is checked ("addr overflow"); a fresh open then sees the flushed file.
        tries = PARTIAL_OPEN_TRIES if self.path.name.endswith(".partial") else 1
        for attempt in range(tries):
            try:
                self.file = h5py.File(
                    self.path, "r", locking="best-effort", rdcc_nbytes=CHUNK_CACHE_BYTES, rdcc_nslots=10007
                )
            except OSError as err:
                raise InputError(f"{self.path} is not a readable HDF5 file ({err}).") from None
            try:
                self._validate(require_complete)
                return
            except InputError:
                self.file.close()
                if attempt + 1 == tries:
                    raise
            except Exception:
                self.file.close()
                raise
            time.sleep(PARTIAL_RETRY_S * 2**attempt)

    def _validate(self, require_complete: bool) -> None:
        attrs = self.file.attrs
        if attrs.get(schema.ATTR_FORMAT) != schema.FORMAT:
            raise InputError(f"{self.path} is an HDF5 file but not an fmpipe file (no format='fmpipe').")
        version = attrs.get(schema.ATTR_FORMAT_VERSION)
        if version not in schema.READABLE_VERSIONS:
            raise InputError(
                f"{self.path} has fmpipe format version {version}; this fmpipe reads version "
                f"{schema.FORMAT_VERSION}. Upgrade fmpipe (python -m pip install -U fmpipe)."
            )
        check_structure(self.path, self.file)
        self.check_sources()
        if require_complete and not self.complete:
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
        return run_info(self.file.attrs)

    @property
    def complete(self) -> bool:
        return bool(self.file.attrs.get(schema.ATTR_COMPLETE, False))

    @property
    def config(self) -> dict:
        return self.run.config

    @property
    def keys(self) -> list[str]:
        """Image keys, row order (sorted relative POSIX paths)."""
        return [k.decode() if isinstance(k, bytes) else k for k in self.file[schema.KEY][:]]

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
            data=group[schema.DATA],
            min=group[schema.STAT_MIN],
            max=group[schema.STAT_MAX],
            mean=group[schema.STAT_MEAN],
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
        """Row of an image key."""
        try:
            return self.keys.index(key)
        except ValueError:
            raise InputError(f"no image with key {key!r} in {self.path}.") from None

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_store(path: str | os.PathLike, require_complete: bool = False) -> Store:
    """Open an fmpipe HDF5 file lazily (see `Store`)."""
    return Store(path, require_complete=require_complete)
