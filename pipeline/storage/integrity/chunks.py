"""Raw chunks of a stage's data: where every stored chunk lies on disk (also below a virtual
dataset), and decoding one with its checksum verified. No torch.

HDF5's zstd plugin does not verify a frame's content checksum on read, so a byte overwritten
inside a chunk can read back as other numbers. Chunks are therefore read raw (`os.pread` at the
chunk's file offset, outside h5py's global lock, so threads read and decode in parallel) and
decoded here, where every checksum is checked: XXH64 of zstd frames, Adler-32 of zlib streams,
HDF5's Fletcher-32 of uncompressed chunks.
"""

from __future__ import annotations

import os
import threading
import zlib
from array import array
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import h5py
import numpy as np
import zstandard

from ...errors import InputError
from ..format.codecs import CHECKSUMS, fletcher32
from ..format.encoding import unshuffle_bytes

# HDF5 filter ids of the pipelines fmpipe writes: zstd (hdf5plugin), deflate, Fletcher-32, each
# optionally after the byte shuffle (2).
SHUFFLE = "shuffle+"
_PLAIN = {(): "none", (32015,): "zstd", (1,): "gzip", (3,): "fletcher32"}
KINDS = _PLAIN | {(2, *ids): SHUFFLE + kind for ids, kind in _PLAIN.items() if ids}


class ChunkError(Exception):
    """A chunk that does not decode to what was stored; the message says why ("fails its zstd checksum")."""


@dataclass(frozen=True)
class RawSource:
    """A physical dataset whose chunks are read raw: its file and its filter pipeline."""

    fd: int  # os-level descriptor of its file, read with os.pread
    kind: str  # "zstd", "gzip", "fletcher32" or "none", "shuffle+" before it when byte-shuffled
    label: str  # its file, for messages


# Columns of ChunkIndex.table.
ROW, C0, SOURCE, OFFSET, SIZE, MASK = range(6)


@dataclass(frozen=True)
class ChunkIndex:
    """Every stored chunk of one stage, in the verified file's rows, sorted by (row, first channel).

    Chunks are (1, k, H, W) blocks of the (N, C, H, W) data. `table` is (M, 6) int64, one row
    per chunk: ROW (in the verified file), C0 (first channel), SOURCE (index into `sources`),
    OFFSET and SIZE (its bytes in that source's file), MASK (HDF5 filter mask, 0: all applied).
    """

    table: np.ndarray
    sources: list[RawSource]
    k: int  # channels per chunk


class Window:
    """Jobs on a thread pool, at most `limit` in flight (bounded memory); each result goes to its
    handler in the main thread, in submission order."""

    def __init__(self, pool: ThreadPoolExecutor, limit: int):
        self.pool, self.limit = pool, max(1, limit)
        self.pending: deque[tuple[Future, Callable]] = deque()

    def submit(self, handle: Callable, fn: Callable, *args) -> None:
        self.pending.append((self.pool.submit(fn, *args), handle))
        while len(self.pending) > self.limit:
            self._next()

    def drain(self) -> None:
        while self.pending:
            self._next()

    def _next(self) -> None:
        future, handle = self.pending.popleft()
        handle(future.result())


