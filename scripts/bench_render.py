"""Render speed and memory, in one run: the seed article's method vs a bare floor vs fmpipe.

    python -m pip install matplotlib      # only for the seed method; not an fmpipe dependency
    python scripts/bench_render.py        # 48 images × 64 channels × 200×300, as in the article

Speed, per PNG of the same maps (one stage of synthetic smooth post-ReLU float16 maps):
  seed    the article: one min/max over all channels, then `plt.imshow` + `plt.savefig`
          per channel without clearing the figure (so each save redraws every earlier one)
  floor   the same maps already in memory: normalise per channel + indexed PNG with the
          colour table + write a new file; the same encoder and zlib settings as fmpipe
  fmpipe  `render(..., layout="channels")` from the HDF5 file, 1 and 2 worker processes;
          wall time of the whole call (opening the file, spawning workers) included
Memory: peak RSS (VmHWM) of a render of 20 vs 200 images of a (16, 100, 150) stage.
PNGs go to a RAM-backed folder (/dev/shm) unless --tmp says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.rendering.colormaps import lut  # noqa: E402  (light imports only: spawned workers re-import this file)
from pipeline.rendering.png import encode_indexed  # noqa: E402
from pipeline.rendering.run import RenderConfig, render  # noqa: E402

PEAK = """
import json, re, sys
from pipeline.rendering.run import RenderConfig, render
render(RenderConfig(sys.argv[1], 0, out=sys.argv[2], images=sys.argv[3], workers=1, layout="both"))
status = open("/proc/self/status").read()
print(json.dumps({"peak_mb": int(re.search(r"VmHWM:\\s+(\\d+)", status).group(1)) / 1024}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48, help="images in the speed file")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", default="200x300", help="map H x W")
    parser.add_argument("--seed-channels", type=int, default=64, help="PNGs drawn the seed way (one image)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of floor/fmpipe; the best is reported")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument(
        "--tmp", default=None, help="scratch folder (default: a new one in /dev/shm if present, else in TMPDIR)"
    )
    args = parser.parse_args()
    try:
        import matplotlib  # noqa: F401  (checked before minutes of work, used by `seed`)
    except ImportError:
        sys.exit("the seed method needs matplotlib (not an fmpipe dependency): python -m pip install matplotlib")
    height, width = (int(v) for v in args.size.lower().split("x"))
    # RAM-backed by default: creating thousands of files on this VM's disk cost 0.04-0.7 ms
    # each from one minute to the next, noise that is no method's doing. --tmp DIR measures a disk.
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="bench-render-", dir=shm))
    try:
        path = make_file(tmp / "speed.h5", args.images, args.channels, height, width)
        rows = speed(path, tmp, args)
        print_table(rows, args.images, args.channels, height, width)
        if not args.skip_memory:
            memory(tmp)
    finally:
        if not args.tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def make_file(path: Path, images: int, channels: int, height: int, width: int) -> Path:
    """An fmpipe file with one stage of smooth post-ReLU float16 maps, written by the real writer."""
    from pipeline.records import BatchResult, StageInfo
    from pipeline.storage.writing.writer import ShardWriter, WritePlan

    rng = np.random.default_rng(0)
    stage = StageInfo(0, "synthetic", channels, 4, height, width, "forward_hook")
    keys = [f"img{i:04d}.jpg" for i in range(images)]
    plan = WritePlan(keys, [stage], "float16", "zstd", "bench", {"bench": 1}, {"input_size": [height * 4, width * 4]})
    writer = ShardWriter.open(path, plan, overwrite=True)
    for row in range(images):
        maps = smooth_maps(rng, channels, height, width)
        stats = np.stack([maps.min((1, 2)), maps.max((1, 2)), maps.mean((1, 2))])[:, None].astype(np.float32)
        rows = np.array([row])
        hw = np.array([[height * 4, width * 4]], np.int32)
        writer.submit(BatchResult(rows, rows, hw, [], {0: maps[None].astype(np.float16)}, {0: stats}))
    writer.finalize()
    return path


