#!/usr/bin/env python3
"""Kill `fmpipe extract` at random moments, rerun it at once, and compare with an uninterrupted run.

    python scripts/kill_test.py                 # 10 trials, SIGKILL, default extract options
    python scripts/kill_test.py --trials 50 --seed 7            # docs/reliability.md
    python scripts/kill_test.py --trials 20 --signals KILL,TERM --moments mid-batch-chunks,finalise
    python scripts/kill_test.py --trials 3 --seed 1 --workdir /tmp/kt --keep

The extract runs as users run it: `--model resnet18 --random-init --size 64 --device cpu` and every
other option at its default (batches of 16, two DataLoader decode workers) on 40 images and one file
that is not an image (41 rows, three batches). Each trial starts it in a child process through the
real CLI, instrumented by tests/helpers.py: the writer's steps are announced on stdout and slowed a
little (sleeps only; every call is the real one). The parent aims at a randomly chosen moment (see
AIMED), waits for its event, sleeps a random part of a step and sends SIGKILL to the main process (or,
with --signals, a signal picked at random per trial). The decode workers are left to notice on their
own, as they are when a user or the OOM killer kills the main process.

As soon as the child is dead the files it left are copied aside (milliseconds) and the same extract
runs again: no sleep, orphaned decode workers may still be alive. Required: the killed run left `OUT`
only complete and identical, and a readable `OUT.partial` whose done rows already hold their final
values; the rerun exits 0 (never refused), writes exactly the rows that were not done (none when
`OUT` was complete), and ends with a file identical to the uninterrupted run bit for bit: every
dataset (maps, statistics, keys, source digests, failures) and every attribute but `created` and
`timings_json`; every done row's source digest is its file's; no `OUT.partial`, `.partial.new` or
`OUT.lock` is left. SIGTERM must end with 143 (stopped at a batch boundary), 0 (a finalise that had
started ends), or die by the signal's default action before the batch loop or after finalising.

Exit code 0 when every trial passed, 1 otherwise. The last line is a JSON summary.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import helpers  # tests/helpers.py: the instrumented child and the snapshots

OUT = "out.h5"
OPTIONS = ["--model", "resnet18", "--random-init", "--size", "64", "--device", "cpu"]  # the rest: defaults
IMAGES, BATCH, STAGES = 40, 16, 5  # good images (one more row is a broken file), default --batch-size, resnet18
STEP_DELAY_S = 0.03  # the child sleeps this long after each announced step
CHUNK_DELAY_S = 0.004  # ... and this long after each chunk write (STAGES per image)
POLL_S = 0.002


@dataclass(frozen=True)
class Aim:
    """Where a kill is aimed: after the `nth` event named `event`, within `jitter_s`."""

    kind: str
    event: str
    nth: int = 1
    jitter_s: float = STEP_DELAY_S


_PARTIAL, _NEW = f"{OUT}.partial", f"{OUT}.partial.new"
_BATCHES = -(-(IMAGES + 1) // BATCH)
# Each moment (moment_of), and how a kill is aimed at it: (events to pick from, nth, jitter_s).
AIMED = {
    "lock": lambda rng: (["lock", "locked"], 1, STEP_DELAY_S),
    "file-creation": lambda rng: (["create-start", "layout", f"fsync {_NEW}", f"rename {_NEW}"], 1, STEP_DELAY_S),
    "file-created": lambda rng: ([f"renamed {_NEW}", "create-done"], 1, STEP_DELAY_S),
    "worker-start-up": lambda rng: (["loader-start", "worker-start", "decode"], 1, 0.2),
    "mid-batch-chunks": lambda rng: (["chunk"], rng.randint(1, IMAGES * STAGES), CHUNK_DELAY_S * 3),
    "mid-batch-rows": lambda rng: (["rows", "rows-done"], rng.randint(1, _BATCHES), STEP_DELAY_S),
    "data-before-done": lambda rng: (["flushed"], 2 * rng.randrange(_BATCHES) + 1, STEP_DELAY_S),
    "between-batches": lambda rng: (["done-set"], rng.randint(1, _BATCHES - 1), STEP_DELAY_S),
    "finalise-top-lists": lambda rng: (["top-lists"], 1, 0.1),
    "finalise-before-fsync": lambda rng: (["finalise-start", "top-lists-done", f"fsync {_PARTIAL}"], 1, STEP_DELAY_S),
    "finalise-after-fsync": lambda rng: ([f"fsynced {_PARTIAL}", f"rename {_PARTIAL}"], 1, STEP_DELAY_S),
    "finalise-after-rename": lambda rng: ([f"renamed {_PARTIAL}"], 1, STEP_DELAY_S),
}
AIMS = tuple(AIMED)


def aim_at(kind: str, rng: random.Random) -> Aim:
    """A random aim at the moment `kind` (AIMED)."""
    events, nth, jitter_s = AIMED[kind](rng)
    return Aim(kind, rng.choice(events), nth, jitter_s)


@dataclass
class Trial:
    """One kill and rerun."""

    number: int
    aim: Aim
    signal_name: str = "KILL"
    moment: str = ""  # where the child was when the signal hit (moment_of)
    last_event: str = ""
    rows: int = 0
    done_rows: list[int] = field(default_factory=list)  # done in the file the kill left
    out_after_kill: bool = False
    orphans: list[int] = field(default_factory=list)  # pids of the killed child's decode workers alive at the rerun
    rerun_gap_ms: float = 0.0  # from the child's death to the rerun's start
    rerun_rows: list[int] = field(default_factory=list)
    refused: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def moment_of(events: list[str]) -> str:
    """Where a run was after these (main-process) events: lock, file-creation (no OUT.partial yet),
    file-created, worker-start-up (loader started, no batch written), mid-batch-chunks, mid-batch-rows,
    data-before-done (data flushed, done markers not), between-batches, finalise-top-lists (writing
    them), finalise-before-fsync, finalise-after-fsync (before the rename), finalise-after-rename."""
    moment, flushes = "start-up", 0
    for event in events:
        word, _, rest = event.partition(" ")
        name = rest.split(" ")[0]
        renamed_out = moment == "finalise-after-rename"
        if word in ("lock", "locked") or name.endswith(".lock"):
            moment = "lock"
        elif word in ("create-start", "layout", "layout-done") or (name.endswith(".new") and word != "renamed"):
            moment = "file-creation"
        elif (word == "renamed" and name.endswith(".new")) or word == "create-done":
            moment = "file-created"
        elif word == "loader-start":
            moment = "worker-start-up"
        elif word in ("batch-start", "chunk"):
            moment, flushes = "mid-batch-chunks", 0 if word == "batch-start" else flushes
        elif word in ("rows", "rows-done") or (word == "flush" and flushes == 0):
            moment = "mid-batch-rows"
        elif word in ("flush", "flushed"):
            flushes += word == "flushed"
            moment = "data-before-done" if flushes < 2 else "between-batches"
        elif word == "done-set":
            moment = "between-batches"
        elif word == "top-lists":
            moment = "finalise-top-lists"
        elif word in ("finalise-start", "top-lists-done", "close", "closed") and not renamed_out:
            moment = "finalise-before-fsync"
        elif word in ("fsync", "fsynced", "rename") and name == f"{OUT}.partial":
            moment = "finalise-before-fsync" if word == "fsync" else "finalise-after-fsync"
        elif word == "renamed" and name == f"{OUT}.partial":
            moment = "finalise-after-rename"
    return moment


# -- one trial ----------------------------------------------------------------------------------


def kill_at(child: helpers.Child, aim: Aim, rng: random.Random, sig: signal.Signals) -> int | None:
    """Send `sig` a random moment after the aim's event; how many main events had been seen (None:
    the child ended first)."""
    deadline = time.monotonic() + helpers.CHILD_TIMEOUT_S
    while child.process.poll() is None and time.monotonic() < deadline:
        if sum(helpers.is_event(e, aim.event) for e in child.events()) >= aim.nth:
            break
        time.sleep(POLL_S)
    time.sleep(rng.uniform(0.0, aim.jitter_s))
    events = helpers.main_events(child.events())
    if child.process.poll() is not None:
        return None
    child.process.send_signal(sig)
    return len(events)


def lingering(pids: list[int], wait_s: float = 15.0) -> list[int]:
    """The orphaned decode workers still alive `wait_s` after the last trial (torch's workers notice a
    dead parent within 5 s, unless it died before their worker_init_fn returned); SIGKILLed then."""
    deadline = time.monotonic() + wait_s
    while any(map(alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = [pid for pid in pids if alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def run_trial(trial: Trial, images: Path, folder: Path, reference: dict, rng: random.Random) -> None:
    """Kill the child at the trial's aim, copy what it left, rerun at once, check everything."""
    sig = signal.Signals[f"SIG{trial.signal_name}"]
    argv = [str(images), OUT, *OPTIONS]
    child = helpers.start_extract(argv, folder, folder / "killed.log", STEP_DELAY_S, CHUNK_DELAY_S)
    sent_at = kill_at(child, trial.aim, rng, sig)
    code = child.process.wait(helpers.CHILD_TIMEOUT_S)
    died = time.perf_counter()
    aside = folder / "after-kill"
    aside.mkdir()
    for name in (OUT, f"{OUT}.partial"):
        if (folder / name).exists():
            shutil.copyfile(folder / name, aside / name)
    workers = [int(e.split()[-1]) for e in child.events() if e.startswith("worker-start")]
    rerun = helpers.start_extract(argv, folder, folder / "rerun.log")
    trial.rerun_gap_ms = (time.perf_counter() - died) * 1000
    trial.orphans = [pid for pid in workers if alive(pid)]
    events = helpers.main_events(child.events())
    seen = events if sent_at is None or sig == signal.SIGKILL else events[:sent_at]
    trial.moment = "after-finish" if sent_at is None else moment_of(seen)
    trial.last_event = seen[-1] if seen else ""
    check_exit(trial, code, events)
    check_after_kill(trial, aside, reference)
    code = rerun.process.wait(helpers.CHILD_TIMEOUT_S)
    finished = helpers.Finished(code, rerun.events(), Path(f"{rerun.log}.err").read_text())
    check_rerun(trial, finished, folder, images, reference)


