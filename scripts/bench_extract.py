#!/usr/bin/env python
"""Extract throughput against its limits, measured side by side in one run.

    python scripts/bench_extract.py                      # CPU: resnet50 @224, batch 16, all stages
    python scripts/bench_extract.py --device cuda --images 2000
    python scripts/bench_extract.py --write-bound        # resnet18 @512, stages 0-1

Prints (a) bare forward, (b) fmpipe end to end, (c) a careful hand-written script,
(d) the writer alone vs h5py's own filter and a plain file, (e) peak RSS at 200 and 2,000
images, and the ratios; `--markdown FILE` also writes the table there.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def prepare_images(folder: Path, count: int, seed: int = 0) -> Path:
    """`count` JPEGs (quality 90, 300-640 px) cut, flipped and scaled from the sample photos."""
    from PIL import Image, ImageOps

    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.jpg"))) == count:
        return folder
    rng = np.random.default_rng(seed)
    photos = [Image.open(p).convert("RGB") for p in sorted((REPO / "data" / "images").rglob("*.*"))]
    for i in range(count):
        img = photos[i % len(photos)]
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = img.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        scale = rng.uniform(300, 640) / max(crop.size)
        crop = crop.resize((max(1, int(crop.width * scale)), max(1, int(crop.height * scale))))
        crop.save(folder / f"img{i:05d}.jpg", quality=90)
    return folder


def bare_forward(model_name: str, folder: Path, size: int, batch: int, device: str, stages) -> float:
    """(a) images/s of the model's tapped forward on pre-decoded, pre-normalised batches."""
    import torch

    from pipeline import sources
    from pipeline.decoding import decode
    from pipeline.extraction import models, taps
    from pipeline.extraction.loading import normalize

    dev = torch.device(device)
    model = models.resolve(model_name, random_init=True)
    model.module.to(dev)
    tap, _ = taps.build(model, (size, size), stages, dev)
    keys = sources.discover(folder)
    pixels = torch.from_numpy(np.stack([decode(str(folder / k), (size, size)).pixels for k in keys]))
    batches = [normalize(pixels[i : i + batch].to(dev), model.mean, model.std) for i in range(0, len(keys), batch)]
    with torch.inference_mode():
        tap(batches[0], lambda i, t: None)  # warm up
        _sync(dev)
        t0 = time.perf_counter()
        for x in batches:
            tap(x, lambda i, t: None)
        _sync(dev)
    return len(keys) / (time.perf_counter() - t0)


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def fmpipe_extract(model: str, folder: Path, out: Path, size: int, batch: int, device: str, stages, **kw) -> dict:
    """(b) images/s and bytes of fmpipe end to end (runs in this process)."""
    import pipeline

    t0 = time.perf_counter()
    summary = pipeline.extract(
        folder,
        out,
        model=model,
        random_init=True,
        size=(size, size),
        batch_size=batch,
        device=device,
        stages=stages,
        overwrite=True,
        **kw,
    )
    seconds = time.perf_counter() - t0
    raw = sum(s.nbytes(2) for s in summary.stages)
    return {
        "images_per_s": summary.stored / seconds,
        "raw_mb_per_image": raw / 1e6,
        "stored_mb": summary.mb_written,
        "timings": {**summary.timings, "bound_by": summary.bound_by},
    }


def hand_written(model: str, folder: Path, out: Path, size: int, batch: int, device: str) -> float:
    """(c) what a careful user writes: timm features_only, decode in the loop, h5py + gzip, one write per batch."""
    import h5py
    import timm
    import torch
    from PIL import Image

    dev = torch.device(device)
    net = timm.create_model(model, features_only=True, pretrained=False).eval().to(dev)
    cfg = timm.data.resolve_data_config({}, model=net)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1).to(dev)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1).to(dev)
    paths = sorted(folder.glob("*.jpg"))
    t0 = time.perf_counter()
    with h5py.File(out, "w") as f, torch.inference_mode():
        dsets = None
        for start in range(0, len(paths), batch):
            imgs = [
                np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BICUBIC))
                for p in paths[start : start + batch]
            ]
            x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float().div(255).to(dev)
            feats = [t.half().cpu().numpy() for t in net((x - mean) / std)]
            if dsets is None:
                dsets = [
                    f.create_dataset(
                        f"stage{i}",
                        shape=(len(paths), *t.shape[1:]),
                        dtype="float16",
                        chunks=(1, *t.shape[1:]),
                        compression="gzip",
                    )
                    for i, t in enumerate(feats)
                ]
            for dset, t in zip(dsets, feats, strict=True):
                dset[start : start + len(t)] = t
    return len(paths) / (time.perf_counter() - t0)


