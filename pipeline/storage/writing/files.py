"""Where outputs live and how they appear: `OUT.partial` while written, `OUT.shards/` for job
arrays, and `publish()`, which makes a finished file visible under its final name atomically.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from ...errors import write_failed
from ..format.schema import PARTIAL_SUFFIX

SPACE_MARGIN = 1 << 20  # bytes kept free beyond an estimate: HDF5's metadata, the file system's own

SHARD_RE = re.compile(r"^shard-(\d{5,})-of-(\d{5,})\.h5(\.partial)?$")


def partial_path(out: str | os.PathLike) -> Path:
    """`OUT.partial`: the file while it is written; renamed to OUT when complete."""
    return Path(f"{os.fspath(out)}{PARTIAL_SUFFIX}")


def shards_folder(out: str | os.PathLike) -> Path:
    """`OUT.shards/`: where the tasks of a job array writing OUT put their shards."""
    return Path(f"{os.fspath(out)}.shards")


def shard_name(index: int, num_shards: int) -> str:
    """File name of shard `index` of `num_shards` (`shard_output` puts it in `shards_folder`)."""
    return f"shard-{index:05d}-of-{num_shards:05d}.h5"


def merged_path(folder: str | os.PathLike) -> Path | None:
    """OUT for a shards folder `OUT.shards`; None when the name does not end in `.shards`."""
    text = os.fspath(folder).rstrip("/")
    return Path(text[: -len(".shards")]) if text.endswith(".shards") and len(text) > len(".shards") else None


def shard_output(out: str | os.PathLike, shard_index: int, num_shards: int) -> Path:
    """OUT itself for one shard; OUT.shards/shard-0000I-of-0000N.h5 for a job array."""
    if num_shards == 1:
        return Path(out)
    return shards_folder(out) / shard_name(shard_index, num_shards)


def publish(tmp: Path, out: Path) -> None:
    """fsync a finished file, rename it to `out` and fsync the folder: a reader (or a crash)
    sees either no `out` or the whole file, never half of it."""
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, out)
    fsync_folder(out.parent if str(out.parent) else Path("."))


def fsync_folder(folder: Path) -> None:
    """Make a rename or link in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def reserve_space(path: Path, need_bytes: int, then: str) -> None:
    """Refuse, before HDF5 writes a byte, a write of about `need_bytes` to `path` that its file system
    (or the user's quota) has no room for: the bytes are allocated in a scratch file beside `path`
    (`PATH.space`), which is removed at once, leaving the room to HDF5. A full disk inside HDF5 leaves
    a file it cannot even close (and h5py sometimes crashes at exit); this says so cleanly instead.
    Raises the disk-full RunFailure; `then` says what to do next."""
    scratch = path.with_name(path.name + ".space")
    need = need_bytes + SPACE_MARGIN
    try:
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            os.posix_fallocate(fd, 0, need)
        finally:
            os.close(fd)
            scratch.unlink(missing_ok=True)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise write_failed(path, err, f"about {need / 1e6:.1f} MB more were needed; {then}") from err
        return  # no scratch file here (a read-only folder, ...): the write itself will tell
