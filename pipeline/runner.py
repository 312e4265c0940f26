"""Runs one shard of `fmpipe extract`: plan, resume check, batch loop, progress, summary.

decode workers ──► device: normalise, forward, float16 cast + per-channel stats
                 ──► host copy ──► writer thread (pooled compression, direct chunk writes)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import __version__, models, sources, taps
from .config import RESIZE_POLICY, ExtractConfig, fingerprint
from .errors import InputError, RunFailure
from .loading import iter_batches, normalize
from .schema import ATTR_CONFIG, ATTR_NUM_SHARDS, ATTR_SHARD_INDEX
from .writer import BatchResult, ShardWriter, WritePlan

log = logging.getLogger(__name__)

FLOAT16_MAX = 65504.0
LOG_EVERY_S = 30.0


@dataclass
class ExtractSummary:
    """What a run did; `fmpipe extract` prints it."""

    out: Path
    device: str
    images: int  # images in this shard
    done_before: int  # already done when the run started (resume)
    stored: int  # stored by this run
    failed: int  # failures recorded by this run
    mb_written: float
    seconds: float
    stages: list[taps.StageInfo]
    input_hw: tuple[int, int]
    dry_run: bool = False
    timings: dict = field(default_factory=dict)
    nan_stages: list[int] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return (self.stored + self.failed) / self.seconds if self.seconds else 0.0


def shard_output(out: str | os.PathLike, shard_index: int, num_shards: int) -> Path:
    """OUT itself for one shard; OUT.shards/shard-0000I-of-0000N.h5 for a job array."""
    if num_shards == 1:
        return Path(out)
    return Path(f"{os.fspath(out)}.shards") / f"shard-{shard_index:05d}-of-{num_shards:05d}.h5"


def pick_device(spec: str) -> torch.device:
    """`auto` → the first CUDA device when present, else the CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise InputError(f"--device {spec!r} is not a device (use auto, cpu, cuda or cuda:N).") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA device is visible; use --device cpu.")
    return device


def extract(config: ExtractConfig) -> ExtractSummary:
    """Extract the configured stages of every image of this shard into its HDF5 file."""
    t_start = time.perf_counter()
    all_keys = sources.discover(config.images)
    if not all_keys:
        raise InputError(
            f"no images found below {config.images!r} (looked for {', '.join(sorted(sources.IMAGE_SUFFIXES))})."
        )
    start, stop = sources.shard_bounds(len(all_keys), config.shard_index, config.num_shards)
    keys = all_keys[start:stop]
    out = shard_output(config.out, config.shard_index, config.num_shards)
    _check_writable(out)
    device = pick_device(config.device)
    log.info("device: %s%s", device, _device_note(device))
    model = models.resolve(config.model, config.weights, config.random_init, config.unsafe_pickle, config.seed)
    model.module.to(device)
    size_hw = config.size or model.input_hw
    tap, all_stages = taps.build(model, size_hw, config.stages, device)
    stages = [all_stages[i] for i in tap.wanted]
    plan = _plan(config, model, size_hw, stages, all_keys, keys, start)
    summary = ExtractSummary(out, str(device), len(keys), 0, 0, 0, 0.0, 0.0, stages, size_hw, dry_run=config.dry_run)
    if config.dry_run:
        return summary
    writer = ShardWriter.open(out, plan, overwrite=config.overwrite, threads=max(1, os.cpu_count() or 1))
    if writer is None:
        summary.done_before = len(keys)
        return summary
    try:
        pending = writer.pending_rows()
        summary.done_before = len(keys) - len(pending)
        _run_batches(config, writer, tap, model, device, size_hw, keys, pending, summary)
        summary.seconds = time.perf_counter() - t_start
        summary.timings["total_s"] = summary.seconds
        writer.finalize(summary.timings)
        summary.timings.update(writer.timings)
        summary.mb_written = writer.bytes_written / 1e6
    finally:
        writer.close()
    return summary


def _plan(config, model, size_hw, stages, all_keys, keys, start) -> WritePlan:
    parts = {
        "model": config.model,
        "weights": model.weights_id,
        "stages": [(s.index, s.module, s.channels, s.height, s.width) for s in stages],
        "size": list(size_hw),
        "mean": list(model.mean),
        "std": list(model.std),
        "resize": RESIZE_POLICY,
        "dtype": config.dtype,
        "compression": config.compression,
        "keys_sha256": hashlib.sha256("\n".join(all_keys).encode("utf-8", "surrogateescape")).hexdigest(),
        "num_keys": len(all_keys),
        "format_version": 1,
    }
    attrs = {
        "fmpipe_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": config.model,
        "weights": model.weights_id,
        "input_size": list(size_hw),
        "mean": list(model.mean),
        "std": list(model.std),
        "resize_policy": RESIZE_POLICY,
        "dtype": config.dtype,
        "compression": config.compression,
        ATTR_CONFIG: config.to_json(),
        ATTR_SHARD_INDEX: config.shard_index,
        ATTR_NUM_SHARDS: config.num_shards,
        "shard_start": start,
        "total_images": len(all_keys),
        "images_root": str(Path(config.images).resolve()),
    }
    return WritePlan(keys, stages, config.dtype, config.compression, fingerprint(parts), parts, attrs)


