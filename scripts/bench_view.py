"""Viewer speed and memory: tile latency alone and under 8 concurrent clients, ranking on a
100,000-image file, and the server's RSS while browsing 1,000 images.

    python scripts/bench_view.py                       # the numbers in docs/benchmarks.md "## View"
    python scripts/bench_view.py --images 200 --ranking-images 20000 --browse 200   # quicker
    python scripts/bench_view.py --first-page-only     # only the first image page on the PVT case (below)

Files are written by pipeline.storage.writing.writer with synthetic smooth maps and true statistics:
- the browsing file: --images images, three stages shaped like efficientnet_lite0's stages 1-3
  at 224×224 (24×56×56, 40×28×28, 112×14×14), float16, zstd, with 320×240 JPEG sources;
- the ranking file: --ranking-images images, stages of 112 and 320 channels with tiny maps
  (ranking reads statistics and top lists only; the map size does not matter to it).
- the PVT case (--first-page): `fmpipe extract data/images` with pvt_v2_b1 at 800×1200, random init
  (the article's backbone and size; four stages up to 64×200×300), five images; the first image page's
  HTML and every picture on it are fetched from a freshly started viewer, as a browser loads it.
The viewer runs in its own process (`pipeline.view`, port 0), so its RSS is its own;
clients are threads of this process on keep-alive connections to 127.0.0.1. Scratch goes to
/dev/shm unless --tmp says otherwise.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BROWSE_STAGES = ((24, 56, 4), (40, 28, 8), (112, 14, 16))  # channels, side, stride
RANKING_STAGES = ((112, 2, 16), (320, 1, 32))
TILE_STAGE = 0  # the 56×56 stage
CLIENTS = 8


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000, help="images of the browsing file")
    parser.add_argument("--ranking-images", type=int, default=100_000, help="images of the ranking file")
    parser.add_argument("--browse", type=int, default=1000, help="images whose page and pictures are fetched")
    parser.add_argument("--tiles", type=int, default=400, help="tile requests per latency measurement")
    parser.add_argument("--tmp", default=None, help="scratch folder (default: a new one in /dev/shm if present)")
    parser.add_argument("--pvt-file", default=None, help="a PVT case file to reuse (skips its extraction)")
    parser.add_argument("--first-page-only", action="store_true", help="measure the PVT case's first page only")
    args = parser.parse_args()
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="bench-view-", dir=shm))
    try:
        first_page(Path(args.pvt_file) if args.pvt_file else pvt_file(tmp))
        if args.first_page_only:
            return 0
        t0 = time.perf_counter()
        browse_file = make_file(tmp / "browse.h5", args.images, BROWSE_STAGES, tmp / "photos")
        print(f"browsing file, {args.images} images with sources: {time.perf_counter() - t0:.1f} s", flush=True)
        with Server(browse_file) as server:
            print(f"viewer started in {server.started_s:.2f} s, RSS {server.rss_mb():.0f} MB", flush=True)
            latency(server, args.images, args.tiles)
            browse(server, min(args.browse, args.images))
        ranking(tmp, args.ranking_images)
    finally:
        if not args.tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


# -- files ----------------------------------------------------------------------------------------


def make_file(path: Path, count: int, shapes, photos: Path | None) -> Path:
    """A complete fmpipe file of `count` images with smooth non-negative float16 maps."""
    from pipeline.records import BatchResult, StageInfo
    from pipeline.storage.writing.writer import ShardWriter, WritePlan

    keys = [f"class{i % 10}/img{i:06d}.jpg" for i in range(count)]
    keys.sort()
    if photos is not None:
        make_sources(photos, keys)
    stages = [StageInfo(i, f"blocks.{i + 1}", c, s, h, h, "forward_hook") for i, (c, h, s) in enumerate(shapes)]
    attrs = {"input_size": [224, 224], "images_root": str(photos or "/nonexistent"), "model": "synthetic"}
    plan = WritePlan(keys, stages, "float16", "zstd", "bench-view", {}, attrs)
    writer = ShardWriter.open(path, plan, threads=2)
    rng = np.random.default_rng(1)
    block = 64 if photos is not None else 2000
    for start in range(0, count, block):
        rows = np.arange(start, min(start + block, count))
        data, stats = {}, {}
        for info in stages:
            maps = smooth(rng, len(rows), info.channels, info.height)
            data[info.index] = maps.astype(np.float16)
            stats[info.index] = np.stack([maps.min((2, 3)), maps.max((2, 3)), maps.mean((2, 3))])
        hw = np.tile(np.array([[240, 320]], np.int32), (len(rows), 1))
        writer.submit(BatchResult(rows, rows, hw, [], data, stats))
    return writer.finalize()


def smooth(rng: np.random.Generator, n: int, channels: int, side: int) -> np.ndarray:
    """(n, C, side, side) float32: coarse noise upsampled, clipped at 0 (post-ReLU-like)."""
    cell = max(1, side // 7)
    coarse = rng.standard_normal((n, channels, -(-side // cell), -(-side // cell)), dtype=np.float32)
    fine = np.repeat(np.repeat(coarse, cell, axis=2), cell, axis=3)[:, :, :side, :side]
    return np.maximum(fine, 0) * rng.uniform(0.5, 3.0, (1, channels, 1, 1)).astype(np.float32)


def make_sources(folder: Path, keys: list[str]) -> None:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:240, 0:320].astype(np.float32)
    for key in keys:
        phase = rng.uniform(0, 6.28, 3)
        pixels = np.stack([127 + 100 * np.sin(x / (30 + 9 * c) + y / (50 - 7 * c) + phase[c]) for c in range(3)], 2)
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / key, quality=85)


# -- the server -----------------------------------------------------------------------------------


class Server:
    """`pipeline.view` in a child process on a free loopback port; stopped by its PID."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> Server:
        code = f"import pipeline; pipeline.view({str(self.path)!r}, port=0)"
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
        for _ in range(2):
            line = self.proc.stdout.readline()
            match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if not match:
            self.__exit__()
            sys.exit(f"the viewer did not start: {line!r}")
        self.port = int(match.group(1))
        self.started_s = time.perf_counter() - t0
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024

    def client(self) -> Client:
        return Client(self.port)


