"""Per-row state of an open shard file: which rows are done, what each was computed from, and
writing one batch's rows (original sizes, source digests, statistics, failures, done markers).

Done markers are set last, after everything else of the batch is written and flushed, so after
any interruption a row marked done holds its final values. No torch.
"""

from __future__ import annotations

from collections.abc import Iterator

import h5py
import numpy as np

from ...records import BatchResult
from ..format import schema
from .layout import WritePlan, append_failures, drop_unfinished_failures


def pending_rows(file: h5py.File) -> np.ndarray:
    """Rows not yet done, ascending."""
    return np.flatnonzero(~file[schema.DONE][:])


def done_sources(file: h5py.File) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, sha256, size) of the done rows: what their stored maps were computed from."""
    rows = np.flatnonzero(file[schema.DONE][:])
    if schema.SOURCE_SHA256 not in file:
        return rows, np.zeros(len(rows), "S64"), np.full(len(rows), -1, np.int64)
    return rows, file[schema.SOURCE_SHA256][:][rows], file[schema.SOURCE_SIZE][:][rows]


def redo(file: h5py.File, rows: np.ndarray, plan: WritePlan) -> None:
    """Mark done rows as not done (their source changed): the batch loop computes them again.
    Their statistics become NaN (the batch writer erases their maps), so a row whose source now
    fails reads NaN like any failed row."""
    if not len(rows):
        return
    done = file[schema.DONE][:]
    done[rows] = False
    file[schema.DONE][:] = done
    file.flush()
    drop_unfinished_failures(file)
    for info in plan.stages:
        group = file[info.group]
        for lo, hi in runs(np.sort(rows)):
            for name in schema.STAT_NAMES:
                group[name][lo:hi] = np.nan


def write_rows(file: h5py.File, plan: WritePlan, batch: BatchResult) -> None:
    """A batch's per-row values: original sizes and source digests of every row, statistics of
    the rows with maps, and the failures. Done markers are not touched (`mark_done`)."""
    rows = batch.rows
    per_row = [(schema.ORIG_HW, batch.orig_hw)]
    if batch.source_sha256 is not None:
        per_row += [(schema.SOURCE_SHA256, batch.source_sha256), (schema.SOURCE_SIZE, batch.source_size)]
    for name, values in per_row:
        dset = file[name]
        for lo, hi in runs(rows):
            dset[lo:hi] = values[(rows >= lo) & (rows < hi)]
    for info in plan.stages:
        stats = batch.stats.get(info.key)
        if stats is None or not len(batch.ok_rows):
            continue
        group = file[info.group]
        for lo, hi in runs(batch.ok_rows):
            sel = (batch.ok_rows >= lo) & (batch.ok_rows < hi)
            for s, name in enumerate(schema.STAT_NAMES):
                group[name][lo:hi] = stats[s][sel]
            if batch.argmax and schema.STAT_ARGMAX in group:  # files resumed from before argmax lack it
                group[schema.STAT_ARGMAX][lo:hi] = batch.argmax[info.key][sel]
    if batch.failures:
        append_failures(file, plan.keys, batch.failures)


def mark_done(file: h5py.File, rows: np.ndarray) -> None:
    """Set the done markers of `rows` (ascending)."""
    done = file[schema.DONE]
    for lo, hi in runs(rows):
        done[lo:hi] = True


def runs(rows: np.ndarray) -> Iterator[tuple[int, int]]:
    """Contiguous [lo, hi) runs of ascending rows."""
    if not len(rows):
        return
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    for part in np.split(rows, breaks):
        yield int(part[0]), int(part[-1]) + 1
