"""Paints one image's feature maps of one stage: per-channel PNGs, a grid, or overlays.

Runs inside render's worker processes. Reads the image's stats row and then one chunk
block of channels at a time, so memory is one block plus one grid, never the stage.
`colorize` gives one (image, stage, channel) as an RGB array, for notebooks.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..decoding import DecodeError, decode
from ..errors import InputError, UsageError
from ..sources import source_path
from ..storage.format import schema
from ..storage.format.encoding import maps_reader
from ..storage.reading.store import StageView, Store, open_store
from .colormaps import DEFAULT_CMAP, finite_range, lut, to_indices
from .config import NORMALIZATIONS
from .ledger import remove_owned, write_output
from .pca import PcaFit, project_blocks, scores_to_rgb
from .png import encode_indexed, encode_rgb
from .selection import select_channels, top_channels
from .tiling import Grid, blend, fit_within, overlay_hw, upscale

log = logging.getLogger(__name__)

STATS_BLOCK = 1024  # rows of (N, C) stats read per call when scanning a whole stage
PARTIAL_READ_TRIES = 6  # a file being written: reopened and read again up to this many times
PARTIAL_RETRY_S = 0.05  # first wait before reopening it (doubled each time)
CACHE_CHUNKS = 2  # render reads each chunk once: cache two, not the store's 64 MB
OUTSIDE_ROOT = "not found: the key leaves the images root (absolute, or an empty, '.' or '..' part), not read"
_OUTPUT = re.compile(r"(c\d{4,}|grid|pca)(-overlay)?\.png")


@dataclass(frozen=True)
class RenderJob:
    """What every worker needs to paint any image of the run (picklable)."""

    path: str
    stage: int | str  # the stage index, or the layer name
    channels: tuple[int, ...] | None  # explicit selection, in order; None: top_k or all
    top_k: int | None
    count: int  # channels painted per image
    channel_digits: int  # c0007.png: at least 4 digits
    layout_channels: bool
    layout_grid: bool
    cmap: str
    normalize: str  # channel | image | stage
    stage_range: tuple[float, float] | None  # (lo, hi) for normalize == "stage"
    scale: int  # nearest-neighbour factor of per-channel PNGs
    grid_scale: int  # ... and of grid tiles
    photos: str | None  # folder of the source images for --overlay, else None
    input_hw: tuple[int, int]  # the model's input size: overlays keep the source's shape, at least this long
    out_stage: Path  # OUT_DIR/stage<S>
    overwrite: bool
    pca: PcaFit | None = None  # --layout pca: the stage's fitted mapping; one pca.png per image

    @property
    def pngs_per_image(self) -> int:
        return self.count * self.layout_channels + self.layout_grid + (self.pca is not None)

    def channel_name(self, channel: int) -> str:
        return f"c{channel:0{self.channel_digits}d}{'-overlay' if self.photos else ''}.png"

    @property
    def grid_name(self) -> str:
        return f"grid{'-overlay' if self.photos else ''}.png"


@dataclass(frozen=True)
class ImageTask:
    row: int
    key: str
    folder: str  # safe relative folder below out_stage
    owned: frozenset[str] = frozenset()  # names of the files fmpipe wrote in that folder (its ledger)


@dataclass(frozen=True)
class ImageResult:
    row: int
    key: str
    pngs: int
    grids: int
    error: str | None = None  # why the image was skipped (e.g. --overlay source missing)


def existing_outputs(job: RenderJob, folder: Path) -> list[Path]:
    """PNGs in `folder` of the kinds this job writes (it would replace them)."""
    if not folder.is_dir():
        return []
    overlay = "-overlay" if job.photos else ""
    found = []
    for entry in os.scandir(folder):
        match = _OUTPUT.fullmatch(entry.name)
        if match and (match.group(2) or "") == overlay:
            kind = match.group(1)
            wanted = {"grid": job.layout_grid, "pca": job.pca is not None}.get(kind, job.layout_channels)
            if wanted:
                found.append(folder / entry.name)
    return sorted(found)


class Painter:
    """Holds one open store and paints whole images of one stage."""

    def __init__(self, job: RenderJob):
        self.job = job
        self.table = lut(job.cmap)
        self._open()

    def _open(self) -> None:
        self.store = open_store(self.job.path)
        self.partial = not self.store.complete
        # Before StageView opens it: HDF5 ignores the cache settings of an already open dataset.
        # The small-cache open first: later opens of the same dataset share the first one's cache.
        self.data, self.block = _small_cache_dataset(self.store.file, schema.group_of(self.job.stage))
        self.view = self.store.view(self.job.stage)

    def close(self) -> None:
        self.store.close()

    def paint(self, task: ImageTask) -> ImageResult:
        """Write one image's PNGs; a missing overlay photo skips the image, other errors raise.

        A partial file may be being written: this process's view of it (its end of allocation,
        cached index nodes) can be older than the chunk index it reads next, and HDF5 then says
        "addr overflow". The row itself is done, so the file is reopened (a fresh view) and the
        image painted again, a few times, before a failure is reported."""
        for attempt in range(PARTIAL_READ_TRIES):
            try:
                return self._paint(task)
            except (OSError, RuntimeError, KeyError, InputError) as err:
                if not self.partial or attempt + 1 == PARTIAL_READ_TRIES:
                    raise
                log.debug("reading %s of a file being written failed (%s); reopening it", task.key, err)
                time.sleep(PARTIAL_RETRY_S * 2**attempt)
                self._reopen()
        raise AssertionError("unreachable")

    def _reopen(self) -> None:
        del self.data, self.view
        self.store.close()
        self._open()

    def _paint(self, task: ImageTask) -> ImageResult:
        job = self.job
        folder = job.out_stage / task.folder
        try:
            photo = self._photo(task) if job.photos else None
        except DecodeError as err:
            return ImageResult(task.row, task.key, 0, 0, f"overlay source: {err}")
        channels, lo, hi = self._channels_and_ranges(task.row)
        for path in existing_outputs(job, folder) if job.overwrite else ():
            if path.name in task.owned:  # a smaller --top-k must not leave the last run's PNGs behind
                remove_owned(job.out_stage.parent, self._relative(task, path.name))
        if job.pca is not None:
            return ImageResult(task.row, task.key, self._paint_pca(task, folder, job.pca), 0)
        pngs = self._paint_channels(task, folder, channels, lo, hi, photo)
        return ImageResult(task.row, task.key, pngs, int(job.layout_grid))

    def _write(self, task: ImageTask, name: str, png: bytes) -> None:
        write_output(self.job.out_stage.parent, self._relative(task, name), png, name in task.owned)

    def _relative(self, task: ImageTask, name: str) -> str:
        return f"{self.job.out_stage.name}/{task.folder}/{name}"

    def _channels_and_ranges(self, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        job = self.job
        mins, maxs = self.view.min[row], self.view.max[row]
        if job.channels is not None:
            channels = np.asarray(job.channels, dtype=np.int64)
        elif job.top_k is not None:
            channels = top_channels(self.view.mean[row], job.top_k)
        else:
            channels = np.arange(self.view.channels)
        lo, hi = image_ranges(job.normalize, mins, maxs, channels, job.stage_range)
        return channels, lo, hi

    def _paint_channels(self, task, folder, channels, lo, hi, photo) -> int:
        """Write the per-channel PNGs and/or the grid of one image; returns the PNG count."""
        job = self.job
        grid, tile_photo = self._grid(len(channels), photo) if job.layout_grid else (None, None)
        written = 0
        for position, channel, plane in self._planes(task.row, channels):
            indices = to_indices(plane, lo[position], hi[position])
            if job.layout_channels:
                self._write(task, job.channel_name(channel), self._channel_png(indices, photo))
                written += 1
            if grid is not None:
                grid.put(position, self._tile(indices, tile_photo), str(channel))
        if grid is not None:
            order = ",".join(map(str, channels))
            text = (
                f"fmpipe {self.view.label} of {task.key!r}; {grid.tile_h}x{grid.tile_w} tiles; {self._colours(lo, hi)}"
            )
            text += f"; tiles left to right, top to bottom are channels {order}"
            self._write(task, job.grid_name, encode_rgb(grid.finish(), text=text))
            written += 1
        return written

    def _colours(self, lo: np.ndarray, hi: np.ndarray) -> str:
        """The colour scale in a grid's text (the gallery's colour bar reads it): the table, the
        normalisation and, when one range serves every tile (image, stage), that range."""
        job = self.job
        text = f"colour map {job.cmap}, normalised per {job.normalize}"
        if job.normalize != "channel" and len(lo):
            text += f" from {float(lo[0])!r} to {float(hi[0])!r}"
        return text

    def _paint_pca(self, task: ImageTask, folder: Path, fit: PcaFit) -> int:
        """Write pca.png: the image's first three components as RGB, upscaled like a channel PNG."""
        view = self.view
        blocks = ((c0, self._block(task.row, c0)) for c0 in range(0, view.channels, self.block))
        rgb = scores_to_rgb(fit, project_blocks(fit, blocks, view.height, view.width))
        text = f"fmpipe {self.view.label} of {task.key!r}; PCA components 1-3 as R, G, B ({self.view.folder}/pca.json)"
        self._write(task, "pca.png", encode_rgb(upscale(rgb, self.job.scale), text=text))
        return 1

    def _grid(self, count: int, photo: np.ndarray | None) -> tuple[Grid, np.ndarray | None]:
        """An empty grid for `count` tiles, and the photo at tile size for overlays (its own aspect ratio)."""
        scale = self.job.grid_scale if photo is None else self.job.scale  # overlay tiles show the photo: larger
        tile_h, tile_w = self.view.height * scale, self.view.width * scale
        if photo is None:
            return Grid(count, tile_h, tile_w), None
        side = max(tile_h, tile_w)
        tile_h, tile_w = fit_within(*photo.shape[:2], side, side)
        return Grid(count, tile_h, tile_w), _resized(photo, tile_h, tile_w)

    def _channel_png(self, indices: np.ndarray, photo: np.ndarray | None) -> bytes:
        return channel_png(indices, self.table, self.job.scale, photo)

    def _tile(self, indices: np.ndarray, tile_photo: np.ndarray | None) -> np.ndarray:
        """(H, W) uint8 indices → (tile_h, tile_w, 3) uint8 grid tile."""
        if tile_photo is None:
            return self.table[upscale(indices, self.job.grid_scale)]
        return blend(tile_photo, indices, self.table)

    def _planes(self, row: int, channels: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
        """(position in `channels`, channel, (H, W) map) reading one chunk block at a time."""
        blocks = channels // self.block
        for block in np.unique(blocks):
            c0 = int(block) * self.block
            data = self._block(row, c0)
            for position in np.flatnonzero(blocks == block):
                channel = int(channels[position])
                yield int(position), channel, data[channel - c0]

    def _block(self, row: int, c0: int) -> np.ndarray:
        """(k, H, W) maps (decoded values) of channels c0.. of one chunk of `row`."""
        try:
            return self.data[row, c0 : min(c0 + self.block, self.view.channels)]
        except OSError as err:  # a damaged chunk, or a shard that vanished mid-run
            raise InputError(
                f"{self.job.path}: reading {self.view.label} of row {row} failed ({err}). "
                f"Check the file with `fmpipe info {self.job.path}`."
            ) from err

    def _photo(self, task: ImageTask) -> np.ndarray:
        """The source photo of an image in its own shape (`overlay_hw`); a key that leaves the root is never read."""
        path = source_path(self.job.photos, task.key)
        if path is None:
            raise DecodeError(OUTSIDE_ROOT)
        orig_hw = self.store.file[schema.ORIG_HW][task.row]
        return decode(path, overlay_hw(orig_hw, self.job.input_hw)).pixels


def channel_png(indices: np.ndarray, table: np.ndarray, scale: int, photo: np.ndarray | None = None) -> bytes:
    """A per-channel PNG as render writes it (and `fmpipe view` serves it) from (H, W) uint8 table indices:
    indexed colour upscaled by `scale`; or, with `photo` ((h, w, 3) uint8 source in its own shape,
    `overlay_hw`), RGB blended onto it: the map resized to the photo, never the photo to the map."""
    if photo is None:
        return encode_indexed(upscale(indices, scale), table)
    return encode_rgb(blend(photo, indices, table))


def image_ranges(
    mode: str,
    mins: np.ndarray,
    maxs: np.ndarray,
    channels: Sequence[int] | np.ndarray,
    stage_span: tuple[float, float] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) float64 arrays, one per selected channel, from one image's (C,) stats.

    channel: that channel's own min/max; image: one range over all channels of the image;
    stage: `stage_span`, one range for the whole stage across images.
    """
    channels = np.asarray(channels, dtype=np.int64)
    if mode == "channel":
        return mins[channels].astype(np.float64), maxs[channels].astype(np.float64)
    if mode == "image":
        lo, _ = finite_range(np.asarray(mins))
        _, hi = finite_range(np.asarray(maxs))
    else:
        lo, hi = stage_span if stage_span is not None else (np.nan, np.nan)
    return np.full(len(channels), lo), np.full(len(channels), hi)


def stage_range(view: StageView, ok: np.ndarray) -> tuple[float, float]:
    """(lo, hi) over every stored image and channel of a stage, from the (N, C) stats in blocks."""
    lo, hi = np.inf, -np.inf
    for start in range(0, len(ok), STATS_BLOCK):
        rows = ok[start : start + STATS_BLOCK]
        if not rows.any():
            continue
        block_lo, _ = finite_range(view.min[start : start + len(rows)][rows])
        _, block_hi = finite_range(view.max[start : start + len(rows)][rows])
        lo, hi = min(lo, block_lo), max(hi, block_hi)
    return (float(lo), float(hi)) if lo <= hi else (np.nan, np.nan)


def _small_cache_dataset(file: h5py.File, group: str) -> tuple[h5py.Dataset, int]:
    """The stage's (N, C, H, W) data opened with a chunk cache of CACHE_CHUNKS chunks, and k.

    k is the channels per (1, k, H, W) chunk. The store's 64 MB cache fills with chunks
    render never reads twice, so a worker's memory grew with the images drawn (71 → 119 MB
    from 20 to 200 images of 8×128×128); with this dataset access list it stays flat, for a
    virtual dataset too.
    """
    name = f"{group}/{schema.DATA}"
    probe = file[name]
    _, channels, height, width = probe.shape
    block = probe.chunks[1] if probe.chunks else schema.chunk_channels(channels, height, width, probe.dtype.itemsize)
    chunk_bytes = block * height * width * probe.dtype.itemsize
    del probe  # closed, so the open below is the first one
    dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
    dapl.set_chunk_cache(521, max(1 << 20, CACHE_CHUNKS * chunk_bytes), 1.0)
    data = h5py.Dataset(h5py.h5d.open(file.id, name.encode(), dapl))
    return maps_reader(file[group], data), block  # uint8 maps decoded to float32 (storage.format.encoding)


def _resized(photo: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(photo).resize((width, height), Image.Resampling.BICUBIC))


def colorize(
    source: Store | str | os.PathLike,
    image: int | str,
    stage: int | str,
    channel: int,
    cmap: str = DEFAULT_CMAP,
    normalize: str = "channel",
    scale: int = 1,
) -> np.ndarray:
    """(H·scale, W·scale, 3) uint8 RGB of one (image, stage, channel), coloured as render does.

    `source` is an open Store or a path; `image` a row or a key. For notebooks:
    `plt.imshow(colorize("out.h5", "cat.jpg", 2, 7))` or `PIL.Image.fromarray(...)`.
    """
    if isinstance(source, Store):
        return _colorize(source, image, stage, channel, cmap, normalize, scale)
    with open_store(source) as store:
        return _colorize(store, image, stage, channel, cmap, normalize, scale)


def _colorize(store: Store, image, stage, channel, cmap, normalize, scale) -> np.ndarray:
    if normalize not in NORMALIZATIONS:
        raise UsageError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}.")
    table = lut(cmap)
    view = store.view(stage)
    row = store.row(image) if isinstance(image, str) else int(image)
    if not 0 <= row < len(store):
        raise UsageError(f"image {image} does not exist in {store.path}: valid rows are 0..{len(store) - 1}.")
    if not store.ok[row]:
        raise InputError(f"image {image!r} has no maps in {store.path} (it failed, or is not done yet).")
    (index,) = select_channels([channel], view.channels, view.label if view.layer else view.index)
    span = stage_range(view, store.ok) if normalize == "stage" else None
    lo, hi = image_ranges(normalize, view.min[row], view.max[row], [index], span)
    indices = to_indices(view.data[row, index], lo[0], hi[0])
    return upscale(table[indices], max(1, scale))