class Client:
    """One keep-alive connection; `get` returns (status, body, seconds)."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def get(self, target: str) -> tuple[int, bytes, float]:
        t0 = time.perf_counter()
        self.conn.request("GET", target)
        response = self.conn.getresponse()
        body = response.read()
        return response.status, body, time.perf_counter() - t0


# -- measurements ---------------------------------------------------------------------------------


def tile_targets(rng: np.random.Generator, images: int, count: int) -> list[str]:
    channels = BROWSE_STAGES[TILE_STAGE][0]
    return [f"/tile/{TILE_STAGE}/{rng.integers(images)}/{rng.integers(channels)}.png" for _ in range(count)]


def latency(server: Server, images: int, count: int) -> None:
    """p50/p95 of 56×56 tiles (automatic scale: 168×168 PNGs), random image and channel, alone and
    with CLIENTS clients at once."""
    rng = np.random.default_rng(2)
    client = server.client()
    client.get(tile_targets(rng, images, 1)[0])  # first request: connection, imports
    alone = [client.get(t)[2] for t in tile_targets(rng, images, count)]
    report("tile, 1 client", alone)
    times: list[float] = []
    targets = [tile_targets(rng, images, count) for _ in range(CLIENTS)]

    def run(mine: list[str]) -> None:
        own = server.client()
        times.extend(own.get(t)[2] for t in mine)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=run, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    report(f"tile, {CLIENTS} clients", times, f"{len(times) / wall:.0f} tiles/s")


def report(label: str, seconds: list[float], extra: str = "") -> None:
    ms = 1e3 * np.asarray(seconds)
    print(f"{label}: p50 {np.percentile(ms, 50):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms, n={len(ms)} {extra}")


class _Pictures(HTMLParser):
    def __init__(self, text: str):
        super().__init__()
        self.src: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.src += [v.replace("&amp;", "&") for k, v in attrs if k == "src"]


def fetch_all(client: Client, targets: list[str]) -> None:
    for target in targets:
        status = client.get(target)[0]
        assert status == 200, (target, status)


def browse(server: Server, count: int) -> None:
    """Fetch `count` image pages and every picture on each (two clients); RSS every tenth of the way."""
    clients = [server.client(), server.client()]
    t0, requests, marks = time.perf_counter(), 0, []
    for row in range(count):
        status, body, _ = clients[0].get(f"/image/{row}")
        assert status == 200, (row, status)
        pictures = _Pictures(body.decode()).src
        other = threading.Thread(target=fetch_all, args=(clients[1], pictures[1::2]))
        other.start()
        fetch_all(clients[0], pictures[::2])
        other.join()
        requests += 1 + len(pictures)
        if (row + 1) % max(1, count // 10) == 0:
            marks.append((row + 1, server.rss_mb()))
    seconds = time.perf_counter() - t0
    print(f"browsed {count} images ({requests} requests) in {seconds:.0f} s; RSS (MB) after n images:")
    print("  " + ", ".join(f"{n}: {rss:.0f}" for n, rss in marks))


def pvt_file(tmp: Path) -> Path:
    """The PVT case: the five sample photos through pvt_v2_b1 at 800×1200, random init (torch runs here)."""
    out = tmp / "pvt.h5"
    command = [sys.executable, "-m", "pipeline", "-q", "extract", str(REPO / "data" / "images"), str(out)]
    command += ["--model", "pvt_v2_b1", "--size", "800x1200", "--random-init"]
    t0 = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO)
    print(f"PVT case (pvt_v2_b1, 800×1200, 5 images) extracted in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def first_page(path: Path) -> None:
    """The first image page of a freshly started viewer: its HTML, then every picture on it (two
    connections, as a browser); then, for comparison, the PCA pictures of every stage (what the page
    loaded before the PCA was drawn on request), then a second image's page."""
    with Server(path) as server:
        clients = [server.client(), server.client()]
        t0 = time.perf_counter()
        status, body, html_s = clients[0].get("/image/0")
        assert status == 200, status
        pictures = _Pictures(body.decode()).src
        other = threading.Thread(target=fetch_all, args=(clients[1], pictures[1::2]))
        other.start()
        fetch_all(clients[0], pictures[::2])
        other.join()
        page_s = time.perf_counter() - t0
        print(f"PVT first image page: HTML {1e3 * html_s:.0f} ms; with its {len(pictures)} pictures {page_s:.2f} s")
        stages = sorted(set(re.findall(r'href="/pca/(\d+)/0\.png"', body.decode())))
        t1 = time.perf_counter()
        fetch_all(clients[0], [f"/pca/{stage}/0.png" for stage in stages])
        fitted_s = time.perf_counter() - t1
        print(f"  + the PCA pictures of its {len(stages)} stages (each stage's PCA fitted): {fitted_s:.2f} s")
        t2 = time.perf_counter()
        status, body, _ = clients[0].get("/image/1")
        fetch_all(clients[0], _Pictures(body.decode()).src)
        print(f"  second image page with its pictures: {time.perf_counter() - t2:.2f} s", flush=True)


