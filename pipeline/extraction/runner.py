"""Runs one shard of `fmpipe extract`: plan, resume check, batch loop, progress, summary.

decode workers ──► device: normalise, forward, float16 cast + per-channel stats
                 ──► host copy ──► writer thread (pooled compression, direct chunk writes)
"""

from __future__ import annotations

import ctypes
import datetime as dt
import hashlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import __version__, sources
from ..config import RESIZE_POLICY, ExtractConfig
from ..errors import InputError, Interrupted, RunFailure, UsageError
from ..records import StageInfo
from ..storage import schema
from ..storage.files import partial_path as writer_partial
from ..storage.files import shard_output
from ..storage.identity import fingerprint
from ..storage.writer import NullWriter, ShardWriter, WritePlan
from . import models, taps
from .compute import Forward, Staged, check_values
from .interrupts import StopSignals, batches_until_stopped
from .loading import Batch, iter_batches

log = logging.getLogger(__name__)

LOG_EVERY_S = 30.0
TRIM_EVERY = 16  # batches between trim_heap() calls


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
    stages: list[StageInfo]
    input_hw: tuple[int, int]
    shard_start: int = 0  # row of this shard's first image in the whole collection
    dry_run: bool = False
    timings: dict = field(default_factory=dict)
    nan_stages: list[int] = field(default_factory=list)
    seen: int = 0  # images through the model in this run (for progress lines)
    batches: int = 0  # batches through the model in this run
    last_log_s: float = 0.0

    @property
    def bound_by(self) -> str:
        """Which step set the pace: the main loop waiting on the writer or on decoding, else compute."""
        t = self.timings
        total = t.get("total_s") or 1.0
        if t.get("write_wait_s", 0.0) > 0.1 * total:
            return "writing (compression and disk)"
        if t.get("decode_wait_s", 0.0) > 0.1 * total:
            return "decoding"
        return "compute"

    def phases(self) -> str:
        """One line of seconds per phase, for the final summary."""
        t = self.timings
        names = (
            ("decode wait", "decode_wait_s"),
            ("compute", "compute_s"),
            ("host copy", "host_copy_s"),
            ("write wait", "write_wait_s"),
            ("compress (CPU)", "compress_s"),
            ("write", "write_s"),
        )
        parts = ", ".join(f"{label} {t[key]:.1f} s" for label, key in names if key in t)
        return f"{parts}; bound by {self.bound_by}"

    @property
    def images_per_s(self) -> float:
        return (self.stored + self.failed) / self.seconds if self.seconds else 0.0


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
    start, _ = sources.shard_bounds(len(all_keys), config.shard_index, config.num_shards)
    out = shard_output(config.out, config.shard_index, config.num_shards)
    _check_writable(out)
    device = pick_device(config.device)
    log.info("device: %s%s", device, _device_note(device))
    model = models.resolve(config.model, config.weights, config.random_init, config.unsafe_pickle, config.seed)
    model.module.to(device)
    size_hw = config.size or model.input_hw
    tap, all_stages = taps.build(model, size_hw, config.stages, device)
    stages = [all_stages[i] for i in tap.wanted]
    plan = _plan(config, model, size_hw, stages, all_keys, start)
    keys = plan.keys
    summary = ExtractSummary(
        out, str(device), len(keys), 0, 0, 0, 0.0, 0.0, stages, size_hw, start, dry_run=config.dry_run
    )
    if config.dry_run:
        return summary
    if config.amp and device.type != "cuda":
        raise UsageError("--amp (bf16 autocast) is for CUDA devices; drop it on the CPU.")
    opener = NullWriter.open if config.null_writer else ShardWriter.open
    writer = opener(out, plan, overwrite=config.overwrite, threads=max(1, os.cpu_count() or 1))
    if writer is None:
        summary.done_before = len(keys)
        return summary
    try:
        _redo_changed_sources(writer, config.images, keys)
        pending = writer.pending_rows()
        summary.done_before = len(keys) - len(pending)
        with StopSignals() as stop:  # also covers finalize: a signal there lets it finish
            _run_batches(config, writer, tap, model, device, size_hw, keys, pending, summary, stop)
            if stop.signum is None:
                summary.seconds = time.perf_counter() - t_start
                summary.timings["total_s"] = summary.seconds
                writer.finalize({**summary.timings, "bound_by": summary.bound_by})
                summary.timings.update(writer.timings)
                summary.mb_written = writer.bytes_written / 1e6
                log.info("phases: %s", summary.phases())
        if stop.signum is not None and not writer.out.exists():
            done = summary.done_before + summary.stored + summary.failed
            raise Interrupted(
                f"stopped by {signal.Signals(stop.signum).name} after a batch boundary: {done} of {len(keys)} "
                f"images are safely in {writer_partial(out)}. Rerun the same command to resume.",
                stop.signum,
            )
    finally:
        writer.close()
    return summary