class RawFiles:
    """Opens each file once for raw reads (`os.pread` is safe from many threads); closes them all."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def fd(self, path: str | os.PathLike) -> int:
        key = os.path.abspath(path)
        if key not in self._fds:
            self._fds[key] = os.open(key, os.O_RDONLY)
        return self._fds[key]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> RawFiles:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def filter_kind(dset: h5py.Dataset) -> str:
    """The dataset's filter pipeline as one of KINDS' names; InputError for any other."""
    dcpl = dset.id.get_create_plist()
    ids = tuple(dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters()))
    if ids not in KINDS:
        raise InputError(f"{dset.name} uses HDF5 filters {ids}, which fmpipe never writes; it cannot verify them.")
    return KINDS[ids]


def index_chunks(dset: h5py.Dataset, path: Path, files: RawFiles) -> ChunkIndex:
    """The stored chunks of stage data `dset` of the file at `path` (physical or virtual).

    A virtual dataset's rows are mapped to its sources' chunks (`row_blocks`: files beside `path`,
    already checked by `virtual.check_virtual_sources`); rows no source maps have no chunks.
    """
    parts = []
    for block in row_blocks(dset, path):
        if not dset.is_virtual:
            parts.append(_physical(dset, path, files, block))
            continue
        with h5py.File(block.file, "r", locking=False) as file:
            source = check_source(block, file, dset)
            parts.append(_physical(source, block.file, files, block))
    ks = {k for _, _, k in parts}
    if len(ks) > 1:
        raise InputError(f"the shards of {dset.name} are chunked differently ({sorted(ks)} channels); re-merge.")
    tables = [np.column_stack([t[:, :SOURCE], np.full(len(t), i), t[:, SOURCE:]]) for i, (t, _, _) in enumerate(parts)]
    table = np.concatenate(tables) if tables else np.zeros((0, 6), np.int64)
    table = table[np.lexsort((table[:, C0], table[:, ROW]))]
    return ChunkIndex(table, [source for _, source, _ in parts], ks.pop() if ks else dset.shape[1])


# -- the virtual-row mapping -------------------------------------------------------------------


@dataclass(frozen=True)
class RowBlock:
    """Rows [first, stop) of a stage's data, stored in dataset `name` of `file` from row `source_row` on."""

    first: int
    stop: int
    source_row: int
    file: Path  # absolute (lexical) path of the file holding them: the file itself, or a shard beside it
    name: str  # the dataset's path in that file


def row_blocks(dset: h5py.Dataset, path: Path) -> list[RowBlock]:
    """Where each row of stage data `dset` (of the file at `path`) is stored, in row order: the file
    itself, or, below a merged file's virtual dataset, its shards' datasets. The one reading of a
    virtual dataset's mapping (verify's chunks, the viewer's blocks): a mapping `fmpipe merge` never
    writes (not whole rows, not one block, rows mapped twice) is an InputError, never read as
    another shard's rows. Rows no source maps are in no block (they read as fill values)."""
    own = Path(os.path.abspath(path))
    if not dset.is_virtual:
        return [RowBlock(0, dset.shape[0], 0, own, dset.name)]
    blocks = []
    for vmap in dset.virtual_sources():
        first, source_row, rows = _block(dset, vmap, path)
        source = own if vmap.file_name == "." else Path(os.path.normpath(own.parent / vmap.file_name))
        blocks.append(RowBlock(first, first + rows, source_row, source, vmap.dset_name))
    blocks.sort(key=lambda b: b.first)
    for before, after in pairwise(blocks):
        if after.first < before.stop:
            raise InputError(f"{path}: {dset.name} maps row {after.first} from two sources; {_REMERGE}")
    return blocks


def check_source(block: RowBlock, file: h5py.File, dset: h5py.Dataset) -> h5py.Dataset:
    """The source dataset of `block` in its open `file`; InputError unless it holds the rows the
    virtual dataset `dset` maps from it, with the same (C, H, W)."""
    source = file.get(block.name)
    rows = block.source_row + block.stop - block.first
    if not isinstance(source, h5py.Dataset) or source.shape[1:] != dset.shape[1:] or source.shape[0] < rows:
        raise InputError(f"{block.file.name}: {block.name} is not the shape its merged file maps; {_REMERGE}")
    return source


_REMERGE = "fmpipe merge never writes that: merge the shards again (fmpipe merge OUT)."


def _block(dset: h5py.Dataset, vmap, path: Path) -> tuple[int, int, int]:
    """(first virtual row, first source row, rows) of a mapping of whole rows, as `fmpipe merge` writes."""
    v_lo, v_hi = _bounds(dset, vmap.vspace, path)
    rows = v_hi[0] - v_lo[0] + 1
    whole = all(lo == 0 and hi == n - 1 for lo, hi, n in zip(v_lo[1:], v_hi[1:], dset.shape[1:], strict=True))
    if vmap.src_space.get_select_type() == h5py.h5s.SEL_ALL:  # the whole source (merge's own mappings)
        s_lo, s_hi = (0,) * len(v_lo), tuple(np.subtract(v_hi, v_lo))  # its extent is not stored: the block's
    else:
        s_lo, s_hi = _bounds(dset, vmap.src_space, path)
    if not whole or len(s_lo) != len(v_lo) or s_hi[0] - s_lo[0] + 1 != rows or tuple(s_lo[1:]) != v_lo[1:]:
        raise InputError(f"{path}: {dset.name} maps its sources other than by whole rows; {_REMERGE}")
    if tuple(s_hi[1:]) != v_hi[1:]:
        raise InputError(f"{path}: {dset.name} maps sources of another shape; {_REMERGE}")
    return v_lo[0], s_lo[0], rows