def ranking(tmp: Path, count: int) -> None:
    """Write the ranking file (top lists at finalise), then time top_images and /api/top."""
    from pipeline.storage.reading.store import open_store
    from pipeline.storage.reading.toplists import channel_ranking, top_images

    t0 = time.perf_counter()
    path = make_file(tmp / "ranking.h5", count, RANKING_STAGES, None)
    print(f"ranking file, {count} images: written in {time.perf_counter() - t0:.1f} s (top lists included)")
    rng = np.random.default_rng(3)
    with open_store(path) as store:
        calls = []
        for _ in range(50):
            channel = int(rng.integers(RANKING_STAGES[1][0]))
            t1 = time.perf_counter()
            top_images(store, 1, channel, 9, "max")
            calls.append(time.perf_counter() - t1)
        report("top_images(k=9), library", calls)
        t1 = time.perf_counter()
        channel_ranking(store, 1, "max")
        print(f"channel_ranking: {1e3 * (time.perf_counter() - t1):.1f} ms")
    with Server(path) as server:
        client = server.client()
        client.get("/api/top?stage=1&channel=0&k=9")
        targets = [f"/api/top?stage=1&channel={rng.integers(320)}&k=9&by=max" for _ in range(100)]
        report("/api/top (k=9), over HTTP", [client.get(t)[2] for t in targets])
        targets = [f"/api/top?stage=1&channel={rng.integers(320)}&k=100&by=mean" for _ in range(100)]
        report("/api/top (k=100, by mean), over HTTP", [client.get(t)[2] for t in targets])


if __name__ == "__main__":
    sys.exit(main())
