"""`fmpipe export`: the maps in forms other tools read without fmpipe or HDF5 plugins.

- `--format npy`: one `DEST/<folder>.npy` of (C, H, W) float32 per image, where `<folder>` is the
  image's render folder (rendering/selection.py: the key without its extension, made safe and
  collision-free, a function of the file's whole key list), so `cats/a.jpg` → `DEST/cats/a.npy`.
- `--format hdf5 --compression gzip`: a self-contained copy with the same groups, datasets,
  attributes, dimension scales and top lists, every stage's data rewritten with HDF5's built-in
  deflate filter only, so MATLAB, R, Julia and h5py without hdf5plugin read it (and fmpipe's
  verify and viewer, which decode chunks themselves, still know every byte of it).

Map values are read through the store's one decoder, so both formats hold decoded values. Every
file is written under a temporary name and renamed when complete; existing files are replaced only
with `--overwrite`. No torch.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..errors import InputError, OutputExistsError, RunFailure, UsageError
from ..rendering.selection import image_folders, iter_keys, select_rows
from ..storage.format import schema
from ..storage.format.codecs import CHECKSUMS
from ..storage.format.dims import attach_dimensions
from ..storage.reading.store import STREAM_CACHE_BYTES, StageView, Store, open_store
from .config import GZIP_LEVEL, ExportConfig
from .features import block_rows, check_row_fits

log = logging.getLogger(__name__)

BLOCK_BYTES = 64 * 1024 * 1024  # hdf5: rows copied per step, about this many bytes of float32 maps
# HDF5's shuffle filter (built into every HDF5 library) before deflate: the quick-start file's maps
# 3.14 → 2.90 MB (-8 %); verify and the viewer undo it after the checksum (storage/integrity/chunks.py).
SHUFFLE = True
# Root attributes of a merged file that a stand-alone copy must not carry (it has no shards).
_MERGE_ONLY = (schema.ATTR_MERGED_FROM, schema.ATTR_MERGE_MODE)
ATTR_EXPORTED_FROM = "exported_from"  # the copy's source file name (docs/format.md)


@dataclass(frozen=True)
class ExportSummary:
    dest: Path
    format: str
    images: int  # images whose maps were written
    skipped: int  # npy: selected images left out because they failed or are not done
    bytes: int  # written
    seconds: float

    def line(self) -> str:
        skipped = f", {self.skipped} failed or unfinished left out" if self.skipped else ""
        what = "files" if self.format == "npy" else "images in one file"
        return (
            f"{self.dest}: {self.images} {what} written{skipped}; "
            f"{self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s ({self.format})"
        )


def export(config: ExportConfig) -> ExportSummary:
    started = time.perf_counter()
    with open_store(config.path, not config.allow_partial, STREAM_CACHE_BYTES) as store:
        if config.format == "npy":
            images, skipped, written = _export_npy(config, store)
        else:
            images, skipped, written = _export_hdf5(config, store)
    return ExportSummary(Path(config.dest), config.format, images, skipped, written, time.perf_counter() - started)


# -- npy ------------------------------------------------------------------------------------


def _export_npy(config: ExportConfig, store: Store) -> tuple[int, int, int]:
    """One .npy per selected image that holds maps; returns (written, left out, bytes)."""
    view = store.view(config.stage)
    check_row_fits(view)
    rows = select_rows(store, config.images)  # failed and unfinished rows dropped, with a warning
    skipped = int((~store.ok).sum()) if config.images is None else 0  # a selection's are in the warning
    folders = image_folders(store)
    dest = Path(config.dest)
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"{dest} is a file; --format npy writes into a folder (one .npy per image).")

    def targets() -> Iterator[tuple[int, Path]]:  # streamed twice: no list of N paths in memory
        return ((row, dest / f"{folders.folder(row, key)}.npy") for row, key in iter_keys(store, rows))

    if not config.overwrite:
        existing = [path for _, path in targets() if path.exists() or path.is_symlink()]
        if existing:
            raise OutputExistsError(
                f"{len(existing)} of the {len(rows)} files to write exist already (first: {existing[0]}); "
                "pass --overwrite to replace them, or export into another folder."
            )
    written = 0
    for block in _blocks(targets(), block_rows(view)):  # rows read a block at a time, one file each
        maps = store.read(view.key, [row for row, _ in block])
        for (_, path), image in zip(block, maps, strict=True):
            written += _save(path, image)
    log.info("exported %s of %d images to %s", view.label, len(rows), dest)
    return len(rows), skipped, written


def _blocks(items: Iterator, size: int) -> Iterator[list]:
    block: list = []
    for item in items:
        block.append(item)
        if len(block) == size:
            yield block
            block = []
    if block:
        yield block


def _save(path: Path, maps: np.ndarray) -> int:
    """`maps` as `path`, written under a temporary name then renamed (a symlink there is replaced, never followed)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as out:
            np.save(out, maps, allow_pickle=False)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise RunFailure(f"cannot write {path}: {err.strerror or err}. Free space or pick another folder.") from err
    except BaseException:  # Ctrl-C: no half-written file left behind
        tmp.unlink(missing_ok=True)
        raise
    return path.stat().st_size