def _plan(config: ExtractConfig, model, size_hw, stages: list[StageInfo], all_keys: list[str], start: int) -> WritePlan:
    """The shard's rows and identity. The fingerprint holds everything that changes the stored
    maps (or the file's layout); the file's attributes repeat those parts under schema names."""
    keys = all_keys[start : start + _shard_size(config, len(all_keys))]
    parts = {
        "model": config.model,
        "weights_sha256": model.weights_sha256,
        "stages": [[s.index, s.module, s.channels, s.height, s.width] for s in stages],
        "size": list(size_hw),
        "mean": list(model.mean),
        "std": list(model.std),
        "resize": RESIZE_POLICY,
        "dtype": config.dtype,
        "compression": config.compression,
        "amp": config.amp,
        "keys_sha256": hashlib.sha256("\n".join(all_keys).encode("utf-8", "surrogateescape")).hexdigest(),
        "num_keys": len(all_keys),
        "format_version": schema.FORMAT_VERSION,
    }
    attrs = {attr: parts[part] for attr, part in _ATTRS_FROM_PARTS.items()}
    attrs.update(
        {
            schema.ATTR_FMPIPE_VERSION: __version__,
            schema.ATTR_CREATED: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            schema.ATTR_WEIGHTS: model.weights_id,
            schema.ATTR_CONFIG: config.to_json(),
            schema.ATTR_SHARD_INDEX: config.shard_index,
            schema.ATTR_NUM_SHARDS: config.num_shards,
            schema.ATTR_SHARD_START: start,
            schema.ATTR_SHARD_STOP: start + len(keys),
            schema.ATTR_TOTAL_IMAGES: len(all_keys),
            schema.ATTR_IMAGES_ROOT: str(Path(config.images).resolve()),
        }
    )
    return WritePlan(keys, stages, config.dtype, config.compression, fingerprint(parts), parts, attrs, start)


# File attributes that repeat a fingerprint part (one source for both).
_ATTRS_FROM_PARTS = {
    schema.ATTR_MODEL: "model",
    schema.ATTR_WEIGHTS_SHA256: "weights_sha256",
    schema.ATTR_INPUT_SIZE: "size",
    schema.ATTR_MEAN: "mean",
    schema.ATTR_STD: "std",
    schema.ATTR_RESIZE_POLICY: "resize",
    schema.ATTR_DTYPE: "dtype",
    schema.ATTR_COMPRESSION: "compression",
    schema.ATTR_AMP: "amp",
}


def _shard_size(config: ExtractConfig, count: int) -> int:
    start, stop = sources.shard_bounds(count, config.shard_index, config.num_shards)
    return stop - start


def _redo_changed_sources(writer, root: str, keys: list[str]) -> int:
    """Rows done by an earlier run whose source file changed since (other bytes, or gone) are
    computed again, so a resumed file never holds maps of a file that is no longer there."""
    rows, sha256, size = writer.done_sources()
    if not len(rows):
        return 0
    t0 = time.perf_counter()
    changed = sources.changed_rows(root, keys, rows, sha256, size)
    log.info("checked the sources of %d done images in %.1f s", len(rows), time.perf_counter() - t0)
    if len(changed):
        first = keys[int(changed[0])]
        log.warning(
            "%d source images changed since their rows were stored (first: %s); redoing them", len(changed), first
        )
        writer.redo(changed)
    return len(changed)


