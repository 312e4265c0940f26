"""A job array's shards folder, `OUT.shards/`, read by its names alone: each shard's file, partial
file and task lock, which `--num-shards` is the job array's, and the strays of another count. The
one scanner `fmpipe info`, `verify` and `merge` read a shards folder with. No torch.

The policy, one for every command: a shards folder holds one job array. Its `--num-shards` is the
count most shard names (files, partial files and task locks) carry; on a tie, the count of the
newest name (the array started last). Names of any other count are strays, left by an earlier
array: each command names them in the same words (`ShardFolder.strays_problem`) and none reads
them as the array's shards: `info` leaves them out of the progress, `verify` checks only the
array's shards and reports the strays as a problem (exit 1), and `merge` refuses until they are
removed, since which array the user wants is theirs to say.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..storage.writing.files import SHARD_RE

LOCK_SUFFIX = ".lock"  # storage.locks.lockfile's OUT.lock: a task takes its shard's before loading its model
STRAYS_NAMED = 4  # stray names a message lists before "and N more"


@dataclass(frozen=True)
class ShardNames:
    """What the folder holds for one shard of the array (None: not there)."""

    index: int
    complete: Path | None = None  # shard-0000I-of-0000N.h5
    partial: Path | None = None  # shard-0000I-of-0000N.h5.partial, while its task writes it
    lock: Path | None = None  # shard-0000I-of-0000N.h5.lock, while its task runs

    @property
    def file(self) -> Path | None:
        """The shard's file: the complete one, else the partial one."""
        return self.complete or self.partial


@dataclass(frozen=True)
class ShardFolder:
    """The shards of one job array in `folder`, indexed 0..num_shards-1, and the strays beside them."""

    folder: Path
    num_shards: int
    shards: list[ShardNames]
    strays: list[Path]  # names of shards of another --num-shards, sorted

    @property
    def missing(self) -> list[int]:
        """Indices of the array's shards without a file (yet)."""
        return [s.index for s in self.shards if s.file is None]

    def strays_problem(self) -> str | None:
        """The one message for the strays (None without any): their names and what to do."""
        if not self.strays:
            return None
        named = ", ".join(p.name for p in self.strays[:STRAYS_NAMED])
        more = f" and {len(self.strays) - STRAYS_NAMED} more" if len(self.strays) > STRAYS_NAMED else ""
        others = sorted({_count(p) for p in self.strays} - {self.num_shards})
        remove = [f"{self.folder}/shard-*-of-{n:05d}.h5*" for n in others]
        remove += [str(p) for p in self.strays if _count(p) == self.num_shards]  # an index past the count
        return (
            f"{self.folder}/ holds shard files that are not part of its job array of {self.num_shards} shards "
            f"(another --num-shards, left from an earlier array): {named}{more}. They are not read as this "
            f"array's shards; once no task of theirs runs, remove them (rm {' '.join(remove)}), then merge."
        )


def scan_folder(folder: str | os.PathLike) -> ShardFolder:
    """The shard names in `folder` (one directory listing and a stat per name, no file opened);
    InputError when it is not a folder or holds no shard name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(
            f"no shards folder {folder}/. Run the job array first (fmpipe extract IMAGES OUT "
            "--shard-index I --num-shards N writes OUT.shards/)."
        )
    found = _names(folder)
    if not found:
        raise InputError(
            f"{folder}/ holds no shard files (shard-0000I-of-0000N.h5): run the job array first, "
            "or give an fmpipe file."
        )
    num_shards = _array_count(found)
    shards = [ShardNames(index, **found.get((index, num_shards), {})) for index in range(num_shards)]
    strays = sorted(path for (_, n), names in found.items() if n != num_shards for path in names.values())
    strays += sorted(path for (i, n), names in found.items() if n == num_shards and i >= n for path in names.values())
    return ShardFolder(folder, num_shards, shards, strays)


def holds_shards(folder: Path) -> bool:
    """Whether `folder` is a folder holding any shard name (a file, partial file or task lock)."""
    return folder.is_dir() and bool(_names(folder))


def _names(folder: Path) -> dict[tuple[int, int], dict[str, Path]]:
    """(index, count) → {"complete" | "partial" | "lock": path} of every shard name in `folder`."""
    found: dict[tuple[int, int], dict[str, Path]] = {}
    for entry in folder.iterdir():
        lock = entry.name.endswith(LOCK_SUFFIX)
        match = SHARD_RE.match(entry.name.removesuffix(LOCK_SUFFIX) if lock else entry.name)
        if match and not (lock and match.group(3)):
            kind = "lock" if lock else "partial" if match.group(3) else "complete"
            found.setdefault((int(match.group(1)), int(match.group(2))), {})[kind] = entry
    return found


def _array_count(found: dict[tuple[int, int], dict[str, Path]]) -> int:
    """The job array's --num-shards: the count most names carry; on a tie, the newest name's."""
    names = Counter(n for (_, n), kinds in found.items() for _ in kinds)
    newest = {n: max(_mtime(p) for (_, m), kinds in found.items() if m == n for p in kinds.values()) for n in names}
    return max(names, key=lambda n: (names[n], newest[n], n))


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:  # removed since the listing (a lock released, a partial file renamed)
        return 0.0


def _count(path: Path) -> int:
    """The --num-shards a shard name carries."""
    name = path.name.removesuffix(LOCK_SUFFIX)
    return int(SHARD_RE.match(name).group(2))
