"""Raw chunks: a chunk that fails its checksum is told from one that does not decode by the chunk's
structure (never by a library's message), for zstd frames and zlib streams alike; a merged file's
virtual-row mapping is read one way, and a mapping `fmpipe merge` never writes is an error."""

from __future__ import annotations

import shutil
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import zstandard
from conftest import write_images

import pipeline
from pipeline.errors import InputError
from pipeline.jobs import merge
from pipeline.storage.format.codecs import Codec
from pipeline.storage.integrity.chunks import ChunkError, RowBlock, check_source, decode, row_blocks
from pipeline.storage.writing import files
from pipeline.storage.writing.files import shards_folder
from pipeline.viewer.blocks import StageBlocks

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


# -- the virtual-row mapping (verify's chunk index and the viewer's blocks read it alike) ----------

TINY = dict(model="tiny_models:plain_net", size=(32, 32), batch_size=4, workers=0, device="cpu")


@pytest.fixture(scope="module")
def merged(tmp_path_factory) -> Path:
    """20 images as a 2-task job array (rows 0-15 and 16-19), merged virtually."""
    root = tmp_path_factory.mktemp("mapping")
    write_images(root / "images", 20, size=(32, 32))
    for index in range(2):
        pipeline.extract(root / "images", root / "merged.h5", shard_index=index, num_shards=2, **TINY)
    merge.merge(root / "merged.h5")
    return root / "merged.h5"


def remapped(merged: Path, tmp_path: Path, mapping) -> Path:
    """A copy of the merged file (beside a copy of its shards) whose stage 0 data maps its shards by `mapping`."""
    out = tmp_path / merged.name
    shutil.copy(merged, out)
    shutil.copytree(shards_folder(merged), shards_folder(out))
    with h5py.File(out, "r+") as file:
        data = file["stages/0/data"]
        shape, dtype = data.shape, data.dtype
        del file["stages/0/data"]
        layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
        sources = [h5py.VirtualSource(f"{shards_folder(out).name}/{files.shard_name(i, 2)}", "stages/0/data",
                                      shape=(n, *shape[1:])) for i, n in ((0, 16), (1, 4))]  # fmt: skip
        mapping(layout, sources)
        file["stages/0"].create_virtual_dataset("data", layout, fillvalue=np.nan)
    return out


def whole_rows(layout, sources) -> None:  # as fmpipe merge writes it
    layout[0:16] = sources[0]
    layout[16:20] = sources[1]


def half_the_channels(layout, sources) -> None:
    layout[0:16, 0:2] = sources[0][:, 0:2]
    layout[16:20] = sources[1]


def rows_twice(layout, sources) -> None:
    layout[0:16] = sources[0]
    layout[12:16] = sources[1]  # rows 12-15 also from shard 1


def test_the_mapping_is_read_as_merge_writes_it(merged, tmp_path):
    path = remapped(merged, tmp_path, whole_rows)
    with h5py.File(path) as file:
        blocks = row_blocks(file["stages/0/data"], path)
    folder = shards_folder(path).absolute()
    assert [(b.first, b.stop, b.source_row, b.file, b.name) for b in blocks] == [
        (0, 16, 0, folder / files.shard_name(0, 2), "stages/0/data"),
        (16, 20, 0, folder / files.shard_name(1, 2), "stages/0/data"),
    ]
    with pipeline.open_store(path) as store:
        stage = StageBlocks(store.file, path, 0, checksum_required=True)
        np.testing.assert_array_equal(stage.block(17, 0), store.stage(0).data[17])
        assert (stage.raw_reads, stage.fallback_reads) == (1, 0)


@pytest.mark.parametrize(
    ("mapping", "says"),
    [(half_the_channels, "maps its sources other than by whole rows"), (rows_twice, "maps row 12 from two sources")],
)
def test_a_mapping_merge_never_writes_is_an_error_in_verify_and_the_viewer(merged, tmp_path, mapping, says):
    """Before, the viewer read such a file through h5py (or, for rows mapped twice, from one of the
    two shards) while verify refused it: now both refuse it, with one message."""
    path = remapped(merged, tmp_path, mapping)
    with pipeline.open_store(path) as store, pytest.raises(InputError, match=says):
        StageBlocks(store.file, path, 0, checksum_required=True)
    with pytest.raises(InputError, match=says):
        pipeline.verify(path)


def test_a_shard_holding_fewer_rows_than_mapped_is_an_error_not_fill_values(merged, tmp_path):
    path = remapped(merged, tmp_path, whole_rows)
    shard = shards_folder(path) / files.shard_name(1, 2)
    with h5py.File(path) as file, h5py.File(shard) as source:
        (block,) = [b for b in row_blocks(file["stages/0/data"], path) if b.file.name == shard.name]
        short = RowBlock(block.first, block.stop + 1, block.source_row, block.file, block.name)
        assert check_source(block, source, file["stages/0/data"]).shape[0] == 4
        with pytest.raises(InputError, match="is not the shape its merged file maps"):
            check_source(short, source, file["stages/0/data"])
