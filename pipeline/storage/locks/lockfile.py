"""`OUT.lock`: one writer per output; a rerun right after a kill always takes over.

Record-lock mode (local file systems, NFS): the holder keeps a POSIX record lock (`lockf`) on
`OUT.lock` while it writes. The kernel drops it when the process dies, even by SIGKILL, and
forked children (decode workers) do not inherit it, so a killed run leaves no lock to guess
about. The JSON inside (pid, host, Slurm job, start, a random token) only names the holder. A
busy lock is never broken, only waited for while its holder exits or is this Slurm task's
predecessor on a dead node. Closing any fd of a file drops the process's record locks on it,
so a holder never opens its own lock twice (and a process cannot lock one output twice).

Content mode, where record locks are refused (Lustre without `-o flock`): the lock is created
with its JSON in one step (`os.link`) and touched every `HEARTBEAT_S`. It is stale when its
process is gone (same host: pid dead or reused), is this Slurm array task's predecessor on
another node, has not been touched for `HEARTBEAT_TIMEOUT_S` (another host), or has been empty
for `GRACE_S`. One process at a time (`OUT.lock.break`) breaks it, renamed aside and checked.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import secrets
import socket
import threading
import time
from pathlib import Path

from ...errors import FmpipeError
from .lockholders import describe, identity, is_requeue, parse, process_state

log = logging.getLogger(__name__)

RECORD_LOCKS = True  # False: content mode everywhere (tests; mounts whose record locks are node-local)
GRACE_S = 30.0  # an empty or unreadable lock younger than this is someone's lock being created
HEARTBEAT_S = 30.0  # content mode: how often a holder touches its lock
HEARTBEAT_TIMEOUT_S = 600.0  # content mode: another host's lock untouched this long is abandoned
EXIT_WAIT_S = 10.0  # how long to wait for a killed holder to finish exiting
REQUEUE_WAIT_S = 180.0  # how long a requeued Slurm task waits for its dead predecessor's NFS lock
POLL_S = 0.05

_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}
_BUSY = {errno.EAGAIN, errno.EACCES}
_MAX_BYTES = 1 << 16
_held: set[str] = set()  # lock paths this process holds
_held_guard = threading.Lock()


class OutputLockedError(FmpipeError):
    """Another fmpipe process is writing the same output."""


def _record_lock(fd: int) -> None:
    """Take the record lock or raise OSError (EAGAIN/EACCES: busy; ENOLCK and kin: unsupported)."""
    if not RECORD_LOCKS:
        raise OSError(errno.ENOLCK, "record locks switched off (lockfile.RECORD_LOCKS)")
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


class OutputLock:
    """Held while a writer owns an output; `release()` gives it up and removes `OUT.lock`."""

    def __init__(self, path: Path, fd: int, holder: dict, record: bool):
        self.path, self.holder, self.record = path, holder, record
        self._fd = fd  # record mode: carries the lock; content mode: the file the heartbeat touches
        self._stop = threading.Event()
        self._beater = threading.Thread(target=self._beat, name="lock-heartbeat", daemon=True)
        if not record:
            self._beater.start()

    @classmethod
    def acquire(cls, out: str | os.PathLike) -> OutputLock:
        """Take `OUT.lock` or raise `OutputLockedError` naming its holder and the next step."""
        out = Path(out)
        path = Path(f"{os.fspath(out)}.lock")
        key = os.path.realpath(path)
        with _held_guard:
            if key in _held:
                raise OutputLockedError(f"{out} is already being written by this process; write it once at a time.")
            _held.add(key)
        try:
            me = identity()
            if _supports_record_locks(path):
                return cls(path, _acquire_record(out, path, me), me, record=True)
            return cls(path, _acquire_content(out, path, me), me, record=False)
        except BaseException:
            with _held_guard:
                _held.discard(key)
            raise

    def still_held(self) -> bool:
        """Whether `OUT.lock` on disk is still this lock (same file, same token)."""
        mine = self._fd >= 0 and _is_at(self._fd, self.path)
        return mine and (parse(os.pread(self._fd, _MAX_BYTES, 0)) or {}).get("token") == self.holder["token"]

    def release(self) -> None:
        """Remove `OUT.lock` (only if it is still this lock) and let go of it. Idempotent."""
        if self._fd < 0:
            return
        self._stop.set()
        if self._beater.is_alive():
            self._beater.join()
        try:
            if not self.still_held():
                log.error("%s was removed or replaced while this process held it; left as it is", self.path)
            elif self.record:
                os.unlink(self.path)  # still locked: nobody can lock this file and find it at the path
            else:
                _remove_if(self.path, _version((self.holder, os.fstat(self._fd))))
        finally:
            os.close(self._fd)
            self._fd = -1
            with _held_guard:
                _held.discard(os.path.realpath(self.path))

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self._fd)
            except OSError as err:
                log.warning("could not touch %s: %s", self.path, err)
            if not self.still_held():
                log.error("%s was removed or replaced by another process: two may write this output", self.path)


def _supports_record_locks(path: Path) -> bool:
    """Probe the lock's folder with a private file, so content mode never finds a stray empty lock."""
    probe = path.with_name(f".{path.name}.probe-{secrets.token_hex(8)}")
    fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        _record_lock(fd)
    except OSError as err:
        if err.errno not in _UNSUPPORTED:
            raise
        log.info("%s: no record locks on this file system (%s); judging locks by their content", path, err)
        return False
    finally:
        os.close(fd)
        os.unlink(probe)
    return True


