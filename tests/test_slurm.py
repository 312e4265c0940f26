"""A real Slurm job array (4 tasks) plus the dependent merge job equals one unsharded run.

Needs a reachable Slurm: `bash scripts/slurm/local-cluster.sh start` (what .ci/run does). Skipped
when there is none, unless FMPIPE_REQUIRE_SLURM=1, where a missing cluster fails the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import write_images
from test_merge import assert_same_content

import pipeline
from pipeline.storage.writing import files

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts" / "slurm"
WAIT_S = 300
# Batches of 4 divide the shard unit of 16, so the array's maps equal one run's bit for bit.
EXTRACT_ARGS = ["--model", "resnet18", "--random-init", "--size", "32", "--batch-size", "4", "--workers", "0"]
OPTIONS = dict(model="resnet18", random_init=True, size=(32, 32), batch_size=4, workers=0, device="cpu")


def find_slurm() -> tuple[dict | None, str]:
    """Environment for Slurm's commands (SLURM_CONF of the local cluster if it runs), or a reason."""
    env = dict(os.environ)
    if "SLURM_CONF" not in env:
        state = Path(os.environ.get("FMPIPE_SLURM_DIR", Path(tempfile.gettempdir()) / "fmpipe-slurm"))
        if (state / "slurm.conf").exists():
            env["SLURM_CONF"] = str(state / "slurm.conf")
    if not shutil.which("sbatch"):
        return None, "sbatch is not installed (local-cluster.sh installs it on Debian)"
    try:
        run = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return None, "sinfo timed out: no slurmctld answers"
    states = run.stdout.split()
    if run.returncode or not any(s.rstrip("*~#") in ("idle", "mixed", "allocated") for s in states):
        return None, f"no usable Slurm node (sinfo: {run.stdout.strip() or run.stderr.strip()})"
    return env, ""


@pytest.fixture
def slurm_env() -> dict:
    env, reason = find_slurm()
    if env is None:
        if os.environ.get("FMPIPE_REQUIRE_SLURM") == "1":
            pytest.fail(f"FMPIPE_REQUIRE_SLURM=1 but no Slurm is reachable: {reason}")
        pytest.skip(f"{reason}; start a local one with `bash scripts/slurm/local-cluster.sh start`")
    return env


def fmpipe_command() -> str:
    """The fmpipe of this test's interpreter (same venv), for the jobs."""
    script = Path(sys.executable).with_name("fmpipe")
    return str(script) if script.exists() else f"{sys.executable} -m pipeline"


def sbatch(env: dict, cwd: Path, *args: str) -> str:
    run = subprocess.run(["sbatch", "--parsable", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip().split(";")[0]


def wait_for(env: dict, job_ids: list[str], logs: Path) -> None:
    """Until no job is queued or running; fails (and cancels) after WAIT_S seconds."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        queue = subprocess.run(
            ["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i %T"], env=env, capture_output=True, text=True
        )
        if queue.returncode == 0 and not queue.stdout.strip():
            return
        time.sleep(1)
    subprocess.run(["scancel", *job_ids], env=env)
    pytest.fail(f"jobs {job_ids} still queued after {WAIT_S} s:\n{job_logs(logs)}")


def job_logs(folder: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(folder.glob("*.log")))


def job_state(env: dict, job_id: str) -> str:
    run = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True)
    states = {part.split("=", 1)[1] for part in run.stdout.split() if part.startswith("JobState=")}
    return ",".join(sorted(states)) or "unknown"


def test_job_array_and_dependent_merge_equal_one_run(slurm_env, tmp_path):
    images = tmp_path / "images"
    write_images(images, 51, size=(40, 40))  # 52 with the broken one: shards of 16, 16, 16 and 4
    (images / "img004b.png").write_bytes(b"not an image")
    single = tmp_path / "single.h5"
    pipeline.extract(str(images), str(single), **OPTIONS)

    out, logs = tmp_path / "out.h5", tmp_path / "logs"
    logs.mkdir()
    export = f"--export=ALL,FMPIPE={fmpipe_command()},OMP_NUM_THREADS=1"
    array = sbatch(
        slurm_env, tmp_path, "--array=0-3", f"--output={logs}/extract-%A_%a.log", export,
        str(SCRIPTS / "extract.sbatch"), str(images), str(out), *EXTRACT_ARGS, "--device", "cpu",
    )  # fmt: skip
    merge = sbatch(
        slurm_env, tmp_path, f"--dependency=afterok:{array}", "--kill-on-invalid-dep=yes",
        f"--output={logs}/merge-%j.log", export, str(SCRIPTS / "merge.sbatch"), str(out),
    )  # fmt: skip
    wait_for(slurm_env, [array, merge], logs)

    assert out.exists(), f"merge job {merge}: {job_state(slurm_env, merge)}\n{job_logs(logs)}"
    assert job_state(slurm_env, array) in ("COMPLETED", "unknown"), job_logs(logs)
    shards = [files.shard_name(i, 4) for i in range(4)]
    assert sorted(p.name for p in files.shards_folder(out).iterdir()) == ["collection.json", *shards]
    assert_same_content(out, single)
    info = subprocess.run([*fmpipe_command().split(), "info", str(out)], capture_output=True, text=True)
    assert "4 of 4 merged (virtual)" in info.stdout, info.stderr
