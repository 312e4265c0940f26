"""Chunk compression done by fmpipe itself (in a thread pool), declared as HDF5 filters.

Bytes written with `write_direct_chunk` must be exactly what the declared filter
decodes: zstd frames *with* content size for filter 32015, zlib streams for gzip (1).
Every chunk carries a checksum that every reader verifies on decoding (a byte overwritten
inside a compressed chunk can otherwise decode into other numbers without an error):
zstd frames carry XXH64 (content checksum), zlib streams carry Adler-32, and uncompressed
chunks carry HDF5's Fletcher-32 (declared as its filter; computed here, as HDF5 does).
HDF5 verifies Adler-32 and Fletcher-32 on every read; its zstd plugin ignores the frame
checksum, which `fmpipe verify` checks.

With `shuffle` (the element size), a chunk is first byte-shuffled exactly as HDF5's shuffle filter
does (declared before the compression filter), so every HDF5 reader undoes it.
"""

from __future__ import annotations

import struct
import threading
import zlib
from dataclasses import dataclass

import hdf5plugin
import numpy as np
import zstandard

from .encoding import shuffle_bytes

ZSTD_LEVEL = 1
# Level 1 with a 4 KiB-entry hash table and 128 KiB window: +30 % speed on float16 maps at
# the same ratio (scripts/bench_extract.py); any zstd decoder reads it. uint8 maps get the same
# settings: the Huffman coding of literals is most of their cost and all of zstd's gain on dense
# maps (7-10 %); without it (zstd turns it off for a fast level with target_length >= 1 or a negative
# level) their CPU falls 1.4-4.7x but they grow past 0.55x of float16's bytes (docs/benchmarks.md,
# "Storage choices"; scripts/bench_storage.py --mode codec).
ZSTD_PARAMS = {"window_log": 17, "hash_log": 12}
GZIP_LEVEL = 1


@dataclass(frozen=True)
class Checksum:
    """What protects each chunk a codec writes."""

    name: str  # as the file's `chunk_checksum` attribute records it
    label: str  # as messages name it: a chunk "fails its {label}"


# The one table of chunk checksums, by codec (`chunks.py` names a failed one by its label).
CHECKSUMS = {
    "zstd": Checksum("zstd-xxh64", "zstd checksum"),
    "gzip": Checksum("zlib-adler32", "zlib Adler-32 checksum"),
    "none": Checksum("fletcher32", "Fletcher-32 checksum"),
}


@dataclass(frozen=True)
class Codec:
    name: str
    shuffle: int = 0  # element size to byte-shuffle by before compressing (HDF5 filter 2); 0: no shuffle

    @property
    def checksum(self) -> str:
        """What protects each chunk (recorded as the file's `chunk_checksum` attribute)."""
        return CHECKSUMS[self.name].name

    def dataset_options(self) -> dict:
        """Keyword arguments for h5py `create_dataset` that declare this codec's filters (h5py puts
        shuffle first, then compression or Fletcher-32: the order `compress` applies them)."""
        shuffle = {"shuffle": True} if self.shuffle > 1 else {}
        if self.name == "zstd":
            return {**dict(hdf5plugin.Zstd(clevel=ZSTD_LEVEL)), **shuffle}
        if self.name == "gzip":
            return {"compression": "gzip", "compression_opts": GZIP_LEVEL, **shuffle}
        return {"fletcher32": True, **shuffle}

    def compress(self, raw: bytes | memoryview) -> bytes:
        """Encode one chunk; safe to call from many threads (one compressor per thread)."""
        if self.shuffle > 1:
            raw = shuffle_bytes(raw, self.shuffle)
        if self.name == "zstd":
            return _zstd_compressor().compress(raw)
        if self.name == "gzip":
            return zlib.compress(raw, GZIP_LEVEL)
        return bytes(raw) + struct.pack("<I", fletcher32(raw))


_local = threading.local()


def _zstd_compressor() -> zstandard.ZstdCompressor:
    # A compressor shared between threads crashed the process (docs/hdf5.md).
    comp = getattr(_local, "zstd", None)
    if comp is None:
        params = zstandard.ZstdCompressionParameters.from_level(
            ZSTD_LEVEL, write_content_size=True, write_checksum=True, **ZSTD_PARAMS
        )
        comp = _local.zstd = zstandard.ZstdCompressor(compression_params=params)
    return comp


_FLETCHER_BLOCK = 360  # 16-bit words summed between two reductions (HDF5's H5_checksum_fletcher32)


def fletcher32(raw: bytes | memoryview) -> int:
    """HDF5's Fletcher-32 of a chunk, as its fletcher32 filter computes and checks it: big-endian
    16-bit words, sums reduced (not taken modulo) every 360 words, 32-bit wrap-around.

    The per-block sums are vectorised; only the reduction runs in Python, once per block.
    """
    data = np.frombuffer(raw, dtype=np.uint8)
    words = data[: len(data) // 2 * 2].view(">u2").astype(np.int64)
    whole = len(words) // _FLETCHER_BLOCK * _FLETCHER_BLOCK
    blocks = [words[:whole].reshape(-1, _FLETCHER_BLOCK)] + ([words[whole:][None]] if whole < len(words) else [])
    sum1 = sum2 = 0
    for part in blocks:
        n = part.shape[1]
        # Within a block of n words, sum2 grows by n * sum1 (before) + sum of (n - i) * word_i.
        totals = part.sum(axis=1).tolist()
        weighted = (part @ np.arange(n, 0, -1, dtype=np.int64)).tolist()
        for total, weight in zip(totals, weighted, strict=True):
            sum2 = _fold((sum2 + n * sum1 + weight) & 0xFFFFFFFF)
            sum1 = _fold(sum1 + total)
    if len(data) % 2:
        sum1 += int(data[-1]) << 8
        sum2 = (sum2 + sum1) & 0xFFFFFFFF
        sum1, sum2 = _fold(sum1), _fold(sum2)
    return ((_fold(sum2) << 16) | _fold(sum1)) & 0xFFFFFFFF


def _fold(value: int) -> int:
    return (value & 0xFFFF) + (value >> 16)