def _bounds(dset: h5py.Dataset, space, path: Path) -> tuple[tuple[int, ...], tuple[int, ...]]:
    lo, hi = space.get_select_bounds()
    if space.get_select_npoints() != int(np.prod(np.subtract(hi, lo) + 1)):
        raise InputError(f"{path}: {dset.name} maps a selection that is not one block; {_REMERGE}")
    return tuple(lo), tuple(hi)


def _physical(dset: h5py.Dataset, path: Path, files: RawFiles, block: RowBlock):
    """(M, 5) int64 [row, c0, offset, size, mask] of `dset`'s chunks in the source rows of `block`,
    rows moved to the rows it maps them to."""
    chunks = dset.chunks
    if chunks is None or chunks[0] != 1 or chunks[2:] != dset.shape[2:]:
        raise InputError(f"{path}: {dset.name} is not chunked as (1, k, H, W); fmpipe never writes that.")
    flat = array("q")

    def visit(info) -> None:
        flat.extend((info.chunk_offset[0], info.chunk_offset[1], info.byte_offset, info.size, info.filter_mask))

    if hasattr(dset.id, "chunk_iter"):
        dset.id.chunk_iter(visit)
    else:  # HDF5 before 1.12.3
        for i in range(dset.id.get_num_chunks()):
            visit(dset.id.get_chunk_info(i))
    table = np.frombuffer(flat, dtype=np.int64).reshape(-1, 5).copy()
    start, count = block.source_row, block.stop - block.first
    table = table[(table[:, ROW] >= start) & (table[:, ROW] < start + count)]
    table[:, ROW] += block.first - start
    return table, RawSource(files.fd(path), filter_kind(dset), path.name), chunks[1]


# -- decoding ----------------------------------------------------------------------------------


def read_raw(source: RawSource, offset: int, size: int) -> bytes:
    """The stored bytes of one chunk (no HDF5 call: safe and parallel from any thread)."""
    raw = os.pread(source.fd, size, offset)
    if len(raw) != size:
        raise ChunkError(f"is truncated: {len(raw)} of its {size} bytes are in {source.label}")
    return raw


def decode(raw: bytes, kind: str, mask: int, nbytes: int, checksum_required: bool, itemsize: int = 1) -> bytes:
    """A chunk's `nbytes` uncompressed bytes, every checksum verified; ChunkError otherwise.

    `checksum_required` (format v2) also refuses a chunk without a checksum: a zstd frame
    without one, or a chunk stored unfiltered (filter mask set). A byte-shuffled kind is
    unshuffled by `itemsize` (the data's element size) after its checksum held.
    """
    if kind.startswith(SHUFFLE):
        if mask:
            raise ChunkError(f"skipped some of its filters (filter mask {mask}), which fmpipe never writes")
        return unshuffle_bytes(decode(raw, kind[len(SHUFFLE) :], 0, nbytes, checksum_required), itemsize)
    if mask:
        if checksum_required:
            raise ChunkError(f"was stored without its {kind} filter (filter mask {mask}), so no checksum protects it")
        kind = "none"
    if kind == "zstd":
        data = _zstd(raw, nbytes, checksum_required)
    elif kind == "gzip":
        data = _zlib(raw, nbytes)
    elif kind == "fletcher32":
        data = _fletcher32_checked(raw)
    else:
        data = raw
    if len(data) != nbytes:
        raise ChunkError(f"decodes to {len(data)} bytes, expected {nbytes}")
    return data


_local = threading.local()


