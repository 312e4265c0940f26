"""Finds images below a folder; keys are sorted relative POSIX paths. Selects a shard's slice."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .errors import InputError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"})


def discover(root: str | os.PathLike) -> list[str]:
    """Sorted keys (POSIX paths relative to `root`) of every image file below `root`.

    Recursive; follows symlinked files but not symlinked folders (no loops); a folder
    named like an image is skipped. Hidden files and folders (".name") are skipped.
    """
    base = Path(root)
    if not base.exists():
        raise InputError(f"image folder {str(base)!r} does not exist.")
    if not base.is_dir():
        raise InputError(f"{str(base)!r} is not a folder; give the folder that holds the images.")
    keys: list[str] = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = Path(dirpath).relative_to(base)
        for name in filenames:
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            full = Path(dirpath, name)
            if full.is_dir():
                continue
            keys.append((rel_dir / name).as_posix())
    keys.sort()
    return keys


# Shards are cut at multiples of this many images, whatever --batch-size is: a shard's rows
# depend only on (collection, index, count), so a shard resumed with another batch size
# still holds exactly its own images. With a batch size that divides it (the default 16
# does), a job array computes the very batches of an unsharded run (bit-identical maps).
SHARD_UNIT = 16


def shard_bounds(count: int, shard_index: int, num_shards: int) -> tuple[int, int]:
    """[start, stop) of shard `shard_index` of `num_shards`: balanced contiguous slices.

    Slices are balanced in whole SHARD_UNITs, so every shard starts on a multiple of
    SHARD_UNIT; the first shards get one extra unit. The bounds never depend on options
    such as the batch size, so any rerun of a task plans the same rows.
    """
    units = -(-count // SHARD_UNIT)
    base, extra = divmod(units, num_shards)
    start = shard_index * base + min(shard_index, extra)
    stop = start + base + (1 if shard_index < extra else 0)
    return min(count, start * SHARD_UNIT), min(count, stop * SHARD_UNIT)


def source_path(root: str | os.PathLike, key: str) -> Path | None:
    """The file of image `key` below `root`, or None when the key would leave `root`.

    Keys read from a file are untrusted: an absolute key, a `..` or `.` part, an empty part or
    a NUL is refused. The check is lexical, so a symlinked image inside `root` still works.
    """
    if not key or "\x00" in key or os.path.isabs(key):
        return None
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return None
    return Path(root, *parts)


HASH_THREADS = 8  # reading sources is I/O bound (and hashlib releases the GIL)
_READ_BLOCK = 1 << 20


def file_identity(path: Path | None) -> tuple[bytes, int]:
    """(sha256 as 64 ASCII hex bytes, size) of a file's bytes; (b"", -1) when it cannot be read."""
    if path is None:
        return b"", -1
    digest, size = hashlib.sha256(), 0
    try:
        with open(path, "rb") as handle:
            while block := handle.read(_READ_BLOCK):
                digest.update(block)
                size += len(block)
    except OSError:
        return b"", -1
    return digest.hexdigest().encode("ascii"), size


def changed_rows(
    root: str | os.PathLike, keys: list[str], rows: np.ndarray, sha256: np.ndarray, size: np.ndarray
) -> np.ndarray:
    """The `rows` whose source file below `root` no longer has the recorded sha256 and size
    (other bytes, or unreadable now but read then, or the reverse). Hashed in threads."""

    def differs(i: int) -> bool:
        path = source_path(root, keys[int(rows[i])])
        recorded = (bytes(sha256[i]), int(size[i]))
        if path is not None and recorded[1] >= 0:
            try:
                if os.stat(path).st_size != recorded[1]:
                    return True  # no need to read it
            except OSError:
                return True
        return file_identity(path) != recorded

    with ThreadPoolExecutor(HASH_THREADS) as pool:
        flags = list(pool.map(differs, range(len(rows))))
    return np.asarray(rows, dtype=np.int64)[np.asarray(flags, dtype=bool)]
