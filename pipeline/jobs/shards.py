"""Job-array shards: their state in OUT.shards/ and `fmpipe info OUT.shards/`. No torch.

Task I of N writes `OUT.shards/shard-0000I-of-0000N.h5` (`....h5.partial` until it is
complete). `fmpipe merge OUT` combines them; `fmpipe info OUT.shards/` reports progress.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..storage.format import schema
from ..storage.format.metadata import run_info
from ..storage.format.schema import PARTIAL_SUFFIX
from ..storage.format.structure import open_fmpipe
from ..storage.locks.lockholders import describe, parse, process_state
from ..storage.writing.files import merged_path, shard_name
from .manifest import MANIFEST_NAME
from .manifest import read as read_manifest
from .shardfolder import LOCK_SUFFIX, ShardFolder, holds_shards, scan_folder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardState:
    """One shard as found on disk."""

    index: int
    path: Path  # the complete file, else the partial one, else where the shard belongs
    state: str  # "complete", "partial", "starting" (its task holds the lock, no file yet), "missing" or "unreadable"
    images: int = 0  # rows of this shard (0 when unknown)
    done: int = 0  # rows marked done
    total_images: int | None = None  # images of the whole collection, from the shard's attrs
    reason: str = ""  # why a shard is unreadable (a sentence naming its file) or starting

    @property
    def label(self) -> str:
        """`shard 3 (shard-00003-of-00016.h5)`, for messages."""
        return f"shard {self.index} ({self.path.name})"


@dataclass(frozen=True)
class ShardScan:
    """The shards of one job array in a folder, indexed 0..num_shards-1, with their state."""

    names: ShardFolder  # the folder's shard names (jobs.shardfolder: which count is the array's, the strays)
    shards: list[ShardState]

    @property
    def folder(self) -> Path:
        return self.names.folder

    @property
    def num_shards(self) -> int:
        return self.names.num_shards

    def with_state(self, *states: str) -> list[ShardState]:
        return [s for s in self.shards if s.state in states]

    @property
    def total_images(self) -> int | None:
        return next((s.total_images for s in self.shards if s.total_images is not None), None)

    @property
    def done_images(self) -> int:
        return sum(s.done for s in self.shards)


def scan(folder: str | os.PathLike) -> ShardScan:
    """Find the shards in `folder` and read each one's state (cheap: attributes and done markers)."""
    names = scan_folder(folder)
    shards = []
    for shard in names.shards:
        if shard.file is not None:
            shards.append(read_state(shard.file, shard.index))
        elif shard.lock is not None:
            shards.append(_locked(names.folder / shard_name(shard.index, names.num_shards), shard.lock, shard.index))
        else:
            shards.append(ShardState(shard.index, names.folder / shard_name(shard.index, names.num_shards), "missing"))
    return ShardScan(names, shards)


def _locked(path: Path, lock: Path, index: int) -> ShardState:
    """A shard whose task took its lock but wrote no file yet: starting (loading its model), or, when
    the holder was on this machine and is gone, a task that died before writing anything."""
    try:
        holder = parse(lock.read_bytes()[:4096])
    except OSError:  # released (and removed) between the listing and now
        holder = None
    if holder is not None and holder.get("host") == socket.gethostname() and process_state(holder) == "gone":
        return ShardState(index, path, "missing", reason=f"its task ({describe(holder)}) ended before writing a file")
    return ShardState(index, path, "starting", reason=f"task started ({describe(holder)}); no file yet")


def read_state(path: Path, index: int) -> ShardState:
    """State of one shard file (a partial one may be being written by a running task)."""
    # A running task holds the write lock on its partial file; reading attributes and done
    # markers without a lock is safe for the writer and only ever shows flushed progress.
    partial = path.name.endswith(PARTIAL_SUFFIX)
    try:
        with open_fmpipe(path, structure=not partial) as file:  # a running task may be flushing a partial one
            run = run_info(file.attrs, path)
            done = int(file[schema.DONE][:].sum())
            images = int(file[schema.DONE].shape[0])
    except InputError as err:
        return ShardState(index, path, "unreadable", reason=str(err))
    except (OSError, KeyError, ValueError, RuntimeError) as err:
        return ShardState(index, path, "unreadable", reason=f"{path} cannot be read ({err}).")
    state = "complete" if run.complete and not partial and done == images else "partial"
    return ShardState(index, path, state, images, done, run.total_images)


def describe_folder(folder: str | os.PathLike) -> str:
    """Text for `fmpipe info OUT.shards/`: shards done, images done / total, what is left (tasks
    still starting, before any of them wrote a file, included)."""
    starting = _starting(Path(folder))
    if starting:
        return starting
    found = scan(folder)
    complete = found.with_state("complete")
    total = found.total_images
    lines = [
        f"{found.folder}/: {len(complete)} of {found.num_shards} shards complete; images done "
        f"{found.done_images} of {total if total is not None else '?'}",
    ]
    for shard in found.shards:
        if shard.state == "partial":
            lines.append(f"  shard {shard.index:>5}  partial      {shard.done} of {shard.images} images done")
        elif shard.state == "starting":
            lines.append(f"  shard {shard.index:>5}  starting     {shard.reason}")
        elif shard.state != "complete":
            lines.append(f"  shard {shard.index:>5}  {shard.state:<11}  {shard.reason or shard.path.name}")
    strays = found.names.strays_problem()
    if strays:
        lines.append(f"  {strays}")
    out = merged_path(found.folder)
    if len(complete) == found.num_shards and out is not None and not strays:
        lines.append(f"  all shards complete: run `fmpipe merge {out}`")
    return "\n".join(lines)


def _starting(folder: Path) -> str | None:
    """What `info` says about a shards folder whose tasks have not written a shard file or taken
    a shard's lock yet: the first task discovering the collection, or the collection found."""
    if not folder.is_dir() or holds_shards(folder):
        return None
    listed = folder / MANIFEST_NAME
    if listed.is_file():
        found = read_manifest(listed)
        count = len(found[0].keys) if found else "?"
        return (
            f"{folder}/: the job array is starting: {MANIFEST_NAME} lists {count} images; no task has started its "
            "shard yet (each takes its lock, then loads the model, then writes its file). Check again shortly, "
            "or see the job's queue state (squeue)."
        )
    if (folder / (MANIFEST_NAME + LOCK_SUFFIX)).exists():
        return f"{folder}/: the job array is starting: the first task is discovering the collection; no shard yet."
    return None