def _run_batches(config, writer, tap, model, device, size_hw, keys, pending, summary) -> None:
    dtype = getattr(torch, config.dtype)
    timings = summary.timings
    for name in ("decode_wait_s", "compute_s", "host_copy_s", "write_wait_s"):
        timings[name] = 0.0
    bar = _progress(len(pending), summary.done_before, len(keys))
    last_log = time.perf_counter()
    batches = iter_batches(
        config.images, keys, pending, size_hw, config.batch_size, config.workers, pin_memory=device.type == "cuda"
    )
    t0 = time.perf_counter()
    for batch in batches:
        t1 = time.perf_counter()
        timings["decode_wait_s"] += t1 - t0
        data, stats = _forward(batch.pixels, tap, model, device, dtype, keys, batch.ok_rows, summary)
        t2 = time.perf_counter()
        timings["compute_s"] += t2 - t1
        result = BatchResult(
            batch.rows,
            batch.ok_rows,
            batch.orig_hw,
            batch.failures,
            {i: t.numpy() for i, t in data.items()},
            {i: s.numpy() for i, s in stats.items()},
        )
        t3 = time.perf_counter()
        timings["host_copy_s"] += t3 - t2
        writer.submit(result)
        summary.stored += len(batch.ok_rows)
        summary.failed += len(batch.failures)
        for row, reason in batch.failures:
            log.warning("skipped %s: %s", keys[row], reason)
        t0 = time.perf_counter()
        timings["write_wait_s"] += t0 - t3
        if bar is not None:
            bar.update(len(batch.rows))
        elif t0 - last_log > LOG_EVERY_S:
            last_log = t0
            log.info("%d of %d images", summary.done_before + summary.stored + summary.failed, len(keys))
    writer.drain()
    if bar is not None:
        bar.close()


def _forward(pixels, tap, model, device, dtype, keys, ok_rows, summary):
    """Run the model on one batch; (B, C, H, W) storage-dtype maps and (3, B, C) stats per stage.

    Stats and the cast happen inside the sink, on the device, before any later in-place
    op of the model can touch the captured tensor.
    """
    data: dict[int, torch.Tensor] = {}
    stats: dict[int, torch.Tensor] = {}
    if not len(ok_rows):
        return data, stats

    def sink(index: int, tensor: torch.Tensor) -> None:
        t = tensor.detach().float()
        lo, hi, mean = t.amin(dim=(2, 3)), t.amax(dim=(2, 3)), t.mean(dim=(2, 3))
        stats[index] = torch.stack([lo, hi, mean])
        data[index] = t.to(dtype, copy=True)

    with torch.inference_mode():
        x = normalize(pixels.to(device, non_blocking=True), model.mean, model.std)
        tap(x, sink)
    for index, s in stats.items():
        _check_values(index, s, dtype, keys, ok_rows, summary)
    data = {i: t.cpu().contiguous() for i, t in data.items()}
    stats = {i: s.cpu() for i, s in stats.items()}
    return data, stats


def _check_values(index, stats, dtype, keys, ok_rows, summary) -> None:
    if torch.isnan(stats[2]).any() and index not in summary.nan_stages:
        summary.nan_stages.append(index)
        log.warning(
            "stage %d has NaN activations (first in %s); they are stored as NaN",
            index,
            keys[ok_rows[int(torch.isnan(stats[2]).any(dim=1).nonzero()[0])]],
        )
    if dtype != torch.float16:
        return
    peak = torch.maximum(stats[0].abs(), stats[1].abs())
    finite = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    over = finite.amax(dim=1) > FLOAT16_MAX
    if over.any():
        b = int(over.nonzero()[0])
        raise RunFailure(
            f"stage {index} overflows float16 for {keys[ok_rows[b]]}: |activation| reaches "
            f"{float(finite[b].max()):.4g} > {FLOAT16_MAX:.0f}, which float16 would store as "
            "inf. Rerun with --dtype float32 --overwrite (or select other --stages)."
        )


def _progress(pending: int, done_before: int, total: int):
    if not sys.stderr.isatty():
        return None
    return tqdm(total=total, initial=done_before, unit="img", dynamic_ncols=True, desc="extract", smoothing=0.1)


def _check_writable(out: Path) -> None:
    """Fail before any model work when the output folder cannot be written."""
    folder = out.parent if str(out.parent) else Path(".")
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"cannot write to {folder}: permission denied. Choose another output path.")


def _device_note(device: torch.device) -> str:
    if device.type == "cuda":
        return f" ({torch.cuda.get_device_name(device)})"
    if torch.cuda.is_available():
        return " (a CUDA device is present but not used; pass --device cuda to use it)"
    return ""


def estimate_bytes(stages: list[taps.StageInfo], dtype: str) -> int:
    """Uncompressed bytes per image for these stages at the storage dtype."""
    itemsize = np.dtype(dtype).itemsize
    return sum(s.nbytes(itemsize) for s in stages)
