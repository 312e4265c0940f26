"""Writer: direct chunk writes read back exactly through plain h5py, for every codec."""

from __future__ import annotations

import errno
import os

import h5py
import hdf5plugin  # noqa: F401
import numpy as np
import pytest

from pipeline.errors import RunFailure
from pipeline.records import BatchResult, StageInfo
from pipeline.storage.format import schema
from pipeline.storage.writing import writer as writer_module
from pipeline.storage.writing.writer import ShardWriter, WritePlan


def _plan(keys, stages, compression="zstd", dtype="float16") -> WritePlan:
    return WritePlan(keys, stages, dtype, compression, "fp-test", {"test": 1}, {"model": "synthetic"})


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_non_dividing_chunks_read_back_exactly(tmp_path, compression):
    # 7 channels of 300x300 float16: k = 2 channels per chunk → a padded edge chunk.
    stage = StageInfo(0, "synthetic", 7, 4, 300, 300, "forward_hook")
    assert schema.chunk_channels(7, 300, 300, 2) == 2
    keys = [f"k{i}" for i in range(5)]
    out = tmp_path / "w.h5"
    writer = ShardWriter.open(out, _plan(keys, [stage], compression))
    rng = np.random.default_rng(0)
    data = rng.standard_normal((5, 7, 300, 300)).astype(np.float16)
    data[data < 0] = 0  # post-ReLU-like sparsity
    for rows in (np.array([0, 1, 2]), np.array([3, 4])):
        stats = np.stack([data[rows].min((2, 3)), data[rows].max((2, 3)), data[rows].mean((2, 3))]).astype(np.float32)
        writer.submit(BatchResult(rows, rows, np.full((len(rows), 2), 300, np.int32), [], {0: data[rows]}, {0: stats}))
    writer.finalize()
    with h5py.File(out) as f:
        dset = f["stages/0/data"]
        assert dset.chunks == (1, 2, 300, 300)
        np.testing.assert_array_equal(dset[:], data)
        np.testing.assert_array_equal(dset[2, 6], data[2, 6])  # the edge chunk alone
        assert f["images/done"][:].all() and bool(f.attrs["complete"])


def test_failed_rows_read_as_nan_and_are_listed(tmp_path):
    stage = StageInfo(0, "synthetic", 3, 1, 4, 4, "forward_hook")
    out = tmp_path / "f.h5"
    writer = ShardWriter.open(out, _plan(["a", "b", "c"], [stage]))
    ok = np.array([0, 2])
    data = np.ones((2, 3, 4, 4), np.float16)
    stats = np.ones((3, 2, 3), np.float32)
    writer.submit(
        BatchResult(
            np.arange(3), ok, np.array([[4, 4], [-1, -1], [4, 4]], np.int32), [(1, "broken")], {0: data}, {0: stats}
        )
    )
    writer.finalize()
    with h5py.File(out) as f:
        assert np.isnan(f["stages/0/data"][1]).all() and np.isnan(f["stages/0/min"][1]).all()
        assert (f["stages/0/data"][0] == 1).all()
        assert f["failures/index"][:].tolist() == [1]
        assert f["failures/reason"][0].decode() == "broken"


def test_finalize_refuses_an_unfinished_shard(tmp_path):
    stage = StageInfo(0, "synthetic", 1, 1, 2, 2, "forward_hook")
    out = tmp_path / "u.h5"
    writer = ShardWriter.open(out, _plan(["a", "b"], [stage]))
    writer.submit(
        BatchResult(
            np.array([0]),
            np.array([0]),
            np.array([[2, 2]], np.int32),
            [],
            {0: np.zeros((1, 1, 2, 2), np.float16)},
            {0: np.zeros((3, 1, 1), np.float32)},
        )
    )
    with pytest.raises(RunFailure, match="not done"):
        writer.finalize()
    writer.close()
    assert not out.exists() and (tmp_path / "u.h5.partial").exists()
    with h5py.File(tmp_path / "u.h5.partial") as f:
        assert not bool(f.attrs["complete"]) and f["images/done"][:].tolist() == [True, False]


