"""An open fmpipe file as the viewer and `fmpipe top` read it, with every cache bounded.

Single, merged (virtual or copied) and partial files alike: `OUT.h5` falls back to
`OUT.h5.partial` while an extraction is unfinished, and only done, non-failed rows are shown.
Keys are read one at a time or in blocks (never the whole list), statistics one row at a time,
maps one decoded chunk block at a time (`blocks.StageBlocks`), rankings from the per-channel
top lists (`storage.reading.toplists`). Source photos are read only through `sources.source_path`, so a
crafted key cannot reach outside the images root. No torch.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..decoding import DecodeError, decode
from ..errors import UsageError
from ..rendering.painting import OUTSIDE_ROOT, stage_range
from ..rendering.pca import PcaFit, fit_pca
from ..rendering.selection import KEY_BLOCK, iter_keys
from ..rendering.tiling import overlay_hw
from ..sources import source_path
from ..storage.format import schema
from ..storage.integrity.seal import virtual_source_names
from ..storage.reading.store import StageView, Store, open_store
from ..storage.reading.toplists import channel_ranking, top_images
from .blocks import StageBlocks
from .cache import Lru

log = logging.getLogger(__name__)

CHUNK_CACHE_BYTES = 96 << 20  # decoded chunk blocks (the viewer's largest cache)
STATS_CACHE_BYTES = 8 << 20  # (3, C) statistics rows
PHOTO_CACHE_BYTES = 32 << 20  # source photos at the model's input size (overlays)
THUMB_CACHE_BYTES = 16 << 20  # source thumbnails as JPEG
SMALL_CACHE_BYTES = 16 << 20  # rankings, top lists, searches, stage ranges, PCA fits
THUMB_QUALITY = 85
KEY_SPAN = 256  # keys within this many rows of each other are read in one call
SPARSE_KEYS = 1000  # up to this many scattered keys are read one by one, not in blocks of KEY_BLOCK


def resolve_source(path: str | os.PathLike) -> Path:
    """The file to read for OUT: OUT itself, or OUT.partial while an extraction is unfinished."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    if not path.exists() and partial.exists():
        return partial
    return path


