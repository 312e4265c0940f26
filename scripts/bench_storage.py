#!/usr/bin/env python
"""Bytes per image against precision and host CPU, for each storage choice, on real photos.

    python scripts/bench_storage.py                          # the table: three cases below, CPU
    python scripts/bench_storage.py --cases lite0 --images 16 --repeats 3 --markdown out.md
    python scripts/bench_storage.py --mode codec --repeats 15       # the chunk codec alone
    python scripts/bench_storage.py --mode extract                  # extract images/s, interleaved

Cases: the default model (efficientnet_lite0, its weights) at 224; tv:resnet50 all stages at 224 and
timm's pvt_v2_b1 at 800x1200, both with random weights (seeded: no download). Images: the sample
photos (data/images), cut and flipped into more when a case asks for more than there are.

Variants: float16 as before this option existed (no shuffle), float16 + byte shuffle (today's
default), --keep-bits 7, --dtype uint8, --dtype uint8 --pool 7x7; plus a float32 run, the
reference for the errors.

--mode table (default), per variant: the maps' stored bytes per image and the whole file's, host
CPU-seconds per image spent compressing (thread CPU time of the compression pool), the batch loop's
images/s (noisy on a shared machine), the CPU time of the device-side encoding alone (`compute.encode` on
the CPU, one thread: pooling, statistics, cast or quantisation, on the same activations for every
variant), and the largest error of any decoded value relative to its (image, channel) map's range
(max - min of the float32 run).

--mode codec: every chunk of a float16 and a uint8 extraction, cut as the writer cuts them, compressed
by fmpipe's codec (`storage/format/codecs.py`) and by reference settings, in interleaved rounds: bytes
and thread CPU time per image (median and range over the rounds). Nothing else runs in that
thread, so the CPU time holds on a loaded machine where wall time does not.

--mode extract: whole `extract` runs of a few variants (`--variants`, default before, default,
uint8) over hundreds of images, in rounds A B C, C B A, A B C ... Per run the batch loop's images/s
(model loading and file finalising excluded) and the process CPU seconds per image (all threads and
decode workers, the whole call); per variant the median and range over rounds, and the median of
each round's ratio to the first variant (pairs run back to back, so a load that drifts cancels).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

# images: the table's and codec's images; extract: --mode extract's (images, rounds), meant to take a
# few minutes a case on 2 quiet cores.
CASES = {
    "lite0": {"model": "efficientnet_lite0", "size": (224, 224), "images": 5, "extract": (200, 5)},
    "resnet50": {"model": "tv:resnet50", "size": (224, 224), "images": 5, "random_init": True, "extract": (96, 5)},
    "pvt": {
        "model": "pvt_v2_b1",
        "size": (800, 1200),
        "images": 2,
        "random_init": True,
        "batch_size": 2,
        "extract": (4, 3),
    },
}
VARIANTS = {
    "before": ("float16 (before: no shuffle)", {"shuffle": "off"}),
    "default": ("float16 + shuffle (default)", {}),
    "keep7": ("keep-bits 7 (+ shuffle)", {"keep_bits": 7}),
    "uint8": ("uint8", {"dtype": "uint8"}),
    "pool7": ("uint8 + pool 7x7", {"dtype": "uint8", "pool": (7, 7)}),
}


def extract_options(spec: dict) -> dict:
    """`pipeline.extract` keywords of a case, on the CPU with one decode worker."""
    options = {k: v for k, v in spec.items() if k not in ("images", "extract")}
    options.setdefault("batch_size", 8)
    return {**options, "device": "cpu", "workers": 1}


# -- --mode table --------------------------------------------------------------------------------


def run_case(name: str, spec: dict, images: Path, scratch: Path, variants: list[str], repeats: int = 1) -> list[dict]:
    """Every variant `repeats` times, interleaved (a load that comes and goes hits them alike); per
    variant the best images/s and the least compression CPU."""
    import pipeline

    options = extract_options(spec)
    reference = scratch / f"{name}-float32.h5"
    pipeline.extract(str(images), str(reference), dtype="float32", overwrite=True, **options)
    encode_ms = encode_cpu_ms(spec, images, variants)
    best: dict[str, dict] = {}
    for _ in range(repeats):
        for key in variants:
            label, extra = VARIANTS[key]
            out = scratch / f"{name}-{key}.h5"
            t0 = time.perf_counter()
            summary = pipeline.extract(str(images), str(out), overwrite=True, **options, **extra)
            row = measure(label, out, reference, summary, time.perf_counter() - t0)
            row["encode_cpu_ms_per_image"] = encode_ms[key]
            print(json.dumps({"case": name, **row}), flush=True)
            out.unlink()
            if key in best:
                row["images_per_s"] = max(row["images_per_s"], best[key]["images_per_s"])
                row["compress_cpu_ms_per_image"] = min(
                    row["compress_cpu_ms_per_image"], best[key]["compress_cpu_ms_per_image"]
                )
            best[key] = row
    reference.unlink()
    return list(best.values())


def encode_cpu_ms(spec: dict, images: Path, variants: list[str], repeats: int = 3) -> dict[str, float]:
    """Per variant, CPU ms per image of `compute.encode` (one thread, best of `repeats`) on the
    activations of the case's first images: what each choice adds to the device side on a CPU."""
    import torch

    from pipeline.decoding import decode
    from pipeline.extraction import models, taps
    from pipeline.extraction.compute import encode
    from pipeline.extraction.loading import normalize
    from pipeline.storage.format.encoding import Encoding

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
        for key in variants:
            extra = VARIANTS[key][1]
            encoding = Encoding(extra.get("dtype", "float16"), extra.get("keep_bits", 0), False, extra.get("pool"))
            best = float("inf")
            for _ in range(repeats):
                t0 = time.thread_time()
                with torch.inference_mode():
                    for t in captured:
                        encode(t, encoding)
                best = min(best, time.thread_time() - t0)
            out[key] = 1e3 * best / len(paths)
    finally:
        torch.set_num_threads(threads)
    return out


