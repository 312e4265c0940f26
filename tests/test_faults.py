"""Faults injected into real `fmpipe extract` processes: SIGKILL at chosen steps with an immediate
rerun, a job-array shard resumed with another batch size, and resumes with changed options, weights
or sources. Whatever happens, every done row holds its own key's maps, computed from the file whose
sha256 it records, and nothing is recomputed that did not need to be.

The runs use default options but for a tiny model and size: two DataLoader decode workers, as users
run it (tests/helpers.py instruments the child: it announces the writer's steps and SIGKILLs itself
at one, `--die-at`).
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import write_images
from helpers import (
    FLOAT16_TOLERANCE,
    Finished,
    differences,
    distance,
    extract,
    extract_command,
    file_sha256,
    fmpipe,
    maps_by_key,
    run_all,
    snapshot,
    stale_rows,
)

import pipeline

pytestmark = pytest.mark.slow  # real processes, each starting torch: minutes on 2 cores

OUT = "out.h5"
OPTIONS = {"--model": "resnet18", "--size": "32", "--device": "cpu", "--batch-size": "4"}  # + --random-init
ROWS = 10  # nine images and one broken file (row 3): batches 0-3, 4-7, 8-9
_rng = random.Random(20261202)  # fixed: the "random" points are the same on every run
MID_BATCH = _rng.choice([f"chunk#{_rng.randint(6, 30)}", f"rows#{_rng.randint(1, 3)}", "flushed#3"])
FINALISE = _rng.choice(["finalise-start", f"fsync {OUT}.partial", f"fsynced {OUT}.partial", f"renamed {OUT}.partial"])


def argv(images: Path, **changed: str) -> list[str]:
    """IMAGES OUT and the options, with `changed` ({"size": "48"} → --size 48) replacing or adding some."""
    options = {**OPTIONS, **{f"--{k.replace('_', '-')}": v for k, v in changed.items()}}
    return [str(images), OUT, "--random-init", *(x for pair in options.items() for x in pair)]


def weighted_argv(images: Path) -> list[str]:
    """argv(images) with `--weights w.pt` (in the run's folder) instead of --random-init."""
    return [a for a in argv(images) if a != "--random-init"] + ["--weights", "w.pt"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("faults") / "images"
    write_images(folder, ROWS - 1, size=(32, 32))
    (folder / "img002b.png").write_bytes(b"not an image")
    return folder


@pytest.fixture(scope="module")
def reference(images) -> dict:
    """The same extract uninterrupted (in this process; from its folder with the same relative OUT,
    so that even the recorded configuration is equal)."""
    folder = images.parent / "reference"
    folder.mkdir()
    here = Path.cwd()
    os.chdir(folder)
    try:
        pipeline.extract(str(images), OUT, model="resnet18", random_init=True, size=(32, 32), batch_size=4,
                         device="cpu")  # fmt: skip
    finally:
        os.chdir(here)
    return snapshot(folder / OUT)


@pytest.fixture(scope="module")
def partials(images) -> dict[str, Path]:
    """OUT.partial of two runs SIGKILLed right after their first batch's done markers (rows 0-3 done):
    "random-init" with OPTIONS, "weights" with `--weights w.pt` (a state dict next to it) instead."""
    import timm
    import torch

    folders = {"random-init": images.parent / "partial", "weights": images.parent / "weights-partial"}
    folders["weights"].mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(timm.create_model("resnet18").state_dict(), folders["weights"] / "w.pt")
    commands = [extract_command(options, die_at="done-set#1") for options in (argv(images), weighted_argv(images))]
    for folder in folders.values():
        folder.mkdir(exist_ok=True)
    for run in run_all(list(zip(commands, folders.values(), strict=True))):
        assert run.returncode == -9, run.stderr
    for folder in folders.values():
        assert not (folder / OUT).exists() and done_rows(folder / f"{OUT}.partial") == [0, 1, 2, 3]
    return {name: folder / f"{OUT}.partial" for name, folder in folders.items()}


def resumable_copy(partial: Path, folder: Path) -> Path:
    """A copy of the shared partial file in `folder`, to resume there."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(partial, folder / partial.name)
    return folder


def done_rows(path: Path) -> list[int]:
    with h5py.File(path, "r", locking=False) as file:
        return np.flatnonzero(file["images/done"][:]).tolist()


def assert_clean_finish(folder: Path, images: Path, reference: dict) -> None:
    """OUT identical to the reference bit for bit, its digests its files', nothing left over."""
    assert differences(snapshot(folder / OUT), reference) == []
    assert stale_rows(folder / OUT, images) == []
    assert [p.name for p in folder.iterdir() if p.name.startswith(f"{OUT}.")] == []


# -- SIGKILL, then an immediate rerun --------------------------------------------------------


@pytest.mark.parametrize("die_at", ["decode", MID_BATCH, FINALISE])  # decode: a worker's first image
def test_sigkill_then_an_immediate_rerun_resumes_and_is_identical(images, reference, tmp_path, die_at):
    killed = extract(argv(images), tmp_path, die_at=die_at)
    assert killed.code == -9, (die_at, killed.events[-3:], killed.stderr)
    left, finished = tmp_path / f"{OUT}.partial", (tmp_path / OUT).exists()
    done = list(range(ROWS)) if finished else done_rows(left) if left.exists() else []
    if done and not finished:  # done is never ahead of the data
        assert differences(snapshot(left), reference, np.array(done)) == []
    rerun = extract(argv(images), tmp_path)  # at once: the killed run's decode workers may still live
    assert rerun.code == 0, (die_at, rerun.stderr)
    assert rerun.rows_written == [r for r in range(ROWS) if r not in done], (die_at, done)
    assert ("already complete" in rerun.stderr) == finished, rerun.stderr
    assert_clean_finish(tmp_path, images, reference)


# -- a job-array shard resumed with another batch size --------------------------------------


def test_a_shard_resumed_with_another_batch_size_holds_each_keys_maps(tmp_path):
    images = tmp_path / "images"
    keys = write_images(images, 49, size=(32, 32))  # shards cut at multiples of 16: 16, 16, 16 and 1 rows
    pipeline.extract(str(images), str(tmp_path / "whole.h5"), model="resnet18", random_init=True, size=(32, 32),
                     workers=0, device="cpu")  # fmt: skip
    want = maps_by_key(tmp_path / "whole.h5")
    work = tmp_path / "job"
    shard = ["--shard-index", "1", "--num-shards", "4"]
    shard_file = work / f"{OUT}.shards" / "shard-00001-of-00004.h5"
    killed = extract(argv(images, batch_size="4") + shard, work, die_at="done-set#2")
    assert killed.code == -9 and done_rows(Path(f"{shard_file}.partial")) == list(range(8))
    resumed = extract(argv(images, batch_size="3") + shard, work)
    assert resumed.code == 0, resumed.stderr
    assert resumed.rows_written == list(range(8, 16))
    got = maps_by_key(shard_file)
    assert sorted(got) == keys[16:32]
    same = {key: distance(got[key], want[key]) for key in got}
    assert max(same.values()) <= FLOAT16_TOLERANCE, same
    # The comparison would catch a row holding another image's maps (its neighbour's, say).
    swapped = [distance(got[key], want[other]) for key, other in itertools.pairwise(keys[16:33])]
    assert min(swapped) > 50 * FLOAT16_TOLERANCE, swapped
    with h5py.File(shard_file, "r", locking=False) as file:
        assert bool(file.attrs["complete"]) and file["images/done"][:].all()
    assert stale_rows(shard_file, images) == []
    for index in (0, 2, 3):
        pipeline.extract(str(images), str(work / OUT), model="resnet18", random_init=True, size=(32, 32),
                         workers=0, device="cpu", shard_index=index, num_shards=4)  # fmt: skip
    merged = fmpipe(["merge", OUT], cwd=work)
    assert merged.returncode == 0, merged.stderr
    before = file_sha256(shard_file)
    again = extract(argv(images, batch_size="5") + shard, work)
    assert again.code == 0 and again.rows_written == [] and "already complete" in again.stderr, again.stderr
    assert file_sha256(shard_file) == before


# -- resuming with something changed ---------------------------------------------------------

REFUSALS = {  # option: (the resuming run's value, how the refusal names the option and its original value)
    "stages": ("0,1", "--stages 0,1,2,3,4 (this run: 0,1)"),
    "size": ("48", "--size 32x32 (this run: 48x48)"),
    "dtype": ("float32", "--dtype float16 (this run: float32)"),
    "model": ("resnet10t", "--model resnet18 (this run: resnet10t)"),
}
CHANGED_ROW = 1  # done in the partial file; its source gets other pixels in the "source" case


@dataclass
class Resumed:
    """One resume of a copy of a partial file."""

    partial: Path  # the copy
    before: str  # its sha256 before the run
    images: Path
    run: Finished


@pytest.fixture(scope="module")
def resumed(images, partials, tmp_path_factory) -> dict[str, Resumed]:
    """Each case resumes its own copy of a partial file (see `resume_cases`); the runs are independent,
    so they run at once."""
    cases = resume_cases(images, partials, tmp_path_factory)
    copies = {name: resumable_copy(partial, tmp_path_factory.mktemp(name)) for name, (partial, _, _) in cases.items()}
    import torch

    state = torch.load(partials["weights"].parent / "w.pt", weights_only=True)
    state["conv1.weight"].mul_(0.5)
    torch.save(state, copies["weights"] / "w.pt")  # the same name, other values
    partial = {name: folder / f"{OUT}.partial" for name, folder in copies.items()}
    befores = {name: file_sha256(path) for name, path in partial.items()}
    runs = run_all([(extract_command(options), copies[name]) for name, (_, _, options) in cases.items()])
    return {
        name: Resumed(partial[name], befores[name], cases[name][1], Finished.of(run))
        for name, run in zip(cases, runs, strict=True)
    }


def resume_cases(images: Path, partials: dict[str, Path], tmp_path_factory) -> dict[str, tuple[Path, Path, list]]:
    """{case: (the partial file it resumes, its images, its extract argv)}: "workers" (--workers 0),
    one per REFUSALS option, "weights" (w.pt changed by the fixture) and "source" (the image of row
    CHANGED_ROW replaced by another picture)."""
    cases = {"workers": (partials["random-init"], images, argv(images, workers="0"))}
    for option, (value, _) in REFUSALS.items():
        cases[option] = (partials["random-init"], images, argv(images, **{option: value}))
    cases["weights"] = (partials["weights"], images, weighted_argv(images))
    changed = tmp_path_factory.mktemp("changed") / "images"
    shutil.copytree(images, changed)
    write_images(changed.parent / "other", 2, size=(32, 32), seed=7)
    key = sorted(p.name for p in images.iterdir())[CHANGED_ROW]
    shutil.copyfile(changed.parent / "other" / key, changed / key)
    cases["source"] = (partials["random-init"], changed, argv(changed))
    return cases


def test_resuming_with_other_workers_is_accepted_and_identical(resumed, reference):
    got = resumed["workers"]
    assert got.run.code == 0, got.run.stderr
    assert got.run.rows_written == list(range(4, ROWS))
    assert_clean_finish(got.partial.parent, got.images, reference)


@pytest.mark.parametrize("option", REFUSALS)
def test_resuming_with_another_option_is_refused_before_writing(resumed, option):
    got = resumed[option]
    message = got.run.stderr
    assert got.run.code == 2, message
    said = REFUSALS[option][1]
    assert f"was started with {said}" in message or f"; {said}" in message, message
    assert f"rerun with --{option} " in message and "or pass --overwrite" in message, message
    assert_untouched(got)


def assert_untouched(got: Resumed) -> None:
    """Refused before writing: no batch, no OUT, no lock or .new left, the partial file byte for byte as
    it was (even the superblock flags the killed writer left set), its done rows still true to their files."""
    assert got.run.rows_written == []
    assert file_sha256(got.partial) == got.before
    assert sorted(p.name for p in got.partial.parent.iterdir() if p.name.startswith(OUT)) == [got.partial.name]
    assert stale_rows(got.partial, got.images) == []


def test_resuming_after_the_weights_file_changed_is_refused_naming_the_weights(resumed):
    got = resumed["weights"]
    with h5py.File(got.partial, "r", locking=False) as file:
        started = file.attrs["weights_sha256"]
    assert got.run.code == 2, got.run.stderr
    assert f"was started with the loaded weights sha256 {started[:12]}" in got.run.stderr, got.run.stderr
    assert_untouched(got)


def test_a_changed_source_is_redone_and_nothing_else_is_recomputed(resumed, reference, partials, tmp_path):
    got = resumed["source"]
    out = got.partial.parent / OUT
    key = reference["images/key"][CHANGED_ROW].decode()
    assert got.run.code == 0, got.run.stderr
    assert "1 source images changed" in got.run.stderr and key in got.run.stderr, got.run.stderr
    assert got.run.rows_written == [CHANGED_ROW, *range(4, ROWS)]  # the other done rows are not recomputed
    others = np.array([r for r in range(ROWS) if r != CHANGED_ROW])
    assert differences(snapshot(out), reference, others) == []
    assert stale_rows(out, got.images) == []  # row 1 records the new file's sha256
    pipeline.extract(str(got.images), str(tmp_path / "fresh.h5"), model="resnet18", random_init=True,
                     size=(32, 32), batch_size=4, workers=0, device="cpu")  # fmt: skip
    fresh, redone, old = maps_by_key(tmp_path / "fresh.h5"), maps_by_key(out), maps_by_key(partials["random-init"])
    assert distance(redone[key], fresh[key]) <= FLOAT16_TOLERANCE  # computed alone, not in a batch of 4
    assert distance(redone[key], old[key]) > 50 * FLOAT16_TOLERANCE
