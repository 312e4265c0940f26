"""`merge --copy`'s byte mover: a dataset's stored chunks copied as they are (never decoded or
recompressed, so the copy runs at the disk's pace), or small unchunked tables by blocks of rows."""

from __future__ import annotations

import h5py
import numpy as np

STAT_BLOCK_BYTES = 64 * 1024 * 1024  # rows of an unchunked table copied per step


def copy_chunks(src: h5py.Dataset, dst: h5py.Dataset, start: int) -> int:
    """read_direct_chunk → write_direct_chunk for every stored chunk; rows shifted by `start`."""
    offsets: list[tuple] = []
    if hasattr(src.id, "chunk_iter"):
        src.id.chunk_iter(lambda info: offsets.append(info.chunk_offset))
    else:  # HDF5 before 1.12.3
        offsets = [src.id.get_chunk_info(i).chunk_offset for i in range(src.id.get_num_chunks())]
    copied = 0
    for offset in offsets:
        mask, payload = src.id.read_direct_chunk(offset)
        dst.id.write_direct_chunk((offset[0] + start, *offset[1:]), payload, mask)
        copied += len(payload)
    return copied


def copy_rows(src: h5py.Dataset, dst: h5py.Dataset, start: int) -> None:
    """Uncompressed (N, C) statistics: copied in blocks of rows."""
    row_bytes = max(1, int(np.prod(src.shape[1:])) * src.dtype.itemsize)
    step = max(1, STAT_BLOCK_BYTES // row_bytes)
    for lo in range(0, src.shape[0], step):
        hi = min(src.shape[0], lo + step)
        dst[start + lo : start + hi] = src[lo:hi]
