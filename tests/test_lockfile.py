"""OUT.lock with real concurrent processes: one holder per round, stale locks broken once, a
SIGKILLed holder whose forked child outlives it, refusals that name the holder, Slurm requeues.

Every test runs in both modes: record locks (`lockf`, the kernel says who is alive) and content
mode (`lockfile.RECORD_LOCKS = False`, as on a file system without record locks)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.errors import FmpipeError
from pipeline.storage.locks import lockfile, lockholders
from pipeline.storage.locks.lockfile import OutputLock, OutputLockedError

MODES = ["record", "content"]
SLURM = ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_ID", "SLURM_RESTART_COUNT")

# A holder in its own process: takes the lock, optionally rewrites its host (to play a node),
# forks a child that outlives it (like a decode worker), says "ready <child pid>", then holds
# the lock for argv[4] seconds and releases it.
HOLDER = textwrap.dedent("""
    import json, os, sys, time
    from pipeline.storage.locks import lockfile, lockholders
    lockfile.RECORD_LOCKS = sys.argv[2] == "record"
    lock = lockfile.OutputLock.acquire(sys.argv[1])
    if sys.argv[3] != "-":
        os.ftruncate(lock._fd, 0)
        os.pwrite(lock._fd, json.dumps({**lock.holder, "host": sys.argv[3]}).encode(), 0)
    child = os.fork()
    if child == 0:
        time.sleep(5)
        os._exit(0)
    print("ready", child, flush=True)
    time.sleep(float(sys.argv[4]))
    lock.release()
""")


@pytest.fixture(params=MODES)
def mode(request, monkeypatch) -> str:
    monkeypatch.setattr(lockfile, "RECORD_LOCKS", request.param == "record")
    for name in SLURM:
        monkeypatch.delenv(name, raising=False)
    return request.param


def _holder(out: Path, mode: str, host: str = "-", hold_s: float = 60.0, env: dict | None = None):
    """(process, forked child's pid) of a HOLDER that has taken the lock."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out), mode, host, str(hold_s)],
        stdout=subprocess.PIPE,
        text=True,
        env={**{k: v for k, v in os.environ.items() if k not in SLURM}, **(env or {})},
    )
    line = proc.stdout.readline().split()
    assert line[:1] == ["ready"], f"holder did not start: {line}"
    return proc, int(line[1])


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _write_holder(path: Path, age_s: float = 0.0, **fields) -> None:
    """A lock file left by someone else (no record lock held), `age_s` seconds old."""
    path.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "token": "old", **fields}))
    os.utime(path, (time.time() - age_s, time.time() - age_s))


def _contend(out: str, mode: str, rounds: int, barrier, results) -> None:
    """One racer: each round, acquire at the barrier; report whether it holds (and still finds
    its own token on disk after everyone tried) or the refusal; release; next round."""
    lockfile.RECORD_LOCKS = mode == "record"
    for round_ in range(rounds):
        barrier.wait()
        try:
            lock, message = OutputLock.acquire(out), None
        except OutputLockedError as err:
            lock, message = None, str(err)
        barrier.wait()
        results.put((round_, os.getpid(), lock is not None and lock.still_held(), message))
        if lock is not None:
            lock.release()
        barrier.wait()


@pytest.mark.slow
@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale"])
def test_racing_processes_one_holds_each_round_and_the_others_are_told_who(tmp_path, mode, stale):
    out, racers, rounds = tmp_path / "race.h5", 5, 25
    path = Path(f"{out}.lock")
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(racers + 1, timeout=60), ctx.Queue()
    procs = [ctx.Process(target=_contend, args=(str(out), mode, rounds, barrier, results)) for _ in range(racers)]
    for proc in procs:
        proc.start()
    try:
        for round_ in range(rounds):
            if stale:
                _write_holder(path)  # a killed run's lock: every racer judges it stale at once
            barrier.wait()  # go
            barrier.wait()  # everyone tried
            barrier.wait()  # released
            got = [results.get(timeout=30) for _ in range(racers)]
            holders = [pid for r, pid, held, _ in got if held and r == round_]
            assert len(holders) == 1, got
            refusals = [message for _, _, held, message in got if not held]
            assert len(refusals) == racers - 1 and all(f"pid {holders[0]} on " in m for m in refusals), got
            assert not path.exists()
    finally:
        for proc in procs:
            proc.join(timeout=30)
            proc.kill()
    assert [proc.exitcode for proc in procs] == [0] * racers
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temp, aside or break files left


