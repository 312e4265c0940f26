#!/usr/bin/env python3
"""Benchmark `fmpipe merge`: virtual (VDS) vs --copy vs a plain file copy, for 64 shards of two sizes.

    python scripts/bench_merge.py                                # 64 shards × 4 and × 32 images
    python scripts/bench_merge.py --shards 64 --images-per-shard 4 32 --workdir /tmp/bm

Shards are written by fmpipe's own ShardWriter (pooled zstd-1, direct chunk writes) with
synthetic post-ReLU float16 maps shaped like efficientnet_lite0's five stages at 224×224
(about 0.69 MB per image before compression). Then, per size:

- virtual: `pipeline.jobs.merge.merge(OUT)` (median of 3), and the whole `fmpipe merge OUT` command;
- copy: `merge(OUT, copy=True)` (median of 3, fsync included): compressed chunk MB per second;
- plain copy: `shutil.copyfile` + fsync of every shard file (median of 3): what the disk allows;
- decode: reading every stage through h5py (what any recompressing merge would pay at least,
  before compressing again: zstd 1 alone at 285 MB/s on one core, 157-203 MB/s end to end
  through a writer, docs/hdf5.md).

Sources are in the page cache (just written; no cache dropping on a shared machine).
Prints a markdown table for docs/benchmarks.md and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401
import numpy as np
from lite0_stages import STAGES  # efficientnet_lite0 at 224x224

from pipeline.jobs import merge
from pipeline.records import BatchResult
from pipeline.sources import keys_sha256
from pipeline.storage.format import identity
from pipeline.storage.writing import files
from pipeline.storage.writing.writer import ShardWriter, WritePlan

BATCH = 8


def synthetic_maps(rng: np.random.Generator, count: int) -> dict[int, np.ndarray]:
    """Per stage (count, C, H, W) float16, post-ReLU-like (about half zeros)."""
    return {
        s.index: np.maximum(rng.standard_normal((count, s.channels, s.height, s.width), np.float32), 0).astype(
            np.float16
        )
        for s in STAGES
    }


def write_shards(out: Path, num_shards: int, per_shard: int, seed: int = 0) -> int:
    """64 complete shards of one synthetic run; returns their bytes on disk."""
    total = num_shards * per_shard
    keys = [f"img{i:07d}.png" for i in range(total)]
    parts = {
        "synthetic": "bench_merge",
        "keys_sha256": keys_sha256(keys),
        "num_keys": total,
    }
    fingerprint = identity.fingerprint(parts)
    rng = np.random.default_rng(seed)
    pool = synthetic_maps(rng, 2 * BATCH)  # reused with shifts: same statistics, no generation cost
    for index in range(num_shards):
        start = index * per_shard
        attrs = {
            "shard_index": index,
            "num_shards": num_shards,
            "shard_start": start,
            "total_images": total,
            "model": "synthetic",
            "dtype": "float16",
            "compression": "zstd",
        }
        plan = WritePlan(keys[start : start + per_shard], STAGES, "float16", "zstd", fingerprint, parts, attrs)
        path = files.shards_folder(out) / files.shard_name(index, num_shards)
        writer = ShardWriter.open(path, plan, overwrite=True, threads=os.cpu_count() or 1)
        for lo in range(0, per_shard, BATCH):
            rows = np.arange(lo, min(per_shard, lo + BATCH))
            shift = (index * 7 + lo) % BATCH
            data = {i: np.ascontiguousarray(a[shift : shift + len(rows)]) for i, a in pool.items()}
            stats = {
                i: np.stack([a.min((2, 3)), a.max((2, 3)), a.mean((2, 3))]).astype(np.float32) for i, a in data.items()
            }
            hw = np.full((len(rows), 2), 224, np.int32)
            writer.submit(BatchResult(rows, rows, hw, [], data, stats))
        writer.finalize()
    return sum(p.stat().st_size for p in files.shards_folder(out).iterdir())


def median_seconds(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def plain_copy_s(folder: Path, target: Path) -> float:
    """Copy every shard file and fsync it, as merge --copy fsyncs its output: the disk's pace."""
    target.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for path in sorted(folder.iterdir()):
        shutil.copyfile(path, target / path.name)
        with open(target / path.name, "rb+") as handle:
            os.fsync(handle.fileno())
    seconds = time.perf_counter() - t0
    shutil.rmtree(target)
    return seconds


def decode_s(out: Path) -> float:
    t0 = time.perf_counter()
    with h5py.File(out, "r") as file:
        for s in STAGES:
            dset = file[f"stages/{s.index}/data"]
            for lo in range(0, dset.shape[0], 64):
                dset[lo : lo + 64]
    return time.perf_counter() - t0


def bench(workdir: Path, num_shards: int, per_shard: int) -> dict:
    out = workdir / f"bench-{num_shards}x{per_shard}.h5"
    shard_bytes = write_shards(out, num_shards, per_shard)
    virtual_s = median_seconds(lambda: merge.merge(out))
    command = [sys.executable, "-m", "pipeline", "-q", "merge", str(out)]
    t0 = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    command_s = time.perf_counter() - t0
    copies = [merge.merge(out, copy=True) for _ in range(3)]
    summary = copies[0]
    copy_s = statistics.median(c.seconds for c in copies)
    plain_s = statistics.median(plain_copy_s(files.shards_folder(out), workdir / "plain-copy") for _ in range(3))
    decoded_s = decode_s(out)
    result = {
        "shards": num_shards,
        "images": num_shards * per_shard,
        "shard_mb": shard_bytes / 1e6,
        "virtual_s": virtual_s,
        "virtual_command_s": command_s,
        "copy_s": copy_s,
        "copy_chunk_mb": summary.bytes_copied / 1e6,
        "copy_mb_per_s": summary.bytes_copied / 1e6 / copy_s,
        "plain_copy_mb_per_s": shard_bytes / 1e6 / plain_s,
        "decode_mb_per_s": shard_bytes / 1e6 / decoded_s,
    }
    shutil.rmtree(files.shards_folder(out))
    out.unlink()
    return result


def table(results: list[dict]) -> str:
    lines = [
        "| shards × images | shard files MB | virtual merge s (`merge()`) | `fmpipe merge` command s "
        "| `--copy` s | `--copy` MB/s | plain file copy MB/s | decode only MB/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['shards']} × {r['images'] // r['shards']} | {r['shard_mb']:.0f} | {r['virtual_s']:.3f} "
            f"| {r['virtual_command_s']:.2f} | {r['copy_s']:.2f} | {r['copy_mb_per_s']:.0f} "
            f"| {r['plain_copy_mb_per_s']:.0f} | {r['decode_mb_per_s']:.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--shards", type=int, default=64, help="shards per merge (default 64)")
    parser.add_argument("--images-per-shard", type=int, nargs="+", default=[4, 32], help="sizes to measure")
    parser.add_argument("--workdir", type=Path, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fmpipe-bench-merge-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        results = [bench(workdir, args.shards, n) for n in args.images_per_shard]
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"{platform.node()}: {os.cpu_count()} CPUs, h5py {h5py.version.version}, HDF5 {h5py.version.hdf5_version}")
    print(table(results))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
