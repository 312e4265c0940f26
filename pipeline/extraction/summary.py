"""What a run did (`ExtractSummary`, printed by `fmpipe extract`), and the answer for an output that
is already complete, found without building the model. No torch: a rerun on a finished output
answers in well under a second.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from .. import sources
from ..config import ExtractConfig
from ..jobs import manifest
from ..records import StageInfo
from ..storage.reading.store import open_store
from ..storage.writing.files import shard_output
from ..storage.writing.output import finished_run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractSummary:
    """What a run did; `fmpipe extract` prints it."""

    out: Path
    device: str
    images: int  # images in this shard
    stages: list[StageInfo]
    input_hw: tuple[int, int]
    shard_start: int = 0  # row of this shard's first image in the whole collection
    done_before: int = 0  # already done when the run started (resume)
    stored: int = 0  # stored by this run
    failed: int = 0  # failures recorded by this run
    redone: int = 0  # done rows computed again because their source changed
    mb_written: float = 0.0
    seconds: float = 0.0
    dry_run: bool = False
    timings: dict = field(default_factory=dict)
    nan_stages: list[int] = field(default_factory=list)
    already_complete: bool = False  # OUT was complete with this configuration: nothing was done
    failed_before: int = 0  # failures recorded by earlier runs (reported for a complete output)
    planned_bytes: tuple[int, int] = (0, 0)  # (maps, everything else) uncompressed, for --dry-run
    encoding: str = ""  # the storage choice in words

    @property
    def bound_by(self) -> str:
        return bound_by(self.timings)

    def phases(self) -> str:
        return phases(self.timings)

    @property
    def images_per_s(self) -> float:
        return (self.stored + self.failed) / self.seconds if self.seconds else 0.0


def phases(timings: dict) -> str:
    """One line of seconds per phase and the step that bounded the run, for the final summary."""
    names = (
        ("decode wait", "decode_wait_s"),
        ("compute", "compute_s"),
        ("host copy", "host_copy_s"),
        ("write wait", "write_wait_s"),
        ("compress (CPU)", "compress_s"),
        ("write", "write_s"),
    )
    parts = ", ".join(f"{label} {timings[key]:.1f} s" for label, key in names if key in timings)
    return f"{parts}; bound by {bound_by(timings)}"


def bound_by(timings: dict) -> str:
    """Which step set the pace: the main loop waiting on the writer or on decoding, else compute."""
    total = timings.get("total_s") or 1.0
    if timings.get("write_wait_s", 0.0) > 0.1 * total:
        return "writing (compression and disk)"
    if timings.get("decode_wait_s", 0.0) > 0.1 * total:
        return "decoding"
    return "compute"


def already_complete(config: ExtractConfig) -> ExtractSummary | None:
    """The summary of a rerun whose output is already complete with this configuration and these
    images (nothing to do), decided from the file's attributes; None when the run must go on (or
    only the full check, with the model built, can tell)."""
    out = shard_output(config.out, config.shard_index, config.num_shards)
    if config.overwrite or config.dry_run or config.null_writer or not out.is_file():
        return None
    if config.num_shards > 1:
        collection = manifest.collection_for(config.images, config.out, write=False)
    else:
        collection = sources.collect(config.images)
    run = finished_run(out, config, collection) if collection.keys else None
    if run is None:
        return None
    with open_store(out) as store:
        stored = [StageInfo(**{f.name: getattr(s, f.name) for f in dataclasses.fields(StageInfo)}) for s in store.maps]
        failed = len(store.failures)
        rows = len(store)
    log.info("%s is already complete with this configuration and these images; nothing to do", out)
    return ExtractSummary(
        out=out,
        device="-",
        images=rows,
        stages=stored,
        input_hw=run.input_size,
        shard_start=run.shard_start,
        done_before=rows,
        failed_before=failed,
        already_complete=True,
    )
