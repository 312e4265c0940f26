"""Writing batches from a background thread: chunks compressed in a thread pool and written raw
(`write_direct_chunk`), then the rows, a flush, the done markers, a flush.

`submit` blocks when `max_pending` batches are queued, so memory stays bounded and the slowest
step sets the pace; an error in the writer thread surfaces on the next call. No torch.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np

from ...errors import write_failed
from ...records import BatchResult
from ..format import schema
from . import rowstate
from .layout import WritePlan


class BatchWriter:
    """The writer thread and compression pool of one open shard file."""

    def __init__(self, file: h5py.File, plan: WritePlan, partial: Path, threads: int = 2, max_pending: int = 2):
        self.file, self.plan, self.partial = file, plan, partial
        self.codec = plan.codec
        self.timings = {"compress_s": 0.0, "write_s": 0.0, "writer_busy_s": 0.0}
        self.bytes_written = 0
        self._timing_lock = threading.Lock()  # compression threads add to timings
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="compress")
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="writer", daemon=True)
        self._thread.start()

    def submit(self, batch: BatchResult) -> None:
        """Queue one batch for writing (blocks while the queue is full)."""
        self._raise_if_failed()
        while True:
            try:
                self._queue.put(batch, timeout=0.5)
                return
            except queue.Full:
                self._raise_if_failed()

    def drain(self) -> None:
        """Wait until every submitted batch is written (and raise its error, if any)."""
        self._queue.join()
        self._raise_if_failed()

    def stop(self) -> None:
        """End the writer thread and the pool (queued batches are written first)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._pool.shutdown(wait=True)

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
        if self._error is None:
            return
        if isinstance(self._error, OSError):
            raise write_failed(
                self.partial,
                self._error,
                "the file keeps every batch written so far; free space or fix the cause, then rerun the same "
                "command to resume.",
            ) from self._error
        raise self._error

    def erase(self, rows: np.ndarray) -> None:
        """Overwrite every map of `rows` with NaN chunks (compressed and checksummed like any chunk),
        then flush. For rows computed again: until they are, they read as a failed row reads."""
        for info in self.plan.stages:
            dset = self.file[f"{info.group}/{schema.DATA}"]
            k = dset.chunks[1]
            payload = self.codec.compress(memoryview(np.full((k, *dset.chunks[2:]), np.nan, dset.dtype)).cast("B"))
            for row in rows:
                for c0 in range(0, info.channels, k):
                    dset.id.write_direct_chunk((int(row), c0, 0, 0), payload, 0)
        self.file.flush()

    def _write(self, batch: BatchResult) -> None:
        t0 = time.perf_counter()
        self._write_chunks(batch)
        t1 = time.perf_counter()
        rowstate.write_rows(self.file, self.plan, batch)
        self.file.flush()
        rowstate.mark_done(self.file, batch.rows)
        self.file.flush()
        self.timings["write_s"] += time.perf_counter() - t1
        self.timings["writer_busy_s"] += time.perf_counter() - t0

    def _write_chunks(self, batch: BatchResult) -> None:
        """Compress each (1, k, H, W) chunk in the pool, write it raw from this thread."""
        jobs = []
        for info, dset, array in self._stage_arrays(batch):
            k = dset.chunks[1]
            for b, row in enumerate(batch.ok_rows):
                for c0 in range(0, info.channels, k):
                    block = _padded(array[b, c0 : c0 + k], k)
                    jobs.append((dset, (int(row), c0, 0, 0), self._pool.submit(self._compress, block)))
        for dset, offset, future in jobs:
            payload = future.result()
            t1 = time.perf_counter()
            dset.id.write_direct_chunk(offset, payload, 0)
            self.timings["write_s"] += time.perf_counter() - t1
            self.bytes_written += len(payload)

    def _stage_arrays(self, batch: BatchResult):
        """(stage, its data dataset, the batch's (B_ok, C, H, W) maps) for each stage or layer with rows."""
        for info in self.plan.stages:
            array = batch.data.get(info.key)
            if array is not None and len(batch.ok_rows):
                yield info, self.file[f"{info.group}/{schema.DATA}"], array

    def _compress(self, block: np.ndarray) -> bytes:
        t0 = time.thread_time()  # CPU seconds of this thread: what compressing costs the host, whatever the load
        payload = self.codec.compress(memoryview(block).cast("B"))
        with self._timing_lock:
            self.timings["compress_s"] += time.thread_time() - t0
        return payload


def _padded(block: np.ndarray, k: int) -> np.ndarray:
    """Edge chunks must be padded to the full chunk shape (docs/hdf5.md)."""
    if block.shape[0] == k:
        return np.ascontiguousarray(block)
    out = np.zeros((k, *block.shape[1:]), dtype=block.dtype)
    out[: block.shape[0]] = block
    return out