def _one_row_writer(out) -> ShardWriter:
    stage = StageInfo(0, "synthetic", 1, 1, 2, 2, "forward_hook")
    writer = ShardWriter.open(out, _plan(["a"], [stage]))
    maps, stats = np.zeros((1, 1, 2, 2), np.float16), np.zeros((3, 1, 1), np.float32)
    writer.submit(BatchResult(np.array([0]), np.array([0]), np.array([[2, 2]], np.int32), [], {0: maps}, {0: stats}))
    return writer


# h5py's text for a write HDF5 could not make: deciding on it would call each of these a full disk.
HDF5_TEXT = "Can't decrement id ref count (unable to extend file properly, errno = 28, error message = 'No space')"


@pytest.mark.parametrize(
    ("raised", "disk_full", "says"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), False, "writing .* failed: No space left on device"),
        (OSError(errno.EIO, "Input/output error"), False, "writing .* failed: Input/output error"),
        (RuntimeError(HDF5_TEXT), True, "writing .* failed: No space left on device. About 1.0 MB more"),
        (RuntimeError(HDF5_TEXT), False, "finishing .* failed: .* left it damaged"),
        (KeyError("top"), False, "finishing .* failed: .* left it damaged"),
    ],
    ids=["ENOSPC", "EIO", "hdf5-disk-full", "hdf5-damage", "key"],
)
def test_a_failed_finalize_is_told_by_type_and_errno(tmp_path, monkeypatch, raised, disk_full, says):
    """An OSError's errno says a write failed; any other error is a full disk only when the disk now
    refuses room (ENOSPC from posix_fallocate), whatever its text says."""
    writer = _one_row_writer(tmp_path / "f.h5")

    def fail(file):
        if disk_full:
            monkeypatch.setattr(os, "posix_fallocate", _no_space)
        raise raised

    monkeypatch.setattr(writer_module, "write_top_lists", fail)
    with pytest.raises(RunFailure, match=says) as found:
        writer.finalize()
    assert found.value.exit_now and writer.abandoned
    writer.file.close()
    writer.close()


def _no_space(fd, offset, length):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_uncompressed_chunks_carry_hdf5s_own_fletcher32(tmp_path):
    # Our Fletcher-32 must be byte-identical to what HDF5's filter writes, for odd sizes and for
    # words of 0xffff (the sums' worst case); HDF5 then verifies it on every read.
    from pipeline.storage.format.codecs import Codec

    rng = np.random.default_rng(3)
    for shape in [(1, 3, 7, 5), (1, 64, 56, 56), (1, 1, 1, 361)]:
        for fill in (None, 0xFFFF):
            x = rng.standard_normal(shape).astype(np.float16)
            if fill is not None:
                x.view(np.uint16)[:] = fill
            with h5py.File(tmp_path / "f.h5", "w") as f:
                dset = f.create_dataset("d", shape=shape, chunks=shape, dtype="float16", fletcher32=True)
                dset[...] = x
                _, by_hdf5 = dset.id.read_direct_chunk((0, 0, 0, 0))
            assert Codec("none").compress(x.tobytes()) == by_hdf5, (shape, fill)


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_a_damaged_chunk_fails_every_read(tmp_path, compression):
    stage = StageInfo(0, "synthetic", 4, 1, 16, 16, "forward_hook")
    out = tmp_path / "c.h5"
    writer = ShardWriter.open(out, _plan(["a"], [stage], compression))
    data = np.linspace(0, 1, 4 * 16 * 16, dtype=np.float16).reshape(1, 4, 16, 16)
    writer.submit(
        BatchResult(
            np.arange(1),
            np.arange(1),
            np.full((1, 2), 16, np.int32),
            [],
            {0: data},
            {0: np.zeros((3, 1, 4), np.float32)},
        )
    )
    writer.finalize()
    with h5py.File(out, "r+") as f:
        dset = f["stages/0/data"]
        mask, raw = dset.id.read_direct_chunk((0, 0, 0, 0))
        damaged = bytearray(raw)
        damaged[len(damaged) // 2] ^= 0x5A
        dset.id.write_direct_chunk((0, 0, 0, 0), bytes(damaged), mask)
    with h5py.File(out) as f, pytest.raises(OSError):
        f["stages/0/data"][0]
