"""Helpers for the tests and scripts/kill_test.py (no pytest import): `fmpipe` in real processes, the
same instrumented, bit-for-bit snapshots of an fmpipe file, row comparisons within float16 rounding.

    python tests/helpers.py [--delay S] [--chunk-delay S] [--die-at EVENT[#N]] [--hold-at EVENT --release FILE]
        -- IMAGES OUT [OPTIONS]

runs `fmpipe extract IMAGES OUT OPTIONS` (the real CLI, writer and DataLoader decode workers) printing
one event per step (`instrument`) and sleeping S seconds after each. `--die-at EVENT#N`: SIGKILL the
main process at the Nth event named EVENT (`is_event`; from a decode worker too), an exact step.
`--hold-at EVENT --release FILE`: the main process waits at the first event named EVENT until FILE
exists (a test holds a run at an exact step, whatever the machine's load, and lets it go).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from subprocess import PIPE

import h5py
import hdf5plugin  # noqa: F401  (zstd filter)
import numpy as np

TESTS = Path(__file__).resolve().parent
IGNORED_ATTRS = frozenset({"created", "timings_json"})  # schema.ATTR_CREATED, ATTR_TIMINGS: differ per run
# Rows computed in batches of another shape may differ in float32's last bits, which float16 rounding
# can turn into one float16 step (2^-10 of the value): rows match within 2^-9 of the row's largest value.
FLOAT16_TOLERANCE = 2.0**-9
CHILD_TIMEOUT_S = 180.0


# -- fmpipe in real processes -----------------------------------------------------------------


def extract_command(
    argv: list,
    delay_s: float = 0.0,
    chunk_delay_s: float = 0.0,
    die_at: str | None = None,
    hold: tuple[str, Path] | None = None,
):
    """`fmpipe extract ARGV` instrumented (see the module docstring); `hold`: (EVENT, release FILE)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--delay", str(delay_s), "--chunk-delay"]
    command += [str(chunk_delay_s), *(["--die-at", die_at] if die_at else [])]
    command += ["--hold-at", hold[0], "--release", str(hold[1])] if hold else []
    return [*command, "--", *map(str, argv)]