# -- hdf5 -----------------------------------------------------------------------------------


def _export_hdf5(config: ExportConfig, store: Store) -> tuple[int, int, int]:
    """A gzip copy of the file (or of one stage or layer) at DEST; returns (images, 0, bytes)."""
    dest = Path(config.dest)
    if dest.exists() or dest.is_symlink():
        if not config.overwrite:
            raise OutputExistsError(f"{dest} exists; pass --overwrite to replace it.")
        if dest.exists() and dest.resolve() == store.path.resolve():
            raise InputError(f"{dest} is the file being exported; write the copy elsewhere.")
    if not dest.parent.is_dir():
        raise UsageError(f"{dest}: the folder {dest.parent} does not exist.")
    views = [store.view(config.stage)] if config.stage is not None else store.maps
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w", libver=schema.LIBVER) as out:
            _copy_tables(store, out)
            for view in views:
                _copy_maps(store, out, view)
            out.flush()
            os.fsync(out.id.get_vfd_handle())
        os.replace(tmp, dest)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise RunFailure(f"cannot write {dest}: {err}. Free space or pick another place.") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(store), 0, dest.stat().st_size


def _copy_tables(store: Store, out: h5py.File) -> None:
    """Root attributes (storage ones restated), /images and /failures as they are."""
    for name, value in store.file.attrs.items():
        if name not in _MERGE_ONLY:
            out.attrs[name] = value
    out.attrs[schema.ATTR_COMPRESSION] = "gzip"
    out.attrs[schema.ATTR_CHUNK_CHECKSUM] = CHECKSUMS["gzip"].name
    out.attrs[schema.ATTR_SHUFFLE] = SHUFFLE  # the copy's own filter pipeline, whatever the original's
    out.attrs[ATTR_EXPORTED_FROM] = store.path.name
    for group in (schema.IMAGES, schema.FAILURES):
        for name, dset in store.file[group].items():
            out.create_dataset(f"{group}/{name}", data=dset[()], dtype=dset.dtype)
    out.require_group(schema.STAGES)


def _copy_maps(store: Store, out: h5py.File, view: StageView) -> None:
    """One stage or layer: its attributes, data decoded and rewritten with deflate in row blocks,
    statistics, dimension scales and top lists."""
    check_row_fits(view)
    source = store.file[view.group]
    group = out.create_group(view.group)
    group.attrs.update(dict(source.attrs))
    data = source[schema.DATA]
    # Floats are copied as stored (decoded they are equal); a storage dtype that needs decoding becomes float32.
    dtype = data.dtype if data.dtype.kind == "f" else np.dtype(np.float32)
    out.attrs[schema.ATTR_DTYPE] = dtype.name
    target = group.create_dataset(
        schema.DATA,
        shape=data.shape,
        dtype=dtype,
        chunks=(1, schema.chunk_channels(*data.shape[1:], dtype.itemsize), *data.shape[2:]),  # (1, k, H, W)
        shuffle=SHUFFLE,
        compression="gzip",
        compression_opts=GZIP_LEVEL,
        fillvalue=np.nan,
    )
    rows = max(1, BLOCK_BYTES // max(1, 4 * int(np.prod(data.shape[1:]))))
    for start in range(0, data.shape[0], rows):
        target[start : start + rows] = store.read(view.key, slice(start, start + rows)).astype(dtype, copy=False)
    for stat in schema.STAT_NAMES:
        values = group.create_dataset(stat, shape=source[stat].shape, dtype=np.float32, fillvalue=np.nan)
        for start in range(0, data.shape[0], rows * 64):
            values[start : start + rows * 64] = source[stat][start : start + rows * 64]
    attach_dimensions(group, out[schema.KEY][()])
    if schema.TOP in source:
        out.copy(source[schema.TOP], group, name=schema.TOP)