def check_exit(trial: Trial, code: int, events: list[str]) -> None:
    """SIGKILL: -9. SIGTERM (judged by all the child printed, as it ended): 143 when stopped before
    finalising, 0 when a finalise ran, death by the signal's default action only outside the span where
    fmpipe handles it (before the batch loop, after finalising)."""
    if trial.moment == "after-finish":
        return
    if trial.signal_name == "KILL":
        if code != -signal.SIGKILL:
            trial.problems.append(f"SIGKILL but exit code {code}")
        return
    finalised = "finalise-start" in events
    handled = "loader-start" in events and "finalise-done" not in events
    expected = {0: finalised, 128 + signal.SIGTERM: not finalised, -signal.SIGTERM: not handled}
    if not expected.get(code, False):
        trial.problems.append(f"SIGTERM ended the run with exit code {code} after {events[-1:]}")


def check_after_kill(trial: Trial, aside: Path, reference: dict) -> None:
    """OUT only when complete and identical; a readable partial whose done rows hold their data."""
    trial.rows = len(reference["images/key"])
    if (aside / OUT).exists():
        trial.out_after_kill = True
        trial.done_rows = list(range(trial.rows))
        trial.problems += [f"early OUT: {d}" for d in helpers.differences(helpers.snapshot(aside / OUT), reference)]
        return
    partial = aside / f"{OUT}.partial"
    if not partial.exists():
        return
    try:
        got = helpers.snapshot(partial)
    except OSError as err:
        trial.problems.append(f"partial file unreadable after the kill: {err}")
        return
    done = np.flatnonzero(got["images/done"])
    trial.done_rows = done.tolist()
    if bool(got["@complete"]) and len(done) < trial.rows:
        trial.problems.append("partial marked complete with rows not done")
    trial.problems += [f"done row without its data: {d}" for d in helpers.differences(got, reference, done)]