def _acquire_record(out: Path, path: Path, me: dict) -> int:
    """The fd carrying the record lock on the file now at `path`, with `me` written in it."""
    busy_since = None
    for _ in range(1000):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _record_lock(fd)
        except OSError as err:
            holder = parse(os.pread(fd, _MAX_BYTES, 0))
            os.close(fd)
            if err.errno not in _BUSY:
                raise
            busy_since = busy_since or time.monotonic()
            _wait_or_refuse(out, path, holder, me, time.monotonic() - busy_since)
            continue
        if _is_at(fd, path):
            return _claim(out, path, fd, me)
        os.close(fd)  # its holder released (removed) it meanwhile: lock the file now at the path
    raise OutputLockedError(f"could not take {path}: other processes keep creating and removing it. Rerun.")


def _wait_or_refuse(out: Path, path: Path, holder: dict | None, me: dict, waited_s: float) -> None:
    """Sleep a poll interval while a busy lock is worth waiting for; else raise naming its holder."""
    if holder is None:
        why, patience_s = "unnamed", EXIT_WAIT_S  # locked by a holder that has not written it yet
    elif holder.get("host") != me["host"]:
        why, patience_s = ("requeue", REQUEUE_WAIT_S) if is_requeue(holder, me) else ("remote", 0.0)
    elif process_state(holder) == "running":
        why, patience_s = "running", 0.0
    else:  # killed and still exiting, or the file still names the last (dead) holder of a new one
        why, patience_s = "exiting", EXIT_WAIT_S
    if waited_s >= patience_s:
        raise OutputLockedError(_refusal(out, path, holder, why))
    if why == "requeue" and waited_s == 0.0:
        log.warning("%s: waiting up to %.0f s for this Slurm task's run on %s", path, REQUEUE_WAIT_S, holder["host"])
    time.sleep(POLL_S if patience_s <= EXIT_WAIT_S else 1.0)


def _claim(out: Path, path: Path, fd: int, me: dict) -> int:
    """Write `me` into the locked file; refuse a live holder that takes no record locks (older fmpipe)."""
    previous = parse(os.pread(fd, _MAX_BYTES, 0))
    mine = previous is None or previous.get("host") != me["host"] or previous.get("pid") == me["pid"]
    if not mine and process_state(previous) == "running":
        os.close(fd)  # its file stays as it is
        raise OutputLockedError(_refusal(out, path, previous, "unlocked"))
    if previous:
        log.info("%s: taking over from a run that ended without releasing it (%s)", path, describe(previous))
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    os.fsync(fd)
    return fd


def _is_at(fd: int, path: Path) -> bool:
    try:
        there, mine = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino)


def _acquire_content(out: Path, path: Path, me: dict) -> int:
    """An fd of the lock file this process created at `path` with `me` in it."""
    started = time.monotonic()
    for _ in range(1000):
        fd = _create_with(path, me)
        if fd is not None:
            return fd
        seen = _read(path)
        if seen is None:
            continue  # released meanwhile
        holder, stat = seen
        verdict = _judge(holder, stat, me)
        if verdict == "stale":
            log.warning("%s: breaking a stale lock (%s)", path, describe(holder))
            _break(path, _version(seen))
        elif verdict == "exiting" and time.monotonic() - started < EXIT_WAIT_S:
            time.sleep(POLL_S)
        else:
            raise OutputLockedError(_refusal(out, path, holder, verdict, age_s=time.time() - stat.st_mtime))
    raise OutputLockedError(f"could not take {path}: other processes keep creating and removing it. Rerun.")


