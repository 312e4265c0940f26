"""A researcher's first hour: --version, help that shows flags as flags, dry-run labels, instant
answers for a finished output, fast offline failures, plain messages for files that are not
checkpoints, and `info` on a job array whose tasks are still starting."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import h5py
import pytest
import torch
from conftest import REPO, write_images
from helpers import fmpipe

import pipeline
from pipeline.errors import InputError
from pipeline.extraction.checkpoints import load_weights
from pipeline.jobs import manifest

TINY = ["--model", "resnet18", "--random-init", "--size", "32", "--workers", "0"]


def test_version_prints_the_package_version():
    run = fmpipe(["--version"])
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"fmpipe {pipeline.__version__}"


@pytest.mark.parametrize(
    ("command", "flag"), [("render", "--overlay"), ("extract", "--random-init"), ("top", "--json")]
)
def test_boolean_options_show_as_flags_in_help(command, flag):
    run = fmpipe([command, "--help"])
    assert run.returncode == 0, run.stderr
    assert "<bool>" not in run.stdout and "BOOLEAN" not in run.stdout, run.stdout
    line = next(ln for ln in run.stdout.splitlines() if ln.strip().startswith(flag + " "))
    assert "<" not in line.split(flag, 1)[1].split()[0], line  # the flag takes no value


@pytest.mark.slow
def test_dry_run_is_labelled_with_the_chosen_stages(tmp_path):
    images = tmp_path / "images"
    write_images(images, 2)
    chosen = fmpipe(["extract", images, tmp_path / "x.h5", *TINY, "--stages", "0,-1", "--dry-run"])
    assert chosen.returncode == 0, chosen.stderr
    assert "stages 0, 4:" in chosen.stdout and "all stages" not in chosen.stdout, chosen.stdout
    every = fmpipe(["extract", images, tmp_path / "x.h5", *TINY, "--dry-run"])
    assert "all stages:" in every.stdout, every.stdout


def _rerun_without_torch(args: list, cwd) -> subprocess.CompletedProcess:
    """`fmpipe ARGS` in a process that then reports whether torch was imported."""
    code = (
        "import sys, pipeline.cli\n"
        f"sys.argv = ['fmpipe', *{[str(a) for a in args]!r}]\n"
        "try:\n    pipeline.cli.main()\nexcept SystemExit as exit:\n    code = exit.code\nelse:\n    code = 0\n"
        "print('torch imported' if 'torch' in sys.modules else 'no torch', file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


@pytest.mark.slow
def test_a_rerun_on_a_complete_output_answers_without_torch_and_a_changed_weights_file_is_noticed(tmp_path):
    images = tmp_path / "images"
    write_images(images, 3, size=(32, 32))
    weights = tmp_path / "r18.pt"
    import timm

    torch.save(timm.create_model("resnet18").state_dict(), weights)
    args = ["extract", images, tmp_path / "out.h5", "--model", "resnet18", "--weights", weights, "--size", "32"]
    first = fmpipe([*args, "--workers", "0", "--stages", "0,-1"])
    assert first.returncode == 0, first.stderr
    before = (tmp_path / "out.h5").stat().st_mtime_ns
    again = _rerun_without_torch([*args, "--stages", "0,-1", "--batch-size", "2"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert "already complete" in again.stdout and "(3 images, 0 failed)" in again.stdout, again.stdout
    assert again.stderr.strip().endswith("no torch"), again.stderr
    assert (tmp_path / "out.h5").stat().st_mtime_ns == before
    other = _rerun_without_torch([*args, "--stages", "0,1"], tmp_path)  # another configuration: the full check
    assert other.returncode == 2 and "--stages 0,4 (this run: 0,1)" in other.stderr, other.stderr
    state = torch.load(weights)
    state["conv1.weight"] += 1.0
    torch.save(state, weights)  # same name, other weights: never "already complete"
    changed = fmpipe([*args, "--workers", "0", "--stages", "0,-1"])
    assert changed.returncode == 2 and "already exists, made with" in changed.stderr, changed.stderr
    assert "already complete" not in changed.stdout


def test_without_network_a_hub_model_fails_at_once_with_the_offline_advice(tmp_path):
    """The hub's endpoint is a closed port on this machine: no real network is ever tried."""
    code = (
        "import sys, pipeline\n"
        "from pipeline.errors import ModelError\n"
        "try:\n"
        f"    pipeline.extract({str(REPO / 'data' / 'images')!r}, {str(tmp_path / 'x.h5')!r}, model='resnet18')\n"
        "except ModelError as err:\n"
        "    print(err)\n"
        "print('torch imported' if 'torch' in sys.modules else 'no torch')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"), TORCH_HOME=str(tmp_path / "torch"))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("Pretrained weights for 'resnet18' are not on this machine"), run.stdout
    assert "127.0.0.1:9 cannot be reached" in lines[0] and "--random-init" in lines[0]
    assert lines[1] == "no torch"  # decided before torch and timm were imported
    assert "Retry" not in run.stderr, run.stderr