def check_rerun(trial: Trial, rerun: helpers.Finished, folder: Path, images: Path, reference: dict) -> None:
    """Exit 0; exactly the rows not done were written; identical to the reference; nothing left over."""
    trial.rerun_rows = rerun.rows_written
    if rerun.code != 0:
        last = rerun.stderr.strip().splitlines()[-1:] or [""]
        trial.refused = "being written" in rerun.stderr or "lock" in last[0]
        trial.problems.append(f"rerun exit code {rerun.code}: {last[0]}")
        return
    pending = sorted(set(range(trial.rows)) - set(trial.done_rows))
    if trial.rerun_rows != pending:
        trial.problems.append(
            f"rerun wrote rows {helpers.format_rows(trial.rerun_rows)}, not done were {helpers.format_rows(pending)}"
        )
    if trial.out_after_kill and "already complete" not in rerun.stderr:
        trial.problems.append("rerun of a complete OUT did not say it is already complete")
    trial.problems += helpers.differences(helpers.snapshot(folder / OUT), reference)
    trial.problems += [f"stale source digest: {key}" for key in helpers.stale_rows(folder / OUT, images)]
    trial.problems += [f"left over: {n}" for n in (f"{OUT}.partial", f"{OUT}.partial.new", f"{OUT}.lock")
                       if (folder / n).exists()]  # fmt: skip


