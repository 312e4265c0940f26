"""One stage's maps as decoded chunk blocks: `(n, H, W)` channels c0..c0+n of one image.

A chunk is read raw (`read_direct_chunk`: one short call under h5py's global lock) and
decompressed here, outside that lock, so threads decode in parallel; the zstd frame's
checksum is verified on the way (`storage.integrity.chunks.decode`). A merged file's rows are mapped
to its shards' datasets by storage's one reading of the mapping (`storage.integrity.chunks.row_blocks`):
a mapping `fmpipe merge` never writes, or a shard not of the shape mapped, is an InputError.
A filter or chunking fmpipe never writes, or a chunk not stored, falls back to a plain h5py
read of the same block. No torch.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

import h5py
import numpy as np

from ..errors import InputError
from ..storage.format import schema
from ..storage.format.encoding import decode_maps
from ..storage.integrity.chunks import ChunkError, RowBlock, check_source, decode, filter_kind, row_blocks

log = logging.getLogger(__name__)

MAX_OPEN_SHARDS = 32  # shard files of a merged file kept open for raw reads
FALLBACK_CACHE_BYTES = 4 << 20  # HDF5's own chunk cache of the stage, used only by h5py reads


class StageBlocks:
    """Decoded (n, H, W) chunk blocks of one stage of an open fmpipe file."""

    def __init__(self, file: h5py.File, path: Path, stage: int | str, checksum_required: bool, group: str = ""):
        self.name = f"{group or schema.stage_group(int(stage))}/{schema.DATA}"
        self.dset = _small_cache_dataset(file, self.name)
        self.path, self.stage, self.checksum_required = path, stage, checksum_required
        _, self.channels, self.height, self.width = self.dset.shape
        self.dtype = self.dset.dtype
        # (file, dataset) → (file opened here or None, dataset, filter kind or None), least recently used first
        self._open: OrderedDict[tuple[Path, str], tuple[h5py.File | None, h5py.Dataset, str | None]] = OrderedDict()
        self._lock = threading.Lock()
        self._own = file
        self.parts = row_blocks(self.dset, path)
        self._starts = [p.first for p in self.parts]
        chunks = self._stored_chunks()
        whole_rows = chunks is not None and chunks[0] == 1 and tuple(chunks[2:]) == (self.height, self.width)
        self.k = chunks[1] if whole_rows else self.channels
        if not whole_rows:
            self.parts, self._starts = [], []
        self.nbytes = self.k * self.height * self.width * self.dtype.itemsize  # a stored chunk, padding included
        self.raw_reads = self.fallback_reads = 0

    def _stored_chunks(self) -> tuple[int, ...] | None:
        """The chunk shape of the stored data: a virtual dataset has none of its own, so its first
        source's (merge checked that every shard is chunked alike)."""
        if not self.dset.is_virtual or not self.parts:
            return self.dset.chunks
        first = self.parts[0]
        if first.file == Path(os.path.abspath(self.path)):
            return self._own[first.name].chunks
        with h5py.File(first.file, "r", locking="best-effort") as file:
            return file[first.name].chunks

    def block(self, row: int, c0: int) -> np.ndarray:
        """(n, H, W) maps of channels c0..c0+n of `row` (c0 a multiple of k), read-only: float16/float32
        as stored, uint8 decoded to float32 (`storage.format.encoding.decode_maps`)."""
        n = min(self.k, self.channels - c0)
        part = self._part(row)
        raw = self._read_raw(part, row, c0) if part is not None else None
        if raw is None:
            self.fallback_reads += 1
            data = self.dset[row, c0 : c0 + n]
        else:
            self.raw_reads += 1
            kind, mask, stored = raw
            try:
                flat = decode(stored, kind, mask, self.nbytes, self.checksum_required, self.dtype.itemsize)
            except ChunkError as err:
                raise InputError(
                    f"{self.path}: the chunk of stage {self.stage}, row {row}, channels {c0}.. {err}; "
                    f"check the file with `fmpipe verify {self.path}`."
                ) from None
            data = np.frombuffer(flat, dtype=self.dtype).reshape(self.k, self.height, self.width)[:n]
        if self.dtype == np.uint8:
            group = self._own[self.name.rpartition("/")[0]]
            bounds = [group[name][row, c0 : c0 + n] for name in (schema.STAT_MIN, schema.STAT_MAX)]
            data = decode_maps(data, *bounds, "uint8")
        data.setflags(write=False)
        return data

    def _part(self, row: int) -> RowBlock | None:
        i = bisect.bisect_right(self._starts, row) - 1
        if i >= 0 and self.parts[i].first <= row < self.parts[i].stop:
            return self.parts[i]
        return None

    def _read_raw(self, part: RowBlock, row: int, c0: int) -> tuple[str, int, bytes] | None:
        """(filter kind, filter mask, stored bytes) of one chunk; None when it must be read through h5py."""
        offset = (row - part.first + part.source_row, c0, 0, 0)
        with self._lock:  # an evicted shard file is closed under this lock, never mid-read
            try:
                _, dset, kind = self._dataset(part)
                if kind is None:
                    return None
                mask, stored = dset.id.read_direct_chunk(offset)
            except (OSError, KeyError, ValueError, RuntimeError) as err:  # not stored, or unreadable raw
                log.debug("raw read of %s %s failed (%s); reading through h5py", part.name, offset, err)
                return None
        return kind, mask, stored

    def _dataset(self, part: RowBlock) -> tuple[h5py.File | None, h5py.Dataset, str | None]:
        """(file opened here or None, dataset, filter kind or None) of a part; an LRU of open shard files."""
        key = (part.file, part.name)
        if key in self._open:
            self._open.move_to_end(key)
            return self._open[key]
        own = Path(os.path.abspath(self.path)) == part.file
        file = None if own else h5py.File(part.file, "r", locking="best-effort")
        try:
            dset = check_source(part, self._own if own else file, self.dset)
        except InputError:
            if file is not None:
                file.close()
            raise
        try:  # raw reads only for the chunking and filters fmpipe writes
            kind = filter_kind(dset) if dset.chunks == (1, self.k, self.height, self.width) else None
        except InputError:
            kind = None
        self._open[key] = (file, dset, kind)
        while len(self._open) > MAX_OPEN_SHARDS:
            old, _, _ = self._open.popitem(last=False)[1]
            if old is not None:
                old.close()
        return self._open[key]

    def close(self) -> None:
        """Close the shard files opened here and drop the stage's handle (see `Catalog.close`)."""
        with self._lock:
            for file, _, _ in self._open.values():
                if file is not None:
                    file.close()
            self._open.clear()
            self.dset = None


def _small_cache_dataset(file: h5py.File, name: str) -> h5py.Dataset:
    """The stage's data opened with a small HDF5 chunk cache, before anyone else opens it.

    HDF5 shares one open dataset (and its chunk cache) between every handle of it and ignores
    the cache settings of later opens, so this bounds the cache of the PCA fit's and fallback
    reads too; the store's default (64 MB per stage) would stay filled while the viewer runs.
    """
    dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
    dapl.set_chunk_cache(521, FALLBACK_CACHE_BYTES, 1.0)
    return h5py.Dataset(h5py.h5d.open(file.id, name.encode(), dapl))
