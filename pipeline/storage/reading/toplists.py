"""Per-channel top lists: which images drive each channel most, without scanning anything.

For every stage and channel the file keeps the TOP_K rows whose map has the largest maximum
(and, separately, the largest mean), best first, plus each channel's response across the
collection (the mean over images of their per-image max and mean). They are computed from the
stored statistics in row blocks when a shard is finalised, and combined from the shards' lists
by `merge` (instant at any size). Files without them (older, or partial) fall back to one pass
over the statistics in row blocks.

Order: value descending, ties by row ascending; rows that failed or are not done (NaN
statistics, or `done` false) never appear. No torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import h5py
import numpy as np

from ...errors import InputError, UsageError
from ..format import schema
from ..format.structure import top_rows_problem

TOP_K = 256  # images kept per channel (fewer when the file holds fewer); asking for more falls back to a pass
# Top lists are compressed (gzip, built into every HDF5 reader; shuffled): -1/NaN padding and rows close together.
COMPRESSION = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
ROW_BLOCK = 8192  # rows of (N, C) statistics read per step
BY = {"max": schema.STAT_MAX, "mean": schema.STAT_MEAN}


@dataclass
class TopList:
    """The best rows of every channel so far: rows, values (C, k), best first; -1 / NaN padding."""

    rows: np.ndarray  # (C, k) int64
    values: np.ndarray  # (C, k) float32

    @classmethod
    def empty(cls, channels: int, k: int) -> TopList:
        return cls(np.full((channels, k), -1, np.int64), np.full((channels, k), np.nan, np.float32))

    def add(self, rows: np.ndarray, values: np.ndarray) -> None:
        """Merge candidates: `rows` (B,) or (C, B) int64 with `values` (C, B) float32."""
        k = self.rows.shape[1]
        rows = np.broadcast_to(rows, values.shape)
        if values.shape[1] > k:
            rows, values = _block_best(rows, values.astype(np.float32), k)
        all_rows = np.concatenate([self.rows, rows], axis=1)
        all_values = np.concatenate([self.values, values.astype(np.float32)], axis=1)
        self.rows, self.values = _best(all_rows, all_values, k)


def _block_best(rows: np.ndarray, values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The same k best per channel as `_best`, in linear time for a wide block whose rows
    ascend along the axis: everything strictly above the k-th value, then the lowest rows
    among those equal to it (post-ReLU maps tie at 0 by the thousand). (C, k), unordered."""
    score = np.where(np.isnan(values) | (rows < 0), -np.inf, values)
    kth = -np.partition(-score, k - 1, axis=1)[:, k - 1 : k]  # (C, 1)
    above = score > kth
    tied = score == kth
    need = k - above.sum(axis=1)
    keep = above | tied
    crowded = np.flatnonzero(tied.sum(axis=1) > need)  # more ties than room: keep the lowest rows
    if len(crowded):
        rank = np.cumsum(tied[crowded], axis=1) - 1  # rows ascend along the axis
        keep[crowded] = above[crowded] | (tied[crowded] & (rank < need[crowded, None]))
    pick = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    picked = np.take_along_axis(keep, pick, axis=1)
    out_rows = np.where(picked, np.take_along_axis(rows, pick, axis=1), -1)
    out_values = np.where(picked, np.take_along_axis(values, pick, axis=1), np.nan)
    return out_rows, out_values.astype(np.float32)