def synthetic_maps(stage_shapes, n: int, seed: int = 0) -> list[np.ndarray]:
    """Post-ReLU-like float16 maps (about 58 % zeros), one (n, C, H, W) array per stage."""
    rng = np.random.default_rng(seed)
    out = []
    for c, h, w in stage_shapes:
        x = rng.standard_normal((n, c, h, w), dtype=np.float32) - 0.2
        np.maximum(x, 0, out=x)
        out.append(x.astype(np.float16))
    return out


def writer_alone(stage_shapes, n: int, folder: Path, batch: int) -> dict:
    """(d) MB/s of fmpipe's writer (zstd, none), h5py's own zstd filter, and a plain file."""
    import h5py
    import hdf5plugin

    from pipeline.records import BatchResult, StageInfo
    from pipeline.storage.writing.writer import ShardWriter, WritePlan

    maps = synthetic_maps(stage_shapes, n)
    total_mb = sum(m.nbytes for m in maps) / 1e6
    stages = [StageInfo(i, f"s{i}", c, 1, h, w, "synthetic") for i, (c, h, w) in enumerate(stage_shapes)]
    results = {}
    for codec in ("zstd", "none"):
        out = folder / f"writer-{codec}.h5"
        out.unlink(missing_ok=True)
        plan = WritePlan([f"k{i}" for i in range(n)], stages, "float16", codec, "bench", {}, {})
        t0 = time.perf_counter()
        writer = ShardWriter.open(out, plan, overwrite=True, threads=os.cpu_count() or 1)
        for s in range(0, n, batch):
            rows = np.arange(s, min(n, s + batch))
            data = {i: m[rows] for i, m in enumerate(maps)}
            stats = {i: np.zeros((3, len(rows), m.shape[1]), np.float32) for i, m in enumerate(maps)}
            writer.submit(BatchResult(rows, rows, np.zeros((len(rows), 2), np.int32), [], data, stats))
        writer.finalize()
        results[codec] = total_mb / (time.perf_counter() - t0)
    out = folder / "h5py-zstd.h5"
    t0 = time.perf_counter()
    with h5py.File(out, "w") as f:
        from pipeline.storage.format.schema import chunk_channels

        dsets = [
            f.create_dataset(
                f"s{i}",
                shape=m.shape,
                dtype="float16",
                chunks=(1, chunk_channels(m.shape[1], m.shape[2], m.shape[3], 2), *m.shape[2:]),
                **hdf5plugin.Zstd(clevel=1),
            )
            for i, m in enumerate(maps)
        ]
        for s in range(0, n, batch):
            for dset, m in zip(dsets, maps, strict=True):
                dset[s : s + batch] = m[s : s + batch]
        f.flush()
        os.fsync(f.id.get_vfd_handle())
    results["h5py_zstd"] = total_mb / (time.perf_counter() - t0)
    plain = folder / "plain.bin"
    t0 = time.perf_counter()
    with open(plain, "wb") as fh:
        for s in range(0, n, batch):
            for m in maps:
                fh.write(memoryview(np.ascontiguousarray(m[s : s + batch])).cast("B"))
        fh.flush()
        os.fsync(fh.fileno())
    results["plain_file"] = total_mb / (time.perf_counter() - t0)
    results["mb"] = total_mb
    return results


