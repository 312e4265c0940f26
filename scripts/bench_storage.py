#!/usr/bin/env python
"""Bytes per image against precision and host CPU, for each storage choice, on real photos.

    python scripts/bench_storage.py                          # the three cases below, CPU
    python scripts/bench_storage.py --cases lite0 --images 16 --repeats 3 --markdown out.md

Cases: the default model (efficientnet_lite0, its weights) at 224; tv:resnet50 all stages at 224 and
timm's pvt_v2_b1 at 800x1200, both with random weights (seeded: no download). Images: the sample
photos (data/images), cut and flipped into more when `--images` asks for more than there are.

Variants: float16 as before this option existed (no shuffle), float16 + byte shuffle (today's
default), --keep-bits 7, --dtype uint8, --dtype uint8 --pool 7x7; plus a float32 run, the
reference for the errors. Per variant: the maps' stored bytes per image and the whole file's,
host CPU-seconds per image spent compressing (thread CPU time of the compression pool), extract
images/s (the batch loop, model loading excluded; noisy on a shared machine), the CPU time of the
device-side encoding alone (`compute.encode` on the CPU, one thread: pooling, statistics, cast or
quantisation, on the same activations for every variant), and the largest error of any decoded
value relative to its (image, channel) map's range (max - min of the float32 run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

CASES = {
    "lite0": {"model": "efficientnet_lite0", "size": (224, 224), "images": 5},
    "resnet50": {"model": "tv:resnet50", "size": (224, 224), "images": 5, "random_init": True},
    "pvt": {"model": "pvt_v2_b1", "size": (800, 1200), "images": 2, "random_init": True, "batch_size": 2},
}
VARIANTS = {
    "float16 (before: no shuffle)": {"shuffle": "off"},
    "float16 + shuffle (default)": {},
    "keep-bits 7 (+ shuffle)": {"keep_bits": 7},
    "uint8": {"dtype": "uint8"},
    "uint8 + pool 7x7": {"dtype": "uint8", "pool": (7, 7)},
}


def run_case(name: str, spec: dict, images: Path, scratch: Path, repeats: int = 1) -> list[dict]:
    """Every variant `repeats` times, interleaved (a load that comes and goes hits them alike); per
    variant the best images/s and the least compression CPU."""
    import pipeline

    options = {k: v for k, v in spec.items() if k != "images"}
    options.setdefault("batch_size", 8)
    options.update(device="cpu", workers=1)
    reference = scratch / f"{name}-float32.h5"
    pipeline.extract(str(images), str(reference), dtype="float32", overwrite=True, **options)
    encode_ms = encode_cpu_ms(spec, images)
    best: dict[str, dict] = {}
    for _ in range(repeats):
        for i, (label, extra) in enumerate(VARIANTS.items()):
            out = scratch / f"{name}-{i}.h5"
            t0 = time.perf_counter()
            summary = pipeline.extract(str(images), str(out), overwrite=True, **options, **extra)
            row = measure(label, out, reference, summary, time.perf_counter() - t0)
            row["encode_cpu_ms_per_image"] = encode_ms[label]
            print(json.dumps({"case": name, **row}), flush=True)
            out.unlink()
            if label in best:
                row["images_per_s"] = max(row["images_per_s"], best[label]["images_per_s"])
                row["compress_cpu_ms_per_image"] = min(
                    row["compress_cpu_ms_per_image"], best[label]["compress_cpu_ms_per_image"]
                )
            best[label] = row
    reference.unlink()
    return list(best.values())


def encode_cpu_ms(spec: dict, images: Path, repeats: int = 3) -> dict[str, float]:
    """Per variant, CPU ms per image of `compute.encode` (one thread, best of `repeats`) on the
    activations of the case's first images: what each choice adds to the device side on a CPU."""
    import torch

    from pipeline.decoding import decode
    from pipeline.extraction import models, taps
    from pipeline.extraction.compute import encode
    from pipeline.extraction.loading import normalize
    from pipeline.storage.encoding import Encoding

    model = models.resolve(spec["model"], random_init=spec.get("random_init", False))
    tap, _ = taps.build(model, spec["size"], None, torch.device("cpu"))
    paths = sorted(images.iterdir())[: min(4, spec["images"])]
    pixels = torch.from_numpy(np.stack([decode(str(p), spec["size"]).pixels for p in paths]))
    captured: list[torch.Tensor] = []
    with torch.inference_mode():
        tap(normalize(pixels, model.mean, model.std), lambda _index, t: captured.append(t.detach().clone()))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        for label, extra in VARIANTS.items():
            encoding = Encoding(extra.get("dtype", "float16"), extra.get("keep_bits", 0), False, extra.get("pool"))
            best = float("inf")
            for _ in range(repeats):
                t0 = time.thread_time()
                with torch.inference_mode():
                    for t in captured:
                        encode(t, encoding)
                best = min(best, time.thread_time() - t0)
            out[label] = 1e3 * best / len(paths)
    finally:
        torch.set_num_threads(threads)
    return out


