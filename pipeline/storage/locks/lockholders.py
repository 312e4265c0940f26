"""Who holds `OUT.lock`: this process's record (the lock's JSON), a holder's process state on
this host (running, exiting after a kill, gone), Slurm requeues, and a holder named in words."""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import socket
from pathlib import Path

PF_EXITING = 0x4  # /proc/PID/stat flags: the process has begun to exit
SIGKILL_BIT = 1 << (9 - 1)  # SigPnd/ShdPnd masks of /proc/PID/status


def identity() -> dict:
    """This process as a lock holder (the JSON written into `OUT.lock`)."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return {
        "pid": os.getpid(),
        "pid_start": _proc_stat(os.getpid())[2] if os.path.exists("/proc/self/stat") else None,
        "host": socket.gethostname(),
        "slurm_job": f"{array_job}_{task}" if array_job and task else os.environ.get("SLURM_JOB_ID"),
        "slurm_restarts": int(os.environ.get("SLURM_RESTART_COUNT") or 0),
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "token": secrets.token_hex(8),
    }


def is_requeue(holder: dict, me: dict) -> bool:
    """`holder` (on another host) is this Slurm task's earlier run: same array task, or a restarted job."""
    job, restarted = me["slurm_job"], me["slurm_restarts"] > int(holder.get("slurm_restarts") or 0)
    return bool(job) and holder.get("slurm_job") == job and ("_" in job or restarted)


def _proc_stat(pid: int) -> tuple[str, int, int]:
    """(state letter, flags, start time in clock ticks since boot) from /proc/PID/stat (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return fields[0], int(fields[6]), int(fields[19])


def process_state(holder: dict) -> str:
    """'running'; 'exiting' (killed, still freeing memory); 'gone' (no such process, a zombie, a reused pid)."""
    pid, start = holder.get("pid"), holder.get("pid_start")
    if not isinstance(pid, int) or pid <= 0:
        return "gone"
    try:
        state, flags, ticks = _proc_stat(pid)
        status = Path(f"/proc/{pid}/status").read_text()
    except (OSError, ValueError, IndexError):  # no such process, no /proc (not Linux) or /proc with hidepid
        return "running" if _alive(pid) else "gone"
    if state in ("Z", "X") or (start is not None and ticks != start):
        return "gone"
    pending = [int(line.split()[1], 16) for line in status.splitlines() if line.startswith(("SigPnd:", "ShdPnd:"))]
    if flags & PF_EXITING or any(mask & SIGKILL_BIT for mask in pending):
        return "exiting"
    return "running"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def parse(data: bytes) -> dict | None:
    """A lock's JSON; None for an empty, partial or foreign file."""
    try:
        holder = json.loads(data)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def describe(holder: dict | None) -> str:
    """'pid 12 on node07, Slurm job 4242_7, started 2025-01-01T00:00:00+00:00'."""
    if holder is None:
        return "holder unknown: the lock file is empty or unreadable"
    slurm = f", Slurm job {holder['slurm_job']}" if holder.get("slurm_job") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{slurm}, started {holder.get('started')}"