def smooth_maps(rng, channels: int, height: int, width: int) -> np.ndarray:
    """(C, H, W) float32: coarse noise upsampled 8× plus fine noise, clipped at 0 (≈ half zeros)."""
    coarse = rng.standard_normal((channels, height // 8 + 1, width // 8 + 1)).astype(np.float32)
    fine = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)[:, :height, :width]
    return np.maximum(fine + 0.2 * rng.standard_normal(fine.shape).astype(np.float32), 0)


def speed(path: Path, tmp: Path, args) -> dict[str, tuple[float, int]]:
    """{method: (seconds, PNGs)}; fast methods interleaved, best of `repeat` rounds each."""
    import h5py

    with h5py.File(path, "r") as f:  # the floor's maps, all in memory: the same PNGs as fmpipe
        data, lo, hi = f["stages/0/data"][:], f["stages/0/min"][:], f["stages/0/max"][:]
    methods = {
        "floor": lambda: floor(data, lo, hi, tmp / "floor"),
        "floor, no file write": lambda: floor(data, lo, hi, None),
        "fmpipe, 1 worker": lambda: fmpipe(path, tmp / "fmpipe1", 1),
        "fmpipe, 2 workers": lambda: fmpipe(path, tmp / "fmpipe2", 2),
    }
    # Interleaved rounds: a burst of load from something else on the machine hits one round of
    # every method rather than all rounds of one.
    rounds = [{name: run() for name, run in methods.items()} for _ in range(args.repeat)]
    rows = {"seed": seed(data[0, : args.seed_channels], tmp / "seed")}
    for name in methods:
        rows[name] = min((r[name] for r in rounds), key=lambda result: result[0] / result[1])
    return rows


def fmpipe(path: Path, out: Path, workers: int) -> tuple[float, int]:
    """fmpipe's own render into an empty folder; wall time of the whole call."""
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    summary = render(RenderConfig(str(path), 0, out=str(out), layout="channels", workers=workers))
    return time.perf_counter() - t0, summary.pngs


def seed(maps: np.ndarray, out: Path) -> tuple[float, int]:
    """The article's fm_vis: global normalisation, imshow + savefig, figure never cleared."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    feats = maps.astype(np.float32)
    feats = (feats - feats.min()) / (feats.max() - feats.min())
    for idx in range(feats.shape[0]):
        plt.imshow(feats[idx])
        plt.savefig(out / f"s_b_vis_{idx}.png")
    seconds = time.perf_counter() - t0
    plt.close("all")
    return seconds, feats.shape[0]


def floor(data: np.ndarray, lo: np.ndarray, hi: np.ndarray, out: Path | None) -> tuple[float, int]:
    """Normalise per channel, colour table as the PNG palette, encode, write a new file; nothing else.

    Each run writes into an empty folder, as fmpipe does: creating a file costs more than
    overwriting one. `out=None` only encodes.
    """
    if out is not None:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
    table = lut("viridis")
    t0 = time.perf_counter()
    count = 0
    for n in range(data.shape[0]):
        for c in range(data.shape[1]):
            scale = np.float32(255 / (hi[n, c] - lo[n, c]))
            values = (data[n, c] - np.float32(lo[n, c])) * scale
            np.clip(values, 0, 255, out=values)
            values += 0.5
            png = encode_indexed(values.astype(np.uint8), table)
            if out is not None:
                (out / f"{n}-{c}.png").write_bytes(png)
            count += 1
    return time.perf_counter() - t0, count


def print_table(rows: dict[str, tuple[float, int]], images: int, channels: int, height: int, width: int) -> None:
    ms = {name: 1e3 * s / n for name, (s, n) in rows.items()}
    print(f"\nrender speed: {images} images × {channels} channels × {height}×{width}, cpu_count={os.cpu_count()}")
    print(f"{'method':<20} {'PNGs':>6} {'seconds':>8} {'ms/PNG':>8}  {'seed ÷ this':>11}  {'this ÷ floor':>12}")
    for name, (seconds, count) in rows.items():
        print(
            f"{name:<20} {count:>6} {seconds:8.2f} {ms[name]:8.3f}  "
            f"{ms['seed'] / ms[name]:10.0f}×  {ms[name] / ms['floor']:11.2f}×"
        )


def memory(tmp: Path, counts=(20, 200)) -> None:
    path = make_file(tmp / "memory.h5", max(counts), 16, 100, 150)
    size_mb = path.stat().st_size / 1e6
    print(f"\npeak memory (VmHWM), one process, stage (16, 100, 150), layout both, {size_mb:.0f} MB file:")
    peaks = {}
    for count in counts:
        run = subprocess.run(
            [sys.executable, "-c", PEAK, str(path), str(tmp / f"mem{count}"), f"0:{count}"],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=True,
        )
        peaks[count] = json.loads(run.stdout)["peak_mb"]
        pngs = sum(1 for _ in (tmp / f"mem{count}").rglob("*.png"))
        print(f"  {count:>4} images, {pngs:>5} PNGs: {peaks[count]:6.1f} MB")
    print(f"  ratio {counts[-1]} / {counts[0]} images: {peaks[counts[-1]] / peaks[counts[0]]:.3f}")


if __name__ == "__main__":
    sys.exit(main())
