#!/usr/bin/env python3
"""Kill `fmpipe extract` with SIGKILL at random moments, rerun it, and compare with an uninterrupted run.

    python scripts/kill_test.py                 # 10 trials
    python scripts/kill_test.py --trials 3 --seed 1 --workdir /tmp/kt --keep
    python scripts/kill_test.py --trials 20 --signals KILL,TERM   # docs/reliability.md

Each trial starts a fresh extract in a child process whose writer announces what it is
doing on stdout ("batch-start 3", "flush", "done-set 3", "finalise-start", "fsync",
"rename", ...) and is slowed down a little at each of those steps (sleeps only; the code
path is the real one) so that a kill lands inside them. The parent waits for a randomly
chosen batch or for the finalise step, sleeps a random fraction of a step, and sends
SIGKILL from outside (or, with --signals, one of the listed signals picked at random:
SIGTERM must stop the run at the next batch boundary with exit code 143, or let a finalise
that started end). The last event the child printed classifies the moment.

After the kill: a file at OUT must be complete and identical to the reference; the partial
file must open, and every row it marks done must already hold the reference's values (done
is never ahead of the data; complete is never set early). Then the same extract runs again,
uninterrupted: it must resume (stored + failed == rows not done), and the result must be
identical to the reference, bit for bit, including the failures table.

Exit code 0 when every trial passed, 1 otherwise. The last line is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (zstd filter)
import numpy as np

EXTRACT_OPTIONS = [
    "--model", "resnet18", "--random-init", "--size", "64", "--batch-size", "2",
    "--workers", "0", "--device", "cpu",
]  # fmt: skip
STEP_DELAY_S = 0.03  # the child sleeps this long at each announced step
CHILD_TIMEOUT_S = 120.0


@dataclass
class Trial:
    """One kill and rerun."""

    number: int
    target: str  # "batch 3" or "finalise"
    signal_name: str = "KILL"
    moment: str = ""  # mid-batch, between-batches, mid-finalise, after-finish, before-writing
    last_event: str = ""
    done_after_kill: int = 0
    out_after_kill: bool = False  # the kill came after the rename to OUT
    resumed_from: int = 0
    recomputed: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# -- child: the real CLI, with announced and slightly slowed write steps ---------------------


def run_child(argv: list[str]) -> None:
    """Run `fmpipe extract ARGV` with the writer's steps announced on stdout."""
    import h5py as _h5py

    from pipeline import cli
    from pipeline.storage import writer

    def say(event: str) -> None:
        sys.stdout.write(event + "\n")
        sys.stdout.flush()
        time.sleep(STEP_DELAY_S)

    def wrap(owner, name: str, event: str):
        original = getattr(owner, name)

        def wrapped(*args, **kwargs):
            say(event)
            return original(*args, **kwargs)

        setattr(owner, name, wrapped)

    original_write = writer.ShardWriter._write

    def write(self, batch):
        first = int(batch.rows[0])
        say(f"batch-start {first}")
        original_write(self, batch)
        say(f"done-set {first}")

    writer.ShardWriter._write = write
    wrap(writer.ShardWriter, "_write_rows", "rows")
    wrap(_h5py.File, "flush", "flush")
    wrap(writer.ShardWriter, "finalize", "finalise-start")
    wrap(writer.ShardWriter, "close", "close")
    wrap(os, "fsync", "fsync")
    wrap(os, "replace", "rename")
    sys.argv = ["fmpipe", "extract", *argv]
    try:
        cli.main()
    finally:
        say("exit")


# -- parent ------------------------------------------------------------------------------


