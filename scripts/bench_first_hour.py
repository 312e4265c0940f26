"""A researcher's first hour, timed: the quick start, a rerun on its complete output, a model whose
weights cannot be downloaded, and (with --pvt) the viewer's first image page on the PVT case.

    python scripts/bench_first_hour.py                 # the numbers in docs/benchmarks.md "## First hour"
    python scripts/bench_first_hour.py --pvt           # also the PVT case (pvt_v2_b1 at 800x1200, a few minutes)
    python scripts/bench_first_hour.py --pvt-file pvt.h5   # the first image page of a PVT file you have

Every step is the real CLI in its own process (`python -m pipeline`), timed from start to exit, as a
user meets it: interpreter start and imports included. Each timing is the median of --repeat runs.
- quick start: `fmpipe extract data/images out.h5` (the README's first command) into a scratch
  folder: its printed summary line and the file's size on disk, the figures the README quotes;
- rerun on the complete output: the same command again ("already complete");
- offline: `fmpipe extract data/images x.h5 --model resnet18`, whose weights come from the Hugging
  Face hub, with the hub at a closed port of this machine (HF_ENDPOINT=http://127.0.0.1:9: no route,
  as on a compute node without network; nothing leaves the machine) and an empty cache, then with
  HF_HUB_OFFLINE=1;
- first image page (--pvt or --pvt-file): `fmpipe view FILE --port 0`, then GET /image/0, the
  first request after start-up, and every picture on it, as a browser loads them. --pvt builds
  the file first: the five sample photos through pvt_v2_b1 (random init, no download) at
  800x1200, the article's case.
Prints the machine (cores, CPU, load average: the machine may be shared) and a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "images"
CLOSED_ENDPOINT = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once
BROWSER_CONNECTIONS = 6  # what a browser opens to one host
PVT_ARGS = ["--model", "pvt_v2_b1", "--random-init", "--size", "800x1200", "--batch-size", "1"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs per timing (the median is reported)")
    parser.add_argument("--pvt", action="store_true", help="build the PVT case and time its first image page")
    parser.add_argument("--pvt-file", help="time the first image page of this file instead of building one")
    parser.add_argument("--keep", help="scratch folder to use and keep (default: a temporary one)")
    args = parser.parse_args()
    scratch = Path(args.keep or tempfile.mkdtemp(prefix="bench-first-hour-"))
    scratch.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str]] = []
    try:
        print(machine(), flush=True)
        rows += quick_start(scratch, args.repeat)
        rows += offline(scratch, args.repeat)
        pvt = Path(args.pvt_file).resolve() if args.pvt_file else build_pvt(scratch) if args.pvt else None
        if pvt is not None:
            rows.append(("first image page, PVT case (`GET /image/0` after `fmpipe view`)", *first_page(pvt)))
        else:
            rows.append(("first image page, PVT case", "not measured", "pass --pvt (or --pvt-file FILE)"))
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    print("\n| step | seconds | notes |\n|---|---:|---|")
    for step, seconds, note in rows:
        print(f"| {step} | {seconds} | {note} |")
    return 0


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in _lines("/proc/cpuinfo") if ln.startswith("model name")), "?")
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return (
        f"machine: {os.cpu_count()} cores, {cpu}, {platform.python_implementation()} {platform.python_version()}; "
        f"load average {load}"
    )


def _lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def fmpipe(args: list, cwd: Path, env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """(wall seconds, result) of `python -m pipeline ARGS` in its own process; its CPU seconds (user
    and system: what a shared machine's load does not inflate) are in `result.cpu_s`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **(env or {})}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=1800)  # fmt: skip
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    run.cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, run


def median_of(repeat: int, args: list, cwd: Path, env: dict | None = None, ok: int = 0):
    """(median wall seconds, median CPU seconds, the last result) of `repeat` runs."""
    times, cpu, last = [], [], None
    for _ in range(repeat):
        seconds, last = fmpipe(args, cwd, env)
        if last.returncode != ok:
            sys.exit(f"fmpipe {' '.join(map(str, args))} exited {last.returncode}:\n{last.stderr[-2000:]}")
        times.append(seconds)
        cpu.append(last.cpu_s)
    return statistics.median(times), statistics.median(cpu), last


def quick_start(scratch: Path, repeat: int) -> list[tuple[str, str, str]]:
    out = scratch / "out.h5"
    seconds, run = fmpipe(["extract", SAMPLE, "out.h5"], scratch)
    if run.returncode:
        sys.exit(f"the quick start failed:\n{run.stderr[-2000:]}")
    line = run.stdout.strip().splitlines()[-1]
    size_mb = out.stat().st_size / 1e6
    print(f"quick start: {seconds:.1f} s; it printed: {line}\n  out.h5 on disk: {size_mb:.2f} MB", flush=True)
    again, again_cpu, rerun = median_of(repeat, ["extract", SAMPLE, "out.h5"], scratch)
    if "already complete" not in rerun.stdout:
        sys.exit(f"the rerun did not answer 'already complete':\n{rerun.stdout}\n{rerun.stderr}")
    print(f"rerun on the complete output: {again:.2f} s ({again_cpu:.2f} s CPU): {rerun.stdout.strip()}", flush=True)
    return [
        ("quick start `fmpipe extract data/images out.h5` (5 photos, efficientnet_lite0)", f"{seconds:.1f}",
         f"prints `{line}`; out.h5 is {size_mb:.2f} MB on disk"),
        ("rerun on the complete output", f"{again:.2f}",
         f"{again_cpu:.2f} s of CPU; answers `already complete`; torch is not imported"),
    ]  # fmt: skip


def offline(scratch: Path, repeat: int) -> list[tuple[str, str, str]]:
    cache = {"HF_HOME": str(scratch / "hf-home"), "TORCH_HOME": str(scratch / "torch-home")}
    closed = {**cache, "HF_ENDPOINT": CLOSED_ENDPOINT, "HF_HUB_OFFLINE": "0"}
    args = ["extract", SAMPLE, "x.h5", "--model", "resnet18"]
    rows = []
    cases = (("hub unreachable (closed port)", closed), ("HF_HUB_OFFLINE=1", {**cache, "HF_HUB_OFFLINE": "1"}))
    for label, env in cases:
        seconds, cpu_s, run = median_of(repeat, args, scratch, env, ok=2)
        message = run.stderr.strip().splitlines()[-1]
        retries = run.stderr.count("Retry")
        print(f"offline, {label}: {seconds:.2f} s ({cpu_s:.2f} s CPU), {retries} retry lines: {message[:160]}")
        rows.append((f"`--model resnet18` without its weights, {label}", f"{seconds:.2f}",
                     f"{cpu_s:.2f} s of CPU; exit 2 with the offline advice; {retries} retry lines"))  # fmt: skip
    return rows


def build_pvt(scratch: Path) -> Path:
    seconds, run = fmpipe(["extract", SAMPLE, "pvt.h5", *PVT_ARGS], scratch)
    if run.returncode:
        sys.exit(f"building the PVT case failed:\n{run.stderr[-2000:]}")
    print(f"PVT case built in {seconds:.0f} s: {run.stdout.strip().splitlines()[-1]}", flush=True)
    return scratch / "pvt.h5"


def first_page(path: Path) -> tuple[str, str]:
    """Seconds until the first image page and every picture on it have loaded, as a browser fetches
    them (the HTML, then its <img> sources on BROWSER_CONNECTIONS connections), right after
    `fmpipe view PATH --port 0` printed its URL. The pictures count: each stage's PCA picture needs
    that stage's components fitted first (the viewer engineer's lazy PCA is what should bring this
    under 1 s; rerun this after it lands)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "pipeline", "view", str(path), "--port", "0"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        url = None
        for _ in range(10):
            found = re.search(r"http://127\.0\.0\.1:\d+/", proc.stdout.readline())
            if found:
                url = found.group(0)
                break
        if url is None:
            sys.exit("the viewer printed no URL")
        t0 = time.perf_counter()
        html = _get(f"{url}image/0").decode()
        html_s = time.perf_counter() - t0
        sources = sorted(set(re.findall(r'<img[^>]* src="(/[^"]+)"', html)))
        with ThreadPoolExecutor(BROWSER_CONNECTIONS) as pool:
            sizes = list(pool.map(lambda src: len(_get(url + src.lstrip("/").replace("&amp;", "&"))), sources))
        seconds = time.perf_counter() - t0
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    print(f"first image page: HTML {html_s:.2f} s; with its {len(sources)} pictures {seconds:.2f} s", flush=True)
    note = (f"{path.name}: pvt_v2_b1 at 800x1200, 5 images; the HTML alone {html_s:.2f} s, then its "
            f"{len(sources)} pictures ({sum(sizes) / 1e3:.0f} kB) on {BROWSER_CONNECTIONS} connections")  # fmt: skip
    return f"{seconds:.2f}", note


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=600) as response:
        return response.read()


if __name__ == "__main__":
    sys.exit(main())
