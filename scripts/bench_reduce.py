"""`fmpipe reduce` speed and peak memory: 200 images against 2,000, srp and pca, each in its own process.

    python scripts/bench_reduce.py                    # 200 and 2,000 images
    python scripts/bench_reduce.py --images 200 1000  # other sizes

The images are random 48×48 RGB pictures (PNG and JPEG), extracted once per size with the tiny
`tests/tiny_models.py:plain_net` at 64×64 (stage 0: 4×32×32 = 4,096 numbers per image, float16,
zstd), so 2,000 extractions take seconds. Each reduction runs in a fresh Python process
(`pipeline.reduce`, as `fmpipe reduce` calls it) that reports its peak resident memory (VmHWM)
and wall time; the table gives both and images/s. Scratch goes to /dev/shm unless --tmp says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

CHILD = """
import json, sys, time
import pipeline
path, method, dim, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
import sklearn.decomposition, sklearn.random_projection, scipy.sparse  # imported before the clock starts
started = time.perf_counter()
summary = pipeline.reduce(path, stage=0, method=method, dim=dim, out=out, overwrite=True)
seconds = time.perf_counter() - started
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"images": summary.images, "features": summary.features, "s": seconds, "hwm_kb": hwm}))
"""
METHODS = (("srp", 256), ("pca", 64))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--tmp", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    parser.add_argument(
        "--blas-threads", default="1", help="OPENBLAS/OMP threads of the reducing process (a shared VM: 1)"
    )
    args = parser.parse_args()
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = args.blas_threads
    with tempfile.TemporaryDirectory(dir=args.tmp) as scratch:
        base = Path(scratch)
        rows = []
        for count in args.images:
            path = extract(base, count)
            for method, dim in METHODS:
                rows.append({"method": method, "dim": dim, **reduce_in_child(path, method, dim, base / "f.npz")})
    print_table(rows)
    return 0


def extract(base: Path, count: int) -> Path:
    from conftest import write_images

    import pipeline

    images = base / f"images{count}"
    write_images(images, count, size=(48, 48))
    out = base / f"out{count}.h5"
    started = time.perf_counter()
    pipeline.extract(str(images), str(out), model="tiny_models:plain_net", size=(64, 64), workers=0, device="cpu")
    print(f"extracted {count} images in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return out


def reduce_in_child(path: Path, method: str, dim: int, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), method, str(dim), str(out)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(run.stdout.splitlines()[-1])


def print_table(rows: list[dict]) -> None:
    print("| method | D | images | features | s | images/s | peak RSS | vs fewest images |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    first: dict[str, int] = {}
    for row in rows:
        base = first.setdefault(row["method"], row["hwm_kb"])
        print(
            f"| {row['method']} | {row['dim']} | {row['images']:,} | {row['features']:,} | {row['s']:.2f} | "
            f"{row['images'] / row['s']:,.0f} | {row['hwm_kb'] / 1024:.1f} MB | {row['hwm_kb'] / base:.2f}× |"
        )


if __name__ == "__main__":
    sys.exit(main())
