"""What `fmpipe reduce` reads and writes around the reduction: row blocks of flattened (and pooled)
maps, the FEATURES.npz written as it is computed, and the memory a fit may take.

FEATURES.npz is an ordinary NumPy archive (`np.load`): `features` (N, D) float32 and `keys` (N,)
str, plus whatever the method adds. Features go to a temporary file beside the output as they are
computed and are copied into the archive at the end, so memory does not grow with N (8 bytes per
image for the rows kept).
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import InputError, RunFailure, UsageError
from ..progress import Bar, Progress
from ..records import StageInfo
from ..rendering.selection import iter_keys
from ..storage.reading.store import Store

log = logging.getLogger(__name__)

BLOCK_BYTES = 2 * 1024 * 1024  # maps read per step, as float32: bounds memory whatever the number of images
COPY_BYTES = 16 * 1024 * 1024


def block_rows(info: StageInfo, at_least: int = 1) -> int:
    """Rows per read so that a block of float32 maps is about BLOCK_BYTES (at least `at_least`)."""
    return max(at_least, BLOCK_BYTES // max(1, 4 * info.channels * info.height * info.width))


def feature_count(info: StageInfo, pool: tuple[int, int] | None) -> int:
    """Numbers per image once flattened: C·H·W, or C·h·w after pooling to (h, w)."""
    if pool is None:
        return info.channels * info.height * info.width
    if pool[0] > info.height or pool[1] > info.width:
        raise UsageError(
            f"--pool {pool[0]}x{pool[1]} is larger than {info.label}'s maps ({info.height}x{info.width}); "
            f"pick at most {info.height}x{info.width}."
        )
    return info.channels * pool[0] * pool[1]


def pooled(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, C, H, W) → (N, C, h, w) float32 adaptive average pooling: cell (i, j) averages rows
    floor(i·H/h) to ceil((i+1)·H/h) and the same for columns (torch's `adaptive_avg_pool2d`)."""
    height, width = maps.shape[-2:]
    h, w = size
    out = np.empty((*maps.shape[:2], h, w), np.float32)
    for i in range(h):
        y0, y1 = i * height // h, -(-(i + 1) * height // h)
        for j in range(w):
            x0, x1 = j * width // w, -(-(j + 1) * width // w)
            out[:, :, i, j] = maps[:, :, y0:y1, x0:x1].mean(axis=(2, 3))
    return out


