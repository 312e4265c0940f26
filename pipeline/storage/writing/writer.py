"""The shard writer: one output, owned under its lock, written batch by batch, finalised.

Only the storage package creates output files. A shard is written as `OUT.partial`
(storage/writing/output.py opens, creates or resumes it); batches go through a writer thread with a
compression pool (storage/writing/batches.py), and each row's done marker is set only after the row
is written and flushed (storage/writing/rowstate.py), so a killed run resumes from `done`.
`finalize` writes the top lists, marks the file complete, fsyncs it and renames it to OUT,
releasing `OUT.lock` only once OUT has its final name. No torch.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Protocol

import h5py
import numpy as np

from ...errors import RunFailure, write_failed
from ...records import BatchResult
from ..format import schema
from ..format.metadata import run_info
from ..integrity.seal import write_seal
from ..locks.lockfile import OutputLock
from ..reading.toplists import top_lists_bytes, write_top_lists
from . import rowstate
from .batches import BatchWriter
from .files import partial_path, publish, reserve_space
from .layout import WritePlan
from .output import open_output

__all__ = ["NullWriter", "ShardWriter", "WritePlan", "Writer"]

log = logging.getLogger(__name__)


class Writer(Protocol):
    """What the batch loop writes through: a `ShardWriter`, or a `NullWriter` that discards."""

    out: Path
    timings: dict
    bytes_written: int

    def pending_rows(self) -> np.ndarray: ...
    def done_sources(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
    def redo(self, rows: np.ndarray) -> None: ...
    def record_images_root(self, root: str) -> None: ...
    def submit(self, batch: BatchResult) -> None: ...
    def drain(self) -> None: ...
    def finalize(self, timings: dict | None = None) -> Path: ...
    def close(self) -> None: ...


class ShardWriter:
    """One shard's output: `OUT.lock` held, `OUT.partial` open, batches written in the background."""

    def __init__(self, out: Path, file: h5py.File, plan: WritePlan, threads: int = 2, output_lock=None):
        self.out, self.file, self.plan, self.output_lock = out, file, plan, output_lock
        self.abandoned = False  # a flush failed (disk full): the file is left for the rerun, never closed
        self.batches = BatchWriter(file, plan, partial_path(out), threads=threads)

    @classmethod
    def open(
        cls, out: str | os.PathLike, plan: WritePlan, overwrite: bool = False, threads: int = 2
    ) -> ShardWriter | None:
        """Take `OUT.lock`, then create or resume the shard at `out`; None when it is already complete."""
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        output_lock = OutputLock.acquire(out)
        try:
            file = open_output(out, plan, overwrite)
        except BaseException:
            output_lock.release()
            raise
        if file is None:
            output_lock.release()
            return None
        return cls(out, file, plan, threads=threads, output_lock=output_lock)

    @property
    def timings(self) -> dict:
        return self.batches.timings

    @property
    def bytes_written(self) -> int:
        return self.batches.bytes_written

    def pending_rows(self) -> np.ndarray:
        return rowstate.pending_rows(self.file)

    def done_sources(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return rowstate.done_sources(self.file)

    def redo(self, rows: np.ndarray) -> None:
        """Done rows computed again: not done, and their maps and statistics NaN until they are,
        so one whose source now fails reads NaN (as a failed row must), never its old maps."""
        rowstate.redo(self.file, rows, self.plan)
        self.batches.erase(rows)

    def record_images_root(self, root: str) -> None:
        """Where this run found every done row's source (checked by the caller): the file says so."""
        recorded = run_info(self.file.attrs, self.file.filename).images_root
        if recorded is not None and recorded != root:
            log.info("the images are now under %s (was %s): recorded as the file's images_root", root, recorded)
            self.file.attrs[schema.ATTR_IMAGES_ROOT] = root
            self.file.flush()

    def submit(self, batch: BatchResult) -> None:
        self.batches.submit(batch)

    def drain(self) -> None:
        self.batches.drain()

    def finalize(self, timings: dict | None = None) -> Path:
        """Mark complete (only if every row is done), fsync, rename OUT.partial → OUT."""
        self.drain()
        pending = self.pending_rows()
        if len(pending):
            raise RunFailure(f"{len(pending)} images are not done; the file stays partial.")
        partial = partial_path(self.out)
        then = "every image is done and kept; free space, then rerun the same command to finish the file."
        try:
            reserve_space(partial, top_lists_bytes(self.file), then)
            write_top_lists(self.file)
            self.file.flush()  # a full disk shows here, not in a close that could not report it
            self.file.attrs[schema.ATTR_TIMINGS] = json.dumps({**self.timings, **(timings or {})})
            self.file.attrs[schema.ATTR_COMPLETE] = True
            write_seal(self.file, partial)
            self.file.flush()
        except (OSError, RuntimeError, KeyError) as err:
            # HDF5 cannot close a file whose flush failed (it raises again, and h5py may crash at
            # exit): the handle is abandoned, and the CLI ends the process once it has said why.
            self.abandoned = True
            failure = _finalize_failure(partial, err, then)
            failure.exit_now = True
            raise failure from err
        output_lock, self.output_lock = self.output_lock, None  # held until OUT has its final name
        try:
            self.close()
            publish(partial_path(self.out), self.out)
        finally:
            if output_lock is not None:
                output_lock.release()
        return self.out

    def close(self) -> None:
        """Stop the writer thread and close the file (data already flushed stays valid)."""
        self.batches.stop()
        try:
            if self.file.id.valid and not self.abandoned:
                self.file.close()
        finally:
            if self.output_lock is not None:
                self.output_lock.release()
                self.output_lock = None


def _finalize_failure(partial: Path, err: Exception, then: str) -> RunFailure:
    """Why finalising `partial` failed, told by type and errno, never by HDF5's text: an OSError
    with an errno is a failed write; h5py's RuntimeError or KeyError (HDF5 refusing to go on after
    a failed write of its own) is a full disk when the disk now refuses room for it, else damage."""
    if isinstance(err, OSError) and err.errno:
        return write_failed(partial, err, then)
    try:
        reserve_space(partial, 0, then)  # the disk-full failure, by ENOSPC or EDQUOT
    except RunFailure as full:
        return full
    return RunFailure(
        f"finishing {partial} failed: {err}. An earlier write to it failed (a full disk?) and left it "
        "damaged; rerun the same command with --overwrite to start it over."
    )


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

    def record_images_root(self, root: str) -> None:
        """No file."""

    def submit(self, batch: BatchResult) -> None:
        self.bytes_written += sum(a.nbytes for a in batch.data.values())

    def drain(self) -> None:
        """Nothing is queued."""

    def finalize(self, timings: dict | None = None) -> Path:
        return self.out

    def close(self) -> None:
        """Nothing to close."""