def _run_batches(config, writer, tap, model, device, size_hw, keys, pending, summary, stop) -> None:
    """The batch loop. Batch i is handed to the writer after batch i+1's forward pass was
    launched, so on CUDA the device→host copy overlaps the next forward pass."""
    timings = summary.timings
    for name in ("decode_wait_s", "compute_s", "host_copy_s", "write_wait_s"):
        timings[name] = 0.0
    forward = Forward(tap, model, device, getattr(torch, config.dtype), config.amp)
    bar = _progress(summary.done_before, len(keys))
    batches = iter_batches(
        config.images,
        keys,
        pending,
        size_hw,
        config.batch_size,
        config.workers,
        pin_memory=device.type == "cuda",
        offset=summary.shard_start,
    )
    staged = None
    t0 = time.perf_counter()
    for batch in batches_until_stopped(batches, stop):
        t1 = time.perf_counter()
        timings["decode_wait_s"] += t1 - t0
        ahead = forward(batch)
        timings["compute_s"] += time.perf_counter() - t1
        if staged is not None:
            _submit(staged, writer, keys, summary, config.dtype, config.images)
        staged = ahead
        _report(bar, batch, summary, len(keys))
        if summary.batches % TRIM_EVERY == 0:
            trim_heap()
        t0 = time.perf_counter()
    if staged is not None:
        _submit(staged, writer, keys, summary, config.dtype, config.images)
    writer.drain()
    if bar is not None:
        bar.close()


def _submit(staged: Staged, writer, keys, summary: ExtractSummary, dtype: str, images_root: str) -> None:
    """Wait for a batch's host copy, check its values, and queue it for the writer."""
    t0 = time.perf_counter()
    result = staged.result()
    if result.failures and not os.path.isdir(images_root):
        raise RunFailure(
            f"the image folder {images_root} disappeared during the run; the images done so far are "
            "kept. Restore the folder and rerun the same command to resume."
        )
    t1 = time.perf_counter()
    for index, stats in result.stats.items():
        check_values(index, stats, dtype, keys, result.ok_rows, summary)
    writer.submit(result)
    summary.timings["host_copy_s"] += t1 - t0
    summary.timings["write_wait_s"] += time.perf_counter() - t1
    summary.stored += len(result.ok_rows)
    summary.failed += len(result.failures)
    for row, reason in result.failures:
        log.warning("skipped %s: %s", keys[row], reason)


def _report(bar, batch: Batch, summary: ExtractSummary, total: int) -> None:
    """Progress: a tqdm bar on a terminal, else a log line every LOG_EVERY_S seconds."""
    summary.batches += 1
    summary.seen += len(batch.rows)
    if bar is not None:
        bar.update(len(batch.rows))
        return
    now = time.perf_counter()
    if now - summary.last_log_s > LOG_EVERY_S:
        summary.last_log_s = now
        log.info("%d of %d images", summary.done_before + summary.seen, total)


def _progress(done_before: int, total: int):
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


def trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc `malloc_trim`), so peak RSS stays flat
    over long runs: the batch buffers that many threads allocate and free fragment glibc's
    heaps otherwise. Called every TRIM_EVERY batches; a no-op where libc is not glibc."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018  (present in glibc only)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc()


def _device_note(device: torch.device) -> str:
    if device.type == "cuda":
        return f" ({torch.cuda.get_device_name(device)})"
    if torch.cuda.is_available():
        return " (a CUDA device is present but not used; pass --device cuda to use it)"
    return ""


def estimate_bytes(stages: list[StageInfo], dtype: str) -> int:
    """Uncompressed bytes per image for these stages at the storage dtype."""
    itemsize = np.dtype(dtype).itemsize
    return sum(s.nbytes(itemsize) for s in stages)