def test_an_unknown_model_name_offline_still_says_unknown_model(tmp_path):
    run = fmpipe(["extract", REPO / "data" / "images", tmp_path / "x.h5", "--model", "resnet_9000x"])
    assert run.returncode == 2 and "unknown model 'resnet_9000x'" in run.stderr, run.stderr


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"model weights, trust me\n", "it is text"),
        ((REPO / "data" / "images" / "camera.png").read_bytes(), "it is a PNG image"),
        (b"", "it is an empty file"),
    ],
)
def test_a_weights_file_that_is_not_a_checkpoint_is_named_so(tmp_path, content, said):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(InputError, match="is not a PyTorch/safetensors checkpoint") as err:
        load_weights(torch.nn.Linear(2, 2), str(path))
    assert said in str(err.value) and "--unsafe-pickle" not in str(err.value)


@pytest.mark.parametrize("legacy", [False, True])
def test_a_truncated_checkpoint_is_called_damaged_without_pickle_advice(tmp_path, legacy):
    path = tmp_path / "weights.pth"
    torch.save(torch.nn.Linear(2, 2).state_dict(), path, _use_new_zipfile_serialization=not legacy)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(InputError, match="not a readable PyTorch/safetensors checkpoint") as err:
        load_weights(torch.nn.Linear(2, 2), str(path))
    assert "--unsafe-pickle" not in str(err.value)


def test_info_on_a_shards_folder_whose_tasks_are_starting(tmp_path):
    images = tmp_path / "images"
    write_images(images, 5)
    out = tmp_path / "out.h5"
    manifest.collection_for(str(images), str(out))  # what the first task does before loading its model
    text = pipeline.info(tmp_path / "out.h5.shards")
    assert "the job array is starting" in text and "lists 5 images" in text, text
    holder = {"pid": 4242, "host": "node07", "slurm_job": "99_0", "started": "2026-01-01T00:00:00+00:00"}
    (tmp_path / "out.h5.shards" / "shard-00000-of-00002.h5.lock").write_text(json.dumps(holder))
    text = pipeline.info(tmp_path / "out.h5.shards")
    assert "0 of 2 shards complete" in text, text
    assert "shard     0  starting     task started (pid 4242 on node07, Slurm job 99_0" in text, text
    assert "shard     1  missing" in text, text
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = {"pid": int(ended.stdout), "host": socket.gethostname(), "started": "2026-01-01T00:00:00+00:00"}
    (tmp_path / "out.h5.shards" / "shard-00001-of-00002.h5.lock").write_text(json.dumps(dead))  # left by a SIGKILL
    text = pipeline.info(tmp_path / "out.h5.shards")
    assert f"shard     1  missing      its task (pid {dead['pid']} on {dead['host']}" in text, text
    assert "ended before writing a file" in text
    merged = fmpipe(["merge", out])
    assert merged.returncode != 0 and "shard 0 of 2 is missing" in merged.stderr, merged.stderr
    assert not out.exists()
    with pytest.raises(FileNotFoundError):
        h5py.File(out, "r")