def fmpipe(args: list, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m pipeline ARGS` in a real process (stdout and stderr captured as text)."""
    return run_all([([sys.executable, "-m", "pipeline", *map(str, args)], cwd)])[0]


def run_all(runs: list[tuple[list[str], Path | None]]) -> list[subprocess.CompletedProcess]:
    """Commands in their folders, all at once (independent runs); their results in order."""
    started = [subprocess.Popen(c, cwd=cwd, stdout=PIPE, stderr=PIPE, text=True, env=_env()) for c, cwd in runs]
    done = []
    for process in started:
        out, err = process.communicate(timeout=CHILD_TIMEOUT_S)
        done.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return done


def _env() -> dict[str, str]:
    """This environment, with tests/ importable (`--model tiny_models:...`) and no hub access."""
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}


@dataclass
class Child:
    """An instrumented `fmpipe extract` running in its own process; its events go to `log`."""

    process: subprocess.Popen
    log: Path

    def events(self) -> list[str]:
        """Every event printed so far (decode workers' `worker-start` and `decode` lines included)."""
        return self.log.read_text(errors="replace").splitlines()


def start_extract(
    argv: list[str],
    cwd: Path,
    log: Path,
    delay_s: float = 0.0,
    chunk_delay_s: float = 0.0,
    die_at: str | None = None,
    hold: tuple[str, Path] | None = None,
) -> Child:
    """Start `fmpipe extract ARGV` instrumented (see the module docstring) in `cwd`; `hold=(EVENT, FILE)`
    stops its main process at the first EVENT until FILE exists.

    Its stdout goes to the file `log`, not a pipe: decode workers orphaned by a kill keep their
    copy of stdout open for seconds, and nothing here may wait for them. stderr goes to `log.err`.
    """
    with open(log, "w") as out, open(f"{log}.err", "w") as err:
        command = extract_command(argv, delay_s, chunk_delay_s, die_at, hold)
        process = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=err, env=_env())
    return Child(process, log)


@dataclass
class Finished:
    """A finished instrumented run: exit code, every event it printed (decode workers' too), stderr."""

    code: int
    events: list[str]
    stderr: str

    @classmethod
    def of(cls, run: subprocess.CompletedProcess) -> Finished:
        """From a run of `extract_command` whose output was captured."""
        return cls(run.returncode, run.stdout.splitlines(), run.stderr)

    @property
    def rows_written(self) -> list[int]:
        """Rows of every batch the writer started, in order (announced as `batch-start 0-3,5`)."""
        return [row for e in self.events if e.startswith("batch-start ") for row in parse_rows(e.split()[1])]


def extract(argv: list[str], cwd: Path, die_at: str | None = None) -> Finished:
    """Run `fmpipe extract ARGV` instrumented to its end (or to its SIGKILL at `die_at`)."""
    cwd.mkdir(parents=True, exist_ok=True)
    child = start_extract(argv, cwd, cwd / f"events-{time.monotonic_ns()}.log", die_at=die_at)
    code = child.process.wait(CHILD_TIMEOUT_S)
    return Finished(code, child.events(), Path(f"{child.log}.err").read_text(errors="replace"))


WORKER_EVENTS = ("worker-start", "decode")  # printed by the decode workers


def main_events(events: list[str]) -> list[str]:
    """The main process's events (without the decode workers' WORKER_EVENTS and `exit`)."""
    return [e for e in events if e.partition(" ")[0] not in WORKER_EVENTS and e != "exit"]


def is_event(event: str, name: str) -> bool:
    """Whether `event` is `name` or starts with `name` and a space ("chunk" matches "chunk 3 /stages/0/data";
    "fsync out.h5.partial" does not match "fsync out.h5.partial.new")."""
    return event == name or event.startswith(name + " ")


def format_rows(rows) -> str:
    """[0, 1, 2, 5] → "0-2,5"."""
    runs: list[list[int]] = []
    for row in map(int, rows):
        if runs and row == runs[-1][1] + 1:
            runs[-1][1] = row
        else:
            runs.append([row, row])
    return ",".join(f"{lo}-{hi}" if hi > lo else f"{lo}" for lo, hi in runs) or "-"


def parse_rows(text: str) -> list[int]:
    """ "0-2,5" → [0, 1, 2, 5]."""
    pairs = [part.partition("-") for part in text.split(",") if part and part != "-"]
    return [row for lo, _, hi in pairs for row in range(int(lo), int(hi or lo) + 1)]


# -- the instrumented child -------------------------------------------------------------------


class Announcer:
    """Prints one line per step with a single write(2) (atomic on a pipe or file, and no lock a
    forked worker could inherit held), optionally SIGKILLs the main process at one, then sleeps.

    Decode workers never sleep: a worker whose parent dies before its `worker_init_fn` returns
    records the wrong parent (torch creates its ManagerWatchdog afterwards) and lives on forever."""

    def __init__(self, delay_s: float, chunk_delay_s: float, die_at: str | None, hold: tuple[str, str] | None = None):
        self.delay_s, self.chunk_delay_s = delay_s, chunk_delay_s
        self.hold = hold  # (EVENT, FILE): wait at the first EVENT until FILE exists
        prefix, _, nth = (die_at or "").partition("#")
        self.die_prefix, self.die_nth = prefix or None, int(nth or 1)
        self.main_pid = os.getpid()  # a forked decode worker kills its parent
        self.matches = itertools.count(1)

    def __call__(self, event: str) -> None:
        os.write(1, f"{event}\n".encode("utf-8", "backslashreplace"))
        if self.die_prefix and is_event(event, self.die_prefix) and next(self.matches) == self.die_nth:
            os.kill(self.main_pid, signal.SIGKILL)
        if os.getpid() != self.main_pid:
            return
        if self.hold and is_event(event, self.hold[0]):
            release, self.hold = self.hold[1], None
            deadline = time.monotonic() + 2 * CHILD_TIMEOUT_S  # never outlives a broken test
            while not os.path.exists(release) and time.monotonic() < deadline:
                time.sleep(0.02)
        time.sleep(self.chunk_delay_s if event.startswith("chunk") else self.delay_s)


def _around(owner, name: str, before: Callable[..., str] | str | None, after: Callable[..., str] | str | None, say):
    """Replace owner.name by a wrapper announcing `before` and `after` the original call (callables
    get the call's positional arguments)."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapped(*args, **kwargs):
        if before is not None:
            say(before(*args) if callable(before) else before)
        result = original(*args, **kwargs)
        if after is not None:
            say(after(*args) if callable(after) else after)
        return result

    setattr(owner, name, wrapped)


def _base(path: str | os.PathLike | int) -> str:
    """A path's last part; an fd's file's (`os.fsync(fd)`)."""
    if isinstance(path, int):
        path = os.readlink(f"/proc/self/fd/{path}") if os.path.exists(f"/proc/self/fd/{path}") else f"fd{path}"
    return os.path.basename(os.fspath(path))


def instrument(say: Callable[[str], None]) -> None:
    """Announce the writer's steps. The code paths stay the real ones (wrappers call the originals).

    file:     lock, locked (OUT.lock taken), create-start, layout, layout-done, fsync/fsynced NAME,
              rename/renamed SRC DST (OUT.partial.new → OUT.partial), fsync/fsynced FOLDER, create-done
    loop:     loader-start (before the DataLoader forks); in each worker: worker-start ID pid PID, then
              decode ROW before each image (the workers are up; no batch is written before these)
    batch:    batch-start ROWS, chunk ROW STAGE (before each direct chunk write), rows, rows-done,
              flush, flushed (data), flush, flushed (done markers), done-set ROWS
    finalise: finalise-start, top-lists, top-lists-done, close, closed, fsync/fsynced OUT.partial,
              rename/renamed OUT.partial OUT, fsync/fsynced FOLDER, finalise-done
    """
    from pipeline.extraction import loading, runner
    from pipeline.storage.writing import batches, output, rowstate, writer

    _around(
        batches.BatchWriter,
        "_write",
        lambda _, batch: f"batch-start {format_rows(batch.rows)}",
        lambda _, batch: f"done-set {format_rows(batch.rows)}",
        say,
    )
    _around(rowstate, "write_rows", "rows", "rows-done", say)
    _around(h5py.File, "flush", "flush", "flushed", say)
    _around(writer.ShardWriter, "finalize", "finalise-start", "finalise-done", say)
    _around(writer, "write_top_lists", "top-lists", "top-lists-done", say)
    _around(writer.ShardWriter, "close", "close", "closed", say)
    _around(writer.OutputLock, "acquire", "lock", "locked", say)
    _around(output, "_create", "create-start", "create-done", say)
    _around(output, "create_layout", "layout", "layout-done", say)
    _around(os, "fsync", lambda fd: f"fsync {_base(fd)}", lambda fd: f"fsynced {_base(fd)}", say)
    _around(
        os, "replace", lambda a, b: f"rename {_base(a)} {_base(b)}", lambda a, b: f"renamed {_base(a)} {_base(b)}", say
    )
    _around(loading, "_worker_init", None, lambda worker: f"worker-start {worker} pid {os.getpid()}", say)
    _around(loading._ImageDataset, "__getitem__", lambda dataset, i: f"decode {dataset.rows[i]}", None, say)
    real_iter_batches = runner.iter_batches

    def iter_batches(*args, **kwargs):
        say("loader-start")
        yield from real_iter_batches(*args, **kwargs)

    runner.iter_batches = iter_batches
    stage_arrays = batches.BatchWriter._stage_arrays

    def announced_stage_arrays(self, batch):
        for info, dset, array in stage_arrays(self, batch):
            yield info, _AnnouncedChunks(dset, say), array

    batches.BatchWriter._stage_arrays = announced_stage_arrays


class _AnnouncedChunks:
    """A stage's data dataset (`dset.id` too, with `id` = this) whose direct chunk writes are
    announced; everything else is the wrapped object's."""

    def __init__(self, wrapped, say: Callable[[str], None], name: str = ""):
        self._wrapped, self._say, self._name = wrapped, say, name or wrapped.name

    def __getattr__(self, name: str):
        return getattr(self._wrapped, name)

    @property
    def id(self):
        return _AnnouncedChunks(self._wrapped.id, self._say, self._name)

    def write_direct_chunk(self, offset, data, filter_mask=0):
        self._say(f"chunk {offset[0]} {self._name}")
        return self._wrapped.write_direct_chunk(offset, data, filter_mask)


def _child_main() -> None:
    parser = argparse.ArgumentParser(description="fmpipe extract with its writer's steps announced")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to sleep after each step")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds to sleep after each chunk write")
    parser.add_argument("--die-at", help="EVENT[#N]: SIGKILL at the Nth event starting with EVENT")
    parser.add_argument("--hold-at", help="EVENT: wait at the first event starting with EVENT until --release exists")
    parser.add_argument("--release", help="FILE whose creation lets a run held by --hold-at go on")
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="-- IMAGES OUT [extract options]")
    args = parser.parse_args()
    hold = (args.hold_at, args.release) if args.hold_at else None
    say = Announcer(args.delay, args.chunk_delay, args.die_at, hold)
    instrument(say)
    from pipeline import cli

    sys.argv = ["fmpipe", "extract", *(a for a in args.argv if a != "--")]
    try:
        cli.main()
    finally:
        say("exit")


# -- comparing files --------------------------------------------------------------------------


def snapshot(path: str | os.PathLike, ignore: frozenset[str] = IGNORED_ATTRS) -> dict[str, np.ndarray]:
    """Every dataset of an fmpipe file (floats as raw bits, so NaN compares exactly) and every
    attribute but those in `ignore` (default: `created`, `timings_json`): `NAME` for a dataset,
    `NAME@ATTR` for an attribute (`@complete` for the root's). The seal (`seal/`, `seal_sha256`)
    digests every other attribute, so ignoring one of those (`config_json` for runs written to
    another path) ignores the seal too: what it digests is compared item by item instead."""
    arrays: dict[str, np.ndarray] = {}
    sealed = set(ignore) <= set(IGNORED_ATTRS) | {"seal_sha256"}  # ignores only what the seal leaves out

    def visit(name: str, obj) -> None:
        if not sealed and (name == "seal" or name.startswith("seal/")):
            return
        for attr, value in obj.attrs.items():
            if not sealed and attr == "seal_sha256":
                continue
            if attr not in ignore:
                arrays[f"{name}@{attr}"] = _comparable(value, obj.file)
        if isinstance(obj, h5py.Dataset):
            value = obj[()]
            arrays[name] = value.view(f"u{value.dtype.itemsize}") if value.dtype.kind == "f" else value

    with h5py.File(path, "r", locking=False) as file:  # observe only: never blocked by, nor blocking, a run
        visit("", file)
        file.visititems(visit)
    return arrays


def _comparable(value, file: h5py.File) -> np.ndarray:
    """An attribute's value as an array that compares by content: object references (dimension
    scales' REFERENCE_LIST, DIMENSION_LIST) become the referenced object's name."""
    array = np.asarray(value)
    if array.dtype.kind not in "OV":
        return array
    return np.asarray(repr(_dereferenced(value, file)))


def _dereferenced(value, file: h5py.File):
    if isinstance(value, h5py.Reference):
        return file[value].name if value else None
    if isinstance(value, np.void | np.ndarray | list | tuple):
        return [_dereferenced(v, file) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    return value


def differences(got: dict, want: dict, rows: np.ndarray | None = None) -> list[str]:
    """What differs between two snapshots; with `rows`, only those rows of per-image datasets."""
    images = len(want["images/key"])
    found = [f"{name}: not expected" for name in sorted(set(got) - set(want)) if rows is None]
    for name, expected in want.items():
        per_image = "@" not in name and expected.ndim > 0 and expected.shape[0] == images
        if rows is not None and (not per_image or name.startswith("failures/")):
            continue
        actual = got.get(name)
        if actual is None or actual.shape != expected.shape:
            found.append(f"{name}: missing or shape {None if actual is None else actual.shape}")
            continue
        if rows is not None:
            actual, expected = actual[rows], expected[rows]
        if not np.array_equal(actual, expected):
            same = (actual == expected).reshape(len(actual), -1).all(axis=1) if per_image else np.ones(1, bool)
            bad = f" in rows {format_rows(np.flatnonzero(~same)[:8])}" if not same.all() else ""
            found.append(f"{name}: values differ{bad}")
    return found


def failures_of(arrays: dict) -> list[tuple]:
    """The failures table of a snapshot as (index, key, reason) tuples."""
    return list(zip(*(arrays[f"failures/{n}"].tolist() for n in ("index", "key", "reason")), strict=True))


def file_sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def stale_rows(path: str | os.PathLike, images: str | os.PathLike) -> list[str]:
    """Keys of done rows whose recorded source sha256 or size is not their file's now (want: none)."""
    with h5py.File(path, "r", locking=False) as file:  # observe only: never blocked by, nor blocking, a run
        done = file["images/done"][:]
        keys = [k.decode() for k in file["images/key"][:]]
        sha256, size = file["images/source_sha256"][:], file["images/source_size"][:]
    now = {row: Path(images, keys[row]).read_bytes() for row in np.flatnonzero(done)}
    recorded = {row: (sha256[row].decode(), int(size[row])) for row in now}
    return [keys[r] for r, data in now.items() if recorded[r] != (hashlib.sha256(data).hexdigest(), len(data))]


def maps_by_key(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """{key: [stage 0's (C, H, W) map, ..., every stage's (3, C) min/max/mean]} as float32, done rows only."""
    with h5py.File(path, "r", locking=False) as file:  # observe only: never blocked by, nor blocking, a run
        keys = [k.decode() for k in file["images/key"][:]]
        done = file["images/done"][:]
        stages = sorted(file["stages"], key=int)
        blocks = [file[f"stages/{s}/data"][:].astype(np.float32) for s in stages]
        stats = [np.stack([file[f"stages/{s}/{n}"][:] for n in ("min", "max", "mean")], axis=1) for s in stages]
    return {key: [b[row] for b in blocks + stats] for row, key in enumerate(keys) if done[row]}


def distance(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    """Largest |got - want| of any array, relative to that array's largest |want| (NaN: infinite)."""
    worst = 0.0
    for a, b in zip(got, want, strict=True):
        if a.shape != b.shape or not np.array_equal(np.isnan(a), np.isnan(b)):
            return float("inf")
        ok = ~np.isnan(b)
        scale = float(np.abs(b[ok]).max(initial=0.0)) or 1.0
        worst = max(worst, float(np.abs(a[ok] - b[ok]).max(initial=0.0)) / scale)
    return worst


if __name__ == "__main__":
    _child_main()
