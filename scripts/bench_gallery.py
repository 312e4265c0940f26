"""Gallery speed: `write_gallery` over a render of 1,000 images × 5 stages, the PNG rendering timed apart.

    python scripts/bench_gallery.py                 # 1,000 images, 100 per index page
    python scripts/bench_gallery.py --images 200    # quicker

The file is written by pipeline.storage.writing.writer: five stages with efficientnet_lite0's channel counts
(16, 24, 40, 112, 320) and strides, synthetic maps. The gallery never reads a map, only keys,
(N, C) statistics, folder listings and PNG headers, so the maps are small (--map-side) to keep
the rendering short; the channel counts set the size of every page's statistics. Sources are
--source-size JPEGs in ten folders. Rendered first (timed apart): a grid per image and stage,
the 8 most active channels of stage 2 as PNGs, and stage 3's PCA picture. Then the gallery:
a first run that makes every thumbnail, and refreshes that find them up to date (best of --refreshes).
Scratch goes to a RAM-backed folder (/dev/shm) unless --tmp says otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.rendering.run import RenderConfig, render  # noqa: E402
from pipeline.site.build import GalleryConfig, write_gallery  # noqa: E402  (light: spawned render workers import this)

CHANNELS = (16, 24, 40, 112, 320)  # efficientnet_lite0's stages
STRIDES = (2, 4, 8, 16, 32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--map-side", type=int, default=8, help="H = W of every stage's maps")
    parser.add_argument("--source-size", default="500x375", help="W x H of the source JPEGs")
    parser.add_argument("--workers", type=int, default=0, help="render processes (0: all cores)")
    parser.add_argument("--refreshes", type=int, default=3, help="gallery runs after the first; the best counts")
    parser.add_argument("--tmp", default=None, help="scratch folder (default: a new one in /dev/shm if present)")
    args = parser.parse_args()
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="bench-gallery-", dir=shm))
    try:
        width, height = (int(v) for v in args.source_size.lower().split("x"))
        t0 = time.perf_counter()
        keys = make_sources(tmp / "photos", args.images, width, height)
        path = make_file(tmp / "bench.h5", keys, args.map_side, tmp / "photos")
        print(f"file and {len(keys)} sources: {time.perf_counter() - t0:.1f} s", flush=True)
        render_s, pngs = render_all(path, tmp / "render", args.workers)
        print(f"render: {pngs} PNGs in {render_s:.1f} s (not part of the gallery's time)", flush=True)
        rows = [gallery(path, tmp / "render", "first run (makes thumbnails)")]
        refreshes = [gallery(path, tmp / "render", "refresh") for _ in range(args.refreshes)]
        rows.append(min(refreshes, key=lambda r: r["s"]) | {"run": f"refresh, best of {args.refreshes}"})
        print_table(rows, args.images)
    finally:
        if not args.tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def make_sources(folder: Path, count: int, width: int, height: int) -> list[str]:
    """`count` photo-like JPEGs (smooth colour fields plus grain) in ten subfolders; sorted keys."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    keys = []
    for i in range(count):
        phase = rng.uniform(0, 6.28, 3)
        base = [127 + 100 * np.sin(x / (40 + 9 * c) + y / (60 - 7 * c) + phase[c]) for c in range(3)]
        pixels = np.stack(base, axis=2) + rng.normal(0, 8, (height, width, 3))
        key = f"class{i % 10}/img{i:05d}.jpg"
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / key, quality=90)
        keys.append(key)
    return sorted(keys)


def make_file(path: Path, keys: list[str], side: int, photos: Path) -> Path:
    """A complete fmpipe file: five stages, smooth non-negative float16 maps, true statistics."""
    from pipeline.records import BatchResult, StageInfo
    from pipeline.storage.writing.writer import ShardWriter, WritePlan

    stages = [
        StageInfo(i, f"blocks.{i}", c, s, side, side, "forward_hook")
        for i, (c, s) in enumerate(zip(CHANNELS, STRIDES, strict=True))
    ]
    attrs = {"input_size": [224, 224], "images_root": str(photos), "model": "synthetic-efficientnet_lite0"}
    writer = ShardWriter.open(path, WritePlan(keys, stages, "float16", "zstd", "bench-gallery", {}, attrs), threads=2)
    rng = np.random.default_rng(1)
    for start in range(0, len(keys), 100):
        rows = np.arange(start, min(start + 100, len(keys)))
        data, stats = {}, {}
        for info in stages:
            maps = np.maximum(rng.standard_normal((len(rows), info.channels, side, side), dtype=np.float32), 0)
            data[info.index] = maps.astype(np.float16)
            stats[info.index] = np.stack([maps.min((2, 3)), maps.max((2, 3)), maps.mean((2, 3))])
        hw = np.tile(np.array([[375, 500]], np.int32), (len(rows), 1))
        writer.submit(BatchResult(rows, rows, hw, [], data, stats))
    return writer.finalize()


def render_all(path: Path, out: Path, workers: int) -> tuple[float, int]:
    """Every stage's grid, stage 2's top-8 channel PNGs, stage 3's PCA; (seconds, PNGs)."""
    t0, pngs = time.perf_counter(), 0
    jobs = [RenderConfig(str(path), s, out=str(out), layout="grid", scale=1, workers=workers) for s in range(5)]
    jobs.append(RenderConfig(str(path), 2, out=str(out), layout="channels", top_k=8, scale=1, workers=workers))
    jobs.append(RenderConfig(str(path), 3, out=str(out), layout="pca", scale=1, workers=workers))
    for job in jobs:
        pngs += render(job).pngs
    return time.perf_counter() - t0, pngs


def gallery(path: Path, out: Path, label: str) -> dict:
    t0 = time.perf_counter()
    summary = write_gallery(GalleryConfig(str(path), str(out)))
    seconds = time.perf_counter() - t0
    html_mb = sum(p.stat().st_size for p in (out / "gallery").glob("*.html")) / 1e6
    print(f"gallery, {label}: {seconds:.2f} s", flush=True)
    return {
        "run": label,
        "s": seconds,
        "thumbs": summary.thumbs_written,
        "pages": summary.images,
        "index": summary.index_pages,
        "mb": html_mb,
    }


def print_table(rows: list[dict], images: int) -> None:
    print()
    print("| gallery run | images × stages | image pages | index pages | thumbnails made | HTML MB | s | ms/image |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['run']} | {images} × 5 | {r['pages']} | {r['index']} | {r['thumbs']} | {r['mb']:.1f} "
            f"| {r['s']:.2f} | {1e3 * r['s'] / images:.2f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