def _judge(holder: dict | None, stat: os.stat_result, me: dict) -> str:
    """'stale', 'running', 'exiting', 'young' (empty, maybe being created) or 'unchecked' (another host)."""
    age_s = time.time() - stat.st_mtime
    if holder is None:
        return "stale" if age_s > GRACE_S else "young"
    if holder.get("host") != me["host"]:
        return "stale" if is_requeue(holder, me) or age_s > HEARTBEAT_TIMEOUT_S else "unchecked"
    if holder.get("pid") == me["pid"]:
        return "stale"  # a leftover of this very process, which holds no lock on this output (see `_held`)
    state = process_state(holder)
    return "stale" if state == "gone" else state


def _break(path: Path, version: tuple) -> None:
    """Remove the stale lock `version` at `path`, one breaker at a time; a no-op if it changed."""
    mutex = path.with_name(f"{path.name}.break")
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "token": secrets.token_hex(8)}
    fd = _create_with(mutex, mine)
    if fd is None:  # another process is breaking it; or it died doing so, long ago
        seen = _read(mutex)
        if seen is not None and time.time() - seen[1].st_mtime > GRACE_S:
            _remove_if(mutex, _version(seen))
        time.sleep(POLL_S)
        return
    try:
        _remove_if(path, version)
    finally:
        _remove_if(mutex, _version((mine, os.fstat(fd))))
        os.close(fd)


def _create_with(path: Path, record: dict) -> int | None:
    """Create `path` holding `record`'s JSON in one step, so it is never seen empty; None if it exists."""
    tmp = path.with_name(f".{path.name}.{record['token']}")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, json.dumps(record).encode())
        os.fsync(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            if os.fstat(fd).st_nlink < 2:  # two links: NFS made it but lost the reply
                os.close(fd)
                return None
    except BaseException:
        os.close(fd)
        raise
    finally:
        os.unlink(tmp)
    return fd


def _remove_if(path: Path, version: tuple) -> bool:
    """Remove `path` if it is the file `version`: checked, renamed aside and checked again there, so a
    fresh lock that took its place is never deleted (one renamed by mistake is put back)."""
    if _version(_read(path)) != version:
        return False
    aside = path.with_name(f".{path.name}.aside-{secrets.token_hex(8)}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    if _version(_read(aside)) == version:
        os.unlink(aside)
        return True
    try:
        os.link(aside, path)
    except FileExistsError:
        log.error("%s: moved a fresh lock aside and another process took the lock meanwhile", path)
    os.unlink(aside)
    return False


def _read(path: Path) -> tuple[dict | None, os.stat_result] | None:
    """(holder JSON or None if empty/unreadable, stat) of `path`; None when there is no such file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return parse(os.pread(fd, _MAX_BYTES, 0)), os.fstat(fd)
    finally:
        os.close(fd)


def _version(seen: tuple[dict | None, os.stat_result] | None) -> tuple | None:
    """Which file `_read` saw (None: none). A heartbeat (mtime) or a new lock (inode, token) is another."""
    if seen is None:
        return None
    holder, stat = seen
    return stat.st_dev, stat.st_ino, stat.st_mtime_ns, (holder or {}).get("token")


def _refusal(out: Path, path: Path, holder: dict | None, why: str, age_s: float = 0.0) -> str:
    """Who holds the lock and what to do next; never advice to delete data."""
    if holder is None:
        after = f"an empty lock is abandoned after {GRACE_S:.0f} s" if why == "young" else "its process may be starting"
        return f"{path} is held by a process that has not written its name into it yet; rerun in a minute ({after})."
    head = f"{out} is being written by another fmpipe process ({describe(holder)})."
    rerun = "then rerun the same command: it resumes where that run stopped."
    if why == "exiting":
        return f"{head} It was stopped but still holds the lock after {EXIT_WAIT_S:.0f} s: wait for its end, {rerun}"
    stop = f"`kill {holder.get('pid')}` on {holder.get('host')}"
    stop += f" or `scancel {holder['slurm_job']}`" if holder.get("slurm_job") else ""
    message = f"{head} Wait for it to finish, or stop it ({stop}), {rerun}"
    if why in ("requeue", "remote"):
        return f"{message} If {holder.get('host')} died, its lock ends when the file server notices (minutes)."
    if why == "unlocked":
        return f"{message} It takes no record lock (an older fmpipe?); if it is not fmpipe: rm {path}"
    if why == "unchecked":
        minutes = HEARTBEAT_TIMEOUT_S / 60
        return (
            f"{message} A process on another host cannot be checked from here: if it no longer runs (its node died),"
            f" remove the lock and rerun: rm {path} (it counts as abandoned {minutes:.0f} min after its holder's"
            f" last heartbeat, {age_s:.0f} s ago)."
        )
    return message
