"""The collection of a job array, discovered once: `OUT.shards/collection.json`. No torch.

Every task of an array needs the whole collection's keys (its rows are a slice of them), but a
thousand tasks walking a folder of a million files would send a billion `stat`s to a parallel
file system. So the first task to start discovers the images and publishes them here: the keys
in row order, where they came from (the folder or list file), and their sha256, which is also
the fingerprint's `keys_sha256`. The others read it and never walk the folder; tasks that start
while it is being discovered wait for it (`collection.json.lock` names the discovering task).

Publishing is atomic: the manifest is written whole to a temporary file, fsynced, then
hard-linked to its name, which succeeds for exactly one task (the others read the winner's). A
reader never sees a partly written manifest, and a damaged one fails its digest check.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import json
import logging
import os
import random
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .. import sources
from ..errors import InputError
from ..sources import Collection, keys_sha256
from ..storage.locks.lockfile import OutputLock, OutputLockedError
from ..storage.writing.files import fsync_folder, shards_folder

log = logging.getLogger(__name__)

MANIFEST_NAME = "collection.json"
FORMAT = "fmpipe-collection"
VERSION = 1
POLL_S = 0.2  # first wait for another task's discovery; doubled up to MAX_POLL_S
MAX_POLL_S = 5.0


def manifest_path(out: str | os.PathLike) -> Path:
    """`OUT.shards/collection.json`: the collection the tasks of the array writing OUT share."""
    return shards_folder(out) / MANIFEST_NAME


@dataclass(frozen=True)
class ListStamp:
    """A list file as it was when it was read: a changed list is noticed with one `stat`."""

    size: int
    mtime_ns: int
    sha256: str


def collection_for(images: str, out: str, *, write: bool = True) -> Collection:
    """The collection of the job array writing OUT: its manifest's, else discovered here and
    published (not with `write=False`, a dry run). InputError when this task's IMAGES is not the
    manifest's source, or the list changed since it was read."""
    path = manifest_path(out)
    found = read(path)
    if found is None and not write:
        return sources.collect(images)
    if found is None:
        found = _discover_once(images, path)
    collection, stamp = found
    if not collection.keys:
        return collection  # not published: the caller reports the empty collection
    _check_source(collection, stamp, images, path)
    return collection


def _discover_once(images: str, path: Path) -> tuple[Collection, ListStamp | None]:
    """Discover and publish under `path`'s lock; a task that finds the lock taken waits for the
    manifest instead of walking the folder too (tasks of an array start together). A holder
    that dies drops the lock, and the next task to try takes it over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    delay_s = POLL_S
    while True:
        try:
            lock = OutputLock.acquire(path)
        except OutputLockedError:
            time.sleep(delay_s * random.uniform(0.5, 1.5))  # jitter: a thousand tasks do not poll in step
            delay_s = min(2 * delay_s, MAX_POLL_S)
            found = read(path)
            if found is not None:
                return found
            continue
        try:
            found = read(path)  # published while this task waited for the lock
            if found is not None:
                return found
            collection = sources.collect(images)
            if not collection.keys:
                return collection, None
            stamp = _stamp(Path(collection.source)) if collection.kind == "list" else None
            return publish(collection, stamp, path)
        finally:
            lock.release()


def publish(collection: Collection, stamp: ListStamp | None, path: Path) -> tuple[Collection, ListStamp | None]:
    """Write the manifest unless another task did first; returns the one that is there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        _write(tmp, collection, stamp)
        try:
            os.link(tmp, path)  # fails if the name exists: exactly one task wins
        except FileExistsError:
            log.info("the image collection of this job array was discovered by another task: %s", path)
            return read(path) or (collection, stamp)
        except OSError as err:  # hard links unsupported: replace() is atomic, though not exclusive
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            if path.exists():
                return read(path) or (collection, stamp)
            os.replace(tmp, path)
        fsync_folder(path.parent)
        log.info("published the image collection (%d images) for the other tasks: %s", len(collection.keys), path)
        return collection, stamp
    finally:
        tmp.unlink(missing_ok=True)


def read(path: Path) -> tuple[Collection, ListStamp | None] | None:
    """The manifest at `path`, checked; None when there is none."""
    try:
        with open(path, encoding="ascii") as handle:
            raw = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise _damaged(path, f"cannot be read ({err})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or raw.get("version") != VERSION:
        raise _damaged(path, f"is not an fmpipe collection manifest of version {VERSION}")
    keys = raw.get("keys")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise _damaged(path, "holds no list of keys")
    if len(keys) != raw.get("num_keys") or keys_sha256(keys) != raw.get("keys_sha256"):
        raise _damaged(path, "does not match its own digest")
    stamp = ListStamp(**raw["list"]) if raw.get("list") else None
    return Collection(keys, raw["root"], raw["source"], raw["kind"]), stamp


def _write(tmp: Path, collection: Collection, stamp: ListStamp | None) -> None:
    record = {
        "format": FORMAT,
        "version": VERSION,
        "kind": collection.kind,
        "source": collection.source,
        "root": collection.root,
        "num_keys": len(collection.keys),
        "keys_sha256": collection.keys_sha256,
        "list": None if stamp is None else dataclasses.asdict(stamp),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "keys": collection.keys,
    }
    with open(tmp, "x", encoding="ascii") as handle:  # ensure_ascii: undecodable names round-trip
        json.dump(record, handle, indent=0)
        handle.flush()
        os.fsync(handle.fileno())


def _check_source(collection: Collection, stamp: ListStamp | None, images: str, path: Path) -> None:
    given = str(Path(images).resolve())
    start_over = (
        f"Give every task of the array the same IMAGES; to start over with another collection, remove "
        f"{path.parent}/ once no task of the old array runs (docs/slurm.md)."
    )
    if given != collection.source:
        raise InputError(
            f"{path} holds the images of {collection.kind} {collection.source} (found by the first task of this "
            f"job array), but this task was given {images}. {start_over}"
        )
    if stamp is None:
        return
    now = _stamp(Path(given), known=stamp)
    if now != stamp:
        raise InputError(
            f"the image list {given} changed since the first task of this job array read it ({path}). {start_over}"
        )


def _stamp(path: Path, known: ListStamp | None = None) -> ListStamp:
    """Size, mtime and sha256 of a list file; the sha256 is only computed when size or mtime differ
    from `known` (a list touched but not changed still matches)."""
    try:
        info = path.stat()
        if known is not None and (info.st_size, info.st_mtime_ns) == (known.size, known.mtime_ns):
            return known
        digest, _ = sources.file_sha256(path)
    except OSError as err:
        raise InputError(f"cannot read the image list {path}: {err.strerror or err}.") from None
    if known is not None and digest == known.sha256 and info.st_size == known.size:
        return known
    return ListStamp(info.st_size, info.st_mtime_ns, digest)


def _damaged(path: Path, what: str) -> InputError:
    return InputError(
        f"{path} {what}. Remove it once no task of this job array runs (the next task discovers the "
        "images again); see docs/slurm.md."
    )
