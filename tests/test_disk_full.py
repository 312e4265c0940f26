"""Disk full (ENOSPC) anywhere, on a real small tmpfs: extract's batches, finalise writing the top
lists, merge (virtual and --copy), render's PNGs and the gallery each end within seconds in
`fmpipe: error: writing ... No space left on device ...`, exit 1, no traceback, and leave nothing
half-written under OUT's name (no OUT, no OUT.merging; extract keeps its resumable OUT.partial).

The disk is filled at the exact moment a case needs (before the command, or from inside the real
CLI just before finalise writes the top lists) by a file of zeros written until ENOSPC.
Mounting needs root (CI runs as root); elsewhere these tests skip, saying so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from conftest import REPO, write_images

import pipeline
from pipeline.jobs import merge

TINY = {"model": "tiny_models:plain_net", "size": (32, 32), "workers": 0, "batch_size": 4}
TINY_ARGS = ["--model", "tiny_models:plain_net", "--size", "32", "--workers", "0", "--batch-size", "4"]
SECONDS = 60  # each case must end well within this (they take about a second)
pytestmark = pytest.mark.slow  # real processes


@pytest.fixture
def disk(tmp_path):
    """A 4 MB tmpfs, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode:
        pytest.skip(f"mounting a tmpfs is not permitted here (needs root): {result.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> None:
    """Write zeros to folder/.filler until the disk refuses one more byte."""
    with open(folder / ".filler", "ab", buffering=0) as handle:
        for block in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    handle.write(bytes(block))
            except OSError:
                continue


FILL_THEN = """
import sys
from pathlib import Path
import pipeline.storage.writing.writer as writer
sys.path.insert(0, {tests!r})
from test_disk_full import fill

real = {target}

def full_disk_then(*args, **kwargs):
    {before}
    fill(Path({disk!r}))
    return real(*args, **kwargs)

{target} = full_disk_then
sys.argv = ["fmpipe", *{argv!r}]
from pipeline.cli import main
main()
"""


def fill_then(target: str, disk: Path, argv: list, before: str = "pass") -> str:
    """The real CLI running `argv`, with the disk filled just before `target` (a name in the writer) runs."""
    return FILL_THEN.format(tests=str(REPO / "tests"), target=target, before=before, disk=str(disk), argv=argv)


def fmpipe_run(argv: list, code: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "pipeline", *map(str, argv)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=SECONDS)


def assert_disk_full_error(result: subprocess.CompletedProcess, names: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr and "HDF5-DIAG" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("fmpipe: error: writing ") and names in last, last
    assert "No space left on device" in last and "free space" in last.lower(), last


def test_extract_batches(tmp_path, disk):
    images = tmp_path / "images"
    write_images(images, 12, size=(40, 40))
    fill(disk)
    os.truncate(disk / ".filler", max(0, (disk / ".filler").stat().st_size - 300_000))  # room for a batch or two
    out = disk / "o.h5"
    result = fmpipe_run(["extract", images, out, *TINY_ARGS, "--size", "128", "--compression", "none"])
    assert_disk_full_error(result, "o.h5.partial")
    assert not out.exists() and sorted(p.name for p in disk.iterdir()) == [".filler", "o.h5.partial"]


def test_finalise_writing_the_top_lists(tmp_path, disk):
    images = tmp_path / "images"
    write_images(images, 6, size=(40, 40))
    out = disk / "o.h5"
    argv = ["extract", str(images), str(out), *TINY_ARGS]
    # every batch is written (drained) when the disk fills up, just before finalise's top lists
    result = fmpipe_run(argv, fill_then("writer.ShardWriter.finalize", disk, argv, before="args[0].drain()"))
    assert_disk_full_error(result, "o.h5.partial")
    assert not out.exists() and not Path(f"{out}.lock").exists()
    (disk / ".filler").unlink()  # space again: the rerun finishes the same file
    rerun = fmpipe_run(argv)
    assert rerun.returncode == 0 and "6 already done" in rerun.stdout, rerun.stderr  # nothing recomputed
    with pipeline.open_store(out, require_complete=True) as store:
        assert store.done.all() and len(store) == 6


def test_finalise_meeting_a_full_disk_inside_hdf5(tmp_path, disk):
    """The disk fills up after the space check, while HDF5 writes the top lists: the same clean
    error and exit 1, no crash at exit; the rerun says the partial file is damaged and how to
    start over (HDF5 leaves a file whose flush failed inconsistent), and --overwrite does."""
    images = tmp_path / "images"
    write_images(images, 6, size=(40, 40))
    out = disk / "o.h5"
    argv = ["extract", str(images), str(out), *TINY_ARGS]
    result = fmpipe_run(argv, fill_then("writer.write_top_lists", disk, argv))
    assert_disk_full_error(result, "o.h5.partial")
    assert not out.exists()
    (disk / ".filler").unlink()
    rerun = fmpipe_run(argv)
    # Where HDF5's failed flush left the file decides who sees the damage: the resume's structure
    # check (refused as input, exit 2) or finalise again (a failed run, exit 1). Either way one clean
    # line that says the partial file is damaged and that --overwrite starts it over.
    assert rerun.returncode in (1, 2) and "Traceback" not in rerun.stderr, rerun.stderr[-2000:]
    last = rerun.stderr.strip().splitlines()[-1]
    assert last.startswith("fmpipe: error: ") and "o.h5.partial" in last, last
    assert "damaged" in last and "--overwrite" in last, last
    assert fmpipe_run([*argv, "--overwrite"]).returncode == 0 and out.exists()


@pytest.fixture
def shards(tmp_path) -> Path:
    """A 2-task job array of 20 images, extracted on the big disk (its shards are copied per case)."""
    images = tmp_path / "images"
    write_images(images, 20, size=(40, 40))
    for index in range(2):
        pipeline.extract(images, tmp_path / "big" / "out.h5", shard_index=index, num_shards=2, **TINY)
    return tmp_path / "big" / "out.h5.shards"


@pytest.mark.parametrize("copy", [False, True], ids=["virtual", "copy"])
def test_merge(shards, disk, copy):
    shutil.copytree(shards, disk / "out.h5.shards")
    fill(disk)
    result = fmpipe_run(["merge", disk / "out.h5", *(["--copy"] if copy else [])])
    assert_disk_full_error(result, "out.h5")
    assert sorted(p.name for p in disk.iterdir()) == [".filler", "out.h5.shards"]  # no OUT, no OUT.merging
    (disk / ".filler").unlink()
    merge.merge(disk / "out.h5", copy=copy)  # with space, the same merge works
    with h5py.File(disk / "out.h5") as file:
        assert bool(file.attrs["complete"])


MERGE_WITHOUT_SPACE_CHECK = """
import sys
import pipeline.jobs.merge as merge
merge.reserve_space = lambda *args: None  # as if the disk filled up after the check: HDF5 meets ENOSPC itself
sys.argv = ["fmpipe", *{argv!r}]
from pipeline.cli import main
main()
"""


@pytest.mark.parametrize("copy", [False, True], ids=["virtual", "copy"])
def test_merge_meeting_a_full_disk_inside_hdf5(shards, disk, copy):
    """The space check passed (another process filled the disk since): HDF5's own ENOSPC ends the same
    way, with no segfault and no OUT.merging left behind."""
    shutil.copytree(shards, disk / "out.h5.shards")
    fill(disk)
    os.truncate(disk / ".filler", (disk / ".filler").stat().st_size - 64_000)  # room for a part of OUT
    argv = ["merge", str(disk / "out.h5"), *(["--copy"] if copy else [])]
    result = fmpipe_run(argv, MERGE_WITHOUT_SPACE_CHECK.format(argv=argv))
    assert_disk_full_error(result, "out.h5")
    assert sorted(p.name for p in disk.iterdir()) == [".filler", "out.h5.shards"]


def test_render_pngs_and_the_gallery(tmp_path, disk):
    images = tmp_path / "images"
    write_images(images, 4, size=(40, 40))
    out = tmp_path / "out.h5"
    pipeline.extract(images, out, **TINY)
    fill(disk)
    result = fmpipe_run(["render", out, "--stage", "0", "--out", disk / "site", "--workers", "2"])
    assert_disk_full_error(result, str(disk / "site"))
    assert not any(p.is_file() and p.suffix == ".png" and p.stat().st_size == 0 for p in disk.rglob("*.png"))

    (disk / ".filler").unlink()
    pipeline.render(out, 0, out=disk / "site", layout="grid", workers=1, overwrite=True)
    fill(disk)
    result = fmpipe_run(["gallery", out, "--out", disk / "site"])
    assert_disk_full_error(result, str(disk / "site"))
    assert not any(p.stat().st_size == 0 for p in (disk / "site").rglob("*.html"))  # no half-written page
