"""Shard writer: pre-sized datasets, pooled compression, direct chunk writes, done markers.

Only this module creates output files. A shard is written as `OUT.partial`; after each
batch the data is written and flushed, then the rows' `done` markers are set and
flushed, so a killed run resumes from `done`. `finalize` marks the file complete,
fsyncs it and renames it to OUT.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import h5py
import numpy as np

from ..errors import InputError, RunFailure
from ..records import BatchResult
from . import schema
from .codecs import Codec
from .files import partial_path, publish
from .layout import WritePlan, append_failures, check_finished, check_resumable, create_layout, drop_unfinished_failures
from .lockfile import OutputLock
from .toplists import write_top_lists

log = logging.getLogger(__name__)


class Writer(Protocol):
    """What the batch loop writes through: a `ShardWriter`, or a `NullWriter` that discards."""

    out: Path
    timings: dict
    bytes_written: int

    def pending_rows(self) -> np.ndarray: ...
    def done_sources(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
    def redo(self, rows: np.ndarray) -> None: ...
    def submit(self, batch: BatchResult) -> None: ...
    def drain(self) -> None: ...
    def finalize(self, timings: dict | None = None) -> Path: ...
    def close(self) -> None: ...


class ShardWriter:
    """Writes batches into one shard file from a background thread.

    `submit` blocks when `max_pending` batches are queued, so memory stays bounded and
    the slowest step sets the pace. Errors in the writer thread surface on the next call.
    """

    def __init__(
        self,
        out: Path,
        file: h5py.File,
        plan: WritePlan,
        threads: int = 2,
        max_pending: int = 2,
        lock: OutputLock | None = None,
    ):
        self.out, self.file, self.plan, self._lock_file = out, file, plan, lock
        self.codec = Codec(plan.compression)
        self.timings = {"compress_s": 0.0, "write_s": 0.0, "writer_busy_s": 0.0}
        self._lock = threading.Lock()
        self.bytes_written = 0
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="compress")
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="writer", daemon=True)
        self._thread.start()

    # -- opening --------------------------------------------------------------------------

    @classmethod
    def open(
        cls, out: str | os.PathLike, plan: WritePlan, overwrite: bool = False, threads: int = 2
    ) -> ShardWriter | None:
        """Create or resume the shard at `out`; None when `out` is already complete."""
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        lock = OutputLock.acquire(out)
        try:
            return cls._open_locked(out, plan, overwrite, threads, lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _open_locked(cls, out: Path, plan: WritePlan, overwrite: bool, threads: int, lock: OutputLock):
        # HDF5's own file lock is off (locking=False): OUT.lock guards the output, and an HDF5
        # flock would be inherited by forked decode workers that outlive a killed run, which
        # then refused an immediate rerun ("unable to lock file, errno = 11").
        partial = partial_path(out)
        if overwrite:
            for path in (out, partial):
                path.unlink(missing_ok=True)
        if out.exists():
            check_finished(out, plan)
            lock.release()
            return None
        file = _resume(partial, plan) if partial.exists() else _create(partial, plan)
        return cls(out, file, plan, threads=threads, lock=lock)

    def pending_rows(self) -> np.ndarray:
        """Rows not yet done, ascending."""
        return np.flatnonzero(~self.file[schema.DONE][:])

    def done_sources(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, sha256, size) of the done rows: what their stored maps were computed from."""
        rows = np.flatnonzero(self.file[schema.DONE][:])
        if schema.SOURCE_SHA256 not in self.file:
            return rows, np.zeros(len(rows), "S64"), np.full(len(rows), -1, np.int64)
        return rows, self.file[schema.SOURCE_SHA256][:][rows], self.file[schema.SOURCE_SIZE][:][rows]

    def redo(self, rows: np.ndarray) -> None:
        """Mark done rows as not done (their source changed): the batch loop computes them again."""
        if not len(rows):
            return
        done = self.file[schema.DONE][:]
        done[rows] = False
        self.file[schema.DONE][:] = done
        self.file.flush()
        drop_unfinished_failures(self.file)

    # -- writing --------------------------------------------------------------------------

    def submit(self, batch: BatchResult) -> None:
        """Queue one batch for writing (blocks while the queue is full)."""
        self._raise_if_failed()
        while True:
            try:
                self._queue.put(batch, timeout=0.5)
                return
            except queue.Full:
                self._raise_if_failed()

    def _drain(self) -> None:
        while True:
            batch = self._queue.get()
            try:
                if batch is None:
                    return
                if self._error is None:
                    self._write(batch)
            except BaseException as err:  # handed to the submitting thread
                self._error = err
            finally:
                self._queue.task_done()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            err = self._error
            if isinstance(err, OSError):
                raise RunFailure(
                    f"writing {partial_path(self.out)} failed: {err}. The file keeps every "
                    "batch written so far; free space or fix the cause, then rerun the same "
                    "command to resume."
                ) from err
            raise err

    def _write(self, batch: BatchResult) -> None:
        t0 = time.perf_counter()
        self._write_chunks(batch)
        t2 = time.perf_counter()
        self._write_rows(batch)
        self.file.flush()
        done = self.file[schema.DONE]
        for lo, hi in _runs(batch.rows):
            done[lo:hi] = True
        self.file.flush()
        self.timings["write_s"] += time.perf_counter() - t2
        self.timings["writer_busy_s"] += time.perf_counter() - t0

    def _write_chunks(self, batch: BatchResult) -> None:
        """Compress each (1, k, H, W) chunk in the pool, write it raw from this thread."""
        jobs = []
        for info, dset, array in self._stage_arrays(batch):
            k = dset.chunks[1]
            for b, row in enumerate(batch.ok_rows):
                for c0 in range(0, info.channels, k):
                    block = _padded(array[b, c0 : c0 + k], k)
                    future = self._pool.submit(self._compress, block)
                    jobs.append((dset, (int(row), c0, 0, 0), future))
        for dset, offset, future in jobs:
            payload = future.result()
            t1 = time.perf_counter()
            dset.id.write_direct_chunk(offset, payload, 0)
            self.timings["write_s"] += time.perf_counter() - t1
            self.bytes_written += len(payload)

    def _stage_arrays(self, batch: BatchResult):
        """(stage, its data dataset, the batch's (B_ok, C, H, W) maps) for each stage with rows to write."""
        for info in self.plan.stages:
            array = batch.data.get(info.key)
            if array is not None and len(batch.ok_rows):
                yield info, self.file[f"{info.group}/{schema.DATA}"], array

    def _compress(self, block: np.ndarray) -> bytes:
        t0 = time.perf_counter()
        payload = self.codec.compress(memoryview(block).cast("B"))
        self._add_compress_s(time.perf_counter() - t0)
        return payload

    def _add_compress_s(self, seconds: float) -> None:
        with self._lock:
            self.timings["compress_s"] += seconds

    def _write_rows(self, batch: BatchResult) -> None:
        rows = batch.rows
        per_row = [(schema.ORIG_HW, batch.orig_hw)]
        if batch.source_sha256 is not None:
            per_row += [(schema.SOURCE_SHA256, batch.source_sha256), (schema.SOURCE_SIZE, batch.source_size)]
        for name, values in per_row:
            dset = self.file[name]
            for lo, hi in _runs(rows):
                dset[lo:hi] = values[(rows >= lo) & (rows < hi)]
        for info in self.plan.stages:
            stats = batch.stats.get(info.key)
            if stats is None or not len(batch.ok_rows):
                continue
            group = self.file[info.group]
            for lo, hi in _runs(batch.ok_rows):
                sel = (batch.ok_rows >= lo) & (batch.ok_rows < hi)
                for s, name in enumerate(schema.STAT_NAMES):
                    group[name][lo:hi] = stats[s][sel]
        if batch.failures:
            append_failures(self.file, self.plan.keys, batch.failures)

    # -- finishing ------------------------------------------------------------------------

    def drain(self) -> None:
        """Wait until every submitted batch is written (and raise its error, if any)."""
        self._queue.join()
        self._raise_if_failed()

    def finalize(self, timings: dict | None = None) -> Path:
        """Mark complete (only if every row is done), fsync, rename OUT.partial → OUT."""
        self.drain()
        pending = self.pending_rows()
        if len(pending):
            raise RunFailure(f"{len(pending)} images are not done; the file stays partial.")
        write_top_lists(self.file)
        attrs = self.file.attrs
        attrs[schema.ATTR_TIMINGS] = json.dumps({**self.timings, **(timings or {})})
        attrs[schema.ATTR_COMPLETE] = True
        lock, self._lock_file = self._lock_file, None  # held until OUT has its final name
        try:
            self.close()
            publish(partial_path(self.out), self.out)
        finally:
            if lock is not None:
                lock.release()
        return self.out

    def close(self) -> None:
        """Stop the writer thread and close the file (data already flushed stays valid)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._pool.shutdown(wait=True)
        try:
            if self.file.id.valid:
                self.file.close()
        finally:
            if self._lock_file is not None:
                self._lock_file.release()
                self._lock_file = None


def _create(partial: Path, plan: WritePlan) -> h5py.File:
    """A new OUT.partial with every dataset of the plan. Built under a temporary name and renamed,
    so a kill at any moment leaves either no OUT.partial or a readable one."""
    building = partial.with_name(partial.name + ".new")
    building.unlink(missing_ok=True)
    with h5py.File(building, "w", libver=schema.LIBVER, locking=False) as file:
        create_layout(file, plan)
    publish(building, partial)
    return h5py.File(partial, "r+", locking=False)


def _resume(partial: Path, plan: WritePlan) -> h5py.File:
    """The existing OUT.partial, checked against the plan before anything is written: the check
    opens it read-only, so a refused resume leaves the file byte for byte as it was."""
    try:
        with h5py.File(partial, "r", locking=False) as file:
            check_resumable(file, partial, plan)
        file = h5py.File(partial, "r+", locking=False)
    except OSError as err:
        raise InputError(
            f"{partial} cannot be resumed: it is not a readable HDF5 file ({err}); it was damaged outside "
            "fmpipe (fmpipe writes it so that a kill leaves it readable). Move it away, or pass --overwrite "
            "to start this output over."
        ) from None
    try:
        drop_unfinished_failures(file)
    except BaseException:
        file.close()
        raise
    done = int(np.count_nonzero(file[schema.DONE][:]))
    log.info("resuming %s: %d of %d images already done", partial, done, len(plan.keys))
    return file


def _padded(block: np.ndarray, k: int) -> np.ndarray:
    """Edge chunks must be padded to the full chunk shape (notes/hdf5.md)."""
    if block.shape[0] == k:
        return np.ascontiguousarray(block)
    out = np.zeros((k, *block.shape[1:]), dtype=block.dtype)
    out[: block.shape[0]] = block
    return out


def _runs(rows: np.ndarray):
    """Contiguous [lo, hi) runs of ascending rows."""
    if not len(rows):
        return
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    for part in np.split(rows, breaks):
        yield int(part[0]), int(part[-1]) + 1


class NullWriter:
    """Same interface as ShardWriter, but discards every batch (`--null-writer`).

    For benchmarking decode and compute without compression or disk; writes no file.
    """

    def __init__(self, out: Path, plan: WritePlan):
        self.out, self.plan = out, plan
        self.timings = {"compress_s": 0.0, "write_s": 0.0, "writer_busy_s": 0.0}
        self.bytes_written = 0

    @classmethod
    def open(cls, out: str | os.PathLike, plan: WritePlan, overwrite: bool = False, threads: int = 1) -> NullWriter:
        return cls(Path(out), plan)

    def pending_rows(self) -> np.ndarray:
        return np.arange(len(self.plan.keys))

    def done_sources(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.zeros(0, np.int64), np.zeros(0, "S64"), np.zeros(0, np.int64)

    def redo(self, rows: np.ndarray) -> None:
        """Nothing is ever done."""

    def submit(self, batch: BatchResult) -> None:
        self.bytes_written += sum(a.nbytes for a in batch.data.values())

    def drain(self) -> None:
        """Nothing is queued."""

    def finalize(self, timings: dict | None = None) -> Path:
        return self.out

    def close(self) -> None:
        """Nothing to close."""