def _best(rows: np.ndarray, values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per channel (row of the arrays), the k best (value desc, row asc); invalid ones last."""
    valid = ~np.isnan(values) & (rows >= 0)
    key_value = np.where(valid, -values, np.inf)  # ascending sort = descending value
    key_row = np.where(valid, rows, np.iinfo(np.int64).max)
    order = np.lexsort((key_row, key_value), axis=1)[:, :k]
    picked_rows = np.take_along_axis(np.where(valid, rows, -1), order, axis=1)
    picked_values = np.take_along_axis(np.where(valid, values, np.nan), order, axis=1)
    return picked_rows, picked_values.astype(np.float32)


@dataclass
class Response:
    """Running sums for a channel's response across the collection (means over valid rows)."""

    sums: np.ndarray  # (C,) float64
    counts: np.ndarray  # (C,) int64

    def add(self, values: np.ndarray) -> None:
        """`values` (B, C) float32: one block of per-image statistics."""
        valid = ~np.isnan(values)
        self.sums += np.where(valid, values, 0.0).sum(axis=0, dtype=np.float64)
        self.counts += valid.sum(axis=0)

    @property
    def means(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return (self.sums / self.counts).astype(np.float32)


def scan(group: h5py.Group, usable: np.ndarray, k: int = TOP_K) -> dict[str, tuple[TopList, Response]]:
    """Top lists and responses of one stage from its statistics, reading row blocks only.

    `usable` (N,) bool marks the rows that count (done, not failed)."""
    found = _fresh(group[schema.STAT_MAX].shape[1], k)
    n = len(usable)
    for lo in range(0, n, ROW_BLOCK):
        hi = min(n, lo + ROW_BLOCK)
        keep = usable[lo:hi]
        if not keep.any():
            continue
        rows = np.arange(lo, hi, dtype=np.int64)[keep]
        for by, name in BY.items():
            block = group[name][lo:hi][keep]  # (B, C)
            top, response = found[by]
            top.add(rows[None, :], np.ascontiguousarray(block.T))
            response.add(block)
    return found


def write_top_lists(file: h5py.File, k: int = TOP_K) -> None:
    """Compute and store every stage's top lists from its statistics (at finalise), `min(k, images)`
    entries per channel: a list longer than the file's usable images would hold only padding."""
    usable = _usable_rows(file)
    k = _kept(k, usable)
    for path in schema.map_groups(file):
        group = file[path]
        _store(group, scan(group, usable, k), int(usable.sum()))


def top_lists_bytes(file: h5py.File, k: int = TOP_K) -> int:
    """About how many bytes the top lists add to `file`: per stage and layer, k (int64 row, float32
    value) pairs per channel by max and by mean, the responses, and HDF5's object headers."""
    total = 0
    for path in schema.map_groups(file):
        channels = int(file[path][schema.STAT_MAX].shape[1])
        total += len(BY) * channels * (k * 12 + 16) + 16 * 4096
    return total


def merge_top_lists(file: h5py.File, shards: list[tuple[h5py.File, int]], k: int = TOP_K) -> None:
    """The merged file's lists from its shards' lists, rows shifted by each shard's start.

    `shards`: (open shard file, its first row in the merged file). A shard without lists
    (an older fmpipe) makes this stage fall back to a pass over the merged statistics."""
    usable = _usable_rows(file)
    k = _kept(k, usable)
    for name in schema.map_groups(file):
        group = file[name]
        path = f"{name}/{schema.TOP}"
        lists = [(shard[path], start) for shard, start in shards if path in shard]
        if len(lists) < sum(1 for shard, _ in shards if shard[schema.KEY].shape[0]):
            _store(group, scan(group, usable, k), int(usable.sum()))
            continue
        merged = _fresh(group[schema.STAT_MAX].shape[1], k)
        for top, start in lists:
            for by, (best, response) in merged.items():
                rows = top[f"{by}_rows"][:]
                best.add(np.where(rows >= 0, rows + start, -1), top[f"{by}_values"][:])
                counts = top[f"{by}_counts"][:]
                response.sums += np.nan_to_num(top[f"{by}_response"][:].astype(np.float64)) * counts
                response.counts += counts
        _store(group, merged, int(usable.sum()))


def _kept(k: int, usable: np.ndarray) -> int:
    """Entries kept per channel: at most one per usable image (at least one, so empty shards have lists)."""
    return max(1, min(k, int(usable.sum())))


def _fresh(channels: int, k: int) -> dict[str, tuple[TopList, Response]]:
    return {by: (TopList.empty(channels, k), Response(np.zeros(channels), np.zeros(channels, np.int64))) for by in BY}


def _store(group: h5py.Group, found: dict[str, tuple[TopList, Response]], rows: int) -> None:
    if schema.TOP in group:
        del group[schema.TOP]
    top = group.create_group(schema.TOP)
    top.attrs[schema.ATTR_TOP_K] = next(iter(found.values()))[0].rows.shape[1]
    top.attrs[schema.ATTR_TOP_ROWS] = rows
    for by, (best, response) in found.items():
        top.create_dataset(f"{by}_rows", data=best.rows, **COMPRESSION)
        top.create_dataset(f"{by}_values", data=best.values, **COMPRESSION)
        top.create_dataset(f"{by}_response", data=response.means, **COMPRESSION)
        top.create_dataset(f"{by}_counts", data=response.counts, **COMPRESSION)


def _usable_rows(file: h5py.File) -> np.ndarray:
    """(N,) bool: done rows that are not failures."""
    usable = file[schema.DONE][:].astype(bool)
    usable[file[schema.FAILURE_INDEX][:]] = False
    return usable


# -- reading ------------------------------------------------------------------------------


def top_images(store, stage: int | str, channel: int, k: int, by: str = "max") -> list[tuple[int, float]]:
    """The `k` rows whose map of `channel` has the largest max (or mean), best first, as
    (row, value). Read from the stage's top list; a pass over the statistics for files without
    one (older or partial) or for k above the list's length."""
    view = _check(store, stage, by)
    if not 0 <= channel < view.channels:
        raise UsageError(f"channel {channel} does not exist in {view.label} (0..{view.channels - 1}).")
    if k < 1:
        raise UsageError(f"k must be at least 1, got {k}.")
    group = store.file[view.group]
    if schema.TOP in group and _covers(group[schema.TOP], k) and store.complete:
        top = group[schema.TOP]
        rows, values = top[f"{by}_rows"][channel, :k], top[f"{by}_values"][channel, :k]
        problem = top_rows_problem(rows, len(store))
        if problem:
            raise InputError(f"{store.path}, {view.label}: {problem}. Run `fmpipe verify {store.path}`.")
    else:
        found = scan(group, store.ok, k)[by][0]
        rows, values = found.rows[channel], found.values[channel]
    return [(int(r), float(v)) for r, v in zip(rows, values, strict=True) if r >= 0]


def _covers(top: h5py.Group, k: int) -> bool:
    """Whether a stored list answers a top-k: it keeps k entries, or every image it was computed over."""
    kept = int(top.attrs.get(schema.ATTR_TOP_K, 0))
    return kept >= min(k, int(top.attrs.get(schema.ATTR_TOP_ROWS, k)))


def channel_ranking(store, stage: int | str, by: str = "max") -> tuple[np.ndarray, np.ndarray]:
    """Channels ordered by their response across the collection (the mean over images of the
    per-image max or mean), strongest first, and those responses (C,) float32."""
    view = _check(store, stage, by)
    group = store.file[view.group]
    if schema.TOP in group and store.complete:
        response = group[schema.TOP][f"{by}_response"][:]
    else:
        response = scan(group, store.ok, 1)[by][1].means
    order = np.lexsort((np.arange(len(response)), np.where(np.isnan(response), np.inf, -response)))
    return order, response[order]


def _check(store, stage: int | str, by: str):
    """The stage (an index) or layer (a name) asked for; `by` checked."""
    if by not in BY:
        raise UsageError(f"by must be one of {', '.join(BY)}, got {by!r}.")
    return store.view(stage)
