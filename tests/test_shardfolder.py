"""One shards folder policy for `info`, `verify` and `merge` (jobs/shardfolder.py): the job array's
--num-shards is the count most shard names carry (on a tie the newest's); a stray shard of another
count is named in the same words by all three and read by none: info leaves it out of the progress,
verify reports it as a problem (exit 1), merge refuses (exit 2). Through the CLI."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import h5py
import pytest
from conftest import write_images
from helpers import run_all

import pipeline
from pipeline.jobs.findings import VerifyReport
from pipeline.jobs.shardfolder import scan_folder
from pipeline.jobs.verify import files_to_verify
from pipeline.storage.writing.files import shard_name, shards_folder

TINY = dict(model="tiny_models:plain_net", size=(32, 32), batch_size=4, workers=0, device="cpu")


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """20 images as a 2-task job array (shards of 16 and 4 images) and shard 0 of a 3-task array."""
    root = tmp_path_factory.mktemp("shardfolder")
    write_images(root / "images", 20, size=(32, 32))
    for index in range(2):
        pipeline.extract(root / "images", root / "array.h5", shard_index=index, num_shards=2, **TINY)
    pipeline.extract(root / "images", root / "old.h5", shard_index=0, num_shards=3, **TINY)
    return {"array": shards_folder(root / "array.h5"), "stray": shards_folder(root / "old.h5") / shard_name(0, 3)}


@pytest.fixture
def out(made, tmp_path) -> Path:
    """OUT whose OUT.shards/ holds a copy of the 2 complete shards."""
    out = tmp_path / "out.h5"
    shutil.copytree(made["array"], shards_folder(out))
    return out


def info_verify_merge(out: Path) -> list:
    """`fmpipe info OUT.shards`, `fmpipe verify OUT.shards` and `fmpipe merge OUT`, in real processes at once."""
    folder = shards_folder(out)
    commands = [["info", folder], ["verify", folder], ["merge", out]]
    return run_all([([sys.executable, "-m", "pipeline", *map(str, args)], None) for args in commands])


@pytest.mark.slow  # real processes
def test_a_stray_shard_of_another_count_is_named_alike_and_read_by_none(made, out):
    shutil.copy(made["stray"], shards_folder(out))
    said = scan_folder(shards_folder(out)).strays_problem()
    assert said.startswith(f"{shards_folder(out)}/ holds shard files that are not part of its job array of 2 shards")
    assert "shard-00000-of-00003.h5." in said and f"rm {shards_folder(out)}/shard-*-of-00003.h5*" in said
    info, verify, merge = info_verify_merge(out)
    assert info.returncode == 0 and f"  {said}" in info.stdout.splitlines(), info.stdout
    assert "2 of 2 shards complete; images done 20 of 20" in info.stdout and "fmpipe merge" not in info.stdout
    assert verify.returncode == 1 and f"problem: {said}" in verify.stdout, (verify.stdout, verify.stderr)
    assert "(60 chunks, 20 rows)" in verify.stdout and "1 problems" in verify.stdout  # the stray's rows unread
    assert merge.returncode == 2 and merge.stderr == f"fmpipe: error: cannot merge {out}: {said}\n", merge.stderr
    assert not out.exists()
    (shards_folder(out) / shard_name(0, 3)).unlink()
    info, verify, merge = info_verify_merge(out)
    assert info.returncode == verify.returncode == merge.returncode == 0, (info, verify, merge)
    assert f"all shards complete: run `fmpipe merge {out}`" in info.stdout and out.exists()


def names(folder: Path, *files: str) -> Path:
    """A shards folder holding empty files of these names (the scanner reads names, never files)."""
    folder.mkdir(exist_ok=True)
    for name in files:
        (folder / name).write_text("")
    return folder


def test_the_array_is_the_count_most_names_carry_then_the_newest(tmp_path):
    lock = f"{shard_name(2, 3)}.lock"  # a task of the 3-shard array starting
    folder = names(tmp_path / "out.h5.shards", shard_name(1, 2), shard_name(0, 3), lock)
    found = scan_folder(folder)
    assert (found.num_shards, found.missing, [p.name for p in found.strays]) == (3, [1, 2], [shard_name(1, 2)])
    assert found.shards[2].lock == folder / lock and found.shards[2].file is None
    assert files_to_verify(folder) == [folder / shard_name(0, 3)]
    (folder / lock).unlink()
    for seconds, name in ((1e9, shard_name(0, 3)), (1.5e9, shard_name(1, 2))):  # one name each: the newest wins
        os.utime(folder / name, (seconds, seconds))
    assert scan_folder(folder).num_shards == 2
    os.utime(folder / shard_name(0, 3), (2e9, 2e9))
    assert scan_folder(folder).num_shards == 3


def test_a_shards_complete_file_is_read_before_its_partial_one(tmp_path):
    partial = f"{shard_name(1, 2)}.partial"  # a stale partial file beside the complete one
    folder = names(tmp_path / "out.h5.shards", shard_name(0, 2), shard_name(1, 2), partial, f"{shard_name(9, 2)}")
    found = scan_folder(folder)
    assert (found.shards[1].file, found.shards[1].partial) == (folder / shard_name(1, 2), folder / partial)
    assert found.strays == [folder / shard_name(9, 2)]  # an index past its count is no shard of the array
    assert f"rm {folder / shard_name(9, 2)}" in found.strays_problem()
    report = VerifyReport(folder)
    assert files_to_verify(folder, report) == [folder / shard_name(0, 2), folder / shard_name(1, 2)]
    assert [p.what for p in report.problems] == [found.strays_problem()]


@pytest.mark.slow  # real processes
def test_a_malformed_config_json_in_a_shard_is_named_by_every_command(out):
    shard = shards_folder(out) / shard_name(1, 2)
    with h5py.File(shard, "r+") as file:
        file.attrs["config_json"] = "{not json"
    said = f"{shard}: the root attribute 'config_json' is malformed ('{{not json'"
    info, verify, merge = info_verify_merge(out)
    assert info.returncode == 0 and "unreadable" in info.stdout and said in info.stdout, info.stdout
    assert verify.returncode == 1 and f"problem: {shard.name}: {said}" in verify.stdout, verify.stdout
    assert merge.returncode == 2 and said in merge.stderr and "Traceback" not in merge.stderr, merge.stderr