def peak_rss_mb(model: str, folder: Path, out: Path, size: int, batch: int, device: str) -> float:
    """(e) peak RSS (MB) of a fresh `fmpipe extract` process over `folder`."""
    code = (
        "import pipeline\n"
        f"pipeline.extract({str(folder)!r}, {str(out)!r}, model={model!r}, random_init=True, size=({size}, {size}),"
        f" batch_size={batch}, device={device!r}, overwrite=True)\n"
        # VmHWM: this process's own peak (ru_maxrss would include the forking parent's peak)
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    return int(run.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--images", type=int, default=256, help="images for (a)-(c)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--write-bound", action="store_true", help="resnet18 at 512x512, stages 0-1")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of (a)-(c); the best of each counts")
    parser.add_argument("--rss-model", default="efficientnet_lite0")
    parser.add_argument("--work", default=None, help="folder for images and outputs (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    parser.add_argument("--markdown", default=None, help="replace a section of this markdown file with the table")
    parser.add_argument("--section", default="Extract throughput (CPU)", help="heading of that section")
    parser.add_argument("--machine", default=None, help="machine description for the table")
    args = parser.parse_args()
    if args.write_bound:
        args.model, args.size = "resnet18", 512
    stages = (0, 1) if args.write_bound else None
    work = Path(args.work or tempfile.mkdtemp(prefix="fmpipe-bench-"))
    folder = prepare_images(work / f"images{args.images}", args.images)
    res: dict = {
        "model": args.model,
        "size": args.size,
        "batch": args.batch_size,
        "device": args.device,
        "images": args.images,
        "cpus": os.cpu_count(),
        "rounds": args.rounds,
        "rss_model": args.rss_model,
    }
    # Rounds interleave (a), (b) and (c) and keep each one's best, so a noisy neighbour on a
    # shared machine does not decide the ratios.
    for round_index in range(args.rounds):
        a = bare_forward(args.model, folder, args.size, args.batch_size, args.device, stages)
        res["a_bare_forward"] = max(res.get("a_bare_forward", 0.0), a)
        print(f"[{round_index}] (a) bare forward            {a:8.1f} images/s", flush=True)
        b = fmpipe_extract(args.model, folder, work / "b.h5", args.size, args.batch_size, args.device, stages)
        if b["images_per_s"] > res.get("b_fmpipe", 0.0):
            res["b_fmpipe"], res["b_timings"] = b["images_per_s"], b["timings"]
        res["raw_mb_per_image"] = b["raw_mb_per_image"]
        print(
            f"[{round_index}] (b) fmpipe extract          {b['images_per_s']:8.1f} images/s "
            f"({b['raw_mb_per_image']:.2f} MB/image raw)"
        )
        print(
            "    phases: " + ", ".join(f"{k} {v:.1f}" for k, v in b["timings"].items() if k.endswith("_s")), flush=True
        )
        if not args.write_bound:
            c = hand_written(args.model, folder, work / "c.h5", args.size, args.batch_size, args.device)
            res["c_hand_written"] = max(res.get("c_hand_written", 0.0), c)
            print(f"[{round_index}] (c) hand-written h5py+gzip  {c:8.1f} images/s", flush=True)
    import torch

    from pipeline.extraction import models, taps

    resolved = models.resolve(args.model, random_init=True)
    _, infos = taps.build(resolved, (args.size, args.size), stages, torch.device("cpu"))
    shapes = [s.shape for s in infos if stages is None or s.index in stages]
    n_writer = max(16, int(400e6 / (res["raw_mb_per_image"] * 1e6)))
    d: dict = {}
    for _ in range(args.rounds):  # best of each, like (a)-(c)
        for key, value in writer_alone(shapes, min(n_writer, 512), work, args.batch_size).items():
            d[key] = max(d.get(key, 0.0), value)
    res["d_writer"] = d
    print(
        f"(d) writer zstd {d['zstd']:.0f} MB/s, none {d['none']:.0f} MB/s; h5py zstd filter "
        f"{d['h5py_zstd']:.0f} MB/s; plain file {d['plain_file']:.0f} MB/s ({d['mb']:.0f} MB)",
        flush=True,
    )
    if not args.skip_rss:
        small = prepare_images(work / "images200", 200)
        big = prepare_images(work / "images2000", 2000)
        # A peak is the maximum of a noisy signal (transient buffers of the forward pass, heap
        # fragmentation): take the median of three runs of each size, interleaved.
        runs: dict[int, list[float]] = {200: [], 2000: []}
        for _ in range(3):
            for count, folder_n in ((200, small), (2000, big)):
                out_n = work / f"e{count}.h5"
                runs[count].append(peak_rss_mb(args.rss_model, folder_n, out_n, 224, args.batch_size, args.device))
        res["e_rss_runs_mb"] = runs
        res["e_rss_200_mb"] = float(np.median(runs[200]))
        res["e_rss_2000_mb"] = float(np.median(runs[2000]))
        print(f"(e) peak RSS {res['e_rss_200_mb']:.0f} MB at 200 images, {res['e_rss_2000_mb']:.0f} MB at 2000")
    report(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    if args.markdown:
        write_section(Path(args.markdown), args.section, table(res, args.machine or _machine(args.device)))


def _machine(device: str) -> str:
    import platform

    text = f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}"
    if device.startswith("cuda"):
        import torch

        text += f", {torch.cuda.get_device_name(0)}"
    return text


def table(res: dict, machine: str) -> str:
    """Markdown table of one run: the limits side by side and the ratios."""
    d = res["d_writer"]
    mb_b = res["b_fmpipe"] * res["raw_mb_per_image"]
    rows = [
        ("(a) bare forward, pre-decoded batches, nothing stored", f"{res['a_bare_forward']:.1f} images/s"),
        ("(b) fmpipe extract end to end", f"{res['b_fmpipe']:.1f} images/s ({mb_b:.0f} MB/s of maps)"),
    ]
    if "c_hand_written" in res:
        rows.append(
            (
                "(c) hand-written: timm features_only, PIL in the loop, h5py gzip",
                f"{res['c_hand_written']:.1f} images/s",
            )
        )
    rows += [
        ("(d) fmpipe writer alone, zstd / none", f"{d['zstd']:.0f} / {d['none']:.0f} MB/s"),
        ("    h5py's own zstd filter / plain file write", f"{d['h5py_zstd']:.0f} / {d['plain_file']:.0f} MB/s"),
    ]
    if "e_rss_2000_mb" in res:
        rows.append(
            (
                f"(e) peak RSS of the extract process, 200 / 2,000 images ({res['rss_model']}, median of 3)",
                f"{res['e_rss_200_mb']:.0f} / {res['e_rss_2000_mb']:.0f} MB",
            )
        )
    ratios = [f"b/a = {res['b_fmpipe'] / res['a_bare_forward']:.2f}"]
    if "c_hand_written" in res:
        ratios.append(f"b/c = {res['b_fmpipe'] / res['c_hand_written']:.2f}")
    ratios += [
        f"b/d(zstd) = {mb_b / d['zstd']:.2f}",
        f"d(zstd)/h5py zstd = {d['zstd'] / d['h5py_zstd']:.2f}",
        f"d(none)/plain = {d['none'] / d['plain_file']:.2f}",
    ]
    if "e_rss_2000_mb" in res:
        ratios.append(f"RSS 2000/200 = {res['e_rss_2000_mb'] / res['e_rss_200_mb']:.2f}")
    phases = ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in res["b_timings"].items() if k.endswith("_s"))
    lines = [
        f"{res['model']} at {res['size']}x{res['size']}, batch {res['batch']}, device {res['device']}, "
        f"{res['images']} JPEGs, {res['raw_mb_per_image']:.2f} MB of float16 maps per image, best of "
        f"{res.get('rounds', 1)} interleaved rounds; {machine}.",
        "",
        "| measurement | result |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in rows],
        "",
        "Ratios: " + "; ".join(ratios) + ".",
        "",
        f"fmpipe's phases in (b): {phases}; bound by {res['b_timings'].get('bound_by', '?')}.",
    ]
    return "\n".join(lines)


def write_section(path: Path, heading: str, body: str) -> None:
    """Replace the body under `## heading` (or append the section)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    marker = f"## {heading}\n"
    if marker in text:
        start = text.index(marker) + len(marker)
        end = text.find("\n## ", start)
        end = len(text) if end < 0 else end + 1
        text = text[:start] + "\n" + body + "\n\n" + text[end:]
    else:
        text = text.rstrip("\n") + f"\n\n{marker}\n{body}\n"
    path.write_text(text)


def report(res: dict) -> None:
    d = res["d_writer"]
    mb_per_s_b = res["b_fmpipe"] * res["raw_mb_per_image"]
    print("\nratios")
    print(f"  b/a = {res['b_fmpipe'] / res['a_bare_forward']:.2f}")
    if "c_hand_written" in res:
        print(f"  b/c = {res['b_fmpipe'] / res['c_hand_written']:.2f}")
    print(f"  b (MB/s) / d(zstd) = {mb_per_s_b:.0f} / {d['zstd']:.0f} = {mb_per_s_b / d['zstd']:.2f}")
    print(f"  d(zstd)/h5py-filter-zstd = {d['zstd'] / d['h5py_zstd']:.2f}")
    print(f"  d(none)/plain file = {d['none'] / d['plain_file']:.2f}")
    if "e_rss_2000_mb" in res:
        print(f"  RSS 2000/200 = {res['e_rss_2000_mb'] / res['e_rss_200_mb']:.2f}")
    print(f"  (peak RSS of this benchmark process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