def measure(label: str, out: Path, reference: Path, summary, wall_s: float) -> dict:
    import h5py

    import pipeline
    from pipeline.storage.format import schema

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
        "images_per_s": loop_images_per_s(summary),
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
        lines += [
            heading(case),
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


def heading(case: str, images: int | None = None) -> str:
    spec = CASES[case]
    weights = "random weights (seeded)" if spec.get("random_init") else "its own weights"
    count = spec["images"] if images is None else images
    return f"**{spec['model']}** at {spec['size'][0]}x{spec['size'][1]}, all stages, {weights}, {count} images:"


# -- --mode codec --------------------------------------------------------------------------------


def codec_candidates():
    """(label, stored dtype, compress function): fmpipe's codecs, then reference settings that are
    not fmpipe's (standard zstd frames all, with the checksum fmpipe writes)."""
    import zstandard

    from pipeline.storage.format.codecs import ZSTD_PARAMS, Codec

    def zstd(level: int, **params):
        options = {**ZSTD_PARAMS, **params, "write_content_size": True, "write_checksum": True}
        p = zstandard.ZstdCompressionParameters.from_level(level, **options)
        return zstandard.ZstdCompressor(compression_params=p).compress

    return [
        ("float16, zstd-1 (before)", "float16", Codec("zstd").compress),
        ("float16 + shuffle, zstd-1 (default)", "float16", Codec("zstd", 2).compress),
        ("uint8 (fmpipe)", "uint8", Codec("zstd").compress),
        ("uint8, zstd-1 hash_log 8 (ref.)", "uint8", zstd(1, hash_log=8)),
        ("uint8, literals not Huffman-coded (ref.)", "uint8", zstd(1, target_length=1)),
        ("uint8, zstd -4: no Huffman, faster matching (ref.)", "uint8", zstd(-4)),
    ]


def stored_chunks(path: Path) -> list[bytes]:
    """Every (1, k, H, W) chunk of a file's maps as the writer hands it to the codec (edge chunks
    padded with zeros), in the stored dtype."""
    import h5py

    from pipeline.storage.format import schema

    chunks = []
    with h5py.File(path) as file:
        for group in schema.map_groups(file):
            dset = file[f"{group}/{schema.DATA}"]
            k, data = dset.chunks[1], dset[:]
            for row in data:
                for c0 in range(0, row.shape[0], k):
                    block = np.zeros((k, *row.shape[1:]), row.dtype)
                    block[: len(row[c0 : c0 + k])] = row[c0 : c0 + k]
                    chunks.append(block.tobytes())
    return chunks


def run_codec(name: str, spec: dict, images: Path, scratch: Path, rounds: int) -> list[dict]:
    """Bytes and thread CPU ms per image of each codec candidate on the case's real chunks."""
    import pipeline

    chunks, count = {}, 0
    for dtype in ("float16", "uint8"):
        out = scratch / f"{name}-codec-{dtype}.h5"
        options = {**extract_options(spec), "dtype": dtype, "shuffle": "off", "overwrite": True}
        summary = pipeline.extract(str(images), str(out), **options)
        chunks[dtype], count = stored_chunks(out), summary.images
        out.unlink()
    candidates = codec_candidates()
    seconds: dict[str, list[float]] = {label: [] for label, *_ in candidates}
    sizes = {}
    for _ in range(rounds):
        for label, dtype, compress in candidates:
            t0 = time.thread_time()
            sizes[label] = sum(len(compress(c)) for c in chunks[dtype])
            seconds[label].append(time.thread_time() - t0)
    before, default = candidates[0][0], candidates[1][0]
    before_ms = statistics.median(1e3 * s / count for s in seconds[before])
    rows = []
    for label, *_ in candidates:
        ms = [1e3 * s / count for s in seconds[label]]
        rows.append(
            {
                "codec": label,
                "mb_per_image": sizes[label] / count / 1e6,
                "x_bytes_before": sizes[label] / sizes[before],
                "x_bytes_default": sizes[label] / sizes[default],
                "cpu_ms_per_image": statistics.median(ms),
                "cpu_ms_range": (min(ms), max(ms)),
                "x_cpu_before": statistics.median(ms) / before_ms,
            }
        )
        print(json.dumps({"case": name, **rows[-1]}), flush=True)
    return rows


def codec_markdown(results: dict[str, list[dict]], rounds: int) -> str:
    lines = []
    for case, rows in results.items():
        lines += [
            heading(case),
            "",
            f"| codec | MB/image | ×before bytes | ×default bytes | CPU ms/image (median of {rounds}) | range "
            "| ×before CPU |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            lo, hi = r["cpu_ms_range"]
            lines.append(
                f"| {r['codec']} | {r['mb_per_image']:.3f} | {r['x_bytes_before']:.3f} | {r['x_bytes_default']:.3f} | "
                f"{r['cpu_ms_per_image']:.2f} | {lo:.2f}–{hi:.2f} | {r['x_cpu_before']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


# -- --mode extract ------------------------------------------------------------------------------


def loop_images_per_s(summary) -> float:
    """Images per second of the batch loop (the main thread's phases: model loading, the last
    batch's write and finalising the file excluded)."""
    t = summary.timings
    return summary.stored / (t["decode_wait_s"] + t["compute_s"] + t["host_copy_s"] + t["write_wait_s"])


def cpu_seconds() -> float:
    """CPU seconds of this process (every thread) and of its reaped children (decode workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_extract(name: str, spec: dict, images: Path, scratch: Path, variants: list[str], rounds: int) -> list[dict]:
    """Whole extract runs, variants in rounds A B C, C B A, ...; per run the batch loop's images/s
    and the process CPU seconds per image."""
    import pipeline

    options = extract_options(spec)
    warm = scratch / f"{name}-warm"
    warm.mkdir(exist_ok=True)
    for p in sorted(images.iterdir())[: options["batch_size"]]:
        (warm / p.name).write_bytes(p.read_bytes())
    pipeline.extract(str(warm), str(scratch / "warm.h5"), overwrite=True, **options)  # imports, caches
    runs: dict[str, list[dict]] = {key: [] for key in variants}
    for round_index in range(rounds):
        for key in variants if round_index % 2 == 0 else variants[::-1]:
            out = scratch / f"{name}-{key}.h5"
            cpu0 = cpu_seconds()
            summary = pipeline.extract(str(images), str(out), overwrite=True, **options, **VARIANTS[key][1])
            run = {
                "images_per_s": loop_images_per_s(summary),
                "cpu_s_per_image": (cpu_seconds() - cpu0) / summary.stored,
                "compress_ms_per_image": 1e3 * summary.timings["compress_s"] / summary.stored,
                "mb_per_image": out.stat().st_size / summary.stored / 1e6,
            }
            runs[key].append(run)
            print(json.dumps({"case": name, "round": round_index, "variant": key, **run}), flush=True)
            out.unlink()
    return [summarize(key, runs[key], runs[variants[0]]) for key in variants]


def summarize(key: str, runs: list[dict], base: list[dict]) -> dict:
    """Median and range over the rounds; the median of each round's images/s ratio to the base."""
    row = {"variant": VARIANTS[key][0], "rounds": len(runs)}
    for name in ("images_per_s", "cpu_s_per_image", "compress_ms_per_image", "mb_per_image"):
        values = [r[name] for r in runs]
        row[name] = statistics.median(values)
        row[name + "_range"] = (min(values), max(values))
    ratios = [r["images_per_s"] / b["images_per_s"] for r, b in zip(runs, base, strict=True)]
    row["ratio_images_per_s"] = statistics.median(ratios)
    row["ratio_range"] = (min(ratios), max(ratios))
    return row


def extract_markdown(results: dict[str, list[dict]], counts: dict[str, int]) -> str:
    lines = []
    for case, rows in results.items():
        lines += [
            heading(case, counts[case]),
            "",
            "| variant | extract images/s (median) | range | ×first (median of rounds) | range | CPU s/image | "
            "compress CPU ms/image | file MB/image |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            lo, hi = r["images_per_s_range"]
            rlo, rhi = r["ratio_range"]
            lines.append(
                f"| {r['variant']} | {r['images_per_s']:.2f} | {lo:.2f}–{hi:.2f} | {r['ratio_images_per_s']:.3f} | "
                f"{rlo:.3f}–{rhi:.3f} | {r['cpu_s_per_image']:.3f} | {r['compress_ms_per_image']:.2f} | "
                f"{r['mb_per_image']:.3f} |"
            )
        lines.append(f"({rows[0]['rounds']} rounds of {counts[case]} images per variant.)")
        lines.append("")
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------------


def case_images(scratch: Path, count: int) -> Path:
    """`count` images: the sample photos themselves when there are enough, else cut and flipped ones."""
    from bench_extract import prepare_images

    photos = sorted(p for p in (REPO / "data" / "images").rglob("*") if p.is_file())
    if count > len(photos):
        return prepare_images(scratch / f"images-{count}", count)
    images = scratch / f"photos-{count}"
    images.mkdir(exist_ok=True)
    for p in photos[:count]:
        (images / p.name).write_bytes(p.read_bytes())
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("table", "codec", "extract"), default="table")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
    parser.add_argument("--images", type=int, default=0, help="images per case (default: each case's own)")
    parser.add_argument("--variants", default="", help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--repeats", type=int, default=1, help="table: runs of each variant (best kept); codec: rounds")
    parser.add_argument("--rounds", type=int, default=0, help="extract: rounds of every variant (default: each case's)")
    parser.add_argument("--markdown", help="also write the tables to this file")
    args = parser.parse_args()
    default_variants = "before,default,uint8" if args.mode == "extract" else ",".join(VARIANTS)
    variants = (args.variants or default_variants).split(",")
    results, counts = {}, {}
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        scratch = Path(tmp)
        for case in args.cases.split(","):
            spec = CASES[case]
            count = args.images or (spec["extract"][0] if args.mode == "extract" else spec["images"])
            counts[case] = count
            if args.mode != "extract":
                spec["images"] = count
            images = case_images(scratch, count)
            if args.mode == "table":
                results[case] = run_case(case, spec, images, scratch, variants, args.repeats)
            elif args.mode == "codec":
                results[case] = run_codec(case, spec, images, scratch, max(args.repeats, 3))
            else:
                results[case] = run_extract(case, spec, images, scratch, variants, args.rounds or spec["extract"][1])
    if args.mode == "table":
        text = markdown(results)
    elif args.mode == "codec":
        text = codec_markdown(results, max(args.repeats, 3))
    else:
        text = extract_markdown(results, counts)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)


if __name__ == "__main__":
    main()
