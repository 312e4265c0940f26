"""`store.row(key)` on a 100,000-key file: the first call (which builds the key → row dict), then
every key once in random order, against the linear scan `row()` used to be (`keys.index`).

    python scripts/bench_row.py                   # 100,000 keys
    python scripts/bench_row.py --images 20000

The file is written by pipeline.storage.writing.writer with keys like `folder042/img0012345.jpg` and one
tiny stage (1 channel, 1×1), so writing it takes seconds; the key dataset is what row() reads.
Scratch goes to /dev/shm unless --tmp says otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pipeline  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--tmp", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.tmp) as scratch:
        keys = [f"folder{i % 100:03d}/img{i:07d}.jpg" for i in range(args.images)]
        path = make_file(Path(scratch) / "keys.h5", sorted(keys))
        measure(path, args.images)
    return 0


def make_file(path: Path, keys: list[str]) -> Path:
    from pipeline.records import BatchResult, StageInfo
    from pipeline.storage.writing.writer import ShardWriter, WritePlan

    stage = StageInfo(0, "stem", 1, 1, 1, 1, "forward_hook")
    plan = WritePlan(keys, [stage], "float16", "zstd", "bench-row", {}, {"model": "synthetic"})
    writer = ShardWriter.open(path, plan, threads=2)
    for start in range(0, len(keys), 5000):
        rows = np.arange(start, min(start + 5000, len(keys)))
        maps = (rows % 1000).astype(np.float32).reshape(-1, 1, 1, 1)  # within float16
        stats = np.stack([maps[:, :, 0, 0]] * 3)
        hw = np.tile(np.array([[64, 64]], np.int32), (len(rows), 1))
        writer.submit(BatchResult(rows, rows, hw, [], {0: maps.astype(np.float16)}, {0: stats}))
    return writer.finalize()


def measure(path: Path, count: int) -> None:
    rng = random.Random(0)
    with pipeline.open_store(path) as store:
        keys = store.keys
        order = keys[:]
        rng.shuffle(order)
        started = time.perf_counter()
        store.row(order[0])
        first_ms = (time.perf_counter() - started) * 1e3
        started = time.perf_counter()
        for key in order:
            store.row(key)
        per_call_us = (time.perf_counter() - started) / len(order) * 1e6
        assert all(store.row(k) == i for i, k in enumerate(keys[:1000]))
        started = time.perf_counter()
        for _ in range(1000):
            with contextlib.suppress(KeyError):
                store.row("no/such.jpg")
        missing_us = (time.perf_counter() - started) / 1000 * 1e6
        sample = order[:20]
        started = time.perf_counter()
        for key in sample:  # what row() did before: read every key, then a linear search
            store.file["images/key"].asstr()[:].tolist().index(key)
        scan_ms = (time.perf_counter() - started) / len(sample) * 1e3
    print("| keys | first call (builds the dict) | row() per call | unknown key (KeyError) | linear scan per call |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {count:,} | {first_ms:.1f} ms | {per_call_us:.2f} µs | {missing_us:.1f} µs | {scan_ms:.1f} ms |")


if __name__ == "__main__":
    sys.exit(main())
