#!/usr/bin/env python3
"""Benchmark `fmpipe verify` (without --recompute) against reading the same file with h5py.

    python scripts/bench_verify.py                          # 500 images (~345 MB of maps) in /dev/shm
    python scripts/bench_verify.py --images 1000 --rounds 5 --workdir /tmp/bv

The file is written by fmpipe's own ShardWriter (zstd-1 with checksums) with synthetic post-ReLU
float16 maps shaped like efficientnet_lite0's five stages at 224×224 (0.69 MB per image before
compression) and statistics computed like the extractor's (float32, before the float16 cast).
Its sources are not on disk, so what is timed is the maps: every chunk decoded with its checksum
verified and compared with its statistics.

Per round, interleaved, each measurement once:
- baseline: h5py `dset[lo:hi]` over every stage in blocks of 32 rows (HDF5 decodes in its filter);
- verify: `pipeline.verify(FILE)` with one thread per core (`--workers 0`), and with one thread.
GB/s are of stored (uncompressed) map bytes. Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401
import numpy as np
from lite0_stages import STAGES  # efficientnet_lite0 at 224x224

import pipeline
from pipeline.records import BatchResult
from pipeline.storage.writing.writer import ShardWriter, WritePlan

BATCH = 16
READ_ROWS = 32


def write_file(path: Path, count: int, seed: int = 0) -> None:
    """A complete file of `count` images: a pool of 2 batches of maps reused (same statistics, no cost)."""
    keys = [f"img{i:07d}.png" for i in range(count)]
    fingerprint = hashlib.sha256(json.dumps({"bench": "verify", "n": count}).encode()).hexdigest()
    plan = WritePlan(keys, STAGES, "float16", "zstd", fingerprint, {}, {"images_root": "/nonexistent"})
    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(2):
        maps = {
            s.index: np.maximum(rng.standard_normal((BATCH, s.channels, s.height, s.width), np.float32), 0)
            for s in STAGES
        }
        stats = {
            i: np.stack([a.min((2, 3)), a.max((2, 3)), a.mean((2, 3))]).astype(np.float32) for i, a in maps.items()
        }
        pool.append(({i: a.astype(np.float16) for i, a in maps.items()}, stats))
    writer = ShardWriter.open(path, plan, threads=os.cpu_count() or 1)
    for b, lo in enumerate(range(0, count, BATCH)):
        rows = np.arange(lo, min(count, lo + BATCH))
        data, stats = pool[b % 2]
        n = len(rows)
        writer.submit(
            BatchResult(
                rows,
                rows,
                np.full((n, 2), 224, np.int32),
                [],
                {i: a[:n] for i, a in data.items()},
                {i: s[:, :n] for i, s in stats.items()},
            )
        )
    writer.finalize()


def baseline(path: Path) -> tuple[float, int]:
    """Seconds and map bytes to read every stage with h5py in blocks of READ_ROWS rows."""
    t0 = time.perf_counter()
    nbytes = 0
    with h5py.File(path, "r") as file:
        for group in file["stages"].values():
            dset = group["data"]
            for lo in range(0, dset.shape[0], READ_ROWS):
                nbytes += dset[lo : lo + READ_ROWS].nbytes
    return time.perf_counter() - t0, nbytes


def verify(path: Path, workers: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    report = pipeline.verify(path, workers=workers)
    seconds = time.perf_counter() - t0
    if not report.ok:
        raise SystemExit(f"verify found problems in a clean file: {report.problems[:3]}")
    return seconds, report.bytes_checked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", default="/dev/shm" if Path("/dev/shm").is_dir() else None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench_verify_") as tmp:
        path = Path(tmp) / "bench.h5"
        write_file(path, args.images)
        stored_mb = path.stat().st_size / 1e6
        runs: dict[str, list[tuple[float, int]]] = {"baseline": [], "verify": [], "verify1": []}
        for _ in range(args.rounds):
            runs["baseline"].append(baseline(path))
            runs["verify"].append(verify(path, 0))
            runs["verify1"].append(verify(path, 1))
        rates = {name: statistics.median(b / s / 1e9 for s, b in values) for name, values in runs.items()}
        seconds = {name: statistics.median(s for s, _ in values) for name, values in runs.items()}
        gb = runs["baseline"][0][1] / 1e9
        assert all(b == runs["baseline"][0][1] for values in runs.values() for _, b in values)
    print(
        f"{dt.date.today()}, {platform.machine()}, {os.cpu_count()} CPUs, {args.images} images: {gb:.3f} GB of "
        f"float16 maps, {stored_mb:.0f} MB on disk in {args.workdir}; medians of {args.rounds} interleaved rounds\n"
    )
    print("| measurement | s | GB/s of maps |")
    print("|---|---:|---:|")
    print(
        f"| h5py `dset[lo:hi]`, {READ_ROWS}-row blocks, every stage (baseline) | {seconds['baseline']:.2f} | "
        f"{rates['baseline']:.3f} |"
    )
    print(f"| `fmpipe verify`, one thread per core | {seconds['verify']:.2f} | {rates['verify']:.3f} |")
    print(f"| `fmpipe verify --workers 1` | {seconds['verify1']:.2f} | {rates['verify1']:.3f} |")
    print(
        f"\nverify / baseline = {rates['verify'] / rates['baseline']:.2f}; "
        f"one thread / baseline = {rates['verify1'] / rates['baseline']:.2f}"
    )
    print(
        json.dumps({"images": args.images, "gb": gb, "stored_mb": stored_mb, "rates_gb_s": rates, "seconds": seconds})
    )


if __name__ == "__main__":
    main()