class Catalog:
    """One open fmpipe file and the bounded caches over it; safe to share between threads."""

    def __init__(self, path: str | os.PathLike, images_root: str | None = None, chunk_cache_bytes: int = 0):
        self.path = resolve_source(path)
        self.store: Store = open_store(self.path)
        try:
            self._open(images_root, chunk_cache_bytes or CHUNK_CACHE_BYTES)
        except Exception:
            self.store.close()
            raise

    def _open(self, images_root: str | None, chunk_cache_bytes: int) -> None:
        store = self.store
        run = store.run
        # Blocks first: their small-cache open of each stage's data is the one every later handle shares.
        checksums = run.chunk_checksum is not None
        views = store.maps  # stages by index, then layers by name: a map's `ref` keys it everywhere
        self.blocks = {v.ref: StageBlocks(store.file, self.path, v.ref, checksums, v.group) for v in views}
        self.stages: dict[int | str, StageView] = {v.ref: v for v in views}
        self.ok = store.ok  # (N,) bool: done and not failed
        self.ok.setflags(write=False)
        self.rows = np.flatnonzero(self.ok)  # (M,) int64 rows with maps, ascending
        self.partial = not store.complete
        self.model = run.model or "?"
        self.root = images_root or run.images_root
        first = next(iter(self.stages.values()), None)
        self.input_hw = run.input_size or ((first.height, first.width) if first else (1, 1))
        self.failures = len(store.file[schema.FAILURE_INDEX])
        self._chunks: Lru[np.ndarray] = Lru(chunk_cache_bytes)
        self._stats: Lru[np.ndarray] = Lru(STATS_CACHE_BYTES)
        self._photos: Lru[np.ndarray] = Lru(PHOTO_CACHE_BYTES)
        self._thumbs: Lru[bytes] = Lru(THUMB_CACHE_BYTES)
        self._small: Lru[object] = Lru(SMALL_CACHE_BYTES)
        self._shards = [self.path.parent / name for name in virtual_source_names(store.file)]
        self._shard_stats = self._stat_shards()  # as checked by open_store

    def check_shards(self) -> None:
        """Refuse (InputError) to read a merged file whose shards changed since they were checked.

        HDF5 reads a missing shard as fill values: a shard deleted or replaced while the viewer runs
        would be served as blank maps. A stat of each shard per read; the full check (present,
        complete, same run, the seal recorded at merge) when one changed."""
        if not self._shards:
            return
        now = self._stat_shards()
        if now != self._shard_stats:
            self.store.check_sources()
            self._shard_stats = now

    def _stat_shards(self) -> tuple:
        stats = []
        for path in self._shards:
            try:
                info = path.stat()
            except OSError:
                stats.append(None)
                continue
            stats.append((info.st_ino, info.st_size, info.st_mtime_ns))
        return tuple(stats)

    def __len__(self) -> int:
        return len(self.ok)

    def close(self) -> None:
        for blocks in self.blocks.values():
            blocks.close()
        # Drop every dataset handle before the file goes: h5py caches a virtual dataset's creation
        # property list on the handle, and one still alive when the process exits makes HDF5's
        # own exit handler crash (seen with HDF5 2.0 on merged files).
        self.blocks, self.stages = {}, {}
        self._chunks.clear()
        self.store.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- lookups that validate --------------------------------------------------------------

    def stage(self, ref: int | str) -> StageView:
        """A stored stage (an index) or layer (a name)."""
        if ref not in self.stages:
            what = f"stage {ref}" if isinstance(ref, int) else f"layer {ref!r}"
            stored = ", ".join(str(v.ref) for v in self.stages.values())
            raise UsageError(f"{what} is not in {self.path}; stored stages and layers: {stored}.")
        return self.stages[ref]

    def channel(self, stage: int | str, channel: int) -> int:
        view = self.stage(stage)
        if not 0 <= channel < view.channels:
            raise UsageError(
                f"channel {channel} does not exist in {view.label}: valid channels are 0..{view.channels - 1}."
            )
        return channel

    def stored_row(self, row: int) -> int:
        """`row` when it holds maps; UsageError otherwise (out of range, failed, or not done yet)."""
        if not 0 <= row < len(self.ok):
            raise UsageError(f"image row {row} does not exist in {self.path}: valid rows are 0..{len(self.ok) - 1}.")
        if not self.ok[row]:
            raise UsageError(f"image row {row} of {self.path} has no maps (it failed, or is not done yet).")
        return row

    # -- keys and statistics ------------------------------------------------------------------

    def key(self, row: int) -> str:
        return next(iter_keys(self.store, [row]))[1]

    def keys(self, rows) -> list[str]:
        """Keys of `rows`: one read of their span when they lie close together (a page), one read
        each when they are few and far apart (a ranking), else blocks (rows ascending)."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return []
        dset = self.store.file[schema.KEY]
        lo, hi = int(rows.min()), int(rows.max()) + 1
        if hi - lo <= max(KEY_SPAN, 4 * len(rows)):
            block = dset[lo:hi]
            return [schema.text(block[row - lo]) for row in rows]
        if len(rows) <= SPARSE_KEYS:
            return [schema.text(dset[int(row)]) for row in rows]
        return [key for _, key in iter_keys(self.store, rows)]

    def search(self, text: str) -> np.ndarray:
        """Rows with maps whose key contains `text` (case-insensitive), ascending; cached per text."""
        needle = text.casefold()
        if not needle:
            return self.rows
        return self._small.get(("search", needle), lambda: self._scan(needle))

    def _scan(self, needle: str) -> np.ndarray:
        dset, found = self.store.file[schema.KEY], []
        for start in range(0, len(self.ok), KEY_BLOCK):
            block = dset[start : start + KEY_BLOCK]
            found += [start + i for i, key in enumerate(block) if needle in schema.text(key).casefold()]
        rows = np.asarray(found, dtype=np.int64)
        return rows[self.ok[rows]] if len(rows) else rows

    def stats(self, stage: int | str, row: int) -> np.ndarray:
        """(3, C) float32 min, max, mean of one image and stage, as stored."""

        def read() -> np.ndarray:
            view = self.stage(stage)
            self.check_shards()
            values = np.stack([view.min[row], view.max[row], view.mean[row]])
            values.setflags(write=False)
            return values

        return self._stats.get((stage, row), read)

    def span(self, stage: int | str) -> tuple[float, float]:
        """(lo, hi) over every stored image and channel of a stage (`--normalize stage`), once per stage."""
        self.check_shards()
        return self._small.get(("span", stage), lambda: stage_range(self.stage(stage), self.ok))

    # -- maps ---------------------------------------------------------------------------------

    def block(self, stage: int | str, row: int, c0: int) -> np.ndarray:
        """(n, H, W) maps of channels c0.. of one chunk of `row`, from the bounded chunk cache."""
        self.check_shards()
        return self._chunks.get((stage, row, c0), lambda: self.blocks[stage].block(row, c0))

    def plane(self, stage: int | str, row: int, channel: int) -> np.ndarray:
        """(H, W) float16/float32 map of one image, stage and channel."""
        k = self.blocks[stage].k
        c0 = channel // k * k
        return self.block(stage, row, c0)[channel - c0]

    def pca(self, stage: int | str) -> PcaFit:
        """The stage's PCA fit with render's defaults (so pictures equal `render --layout pca`), once per stage."""
        self.check_shards()
        return self._small.get(("pca", stage), lambda: fit_pca(self.store, stage))

    # -- rankings -----------------------------------------------------------------------------

    def top(self, stage: int | str, channel: int, k: int, by: str) -> list[tuple[int, float]]:
        """(row, value) of the k images whose map of `channel` has the largest max (or mean), best first."""
        self.channel(stage, channel)
        self.check_shards()
        return self._small.get(("top", stage, channel, k, by), lambda: top_images(self.store, stage, channel, k, by))

    def ranking(self, stage: int | str, by: str) -> tuple[np.ndarray, np.ndarray]:
        """(channels, scores): the stage's channels by how strongly they respond across the collection."""
        self.stage(stage)
        self.check_shards()
        return self._small.get(("ranking", stage, by), lambda: channel_ranking(self.store, stage, by))

    # -- sources ------------------------------------------------------------------------------

    def orig_hw(self, row: int) -> np.ndarray:
        """(2,) int32 height, width of the source before resizing."""
        return self.store.file[schema.ORIG_HW][row]

    def source(self, row: int, key: str | None = None) -> Path | None:
        """The source photo of `row` (whose key is `key`, if known) when it is a file below the images
        root; None otherwise."""
        if not self.root:
            return None
        path = source_path(self.root, self.key(row) if key is None else key)
        return path if path is not None and path.is_file() else None

    def photo(self, row: int) -> np.ndarray:
        """(h, w, 3) uint8 source photo in its own shape (`overlay_hw`, as render's overlays).

        DecodeError if unreadable."""

        def read() -> np.ndarray:
            path = source_path(self.root, self.key(row)) if self.root else None
            if path is None:
                raise DecodeError(OUTSIDE_ROOT if self.root else "the file records no images root")
            return decode(path, overlay_hw(self.orig_hw(row), self.input_hw)).pixels

        return self._photos.get(row, read)

    def thumbnail(self, row: int, side: int) -> bytes:
        """JPEG bytes of the source photo, its longer side at most `side`; DecodeError if unreadable."""

        def make() -> bytes:
            path = self.source(row)
            if path is None:
                raise DecodeError("source image not found below the images root")
            height, width = (int(v) for v in self.orig_hw(row))
            scale = min(1.0, side / max(1, height, width))
            pixels = decode(path, (max(1, round(height * scale)), max(1, round(width * scale)))).pixels
            return _jpeg(pixels)

        return self._thumbs.get((row, side), make)

    def original(self, row: int) -> bytes:
        """PNG bytes of the source photo at its original size, upright RGB (not cached: it may be large)."""
        path = self.source(row)
        if path is None:
            raise DecodeError("source image not found below the images root")
        height, width = (int(v) for v in self.orig_hw(row))
        return _png(decode(path, (height, width)).pixels)


def _png(pixels: np.ndarray) -> bytes:
    from io import BytesIO

    out = BytesIO()
    Image.fromarray(pixels).save(out, "PNG", compress_level=1)
    return out.getvalue()


def _jpeg(pixels: np.ndarray) -> bytes:
    from io import BytesIO

    out = BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=THUMB_QUALITY)
    return out.getvalue()
