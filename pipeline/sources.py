"""Finds images below a folder; keys are sorted relative POSIX paths. Selects a shard's slice."""

from __future__ import annotations

import os
from pathlib import Path

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


def shard_bounds(count: int, shard_index: int, num_shards: int) -> tuple[int, int]:
    """[start, stop) of shard `shard_index` of `num_shards`: balanced contiguous slices.

    The first `count % num_shards` shards get one extra key.
    """
    base, extra = divmod(count, num_shards)
    start = shard_index * base + min(shard_index, extra)
    stop = start + base + (1 if shard_index < extra else 0)
    return start, stop
