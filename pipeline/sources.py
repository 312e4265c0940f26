"""Finds the images of a run, from a folder (keys: sorted relative POSIX paths) or a list file
(keys in the list's order), selects a shard's slice, and maps keys back to files safely."""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"})


@dataclass(frozen=True)
class Collection:
    """The images of one run, in row order."""

    keys: list[str]  # relative POSIX paths below `root`, or absolute ones inside it (lists only)
    root: str  # absolute folder the keys resolve against: the file's images_root
    source: str  # the folder or list file given as IMAGES, absolute
    kind: str  # "folder" or "list"

    @property
    def keys_sha256(self) -> str:
        return keys_sha256(self.keys)


def collect(images: str | os.PathLike) -> Collection:
    """The images named by IMAGES: a folder (searched recursively, keys sorted) or a regular file
    listing image paths (keys in the list's order, see `read_list`)."""
    path = Path(images)
    if path.is_file():
        keys, root = read_list(path)
        return Collection(keys, root, str(path.resolve()), "list")
    keys = discover(path)
    return Collection(keys, str(path.resolve()), str(path.resolve()), "folder")


def keys_sha256(keys: list[str]) -> str:
    """sha256 of the keys in row order (one a line, UTF-8): names the collection and its order.

    The one key-list hash: extract records it as the fingerprint's `keys_sha256`; merge and verify
    hash the stored keys with it. A file name that is not UTF-8 keeps its bytes (surrogateescape);
    for any other key the bytes are plain UTF-8's, as every fmpipe version hashed them."""
    return hashlib.sha256("\n".join(keys).encode("utf-8", "surrogateescape")).hexdigest()


def discover(root: str | os.PathLike) -> list[str]:
    """Sorted keys (POSIX paths relative to `root`) of every image file below `root`.

    Recursive; follows symlinked files but not symlinked folders (no loops); a folder
    named like an image is skipped. Hidden files and folders (".name") are skipped.
    """
    base = Path(root)
    if not base.exists():
        raise InputError(f"image folder {str(base)!r} does not exist.")
    if not base.is_dir():
        raise InputError(
            f"{str(base)!r} is neither a folder nor a regular file; give the folder that holds the images "
            "or a text file listing them."
        )
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


def read_list(path: Path) -> tuple[list[str], str]:
    """(keys, root) of a list file: one image path a line, relative to the list's folder or
    absolute; blank lines and lines starting with `#` are skipped, whitespace around a path is
    stripped, the order is kept.

    A key is its line as a normalised POSIX path (`sub/./a.png` → `sub/a.png`, `/data//b.png` →
    `/data/b.png`, `../lists/a.png` in lists/ → `a.png`); a relative line that leads out of the
    list's folder (`../x.png`) becomes absolute. The root is the list's folder, unless an absolute
    key lies outside it: then the root is the deepest folder holding every listed image and every
    key is absolute (a key must lie inside its root, see `source_path`). The same image listed
    twice is an InputError naming both lines; a listed file that is missing or unreadable becomes
    a failure row when it is read.
    """
    folder = os.path.abspath(path.parent)
    keys: list[str] = []
    seen: dict[str, int] = {}  # absolute path -> line number
    for number, text in _list_lines(path):
        key = _list_key(text, folder, path, number)
        full = key if key.startswith("/") else posixpath.join(folder, key)
        if full in seen:
            raise InputError(
                f"{path}: lines {seen[full]} and {number} both name {full}; list each image once (keys must be unique)."
            )
        seen[full] = number
        keys.append(key)
    if all(not key.startswith("/") or _inside(key, folder) for key in keys):
        return keys, folder
    fulls = list(seen)
    return fulls, posixpath.commonpath([posixpath.dirname(full) for full in fulls])


def _list_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of each line naming an image."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise InputError(
            f"{str(path)!r} is an image file; give the folder that holds the images or a text file listing them."
        )
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as err:
        raise InputError(f"cannot read the image list {str(path)!r}: {err.strerror or err}.") from None
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise InputError(
            f"{str(path)!r} is not a UTF-8 text file (line {line}); a list of images has one path a line."
        ) from None
    lines = []
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines: \x0c etc. may be in names
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "\x00" in line:
            raise InputError(f"{path}, line {number}: a NUL byte; a list of images has one path a line.")
        lines.append((number, line))
    return lines


def _list_key(text: str, folder: str, path: Path, number: int) -> str:
    """The key of one list line (see `read_list`)."""
    key = posixpath.normpath(text)
    if text.startswith("/"):
        return "/" + key.lstrip("/")  # normpath keeps a leading "//"
    if key == ".":
        raise InputError(f"{path}, line {number}: {text!r} names the list's folder, not an image.")
    if key == ".." or key.startswith("../"):  # climbs out, maybe back in: `../imgs/a.png` from imgs/
        full = posixpath.normpath(posixpath.join(folder, key))
        return posixpath.relpath(full, folder) if _inside(full, folder) else full
    return key


# Shards are cut at multiples of this many images, whatever --batch-size is: a shard's rows
# depend only on (collection, index, count), so a shard resumed with another batch size
# still holds exactly its own images. With a batch size that divides it (the default 16
# does), a job array computes the very batches of an unsharded run (bit-identical maps).
SHARD_UNIT = 16


