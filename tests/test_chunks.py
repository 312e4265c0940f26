"""Raw chunks: a chunk that fails its checksum is told from one that does not decode by the chunk's
structure (never by a library's message), for zstd frames and zlib streams alike."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import zstandard

from pipeline.storage.chunks import ChunkError, decode
from pipeline.storage.codecs import Codec

RAW = np.linspace(-3, 3, 4096, dtype=np.float16).tobytes()


def damaged(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x5A
    return bytes(out)


def reason(raw: bytes, kind: str, nbytes: int = len(RAW)) -> str:
    with pytest.raises(ChunkError) as found:
        decode(raw, kind, 0, nbytes, checksum_required=True)
    return str(found.value)


def test_intact_chunks_decode_to_their_bytes():
    for kind in ("zstd", "gzip", "none"):
        assert decode(Codec(kind).compress(RAW), {"none": "fletcher32"}.get(kind, kind), 0, len(RAW), True) == RAW


def test_a_zstd_frame_whose_checksum_differs_fails_its_checksum():
    frame = Codec("zstd").compress(RAW)
    assert reason(damaged(frame, len(frame) - 2), "zstd") == "fails its zstd checksum"


def test_a_zstd_frame_whose_bytes_decode_to_other_numbers_fails_its_checksum():
    # A literal byte changed: the frame still decodes, to other numbers, which only its XXH64 tells.
    plain = zstandard.ZstdCompressor(write_checksum=True, write_content_size=True)
    data = bytes(range(256)) * 4  # incompressible: stored as raw literals
    frame = plain.compress(data)
    assert reason(damaged(frame, len(frame) // 2), "zstd", len(data)) == "fails its zstd checksum"


def test_a_truncated_zstd_frame_does_not_decode_and_is_not_called_a_checksum_failure():
    frame = Codec("zstd").compress(RAW)
    cut = frame[:-40] + frame[-4:]  # blocks cut short, the checksum kept
    assert reason(cut, "zstd").startswith("does not decode (")


def test_a_zlib_stream_whose_adler32_differs_fails_its_checksum():
    stream = Codec("gzip").compress(RAW)
    assert reason(damaged(stream, len(stream) - 1), "gzip") == "fails its zlib Adler-32 checksum"


def test_a_zlib_stream_whose_data_decodes_to_other_bytes_fails_its_checksum():
    data = bytes(range(256)) * 4
    stream = zlib.compress(data, 0)  # stored blocks: a changed byte decodes to another byte
    assert reason(damaged(stream, len(stream) // 2), "gzip", len(data)) == "fails its zlib Adler-32 checksum"


def test_a_damaged_zlib_header_is_not_a_stream_not_a_checksum_failure():
    # zlib's own message for this is "incorrect header check": deciding on its text called it a checksum failure.
    stream = Codec("gzip").compress(RAW)
    assert reason(damaged(stream, 1), "gzip") == "is not a zlib stream (its 2-byte header is not deflate's)"


def test_a_truncated_zlib_stream_is_named_so():
    stream = Codec("gzip").compress(RAW)
    assert reason(stream[:-2], "gzip") == "is a truncated or overlong zlib stream"
    assert reason(stream + b"\0", "gzip") == "is a truncated or overlong zlib stream"
