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


def shard_bounds(count: int, shard_index: int, num_shards: int, unit: int = 1) -> tuple[int, int]:
    """[start, stop) of shard `shard_index` of `num_shards`: balanced contiguous slices.

    Slices are balanced in whole `unit`s (the batch size), so every shard starts on a
    batch boundary of the whole collection: a sharded run then computes exactly the
    batches an unsharded run computes, and stores bit-identical maps (CPU and GPU kernels
    may round differently for different batch shapes). The first shards get one extra unit.
    """
    units = -(-count // unit)
    base, extra = divmod(units, num_shards)
    start = shard_index * base + min(shard_index, extra)
    stop = start + base + (1 if shard_index < extra else 0)
    return min(count, start * unit), min(count, stop * unit)
