#!/usr/bin/env python3
"""Render a file while it is being written, again and again: does a healthy file ever read as damaged?

    python scripts/partial_render_race.py --images 600 --tries 40 --workdir /tmp/race

An instrumented `fmpipe extract` (tests/helpers.py: 20 ms after each writer step, 2 ms after each
chunk write) of generated 64x64 images with resnet18 (random init) writes OUT.partial; meanwhile
`fmpipe render OUT --allow-partial --stage 1 --top-k 8` runs back to back until the extract ends or
`--tries` renders ran. Every render must exit 0: the file is healthy. Prints each failure and a
summary line; the figures go in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from conftest import write_images  # noqa: E402
from helpers import _env, extract_command  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--tries", type=int, default=40)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fmpipe-partial-race"))
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    write_images(args.workdir / "images", args.images, size=(64, 64))
    out = args.workdir / "out.h5"
    options = ["--model", "resnet18", "--random-init", "--size", "64", "--device", "cpu"]
    argv = [args.workdir / "images", out, *options, "--batch-size", "4", "--workers", "0"]
    log = (args.workdir / "extract.log").open("w")
    writer = subprocess.Popen(extract_command(argv, 0.02, 0.002), stdout=log, stderr=log, env=_env())
    partial = out.with_name(out.name + ".partial")
    while not partial.exists() and writer.poll() is None:
        time.sleep(0.2)
    time.sleep(2)  # some rows done
    failures, tries = [], 0
    while tries < args.tries and writer.poll() is None:
        tries += 1
        command = [sys.executable, "-m", "pipeline", "render", str(out), "--stage", "1", "--allow-partial"]
        command += ["--top-k", "8", "--workers", "1", "--out", str(args.workdir / f"render-{tries}")]
        done = subprocess.run(command, capture_output=True, text=True, env=_env())
        if done.returncode != 0:
            failures.append(tries)
            print(f"try {tries}: exit {done.returncode}: {done.stderr.strip().splitlines()[-1][:300]}")
    writer.kill()
    writer.wait()
    print(f"{len(failures)} of {tries} renders failed while the file was being written ({args.images} images)")


if __name__ == "__main__":
    main()
