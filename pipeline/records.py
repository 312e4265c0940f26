"""Records that cross from one part of the pipeline to another: a stage's shape and a batch's output.

Shared by extraction (which fills them), storage (which writes and reads them) and the faces; no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StageInfo:
    """One stage: its module, channels, stride and per-image (C, H, W) at the run's size."""

    index: int
    module: str
    channels: int
    stride: int
    height: int
    width: int
    capture: str  # "forward_intermediates" or "forward_hook"

    @property
    def shape(self) -> tuple[int, int, int]:
        """Per-image (C, H, W)."""
        return self.channels, self.height, self.width

    def nbytes(self, itemsize: int = 2) -> int:
        """Bytes per image at the given storage item size (2 for float16)."""
        return self.channels * self.height * self.width * itemsize


@dataclass
class BatchResult:
    """One batch's output, on the host. Arrays are aligned with `ok_rows`."""

    rows: np.ndarray  # (B,) int64 rows of the batch, failures included
    ok_rows: np.ndarray  # (B_ok,) int64
    orig_hw: np.ndarray  # (B, 2) int32
    failures: list[tuple[int, str]]
    data: dict[int, np.ndarray]  # stage → (B_ok, C, H, W) storage dtype, C-contiguous
    stats: dict[int, np.ndarray]  # stage → (3, B_ok, C) float32: min, max, mean
    source_sha256: np.ndarray | None = None  # (B,) S64 hex sha256 of each source file (b"" if unread)
    source_size: np.ndarray | None = None  # (B,) int64 bytes of each source file (-1 if unread)
