"""The render folder's ledger: the files fmpipe wrote there, so that only those are ever replaced or removed.

`OUT/.fmpipe-ledger` is append-only text, one event a line (paths relative to OUT, POSIX):

    +stage1/cats/a/c0000.png     fmpipe created this file
    -gallery/000099.html         fmpipe is about to remove it (it is no longer fmpipe's)
    @stage1 9f2c...              stage1/ was (re)rendered from the file with this identity

Each line is one write(2) to a file opened with O_APPEND, so render's worker processes and the
gallery append without tearing each other's lines (a line cut by a crash has no newline and is
ignored). A file becomes fmpipe's only when it was created with O_EXCL, so it did not exist before,
and then recorded; anything else in the folder is the user's, never replaced and never removed
(writing over it is refused with a message). Removal is recorded first, then done: a crash in
between leaves a file no longer recorded, which a later run refuses to touch (safe), never the
reverse.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import OutputExistsError, RunFailure, UsageError, write_failed
from ..storage.reading.store import Store

LEDGER = ".fmpipe-ledger"
_ENCODING = ("utf-8", "surrogateescape")  # keys that are not UTF-8 keep their bytes


def store_identity(store: Store) -> str:
    """What tells one fmpipe file from another (a re-extraction, another model): its run fingerprint,
    creation time and row count, hashed. A merged file and its --copy share it (the same maps)."""
    text = f"{store.run.fingerprint or '?'}\n{store.run.created or '?'}\n{len(store)}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class Ledger:
    """What `out/.fmpipe-ledger` says: the files fmpipe owns below `out`, and each folder's source identity."""

    out: Path
    owned: set[str] = field(default_factory=set)
    sources: dict[str, str] = field(default_factory=dict)  # folder (stage1, layer-x) → file identity

    @classmethod
    def load(cls, out: Path) -> Ledger:
        ledger = cls(Path(out))
        if ledger.out.exists() and not ledger.out.is_dir():  # bad input, not a run failure: exit 2
            raise UsageError(f"{ledger.out} is a file; the output (--out) is a folder: give a folder or a new path.")
        try:
            raw = (ledger.out / LEDGER).read_bytes()
        except FileNotFoundError:
            return ledger
        except OSError as err:
            raise RunFailure(f"cannot read {ledger.out / LEDGER}: {err}.") from err
        for line in raw.split(b"\n")[:-1]:  # the last piece has no newline: empty, or cut by a crash
            ledger._replay(line.decode(*_ENCODING))
        return ledger

    def _replay(self, line: str) -> None:
        kind, rest = line[:1], line[1:]
        if kind in "+-" and not _inside(rest):  # a ledger shipped with a folder names nothing outside it
            return
        if kind == "+":
            self.owned.add(rest)
        elif kind == "-":
            self.owned.discard(rest)
        elif kind == "@":
            folder, _, identity = rest.rpartition(" ")
            self.sources[folder] = identity

    def owns(self, relative: str) -> bool:
        return relative in self.owned

    def by_folder(self) -> dict[str, set[str]]:
        """{folder: names of the files fmpipe owns in it} (folder relative to `out`)."""
        out: dict[str, set[str]] = defaultdict(set)
        for relative in self.owned:
            folder, _, name = relative.rpartition("/")
            out[folder].add(name)
        return out

    def set_source(self, folder: str, identity: str) -> None:
        append(self.out, f"@{folder} {identity}")
        self.sources[folder] = identity

    def remove(self, relative: str) -> None:
        """Remove a file fmpipe owns (recorded first), and the folders that leaves empty; a file it
        does not own is left alone."""
        if relative not in self.owned:
            return
        remove_owned(self.out, relative)
        self.owned.discard(relative)
        parent = (self.out / relative).parent
        while parent != self.out and self.out in parent.parents:
            try:
                parent.rmdir()  # only when empty: a folder holding anything else stays
            except OSError:
                break
            parent = parent.parent

    def write(self, relative: str, data: bytes) -> None:
        """Write `data` to out/relative: replacing a file fmpipe owns, or creating a new one;
        a file there that fmpipe did not write is refused (OutputExistsError), never touched."""
        write_output(self.out, relative, data, self.owns(relative))
        self.owned.add(relative)


def append(out: Path, line: str) -> None:
    """Append one line to out/.fmpipe-ledger in one write(2) (O_APPEND: concurrent writers interleave whole lines)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            data = (line + "\n").encode(*_ENCODING)
            if os.write(fd, data) != len(data):
                raise OSError(f"short write to {out / LEDGER}")
        finally:
            os.close(fd)
    except OSError as err:
        raise write_failed(out / LEDGER, err) from err


def _inside(relative: str) -> bool:
    """A plain relative POSIX path: no absolute start, no empty, `.` or `..` part, no backslash or NUL."""
    parts = relative.split("/")
    return (
        bool(relative)
        and "\\" not in relative
        and "\0" not in relative
        and all(p not in ("", ".", "..") for p in parts)
    )


def remove_owned(out: Path, relative: str) -> None:
    """Remove out/relative, recorded first; never a path that leaves `out` (through `..` or a symlinked folder)."""
    real_out, parent = os.path.realpath(out), os.path.realpath((out / relative).parent)
    if not _inside(relative) or not (parent == real_out or parent.startswith(real_out + os.sep)):
        return
    append(out, f"-{relative}")
    try:
        os.unlink(out / relative)
    except FileNotFoundError:
        pass
    except OSError as err:
        raise RunFailure(f"cannot remove {out / relative}: {err.strerror or err}. Fix the cause and rerun.") from err


def write_output(out: Path, relative: str, data: bytes, owned: bool) -> None:
    """Write `data` to out/relative (see `Ledger.write`); a write that fails (disk full) leaves no part of it."""
    path = out / relative
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(path, flags | (os.O_TRUNC if owned else os.O_CREAT | os.O_EXCL), 0o644)
    except FileExistsError:
        raise OutputExistsError(foreign_message(out, relative)) from None
    except FileNotFoundError:
        if owned:  # recorded, then removed by someone: create it anew
            return write_output(out, relative, data, owned=False)
        raise
    except OSError as err:
        raise write_failed(path, err) from err
    try:
        with os.fdopen(fd, "wb") as handle:
            if not owned:
                append(out, f"+{relative}")
            handle.write(data)
    except (OSError, RunFailure) as err:
        _discard(out, relative)
        if isinstance(err, RunFailure):
            raise
        raise write_failed(path, err) from err


def _discard(out: Path, relative: str) -> None:
    """Remove a file this write created and could not finish (then unrecord it, if the disk still lets us)."""
    with contextlib.suppress(OSError):
        os.unlink(out / relative)
    with contextlib.suppress(RunFailure):
        append(out, f"-{relative}")


def foreign_message(out: Path, relative: str) -> str:
    return (
        f"{out / relative} exists and was not written by fmpipe (it is not in {out / LEDGER}), so it is "
        "left alone: move it away or choose another --out."
    )
