#!/usr/bin/env python
"""What pinning every row to its source costs: the sha256 of each source file's bytes.

    python scripts/bench_digests.py                  # 300 JPEGs (300-640 px, quality 90), default extract
    python scripts/bench_digests.py --images 1000 --markdown docs/bench-digests.md

Measures per image, on files in the page cache: reading the file, hashing its bytes (what the
decode worker adds), decoding it (what the worker did anyway), and the end-to-end time of a
default `fmpipe extract` (efficientnet_lite0 at 224, batch 16, 2 decode workers) of the same
images. The digest's cost is hash ÷ extract (its share of the run) and hash ÷ decode (its
share of the worker's work, which bounds it when a GPU makes decoding the bottleneck). Also the
resume-time check (re-reading and hashing the done rows' sources) per image.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from bench_extract import prepare_images  # noqa: E402


def per_image_ms(files: list[Path], work, rounds: int = 5) -> float:
    """Median over `rounds` of the mean ms per file of `work(path)`."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for path in files:
            work(path)
        times.append((time.perf_counter() - t0) * 1e3 / len(files))
    return statistics.median(times)


def extract_ms(folder: Path, workdir: Path, rounds: int) -> float:
    import pipeline

    times = []
    for i in range(rounds):
        summary = pipeline.extract(str(folder), str(workdir / f"out{i}.h5"), overwrite=True)
        times.append(summary.seconds * 1e3 / (summary.stored + summary.failed))
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    from pipeline import sources
    from pipeline.decoding import decode_bytes

    with tempfile.TemporaryDirectory() as tmp:
        folder = prepare_images(Path(tmp) / "images", args.images)
        files = sorted(folder.glob("*.jpg"))
        mean_kb = statistics.mean(p.stat().st_size for p in files) / 1e3
        read = per_image_ms(files, lambda p: p.read_bytes())
        read_hash = per_image_ms(files, lambda p: hashlib.sha256(p.read_bytes()).hexdigest())
        decode = per_image_ms(files, lambda p: decode_bytes(p.read_bytes(), (224, 224)), rounds=3)
        check = per_image_ms(files, lambda p: sources.file_identity(p))
        extract = extract_ms(folder, Path(tmp), args.rounds)
    hash_ms = max(0.0, read_hash - read)
    rows = [
        ("read the file", read),
        ("sha256 of its bytes (the digest's cost)", hash_ms),
        ("decode + resize to 224x224 (the worker's work anyway)", decode),
        ("resume check: read + hash again (`sources.file_identity`)", check),
        ("default `fmpipe extract`, end to end", extract),
    ]
    lines = [
        f"{args.images} JPEGs, mean {mean_kb:.0f} KB, in the page cache; medians of rounds.",
        "",
        "| per image | ms |",
        "|---|---:|",
        *(f"| {name} | {ms:.3f} |" for name, ms in rows),
        "",
        f"digest ÷ extract: {100 * hash_ms / extract:.2f} %; digest ÷ decode: {100 * hash_ms / decode:.2f} %",
    ]
    print("\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