def _zstd(raw: bytes, nbytes: int, checksum_required: bool) -> bytes:
    try:
        frame = zstandard.get_frame_parameters(raw)
    except zstandard.ZstdError as err:
        raise ChunkError(f"is not a zstd frame ({err})") from None
    if checksum_required and not frame.has_checksum:
        raise ChunkError("is a zstd frame without its checksum")
    if frame.content_size != nbytes:  # also guards memory: a damaged header may claim any size
        raise ChunkError(f"declares {frame.content_size} bytes, expected {nbytes}")
    decompressor = getattr(_local, "zstd", None)
    if decompressor is None:  # one per thread, like the compressors (docs/hdf5.md)
        decompressor = _local.zstd = zstandard.ZstdDecompressor()
    try:
        return decompressor.decompress(raw)
    except zstandard.ZstdError as err:
        # zstd's one error type does not say which check failed: a frame whose blocks decode once
        # its checksum is taken away failed that checksum (the bytes decoded to other numbers).
        if frame.has_checksum and _decodes(decompressor, _without_checksum(raw)):
            raise ChunkError(f"fails its {CHECKSUMS['zstd'].label}") from None
        raise ChunkError(f"does not decode ({err})") from None


def _without_checksum(raw: bytes) -> bytes:
    """The same zstd frame without its content checksum: the frame header descriptor's (the byte
    after the 4-byte magic number) Content_Checksum_flag (bit 2) cleared, the 4 trailing bytes dropped."""
    frame = bytearray(raw[:-4])
    frame[4] &= 0xFF ^ 0x04
    return bytes(frame)


def _decodes(decompressor: zstandard.ZstdDecompressor, frame: bytes) -> bool:
    try:
        decompressor.decompress(frame)
    except zstandard.ZstdError:
        return False
    return True


# A zlib stream (RFC 1950): a 2-byte header, raw deflate data, then the Adler-32 of the data, big-endian.
_ZLIB_HEADER, _ADLER_BYTES = 2, 4


def _zlib(raw: bytes, nbytes: int) -> bytes:
    """A zlib stream's data, its Adler-32 compared here (as Fletcher-32 is): whether a chunk fails
    its checksum or does not decode is told by the stream's structure, never by zlib's message."""
    if len(raw) < _ZLIB_HEADER + _ADLER_BYTES or not _zlib_header(raw[0], raw[1]):
        raise ChunkError("is not a zlib stream (its 2-byte header is not deflate's)")
    stream = zlib.decompressobj(-15)  # the raw deflate data after the header
    try:
        data = stream.decompress(
            memoryview(raw)[_ZLIB_HEADER:], nbytes
        )  # bounded: a damaged stream cannot inflate without limit
        if not stream.eof:  # the end of the deflate data may still be unread; more data would be an error
            data += stream.decompress(stream.unconsumed_tail, 1)
    except zlib.error as err:
        raise ChunkError(f"does not decode ({err})") from None
    if not stream.eof or len(stream.unused_data) != _ADLER_BYTES:
        raise ChunkError("is a truncated or overlong zlib stream")
    if zlib.adler32(data) != int.from_bytes(stream.unused_data, "big"):
        raise ChunkError(f"fails its {CHECKSUMS['gzip'].label}")
    return data


def _zlib_header(cmf: int, flg: int) -> bool:
    """Deflate (method 8, window up to 32 KiB), no preset dictionary, header check bits right."""
    return cmf & 0x0F == 8 and cmf >> 4 <= 7 and not flg & 0x20 and (cmf * 256 + flg) % 31 == 0


def _fletcher32_checked(raw: bytes) -> bytes:
    if len(raw) < 4:
        raise ChunkError("is shorter than its Fletcher-32 checksum")
    data, stored = raw[:-4], int.from_bytes(raw[-4:], "little")
    value = fletcher32(data)
    # HDF5 1.6 wrote the checksum's bytes swapped in pairs; HDF5 still accepts both forms.
    swapped = ((value & 0x00FF00FF) << 8) | ((value >> 8) & 0x00FF00FF)
    if stored not in (value, swapped):
        raise ChunkError(f"fails its {CHECKSUMS['none'].label}")
    return data