def iter_blocks(
    store: Store, info: StageInfo, pool: tuple[int, int] | None, rows_per_block: int, what: str = "read"
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows, features): (n,) int64 rows holding finite maps and their (n, F) float32 features, block by
    block in row order. Failed, unfinished and non-finite rows are left out (the last are logged).
    Progress (`what`: the pass) goes through `pipeline.progress`: a bar on a terminal, else a log line."""
    ok = store.ok
    progress = Progress(
        len(store),
        Bar(desc=what, unit="img"),
        lambda done: f"{what}: {done} of {len(store)} images of {info.label}",
        log,
    )
    try:
        for start in range(0, len(store), rows_per_block):
            stop = min(start + rows_per_block, len(store))
            rows = np.flatnonzero(ok[start:stop]) + start
            if len(rows):
                yield _finite_features(store, info, pool, rows, slice(start, stop))
            progress.update(stop - start)  # a block of failed rows counts too: the bar reaches the end
    finally:
        progress.close()  # also when the caller stops early


def _finite_features(
    store: Store, info: StageInfo, pool: tuple[int, int] | None, rows: np.ndarray, block: slice
) -> tuple[np.ndarray, np.ndarray]:
    """`rows` (the stored ones of `block`) with finite maps, and their flattened (pooled) features."""
    maps = store.read(info.key, block)
    if len(rows) < block.stop - block.start:
        maps = maps[rows - block.start]
    flat = (pooled(maps, pool) if pool else maps).reshape(len(rows), -1)
    finite = np.isfinite(flat).all(axis=1)
    if not finite.all():
        bad = rows[~finite]
        key = next(iter_keys(store, bad[:1]))[1]
        log.warning("left out %d images whose maps hold NaN or inf (first: %s)", len(bad), key)
    return rows[finite], flat[finite]


def check_row_fits(info: StageInfo) -> None:
    """Refuse a stage whose one image's float32 maps (read, decoded, flattened: about 3 copies) would
    not fit in memory now: a damaged or crafted file may declare any shape."""
    row_bytes = 4 * info.channels * info.height * info.width
    if 3 * row_bytes > available_bytes():
        raise InputError(
            f"one image's maps of {info.label} ({info.channels}×{info.height}×{info.width}) need "
            f"{3 * row_bytes / 1e9:.1f} GB to read as float32; {available_bytes() / 1e9:.1f} GB are available."
        )


def available_bytes() -> int:
    """Memory this machine can give now (MemAvailable), or its physical memory when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class FeatureFile:
    """FEATURES.npz, written as blocks of features arrive: rows go to a temporary file beside `path`,
    and `finish` writes the archive under a temporary name, then renames it."""

    def __init__(self, path: Path, dim: int):
        self.path, self.dim = path, dim
        self.rows: list[np.ndarray] = []
        self.count = 0
        try:
            # Closed by finish() or discard(): it lives across the blocks, so no `with` here.
            self._spool = tempfile.TemporaryFile(dir=path.parent, prefix=f".{path.name}.")  # noqa: SIM115
        except OSError as err:
            raise RunFailure(f"cannot write beside {path}: {err.strerror or err}.") from err

    def add(self, rows: np.ndarray, features: np.ndarray) -> None:
        """(n,) rows and their (n, dim) features, in row order."""
        self.rows.append(np.asarray(rows, np.int64))
        self._spool.write(np.ascontiguousarray(features, "<f4").tobytes())
        self.count += len(rows)

    def finish(self, store: Store, extra: dict[str, np.ndarray]) -> np.ndarray:
        """Write the archive (`features`, `keys`, and `extra`); returns the (N,) rows kept."""
        rows = np.concatenate(self.rows) if self.rows else np.empty(0, np.int64)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        try:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                self._spool.seek(0)
                self._write_spool(archive)
                _write_keys(archive, store, rows)
                for name, value in extra.items():
                    _write_array(archive, name, value)
            os.replace(tmp, self.path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise RunFailure(
                f"cannot write {self.path}: {err.strerror or err}. Free space or pick another place."
            ) from err
        except BaseException:  # Ctrl-C: no half-written archive left behind
            tmp.unlink(missing_ok=True)
            raise
        finally:
            self._spool.close()
        return rows

    def _write_spool(self, archive: zipfile.ZipFile) -> None:
        with archive.open("features.npy", "w", force_zip64=True) as entry:
            _write_header(entry, np.dtype("<f4"), (self.count, self.dim))
            while piece := self._spool.read(COPY_BYTES):
                entry.write(piece)

    def discard(self) -> None:
        self._spool.close()


def _write_keys(archive: zipfile.ZipFile, store: Store, rows: np.ndarray) -> None:
    """keys.npy (N,) `<U{longest}`, streamed: one pass for the longest key, one to write them."""
    longest = max((len(key) for _, key in iter_keys(store, rows)), default=1)
    dtype = np.dtype(f"<U{max(1, longest)}")
    with archive.open("keys.npy", "w", force_zip64=True) as entry:
        _write_header(entry, dtype, (len(rows),))
        block: list[str] = []
        for _, key in iter_keys(store, rows):
            block.append(key)
            if len(block) == 4096:
                entry.write(np.asarray(block, dtype).tobytes())
                block = []
        entry.write(np.asarray(block, dtype).tobytes())


def _write_header(entry, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_2_0(entry, header)


def _write_array(archive: zipfile.ZipFile, name: str, value: np.ndarray) -> None:
    with archive.open(f"{name}.npy", "w", force_zip64=True) as entry:
        np.lib.format.write_array(entry, np.asarray(value), allow_pickle=False)
