"""What `fmpipe verify` ran with and what it found: `VerifyConfig`, each `Problem`, the `VerifyReport`
with its counts and summary line, and the progress display. No torch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import progress
from ..errors import InputError, UsageError

log = logging.getLogger(__name__)

MAX_PROBLEMS_KEPT = 1000  # more are counted, not kept


@dataclass(frozen=True)
class VerifyConfig:
    """What `fmpipe verify` checks; `pipeline.verify` and the CLI take their defaults from here."""

    path: str  # an fmpipe file (single, merged, copied) or a shards folder OUT.shards/
    recompute: int = 0  # rows run through the model again (0: none)
    images_root: str | None = None  # where the sources are now (default: the file's images_root)
    seed: int = 0  # picks the rows to recompute
    workers: int = 0  # threads reading, decoding and hashing (0: one per core)
    # --recompute never runs code a file names: a `module:factory` model is built only when the
    # user names it (`model`, equal to the recorded one) or says to trust the file (`trust_model`).
    model: str | None = None
    trust_model: bool = False

    def __post_init__(self) -> None:
        for name in ("recompute", "workers"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{name} must be 0 or more, got {getattr(self, name)}.")
        if self.images_root is not None and not Path(self.images_root).is_dir():
            raise InputError(f"--images-root {self.images_root} is not a folder; give the folder the images are in.")


@dataclass(frozen=True)
class Problem:
    """One thing found wrong: what, and where (file of a shards folder, stage, image key)."""

    what: str
    stage: int | str | None = None  # a stage index, or "layer NAME"
    key: str | None = None
    file: str | None = None

    def __str__(self) -> str:
        where = [
            self.file or "",
            f"stage {self.stage}" if isinstance(self.stage, int) else (self.stage or ""),
            f"image {self.key}" if self.key is not None else "",
        ]
        where = ", ".join(w for w in where if w)
        return f"{where}: {self.what}" if where else self.what


@dataclass
class VerifyReport:
    """What `fmpipe verify` found and how much it checked."""

    path: Path
    problems: list[Problem] = field(default_factory=list)  # the first MAX_PROBLEMS_KEPT
    problem_count: int = 0
    warnings: list[str] = field(default_factory=list)  # what could not be checked, and why
    files: int = 0
    chunks: int = 0
    rows: int = 0  # done, not failed rows whose maps were checked
    bytes_checked: int = 0  # uncompressed bytes of maps decoded and compared with their statistics
    sources_checked: int = 0
    sources_unchecked: int = 0
    recomputed: int = 0
    seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter, repr=False)

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def add(self, problem: Problem) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS_KEPT:
            self.problems.append(problem)

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    def summary(self) -> str:
        """One line: GB of maps checked, chunks, rows, sources, seconds, GB/s, problems."""
        gb = self.bytes_checked / 1e9
        rate = gb / self.seconds if self.seconds else 0.0
        recomputed = f", {self.recomputed} rows recomputed" if self.recomputed else ""
        return (
            f"{self.path}: {gb:.3f} GB of maps checked ({self.chunks} chunks, {self.rows} rows), "
            f"{self.sources_checked} sources hashed ({self.sources_unchecked} not checked){recomputed}; "
            f"{self.seconds:.1f} s, {rate:.2f} GB/s; {self.problem_count} problems"
        )


class Progress(progress.Progress):
    """verify's progress over one pass (a stage's bytes, the sources' files): a bar that goes
    when done, or "WHAT: N % checked" (`pipeline.progress` draws and logs it)."""

    def __init__(self, what: str, total: int, unit: str = "B"):
        super().__init__(
            total,
            progress.Bar(what, unit, unit_scale=True, leave=False),
            lambda done: f"{what}: {100 * done / max(1, total):.0f} % checked",
            log,
        )
