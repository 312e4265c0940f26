#!/usr/bin/env python
"""What pinning every row to its source costs: the sha256 of each source file's bytes.

    python scripts/bench_digests.py                  # 300 JPEGs (300-640 px, quality 90), default extract
    python scripts/bench_digests.py --images 1000 --large 12

Measures per image, on files in the page cache: reading the file, hashing its bytes, decoding
it, and a decode worker's whole step with and without the digest (`read_source` hashes files
over 256 KB in a thread while Pillow decodes them), and the end-to-end time of a default
`fmpipe extract` (efficientnet_lite0 at 224, batch 16, 2 decode workers) of the same images.
The digest's cost is its share of the run and of the worker's step (which bounds it when a GPU
makes decoding the bottleneck). `--large N` adds N 12-megapixel JPEGs (the worst case: big files,
cheap draft decoding). Also the resume-time check (re-reading and hashing a done row's source).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

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


def _large(folder: Path, count: int, with_digest, decode_bytes) -> list[str]:
    """The worker's step with and without the digest on `count` 12-megapixel JPEGs."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    photo = Image.open(REPO / "data" / "images" / "chelsea.jpg").convert("RGB").resize((4000, 3000))
    rng = np.random.default_rng(0)
    for i in range(count):  # noise keeps the files big, as camera photos are
        noisy = np.clip(np.asarray(photo, np.int16) + rng.integers(-8, 8, (3000, 4000, 3)), 0, 255)
        Image.fromarray(noisy.astype(np.uint8)).save(folder / f"big{i:03d}.jpg", quality=92)
    files = sorted(folder.glob("*.jpg"))
    mb = statistics.mean(p.stat().st_size for p in files) / 1e6
    without = per_image_ms(files, lambda p: decode_bytes(p.read_bytes(), (224, 224)), rounds=3)
    hashed = per_image_ms(files, lambda p: hashlib.sha256(p.read_bytes()).hexdigest(), rounds=3)
    worker = per_image_ms(files, with_digest, rounds=3)
    return [
        "",
        f"{count} JPEGs of 4000x3000, mean {mb:.1f} MB: read + decode {without:.2f} ms, sha256 alone "
        f"{hashed:.2f} ms, the worker's step with the digest {worker:.2f} ms ({worker / without:.3f} x)",
    ]


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
    parser.add_argument("--large", type=int, default=0, help="also N 4000x3000 JPEGs (about 2.6 MB each)")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    from pipeline import sources
    from pipeline.decoding import decode_bytes, read_source

    def step_with_digest(path: Path) -> None:  # what a decode worker does
        source = read_source(path)
        decode_bytes(source.data, (224, 224))
        source.sha256  # noqa: B018  (waits for a background hash)

    with tempfile.TemporaryDirectory() as tmp:
        folder = prepare_images(Path(tmp) / "images", args.images)
        files = sorted(folder.glob("*.jpg"))
        mean_kb = statistics.mean(p.stat().st_size for p in files) / 1e3
        read = per_image_ms(files, lambda p: p.read_bytes())
        read_hash = per_image_ms(files, lambda p: hashlib.sha256(p.read_bytes()).hexdigest())
        decode = per_image_ms(files, lambda p: decode_bytes(p.read_bytes(), (224, 224)), rounds=3)
        worker = per_image_ms(files, step_with_digest, rounds=3)
        check = per_image_ms(files, lambda p: sources.file_identity(p))
        extract = extract_ms(folder, Path(tmp), args.rounds)
        large = _large(Path(tmp) / "large", args.large, step_with_digest, decode_bytes) if args.large else []
    hash_ms = max(0.0, read_hash - read)
    rows = [
        ("read the file", read),
        ("sha256 of its bytes", hash_ms),
        ("read + decode + resize to 224x224 (the worker's work without a digest)", decode),
        ("the worker's step with the digest (`read_source`, decode)", worker),
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
        f"sha256 ÷ extract: {100 * hash_ms / extract:.2f} %; the worker's step with ÷ without the digest: "
        f"{worker / decode:.3f}",
        *large,
    ]
    print("\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