# -- trials -------------------------------------------------------------------------------------


def make_images(folder: Path, count: int, seed: int) -> None:
    """`count` random 64x64 PNGs plus one file that is not an image (a recorded failure, row 6)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"img{i:03d}.png")
    (folder / "img005b.png").write_bytes(b"this is not a png")


def reference_run(images: Path, folder: Path) -> dict:
    """An uninterrupted `python -m pipeline extract` with the same options, as a snapshot."""
    folder.mkdir(parents=True)
    done = helpers.fmpipe(["extract", images, OUT, *OPTIONS], cwd=folder)
    if done.returncode != 0:
        raise SystemExit(f"the uninterrupted reference run failed:\n{done.stderr}")
    return helpers.snapshot(folder / OUT)


def run_trials(
    trials: int,
    seed: int,
    workdir: Path,
    signals: tuple[str, ...] = ("KILL",),
    kinds: tuple[str, ...] = AIMS,
    keep: bool = False,
) -> list[Trial]:
    """Reference run, then `trials` kill + rerun trials, aims cycling through `kinds` in random order.
    A passed trial's files are removed unless `keep`."""
    rng = random.Random(seed)
    images = workdir / "images"
    make_images(images, IMAGES, seed)
    reference = reference_run(images, workdir / "reference")
    order: list[str] = []
    results = []
    for number in range(trials):
        if not order:
            order = rng.sample(kinds, len(kinds))
        trial = Trial(number, aim_at(order.pop(), rng), rng.choice(signals))
        folder = workdir / f"trial{number:03d}"
        folder.mkdir()
        run_trial(trial, images, folder, reference, rng)
        if trial.ok and not keep:
            shutil.rmtree(folder)
        results.append(trial)
        print(line(trial), flush=True)
    return results


def line(trial: Trial) -> str:
    aim = f"{trial.aim.event}#{trial.aim.nth}" if trial.aim.nth > 1 else trial.aim.event
    verdict = "identical" if trial.ok else "FAILED: " + "; ".join(trial.problems)
    return (
        f"trial {trial.number:>2}  {trial.signal_name:<4}  aim {aim[:24]:<24}  at {trial.moment:<21}  "
        f"last {trial.last_event[:24]!r:<26}  done {len(trial.done_rows):>2}/{trial.rows}  "
        f"rerun +{trial.rerun_gap_ms:4.1f} ms  orphans {len(trial.orphans)}  "
        f"wrote {helpers.format_rows(trial.rerun_rows):<6}  {verdict}"
    )


def summary(results: list[Trial], seed: int, left: list[int]) -> dict:
    """The JSON line; `left`: orphaned decode workers that outlived the trials (`lingering`)."""
    return {
        "trials": len(results),
        "identical": sum(t.ok for t in results),
        "refused": sum(t.refused for t in results),
        "moments": dict(sorted(Counter(t.moment for t in results).items())),
        "signals": dict(sorted(Counter(t.signal_name for t in results).items())),
        "reruns_with_orphan_workers": sum(bool(t.orphans) for t in results),
        "orphans_lingering": len(left),
        "max_rerun_gap_ms": round(max((t.rerun_gap_ms for t in results), default=0.0), 1),
        "seed": seed,
        "date": dt.date.today().isoformat(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--trials", type=int, default=10, help="kill + rerun trials (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for images, aims and kill moments")
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep every trial's files (default: failed ones only)")
    parser.add_argument("--signals", default="KILL", help="comma list to pick from per trial, e.g. KILL,TERM")
    parser.add_argument("--moments", default=",".join(AIMS), help=f"aims to cycle through (default: all of {AIMS})")
    args = parser.parse_args()
    kinds = tuple(k.strip() for k in args.moments.split(",") if k.strip())
    unknown = sorted(set(kinds) - set(AIMS))
    if unknown:
        parser.error(f"unknown --moments {', '.join(unknown)}; choose from {', '.join(AIMS)}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fmpipe-kill-"))
    workdir.mkdir(parents=True, exist_ok=True)
    signals = tuple(name.strip().upper().removeprefix("SIG") for name in args.signals.split(","))
    results = run_trials(args.trials, args.seed, workdir, signals, kinds, args.keep)
    passed = all(t.ok for t in results)
    if passed and not args.workdir and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not passed:
        print(f"the failed trials' files are in {workdir}", file=sys.stderr)
    left = lingering([pid for t in results for pid in t.orphans])
    print(json.dumps(summary(results, args.seed, left)))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