def shard_bounds(count: int, shard_index: int, num_shards: int) -> tuple[int, int]:
    """[start, stop) of shard `shard_index` of `num_shards`: balanced contiguous slices.

    Invariants (tests/test_properties.py checks them for every count and shard count):
    - contiguous, disjoint and covering: shard 0 starts at 0, each shard starts where the one
      before stopped, and the last stops at `count`;
    - cut in whole SHARD_UNITs: every start is a multiple of SHARD_UNIT (or `count`, for an
      empty shard at the end);
    - balanced: the largest shard holds at most one SHARD_UNIT more images than the smallest.

    Every shard gets `units // num_shards` whole units and the last `units % num_shards` shards
    one more, so the collection's last, partial unit falls in a shard with an extra unit (the
    first shards getting them instead left 32 + 1 images for 33 in 2 shards). With fewer units
    than shards, the first shards get one unit each and the others are empty. The bounds never
    depend on options such as the batch size, so any rerun of a task plans the same rows.
    """
    units = -(-count // SHARD_UNIT)
    base, extra = divmod(units, num_shards)
    first_extra = num_shards - extra if base else 0  # shards from here on get `base + 1` units
    start = shard_index * base + max(0, min(shard_index, extra + first_extra) - first_extra)
    stop = start + base + (1 if first_extra <= shard_index < first_extra + extra else 0)
    return min(count, start * SHARD_UNIT), min(count, stop * SHARD_UNIT)


def source_path(root: str | os.PathLike, key: str) -> Path | None:
    """The file of image `key` below `root`, or None when the key would leave `root`.

    Keys read from a file are untrusted: a `..` or `.` part, an empty part, a NUL, or an absolute
    key outside `root` is refused (a list's absolute keys lie inside its recorded root). The check
    is lexical, so a symlinked image inside `root` still works.
    """
    if not key or "\x00" in key:
        return None
    absolute = key.startswith("/")
    parts = key[1:].split("/") if absolute else key.split("/")
    if any(part in ("", ".", "..") for part in parts) or (os.path.isabs(key) and not absolute):
        return None
    if absolute:
        return Path(key) if _inside(key, os.path.abspath(root)) else None
    return Path(root, *parts)


def _inside(path: str, folder: str) -> bool:
    """Whether normalised absolute `path` lies below normalised absolute `folder` (lexically)."""
    return folder == "/" or path.startswith(folder.rstrip("/") + "/")


HASH_THREADS = 8  # reading sources is I/O bound (and hashlib releases the GIL)
_READ_BLOCK = 1 << 20


UNREACHABLE = "unreachable"  # source_state: a source that is not there, or not readable


class SpecialFileError(OSError):
    """A source that is a FIFO, a device or a socket (or a symlink to one): never opened for reading."""


def open_regular(path: str | os.PathLike) -> int:
    """A read-only fd of `path` (symlinks followed) when it is a regular file.

    A FIFO, device or socket raises SpecialFileError without being opened (a FIFO would block
    the open, /dev/zero never ends); a folder raises IsADirectoryError; other OSErrors as they come.
    The open is non-blocking and the fd checked again, so a special file swapped in after the
    stat cannot block either, and what is read is what was checked.
    """
    _check_regular(os.stat(path).st_mode, path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        _check_regular(os.fstat(fd).st_mode, path)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_regular(mode: int, path: str | os.PathLike) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "a folder, not a file", str(path))
    kind = (
        "a FIFO (named pipe)"
        if stat.S_ISFIFO(mode)
        else "a device"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "not a regular file"
    )
    raise SpecialFileError(f"{kind}, not a regular file: not read")


def file_sha256(path: str | os.PathLike) -> tuple[str, int]:
    """(sha256 as 64 hex digits, size) of a regular file's bytes, read in blocks; OSError (SpecialFileError
    for a FIFO, device or socket, never opened) as it comes."""
    digest, size = hashlib.sha256(), 0
    with os.fdopen(open_regular(path), "rb") as handle:
        while block := handle.read(_READ_BLOCK):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def file_identity(path: Path | None) -> tuple[bytes, int]:
    """(sha256 as 64 ASCII hex bytes, size) of a file's bytes; (b"", -1) when it cannot be read."""
    if path is None:
        return b"", -1
    try:
        digest, size = file_sha256(path)
    except OSError:
        return b"", -1
    return digest.encode("ascii"), size


def source_state(path: Path, sha256: str, size: int) -> str | None:
    """None when the file still has the recorded sha256 and size; UNREACHABLE when it cannot be
    read; else what changed. A different size answers without reading the file."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            return f"its source {path} is no longer a file"
        if info.st_size != size:
            return f"its source changed after extraction: {size} bytes then, {info.st_size} now"
        now, _ = file_sha256(path)
    except OSError:
        return UNREACHABLE
    if now != sha256:
        return f"its source changed after extraction: same size, other bytes (sha256 {now[:12]}…, was {sha256[:12]}…)"
    return None


def source_changes(
    root: str | os.PathLike, keys: list[str], rows: np.ndarray, sha256: np.ndarray, size: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(changed, missing) among the done `rows`, by their source file below `root` now.

    changed: other bytes than recorded (or unreadable at extraction and readable now: a retry);
    the maps are computed again. missing: read then, unreadable now (moved, deleted, a folder or
    special file in its place is "changed"); the stored maps, computed from the recorded bytes,
    are still that key's. Hashed in threads; (R,) int64 each.
    """

    def state(i: int) -> str | None:
        path = source_path(root, keys[int(rows[i])])
        if int(size[i]) < 0:  # not readable at extraction: changed if it can be read now
            return "changed" if file_identity(path) != (b"", -1) else None
        if path is None:
            return "missing"
        found = source_state(path, bytes(sha256[i]).decode("ascii", "replace"), int(size[i]))
        return None if found is None else "missing" if found == UNREACHABLE else "changed"

    with ThreadPoolExecutor(HASH_THREADS) as pool:
        states = np.asarray(list(pool.map(state, range(len(rows)))), dtype=object)
    rows = np.asarray(rows, dtype=np.int64)
    return rows[states == "changed"], rows[states == "missing"]
