"""Chunk compression done by fmpipe itself (in a thread pool), declared as HDF5 filters.

Bytes written with `write_direct_chunk` must be exactly what the declared filter
decodes: zstd frames *with* content size for filter 32015, zlib streams for gzip (1).
Every chunk carries a checksum that every reader verifies on decoding (a byte overwritten
inside a compressed chunk can otherwise decode into other numbers without an error):
zstd frames carry XXH64 (content checksum), zlib streams carry Adler-32, and uncompressed
chunks get HDF5's Fletcher-32 filter (written through HDF5, which computes it).
"""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass

import hdf5plugin
import zstandard

ZSTD_LEVEL = 1
# Level 1 with a 4 KiB-entry hash table and 128 KiB window: +30 % speed on float16 maps at
# the same ratio (scripts/bench_extract.py); any zstd decoder reads it.
ZSTD_PARAMS = {"window_log": 17, "hash_log": 12}
GZIP_LEVEL = 1


CHECKSUMS = {"zstd": "zstd-xxh64", "gzip": "zlib-adler32", "none": "fletcher32"}


@dataclass(frozen=True)
class Codec:
    name: str

    @property
    def checksum(self) -> str:
        """What protects each chunk (recorded as the file's `chunk_checksum` attribute)."""
        return CHECKSUMS[self.name]

    @property
    def direct(self) -> bool:
        """True when chunks are compressed here and written raw (`write_direct_chunk`); False
        for uncompressed data, which HDF5 writes itself so that it adds the Fletcher-32 sum."""
        return self.name != "none"

    def dataset_options(self) -> dict:
        """Keyword arguments for h5py `create_dataset` that declare this codec's filter."""
        if self.name == "zstd":
            return dict(hdf5plugin.Zstd(clevel=ZSTD_LEVEL))
        if self.name == "gzip":
            return {"compression": "gzip", "compression_opts": GZIP_LEVEL}
        return {"fletcher32": True}

    def compress(self, raw: bytes | memoryview) -> bytes:
        """Encode one chunk; safe to call from many threads (one compressor per thread)."""
        if self.name == "zstd":
            return _zstd_compressor().compress(raw)
        if self.name == "gzip":
            return zlib.compress(raw, GZIP_LEVEL)
        return bytes(raw)


_local = threading.local()


def _zstd_compressor() -> zstandard.ZstdCompressor:
    # A compressor shared between threads crashed the process (notes/hdf5.md).
    comp = getattr(_local, "zstd", None)
    if comp is None:
        params = zstandard.ZstdCompressionParameters.from_level(
            ZSTD_LEVEL, write_content_size=True, write_checksum=True, **ZSTD_PARAMS
        )
        comp = _local.zstd = zstandard.ZstdCompressor(compression_params=params)
    return comp