def make_images(folder: Path, count: int, seed: int) -> None:
    """`count` random 64x64 PNGs plus one broken file (a recorded failure)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"img{i:03d}.png")
    (folder / "img005b.png").write_bytes(b"this is not a png")


def snapshot(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of an fmpipe file as comparable arrays (floats as raw bits, NaN-exact)."""
    arrays: dict[str, np.ndarray] = {}

    def visit(name: str, obj) -> None:
        if not isinstance(obj, h5py.Dataset):
            return
        value = obj[()]
        if value.dtype.kind == "f":
            value = value.view(f"u{value.dtype.itemsize}")
        arrays[name] = value

    with h5py.File(path, "r") as file:
        file.visititems(visit)
        arrays["@complete"] = np.asarray(bool(file.attrs.get("complete")))
    return arrays


def differences(got: dict, want: dict, rows: np.ndarray | None = None) -> list[str]:
    """Names of datasets that differ (only `rows` of per-image datasets when given)."""
    out = []
    for name, expected in want.items():
        if name.startswith("@") or name.startswith("failures/"):
            continue
        actual = got.get(name)
        if actual is None or actual.shape != expected.shape:
            out.append(f"{name}: missing or shape {None if actual is None else actual.shape}")
            continue
        if rows is not None:
            actual, expected = actual[rows], expected[rows]
        if not np.array_equal(actual, expected):
            out.append(f"{name}: values differ")
    return out


def failures_of(arrays: dict) -> list[tuple]:
    return list(zip(*(arrays[f"failures/{n}"].tolist() for n in ("index", "key", "reason")), strict=True))


