"""Decodes images in parallel worker processes and yields batches of uint8 pixels.

Normalisation (mean/std) happens on the device, so only uint8 crosses to the GPU.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..decoding import DEFAULT_MAX_PIXELS, DecodeError, decode_bytes, read_source

PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)


@dataclass
class Batch:
    """One batch of consecutive pending rows.

    rows: (B,) int64 row of each image in the shard; pixels: (B_ok, H, W, 3) uint8 for the
    rows in `ok_rows` (same order); failures: (row, reason) for images that failed.
    """

    rows: np.ndarray
    ok_rows: np.ndarray
    pixels: torch.Tensor
    orig_hw: np.ndarray  # (B, 2) int32, -1 for failures
    failures: list[tuple[int, str]]
    source_sha256: np.ndarray  # (B,) S64 hex sha256 of each source file's bytes (b"" if unread)
    source_size: np.ndarray  # (B,) int64 bytes of each source file (-1 if unread)

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True) so the host→device copy can be async."""
        self.pixels = self.pixels.pin_memory()
        return self


class _ImageDataset(Dataset):
    def __init__(self, root: str, keys: Sequence[str], rows: Sequence[int], size_hw, max_pixels):
        self.root, self.keys, self.rows = root, keys, rows
        self.size_hw, self.max_pixels = tuple(size_hw), max_pixels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> _Item:
        row = self.rows[i]
        try:
            source = read_source(os.path.join(self.root, self.keys[row]))
        except DecodeError as err:
            return _Item(row, reason=str(err))
        try:
            decoded = decode_bytes(source.data, self.size_hw, self.max_pixels)
        except DecodeError as err:
            return _Item(row, reason=str(err), sha256=source.sha256, size=source.size)
        except Exception as err:  # one bad image must never stop the run
            reason = f"unexpected decoder error: {type(err).__name__}: {err}"
            return _Item(row, reason=reason, sha256=source.sha256, size=source.size)
        return _Item(row, decoded.pixels, decoded.orig_hw, None, source.sha256, source.size)


@dataclass
class _Item:
    """One decoded (or failed) image, as a worker hands it to the collate function."""

    row: int
    pixels: np.ndarray | None = None  # (H, W, 3) uint8
    orig_hw: tuple[int, int] = (-1, -1)
    reason: str | None = None  # why it failed
    sha256: str = ""
    size: int = -1


def _collate(items: list[_Item]) -> Batch:
    ok = [it for it in items if it.pixels is not None]
    if ok:
        pixels = torch.from_numpy(np.stack([it.pixels for it in ok]))
    else:
        pixels = torch.empty((0, 0, 0, 3), dtype=torch.uint8)
    return Batch(
        rows=np.array([it.row for it in items], dtype=np.int64),
        ok_rows=np.array([it.row for it in ok], dtype=np.int64),
        pixels=pixels,
        orig_hw=np.array([it.orig_hw for it in items], dtype=np.int32).reshape(-1, 2),
        failures=[(it.row, it.reason) for it in items if it.pixels is None],
        source_sha256=np.array([it.sha256.encode("ascii") for it in items], dtype="S64"),
        source_size=np.array([it.size for it in items], dtype=np.int64),
    )


def _aligned_batches(rows: Sequence[int], batch_size: int, offset: int) -> list[list[int]]:
    """Dataset positions grouped by the collection-wide batch (row + offset) // batch_size."""
    batches: list[list[int]] = []
    last = None
    for position, row in enumerate(rows):
        block = (row + offset) // batch_size
        if block != last:
            batches.append([])
            last = block
        batches[-1].append(position)
    return batches


def _worker_init(_: int, parent: int) -> None:
    _die_with_parent(parent)
    torch.set_num_threads(1)


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel kills this decode worker when the extract process dies. torch's own
    watchdog starts only after worker_init_fn returns, so a parent killed before that left
    the worker waiting forever (seen in the kill test)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return  # not Linux/glibc: torch's watchdog still ends the worker once it runs
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)


def iter_batches(
    root: str,
    keys: Sequence[str],
    rows: Sequence[int],
    size_hw: tuple[int, int],
    batch_size: int,
    workers: int,
    pin_memory: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    offset: int = 0,
) -> Iterator[Batch]:
    """Batches of the given rows, in order, decoded by `workers` processes (0: in-process).

    A batch never crosses a multiple of `batch_size` in the whole collection (row + offset),
    so a resumed or sharded run computes the same batches as one uninterrupted run.
    """
    rows = list(rows)
    dataset = _ImageDataset(root, keys, rows, size_hw, max_pixels)
    loader = DataLoader(
        dataset,
        batch_sampler=_aligned_batches(rows, batch_size, offset),
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=pin_memory,
        worker_init_fn=functools.partial(_worker_init, parent=os.getpid()) if workers else None,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    yield from loader


def normalize(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(B, H, W, 3) uint8 → (B, 3, H, W) float32, (x/255 - mean) / std, on pixels' device."""
    x = pixels.permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return x.sub_(m).div_(s)
