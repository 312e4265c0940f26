"""`OUT.lock`: one writer per output. Records pid, host and Slurm task; stale locks are recovered.

A lock is stale when its process is gone (same host: pid not alive, or alive but started
at another time, i.e. a reused pid), when it belongs to this very Slurm array task (a
requeued task replaces its killed predecessor, possibly on another node), or when it is
empty or unreadable (a kill between creating and writing it). A lock held on another
host cannot be checked: it is refused with the command that clears it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
from pathlib import Path

from ..errors import FmpipeError

log = logging.getLogger(__name__)


class OutputLockedError(FmpipeError):
    """Another fmpipe process is writing the same output."""


def _slurm_task() -> str | None:
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    return f"{job}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"


def _start_ticks(pid: int) -> int | None:
    """Process start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """Held while a writer owns an output; `release()` removes it."""

    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def acquire(cls, out: Path) -> OutputLock:
        path = Path(f"{os.fspath(out)}.lock")
        me = {
            "pid": os.getpid(),
            "pid_start": _start_ticks(os.getpid()),
            "host": socket.gethostname(),
            "slurm_task": _slurm_task(),
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read(path)
                if not _is_stale(holder, me):
                    raise OutputLockedError(_held_message(out, path, holder)) from None
                log.warning("removing a stale lock %s (%s)", path, _describe(holder))
                path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            return cls(path)
        raise OutputLockedError(f"could not take the lock {path}; another process keeps creating it.")

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


def _read(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _is_stale(holder: dict | None, me: dict) -> bool:
    if holder is None:
        return True
    if holder.get("slurm_task") and holder.get("slurm_task") == me["slurm_task"]:
        return True
    if holder.get("host") != me["host"]:
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or not _alive(pid):
        return True
    return holder.get("pid_start") is not None and holder.get("pid_start") != _start_ticks(pid)


def _describe(holder: dict | None) -> str:
    if holder is None:
        return "empty or unreadable"
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"


def _held_message(out: Path, path: Path, holder: dict | None) -> str:
    return (
        f"{out} is being written by another fmpipe ({_describe(holder)}). Wait for it to finish. "
        f"If that process no longer exists, remove the lock and rerun: rm {path}"
    )