def test_a_rerun_takes_over_at_once_from_a_killed_holder_whose_child_lives_on(tmp_path, mode):
    out = tmp_path / "k.h5"
    holder, child = _holder(out, mode)
    try:
        os.kill(holder.pid, signal.SIGKILL)  # not waited for: it may still be exiting
        started = time.monotonic()
        lock = OutputLock.acquire(out)
        took_s = time.monotonic() - started
        os.kill(child, 0)  # the forked child still runs, with the lock file open
        assert lock.still_held() and lock.holder["pid"] == os.getpid()
        assert json.loads(Path(f"{out}.lock").read_text())["token"] == lock.holder["token"]
        lock.release()
        assert took_s < 2.0 and not Path(f"{out}.lock").exists()
    finally:
        holder.wait()
        os.kill(child, signal.SIGKILL)


def test_a_live_holder_is_refused_with_who_and_what_to_do(tmp_path, mode):
    out = tmp_path / "live.h5"
    path = Path(f"{out}.lock")
    env = {"SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "7", "SLURM_JOB_ID": "4250"}
    holder, child = _holder(out, mode, env=env)
    try:
        before = path.read_text()
        with pytest.raises(OutputLockedError) as refused:
            OutputLock.acquire(out)
        message = str(refused.value)
        assert f"pid {holder.pid} on {socket.gethostname()}, Slurm job 4242_7, started 20" in message, message
        assert f"`kill {holder.pid}` on {socket.gethostname()} or `scancel 4242_7`" in message, message
        assert "then rerun the same command: it resumes where that run stopped." in message, message
        assert "--overwrite" not in message and f"rm {path}" not in message, message
        assert isinstance(refused.value, FmpipeError) and refused.value.exit_code == 2
        assert path.read_text() == before  # the holder's lock is untouched
    finally:
        holder.kill()
        holder.wait()
        os.kill(child, signal.SIGKILL)


def test_an_empty_lock_is_only_broken_after_the_grace_period_in_content_mode(tmp_path, mode):
    out = tmp_path / "e.h5"
    path = Path(f"{out}.lock")
    path.write_bytes(b"")  # another process between creating and writing it, or killed there
    if mode == "record":  # nobody holds a record lock on it: the kernel says it is free
        OutputLock.acquire(out).release()
        return
    with pytest.raises(OutputLockedError, match=r"has not written its name into it yet.*after 30 s"):
        OutputLock.acquire(out)
    assert path.exists() and path.read_bytes() == b""
    os.utime(path, (time.time() - 31, time.time() - 31))
    lock = OutputLock.acquire(out)
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()


@pytest.mark.slow
def test_a_requeued_slurm_task_takes_over_from_its_run_on_a_dead_node(tmp_path, mode, monkeypatch):
    out = tmp_path / "q.h5"
    path = Path(f"{out}.lock")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    if mode == "record":  # a busy lock of the same task elsewhere: waited for, never broken
        monkeypatch.setattr(lockfile, "REQUEUE_WAIT_S", 30.0)
        env = {"SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "7"}
        holder, child = _holder(out, mode, host="node-that-died", hold_s=1.0, env=env)
        started = time.monotonic()
        lock = OutputLock.acquire(out)
        assert time.monotonic() - started > 0.3 and holder.wait() == 0
        os.kill(child, signal.SIGKILL)
    else:
        _write_holder(path, host="node-that-died", slurm_job="4242_7")
        lock = OutputLock.acquire(out)
    assert json.loads(path.read_text())["slurm_job"] == "4242_7" and lock.still_held()
    lock.release()


def test_another_hosts_lock_is_refused_until_its_heartbeat_is_old(tmp_path, mode, monkeypatch):
    out = tmp_path / "h.h5"
    path = Path(f"{out}.lock")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "8")  # another task of the array
    if mode == "record":
        holder, child = _holder(
            out, mode, host="node07", env={"SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "7"}
        )
        with pytest.raises(OutputLockedError, match=r"on node07, Slurm job 4242_7.*`scancel 4242_7`"):
            OutputLock.acquire(out)
        holder.kill()
        holder.wait()
        os.kill(child, signal.SIGKILL)
        OutputLock.acquire(out).release()  # its lock ended with it
        return
    _write_holder(path, age_s=60, pid=123, host="node07", slurm_job="4242_7")
    with pytest.raises(OutputLockedError) as refused:
        OutputLock.acquire(out)
    assert "pid 123 on node07" in str(refused.value) and f"rm {path}" in str(refused.value)
    assert "cannot be checked" in str(refused.value) and "60 s ago" in str(refused.value)
    os.utime(path, (time.time() - 601, time.time() - 601))
    OutputLock.acquire(out).release()


def test_content_mode_holder_beats_and_release_keeps_a_replaced_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(lockfile, "RECORD_LOCKS", False)
    monkeypatch.setattr(lockfile, "HEARTBEAT_S", 0.05)
    out = tmp_path / "b.h5"
    path = Path(f"{out}.lock")
    lock = OutputLock.acquire(out)
    os.utime(path, (0, 0))
    time.sleep(0.5)
    assert time.time() - path.stat().st_mtime < 1.0  # touched again by the heartbeat
    path.unlink()  # someone broke it and ...
    _write_holder(path, token="theirs")  # ... took the lock: releasing must not delete theirs
    assert not lock.still_held()
    lock.release()
    assert json.loads(path.read_text())["token"] == "theirs"


def test_a_live_process_named_in_a_lock_without_a_record_lock_is_refused(tmp_path, mode):
    """An older fmpipe (content only) holding the output on this host is not overrun."""
    out = tmp_path / "old.h5"
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        _write_holder(Path(f"{out}.lock"), pid=sleeper.pid)
        with pytest.raises(OutputLockedError, match=f"pid {sleeper.pid} on {socket.gethostname()}"):
            OutputLock.acquire(out)
    finally:
        sleeper.kill()
        sleeper.wait()
    OutputLock.acquire(out).release()  # gone: taken over


def test_process_state_tells_running_gone_and_reused_pids():
    me = lockholders.identity()
    assert lockholders.process_state(me) == "running"
    assert lockholders.process_state({**me, "pid_start": me["pid_start"] + 1}) == "gone"  # a reused pid
    assert lockholders.process_state({"pid": _dead_pid()}) == "gone"
    zombie = subprocess.Popen(["true"])
    os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped yet
    assert lockholders.process_state({"pid": zombie.pid}) == "gone"
    zombie.wait()


def test_one_process_cannot_lock_one_output_twice(tmp_path, mode):
    out = tmp_path / "t.h5"
    lock = OutputLock.acquire(out)
    with pytest.raises(OutputLockedError, match="already being written by this process"):
        OutputLock.acquire(out)
    assert lock.still_held()  # the refused attempt did not drop the record lock
    lock.release()
    OutputLock.acquire(out).release()


@pytest.mark.slow
def test_a_second_extract_on_one_output_is_refused_naming_the_first_which_finishes_intact(tmp_path):
    """Two real `fmpipe extract` on one output: the second refuses at once naming the first (pid),
    the first is undisturbed and its file equals an undisturbed run's. The first is held at its
    first batch (lock taken, file created) until the second has been refused: no timing race."""
    from conftest import write_images
    from helpers import IGNORED_ATTRS, differences, fmpipe, snapshot, start_extract

    images = tmp_path / "images"
    write_images(images, 12, size=(32, 32))
    options = ["--model", "resnet18", "--random-init", "--size", "32", "--batch-size", "2", "--device", "cpu"]
    assert fmpipe(["extract", images, tmp_path / "alone.h5", *options]).returncode == 0
    release = tmp_path / "release-first"
    first = start_extract([images, "out.h5", *options], tmp_path, tmp_path / "first.log", hold=("batch-start", release))
    deadline = time.monotonic() + 120
    while not any(e.startswith("batch-start") for e in first.events()):
        assert first.process.poll() is None, Path(f"{first.log}.err").read_text()
        assert time.monotonic() < deadline, "the first run never reached its first batch"
        time.sleep(0.05)
    second = fmpipe(["extract", images, "out.h5", *options], cwd=tmp_path)
    assert first.process.poll() is None, Path(f"{first.log}.err").read_text()  # held: it cannot have ended
    release.touch()
    assert second.returncode == 2, second.stderr
    assert f"pid {first.process.pid}" in second.stderr and "Wait for it to finish" in second.stderr
    assert "--overwrite" not in second.stderr and "Traceback" not in second.stderr
    assert first.process.wait(120) == 0, Path(f"{first.log}.err").read_text()
    ignored = IGNORED_ATTRS | {"config_json"}  # which names the output path
    assert differences(snapshot(tmp_path / "out.h5", ignored), snapshot(tmp_path / "alone.h5", ignored)) == []