def kill_child(
    images: Path, out: Path, target: str, rng: random.Random, sig: signal.Signals = signal.SIGKILL
) -> tuple[list[str], int, int | None]:
    """Start the instrumented child, send `sig` at the target; its events, exit code, and how many
    events it had printed when the signal was sent."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--", str(images), str(out), *EXTRACT_OPTIONS]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    events: list[str] = []
    trigger = threading.Event()
    want = "finalise-start" if target == "finalise" else f"batch-start {2 * int(target.split()[1])}"

    def read() -> None:
        for line in child.stdout:
            events.append(line.strip())
            if line.strip() == want:
                trigger.set()
        trigger.set()  # the child ended before the target

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    trigger.wait(CHILD_TIMEOUT_S)
    # A random moment within the next few announced steps (each lasts >= STEP_DELAY_S).
    time.sleep(rng.uniform(0.0, 5 * STEP_DELAY_S))
    sent_at = None  # events seen when the signal went out (None: the child had already finished)
    if child.poll() is None:
        sent_at = len(events)
        child.send_signal(sig)
    code = child.wait(CHILD_TIMEOUT_S)
    reader.join(10)
    return events, code, sent_at


def classify(events: list[str], code: int) -> str:
    if code == 0:
        return "after-finish"
    last = next((e for e in reversed(events) if e != "exit"), "")
    if any(e == "finalise-start" for e in events):
        return "mid-finalise"
    if not any(e.startswith("batch-start") for e in events):
        return "before-writing"
    return "between-batches" if last.startswith("done-set") else "mid-batch"


def check_after_kill(out: Path, reference: dict, trial: Trial) -> None:
    """OUT only when complete and identical; done rows of the partial already hold their data."""
    partial = Path(f"{out}.partial")
    if out.exists():
        trial.out_after_kill = True
        got = snapshot(out)
        trial.done_after_kill = int(got["images/done"].sum())
        if not got["@complete"]:
            trial.problems.append("OUT exists but is not marked complete")
        trial.problems += [f"early OUT: {d}" for d in differences(got, reference)]
        return
    if not partial.exists():
        return
    try:
        got = snapshot(partial)
    except OSError as err:
        trial.problems.append(f"partial file unreadable after kill: {err}")
        return
    done = got["images/done"].astype(bool)
    trial.done_after_kill = int(done.sum())
    if got["@complete"] and not done.all():
        trial.problems.append("partial marked complete with rows not done")
    trial.problems += [f"done row without its data: {d}" for d in differences(got, reference, np.flatnonzero(done))]


def extract_in_process(images: Path, out: Path):
    """The same extract as EXTRACT_OPTIONS, uninterrupted, through the Python API."""
    import pipeline

    options = dict(model="resnet18", random_init=True, size=(64, 64), batch_size=2, workers=0, device="cpu")
    return pipeline.extract(str(images), str(out), **options)


def rerun_and_compare(images: Path, out: Path, reference: dict, trial: Trial) -> None:
    summary = extract_in_process(images, out)
    trial.resumed_from = summary.done_before
    trial.recomputed = summary.stored + summary.failed
    if summary.done_before != trial.done_after_kill:
        trial.problems.append(f"resumed from {summary.done_before}, but {trial.done_after_kill} were done")
    if summary.done_before + trial.recomputed != summary.images:
        trial.problems.append(f"recomputed {trial.recomputed} of {summary.images - summary.done_before} pending")
    got = snapshot(out)
    if not got["@complete"]:
        trial.problems.append("rerun did not complete")
    trial.problems += differences(got, reference)
    if failures_of(got) != failures_of(reference):
        trial.problems.append(f"failures table differs: {failures_of(got)}")


def run_trials(
    trials: int, seed: int, workdir: Path, images_count: int = 12, signals: tuple[str, ...] = ("KILL",)
) -> list[Trial]:
    """Reference run, then `trials` kill + rerun trials alternating mid-batch / mid-finalise targets."""
    rng = random.Random(seed)
    images = workdir / "images"
    make_images(images, images_count, seed)
    reference_out = workdir / "reference.h5"
    extract_in_process(images, reference_out)
    reference = snapshot(reference_out)
    batches = (images_count + 2) // 2
    results = []
    for number in range(trials):
        target = "finalise" if number % 2 else f"batch {rng.randrange(batches)}"
        out = workdir / f"trial{number}.h5"
        trial = Trial(number, target, rng.choice(signals))
        sig = signal.Signals[f"SIG{trial.signal_name}"]
        events, code, sent_at = kill_child(images, out, target, rng, sig)
        if sig == signal.SIGTERM and code not in (0, 128 + signal.SIGTERM):
            trial.problems.append(f"SIGTERM ended the run with exit code {code}, not 143 (or 0 after finalise)")
        before = events if sent_at is None else events[:sent_at]
        trial.moment = classify(before, 0 if sent_at is None else -sig)
        trial.last_event = before[-1] if before else ""
        check_after_kill(out, reference, trial)
        rerun_and_compare(images, out, reference, trial)
        results.append(trial)
        print(
            f"trial {number:>2}  SIG{trial.signal_name:<4} target {target:<9} {trial.moment:<15} "
            f"after {trial.last_event!r:<18} "
            f"done {trial.done_after_kill:>2} → resumed {trial.resumed_from:>2}, recomputed {trial.recomputed:>2}  "
            f"{'identical' if trial.ok else 'FAILED: ' + '; '.join(trial.problems)}",
            flush=True,
        )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--trials", type=int, default=10, help="kill + rerun trials (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for images and kill moments")
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="do not delete the temporary folder")
    parser.add_argument("--signals", default="KILL", help="comma list to pick from per trial, e.g. KILL,TERM")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child:
        run_child([a for a in rest if a != "--"])
        return 0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fmpipe-kill-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        signals = tuple(name.strip().upper().removeprefix("SIG") for name in args.signals.split(","))
        results = run_trials(args.trials, args.seed, workdir, signals=signals)
    finally:
        if not args.workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    moments = {m: sum(t.moment == m for t in results) for m in sorted({t.moment for t in results})}
    by_signal = {name: sum(t.signal_name == name for t in results) for name in sorted({t.signal_name for t in results})}
    identical = sum(t.ok for t in results)
    summary = {"trials": len(results), "identical": identical, "moments": moments, "signals": by_signal}
    print(json.dumps(summary))
    return 0 if all(t.ok for t in results) else 1


if __name__ == "__main__":
    sys.exit(main())
