"""One exit-code policy across commands (README "Exit codes", CONTRIBUTING.md): 0 done, 1 a runtime
failure (or verify found damage), 2 bad usage or bad input, with one clean `fmpipe: error:` line.

The commands run in this process through the CLI's own entry point (`pipeline.cli.main`, which
maps FmpipeError to its exit code) so the whole table costs about a second.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import h5py
import pytest
from conftest import write_images

import pipeline
from pipeline import cli

OPTIONS = dict(model="tiny_models:plain_net", size=(32, 32), batch_size=4, workers=0, device="cpu")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """A folder with images/, out.h5 (4 images), and broken copies of it."""
    base = tmp_path_factory.mktemp("exit")
    write_images(base / "images", 4, size=(32, 32))
    pipeline.extract(base / "images", base / "out.h5", **OPTIONS)
    for name, attr, value in (("json.h5", "config_json", "{not json"), ("count.h5", "shard_start", "x")):
        (base / name).write_bytes((base / "out.h5").read_bytes())
        with h5py.File(base / name, "a") as f:
            f.attrs[attr] = value
    (base / "damaged.h5").write_bytes((base / "out.h5").read_bytes())
    with h5py.File(base / "damaged.h5", "r+") as f:
        dset = f["stages/0/data"]
        mask, raw = dset.id.read_direct_chunk((0, 0, 0, 0))
        dset.id.write_direct_chunk((0, 0, 0, 0), bytes(raw[:-8]) + bytes(x ^ 0x5A for x in raw[-8:]), mask)
    (base / "text.h5").write_text("not HDF5\n")
    (base / "a-file").write_text("")
    return base


# (arguments, exit code, what stderr says); {d} is the fixture's folder.
CASES = [
    # 0: done
    ("info {d}/out.h5", 0, ""),
    ("top {d}/out.h5 --stage 0 --channel 1", 0, ""),
    ("verify {d}/out.h5", 0, ""),
    ("render {d}/out.h5 --stage 1 --images 0:2 --channels 0 --layout channels --workers 1 --out {d}/r", 0, ""),
    # 1: a runtime failure, or damage found by verify
    ("verify {d}/damaged.h5", 1, "problem"),
    # 2: bad usage (options the parser or the configuration refuses)
    ("render {d}/out.h5 --stage 0 --no-such-option", 2, "No such option"),
    ("render {d}/out.h5", 2, "give --stage S or --layer NAME"),
    ("render {d}/out.h5 --stage 0 --layout bogus", 2, "--layout must be one of"),
    ("gallery {d}/out.h5 --per-page 0", 2, "--per-page must be at least 1"),
    ("top {d}/out.h5 --stage 0 --channel 0 -k 0", 2, "-k must be 1 to 1000"),
    ("extract {d}/images {d}/new.h5 --batch-size 0", 2, "--batch-size must be at least 1"),
    ("extract {d}/images {d}/new.h5 --size 0x3", 2, "--size must be H or HxW"),
    ("extract {d}/images {d}/new.h5 --stages=-:", 2, "--stages takes indices and ranges"),
    # 2: the same mistake (a stage, image or channel the file does not have) in every command
    ("render {d}/out.h5 --stage 9", 2, "stage 9 is not in"),
    ("top {d}/out.h5 --stage 9 --channel 0", 2, "stage 9 is not in"),
    ("export {d}/out.h5 {d}/e --stage 9", 2, "stage 9 is not in"),
    ("reduce {d}/out.h5 --stage 9 --method srp --dim 2 --out {d}/f.npz", 2, "stage 9 is not in"),
    ("render {d}/out.h5 --stage 0 --images 0:0", 2, "selects nothing"),
    ("render {d}/out.h5 --stage 0 --images=-:", 2, "no image with key '-:'"),  # was a ValueError traceback
    ("render {d}/out.h5 --stage 0 --channels 99", 2, "channel 99 does not exist"),
    ("top {d}/out.h5 --stage 0 --channel 99", 2, "channel 99 does not exist"),
    # 2: bad input files and paths
    ("info {d}/missing.h5", 2, "does not exist"),
    ("render {d}/missing.h5 --stage 0", 2, "does not exist"),
    ("gallery {d}/missing.h5", 2, "does not exist"),
    ("verify {d}/text.h5", 2, "not a readable HDF5 file"),
    ("top {d}/text.h5 --stage 0 --channel 0", 2, "not a readable HDF5 file"),
    ("merge {d}/text.h5", 2, "text.h5 is not a readable HDF5 file"),  # one message for one problem (was another)
    ("extract {d}/nowhere {d}/new.h5", 2, "does not exist"),
    ("info {d}/json.h5", 2, "root attribute 'config_json' is malformed"),  # was read silently as {}
    ("gallery {d}/json.h5 --out {d}/g", 2, "root attribute 'config_json' is malformed"),
    ("verify {d}/json.h5", 2, "json.h5: the root attribute 'config_json' is malformed"),  # names the file too
    ("merge {d}/json.h5", 2, "json.h5: the root attribute 'config_json' is malformed"),
    ("info {d}/count.h5", 2, "root attribute 'shard_start' is malformed"),  # was a ValueError traceback
    ("render {d}/out.h5 --stage 0 --out {d}/a-file", 2, "is a file; the output (--out) is a folder"),  # was 1
    ("gallery {d}/out.h5 --out {d}/a-file", 2, "is a file; the output (--out) is a folder"),  # was 1
    ("top {d}/out.h5 --stage 0 --channel 0 --out {d}/a-file/x.png", 2, "a-file is a file, not a folder"),  # was 1
]


def run_cli(argv: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `fmpipe ARGV` through the console entry point, as a shell sees them."""
    monkeypatch.setattr(sys, "argv", ["fmpipe", *argv])
    code = 0
    try:
        cli.main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except Exception:  # what Python would print before exiting 1
        captured = capsys.readouterr()
        return 1, captured.out, captured.err + traceback.format_exc()
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(("args", "code", "says"), CASES, ids=[c[0].split()[0] + ":" + c[2][:30] for c in CASES])
def test_every_command_exits_0_done_1_failed_2_bad_usage_or_input(files, args, code, says, monkeypatch, capsys):
    got, stdout, stderr = run_cli(args.format(d=files).split(), monkeypatch, capsys)
    assert got == code, stderr
    assert "Traceback" not in stderr
    if code == 2 and "No such option" not in says:
        assert stderr.startswith("fmpipe: error: ") and stderr.count("fmpipe: error: ") == 1, stderr
    assert says in stderr or (code == 1 and says in stdout), (stdout, stderr)