def measure(label: str, out: Path, reference: Path, summary, wall_s: float) -> dict:
    import h5py

    import pipeline
    from pipeline.storage import schema

    with h5py.File(out) as file:
        maps = sum(file[f"{g}/{schema.DATA}"].id.get_storage_size() for g in schema.map_groups(file))
        timings = json.loads(file.attrs[schema.ATTR_TIMINGS])
    n = summary.images
    with pipeline.open_store(out) as got, pipeline.open_store(reference) as want:
        error = max(relative_error(a, b) for a, b in zip(got.maps, want.maps, strict=True))
    return {
        "variant": label,
        "maps_mb_per_image": maps / n / 1e6,
        "file_mb_per_image": out.stat().st_size / n / 1e6,
        "compress_cpu_ms_per_image": 1e3 * timings["compress_s"] / n,
        "images_per_s": summary.images_per_s,
        "wall_s": wall_s,
        "max_error_of_range": error,
    }


def relative_error(got, want) -> float:
    """Largest |decoded - float32| over (max - min) of the float32 map, over images and channels."""
    worst = 0.0
    for row in range(len(want.data)):
        exact = want.data[row].reshape(want.channels, -1).astype(np.float64)
        if got.shape != want.shape:  # pooled: compare with the float32 maps pooled the same way
            exact = pool(want.data[row], got.height, got.width).reshape(want.channels, -1)
        decoded = np.asarray(got.data[row], dtype=np.float64).reshape(got.channels, -1)
        span = exact.max(axis=1) - exact.min(axis=1)
        err = np.abs(decoded - exact).max(axis=1)
        valid = span > 0
        if valid.any():
            worst = max(worst, float((err[valid] / span[valid]).max()))
    return worst


def pool(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Adaptive average pooling (as torch does it) of (C, H, W) float32 to (C, height, width), float64."""
    c, h, w = maps.shape
    out = np.empty((c, height, width))
    for i in range(height):
        y0, y1 = (i * h) // height, -((-(i + 1) * h) // height)
        for j in range(width):
            x0, x1 = (j * w) // width, -((-(j + 1) * w) // width)
            out[:, i, j] = maps[:, y0:y1, x0:x1].astype(np.float64).mean(axis=(1, 2))
    return out


def markdown(results: dict[str, list[dict]]) -> str:
    lines = []
    for case, rows in results.items():
        spec = CASES[case]
        weights = "random weights (seeded)" if spec.get("random_init") else "its own weights"
        lines += [
            f"**{spec['model']}** at {spec['size'][0]}x{spec['size'][1]}, all stages, {weights}, "
            f"{spec['images']} photos:",
            "",
            "| variant | maps MB/image | file MB/image | ×before | compress CPU ms/image | encode CPU ms/image "
            "| extract images/s | max error / channel range |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        base = rows[0]
        for r in rows:
            lines.append(
                f"| {r['variant']} | {r['maps_mb_per_image']:.3f} | {r['file_mb_per_image']:.3f} | "
                f"{r['maps_mb_per_image'] / base['maps_mb_per_image']:.2f} | {r['compress_cpu_ms_per_image']:.1f} | "
                f"{r['encode_cpu_ms_per_image']:.1f} | {r['images_per_s']:.2f} | {r['max_error_of_range']:.2e} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
    parser.add_argument("--images", type=int, default=0, help="images per case (default: each case's own)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each variant, interleaved (best kept)")
    parser.add_argument("--markdown", help="also write the tables to this file")
    args = parser.parse_args()
    from bench_extract import prepare_images

    results = {}
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        scratch = Path(tmp)
        for case in args.cases.split(","):
            spec = dict(CASES[case])
            if args.images:
                spec["images"] = args.images
            CASES[case] = spec
            count = spec["images"]
            photos = sorted(p for p in (REPO / "data" / "images").rglob("*") if p.is_file())
            if count <= len(photos):
                images = scratch / f"photos-{count}"
                images.mkdir(exist_ok=True)
                for p in photos[:count]:
                    (images / p.name).write_bytes(p.read_bytes())
            else:
                images = prepare_images(scratch / f"photos-{count}", count)
            results[case] = run_case(case, spec, images, scratch, args.repeats)
    text = markdown(results)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)


if __name__ == "__main__":
    main()
