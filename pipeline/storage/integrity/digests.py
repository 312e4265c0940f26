"""Source files against the digests recorded at extraction (`images/source_sha256`, `source_size`). No torch.

Keys come from the file and are untrusted: a key is joined to the images root only through
`sources.source_path`, which refuses a key that would leave the root. Files are hashed in the
verifier's threads (hashlib releases the GIL), a bounded number at a time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import h5py
import numpy as np

from ...sources import UNREACHABLE, source_path, source_state
from ..format import schema
from .chunks import Window

KEY_BLOCK = 4096  # keys and digests read per step


@dataclass
class SourceCheck:
    """What checking one file's sources found."""

    checked: int = 0
    unchecked: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)  # (row, what is wrong)
    warnings: list[str] = field(default_factory=list)


def recorded_rows(file: h5py.File, done: np.ndarray) -> np.ndarray | None:
    """Rows that are done and whose source was read at extraction (size ≥ 0); None without digests."""
    if schema.SOURCE_SHA256 not in file or schema.SOURCE_SIZE not in file:
        return None
    return np.flatnonzero(done & (file[schema.SOURCE_SIZE][:] >= 0))


def check_sources(
    file: h5py.File, rows: np.ndarray, root: str | None, window: Window, tick: Callable[[int], None]
) -> SourceCheck:
    """Hash the source of each of `rows` below `root` and compare with its recorded digest and size."""
    result = SourceCheck()
    if root is None or not os.path.isdir(root):
        result.unchecked = len(rows)
        if len(rows):
            result.warnings.append(
                f"{len(rows)} sources not checked: the images folder {root} is not there "
                "(pass --images-root DIR if the images moved)"
            )
        return result
    for lo in range(0, file[schema.KEY].shape[0], KEY_BLOCK):
        block = rows[(rows >= lo) & (rows < lo + KEY_BLOCK)]
        if not len(block):
            continue
        keys = file[schema.KEY][lo : lo + KEY_BLOCK]
        digests = file[schema.SOURCE_SHA256][lo : lo + KEY_BLOCK]
        sizes = file[schema.SOURCE_SIZE][lo : lo + KEY_BLOCK]
        for row in block.tolist():
            path = source_path(root, schema.text(keys[row - lo]))
            if path is None:
                result.problems.append((row, "its key leaves the images root; the source was not read"))
                continue
            recorded = (bytes(digests[row - lo]).decode("ascii", "replace"), int(sizes[row - lo]))
            window.submit(_handler(result, row, tick), source_state, path, *recorded)
    window.drain()
    if result.unchecked:
        result.warnings.append(
            f"{result.unchecked} of {len(rows)} sources were not found below {root} or not readable; "
            "they were not checked (pass --images-root DIR if the images moved)"
        )
    return result


def _handler(result: SourceCheck, row: int, tick: Callable[[int], None]) -> Callable[[str | None], None]:
    def handle(state: str | None) -> None:
        tick(1)
        if state == UNREACHABLE:
            result.unchecked += 1
            return
        result.checked += 1
        if state:
            result.problems.append((row, state))

    return handle
