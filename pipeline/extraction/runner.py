"""Runs one shard of `fmpipe extract`: plan, resume check, batch loop, progress, summary.

decode workers ──► device: normalise, forward, float16 cast + per-channel stats
                 ──► host copy ──► writer thread (pooled compression, direct chunk writes)
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import sources
from ..config import ExtractConfig
from ..errors import InputError, Interrupted, RunFailure, UsageError
from ..jobs import manifest
from ..progress import Bar, Progress
from ..storage.format.encoding import pooled
from ..storage.writing.files import partial_path, shard_output
from ..storage.writing.layout import planned_bytes
from ..storage.writing.writer import NullWriter, ShardWriter, WritePlan, Writer
from . import models, taps
from .compute import Forward, Staged, check_values
from .device import device_note, pick_device, trim_heap
from .interrupts import StopSignals, batches_until_stopped
from .loading import iter_batches
from .planning import plan_shard
from .summary import ExtractSummary, bound_by, phases

__all__ = ["ExtractSummary", "extract", "pick_device"]

log = logging.getLogger(__name__)

TRIM_EVERY = 16  # batches between trim_heap() calls
LOOP_TIMINGS = ("decode_wait_s", "compute_s", "host_copy_s", "write_wait_s")


@dataclass(frozen=True)
class Run:
    """One shard's run, fixed before the first batch: everything the batch loop reads."""

    config: ExtractConfig
    plan: WritePlan
    model: models.ResolvedModel
    tap: taps.Tap
    device: torch.device
    size_hw: tuple[int, int]
    root: str  # the folder keys resolve against (the images folder, or an image list's folder)

    @property
    def keys(self) -> list[str]:
        return self.plan.keys

    @property
    def out(self) -> Path:
        return shard_output(self.config.out, self.config.shard_index, self.config.num_shards)


@dataclass
class Tally:
    """What the batch loop has done so far (the summary is built from it at the end)."""

    done_before: int = 0
    redone: int = 0
    stored: int = 0
    failed: int = 0
    batches: int = 0
    timings: dict = field(default_factory=lambda: dict.fromkeys(LOOP_TIMINGS, 0.0))
    nan_stages: list[int] = field(default_factory=list)


def extract(config: ExtractConfig) -> ExtractSummary:
    """Extract the configured stages of every image of this shard into its HDF5 file."""
    t_start = time.perf_counter()
    run = _prepare(config)
    if config.dry_run:
        return _summary(run, Tally(), dry_run=True)
    if config.amp and run.device.type != "cuda":
        raise UsageError("--amp (bf16 autocast) is for CUDA devices; drop it on the CPU.")
    opener = NullWriter.open if config.null_writer else ShardWriter.open
    writer = opener(run.out, run.plan, overwrite=config.overwrite, threads=max(1, os.cpu_count() or 1))
    if writer is None:
        return _summary(run, Tally(done_before=len(run.keys)))
    try:
        tally = Tally(redone=_redo_changed_sources(writer, run.root, run.keys))
        pending = writer.pending_rows()
        tally.done_before = len(run.keys) - len(pending)
        with StopSignals() as stop:  # also covers finalize: a signal there lets it finish
            _run_batches(run, writer, pending, tally, stop)
            if stop.signum is None:
                _finalize(writer, tally, time.perf_counter() - t_start)
        if stop.signum is not None and not writer.out.exists():
            done = tally.done_before + tally.stored + tally.failed
            raise Interrupted(
                f"stopped by {signal.Signals(stop.signum).name} after a batch boundary: {done} of {len(run.keys)} "
                f"images are safely in {partial_path(run.out)}. Rerun the same command to resume.",
                stop.signum,
            )
    finally:
        writer.close()
    return _summary(run, tally, mb_written=_output_bytes(writer) / 1e6)


def _output_bytes(writer: Writer) -> int:
    """The size of the file written (every table included); the maps' bytes without a file."""
    try:
        return writer.out.stat().st_size if isinstance(writer, ShardWriter) else writer.bytes_written
    except OSError:  # stopped before the rename: the partial file
        try:
            return partial_path(writer.out).stat().st_size
        except OSError:
            return writer.bytes_written


def _prepare(config: ExtractConfig) -> Run:
    """Find the images, build the model and its tap, plan this shard's rows. Nothing is written
    but, for a job array, the collection's manifest (by the first task to start)."""
    _check_writable(shard_output(config.out, config.shard_index, config.num_shards))
    collection = _collection(config)
    device = pick_device(config.device)
    log.info("device: %s%s", device, device_note(device))
    model = models.resolve(
        config.model,
        config.weights,
        config.random_init,
        config.unsafe_pickle,
        config.seed,
        weights_key=config.weights_key,
        weights_prefix=config.weights_prefix,
    )
    model.module.to(device)
    size_hw = config.size or model.input_hw
    # --layers alone stores only those layers; with --stages too, both.
    wanted = config.stages if config.layers is None else (config.stages or ())
    tap, all_stages = taps.build(model, size_hw, wanted, device, config.layers or ())
    stored = [pooled(s, config.pool) for s in [all_stages[i] for i in tap.wanted] + tap.infos]
    plan = plan_shard(config, model, size_hw, stored, collection)
    return Run(config, plan, model, tap, device, size_hw, collection.root)


def _collection(config: ExtractConfig) -> sources.Collection:
    """The images of the run, in row order. The tasks of a job array share one discovery through
    the manifest in OUT.shards/ (the first task to start writes it)."""
    if config.num_shards > 1:
        collection = manifest.collection_for(config.images, config.out, write=not config.dry_run)
    else:
        collection = sources.collect(config.images)
    if not collection.keys and collection.kind == "list":
        raise InputError(f"the image list {config.images!r} names no image (blank lines and # comments are skipped).")
    if not collection.keys:
        raise InputError(
            f"no images found below {config.images!r} (looked for {', '.join(sorted(sources.IMAGE_SUFFIXES))})."
        )
    return collection


def _summary(run: Run, tally: Tally, mb_written: float = 0.0, dry_run: bool = False) -> ExtractSummary:
    return ExtractSummary(
        out=run.out,
        device=str(run.device),
        images=len(run.keys),
        stages=run.plan.stages,
        input_hw=run.size_hw,
        shard_start=run.plan.start,
        done_before=tally.done_before,
        stored=tally.stored,
        failed=tally.failed,
        redone=tally.redone,
        mb_written=mb_written,
        seconds=tally.timings.get("total_s", 0.0),
        dry_run=dry_run,
        timings=dict(tally.timings),
        nan_stages=list(tally.nan_stages),
        planned_bytes=planned_bytes(run.plan) if dry_run else (0, 0),
        encoding=run.plan.encoding.describe(),
    )


def _finalize(writer: Writer, tally: Tally, seconds: float) -> None:
    tally.timings["total_s"] = seconds
    writer.finalize({**tally.timings, "bound_by": bound_by(tally.timings)})
    tally.timings.update(writer.timings)
    log.info("phases: %s", phases(tally.timings))


def _redo_changed_sources(writer: Writer, root: str, keys: list[str]) -> int:
    """Rows done by an earlier run whose source file changed since (other bytes) are computed
    again, so a resumed file never holds maps of bytes that are no longer there. A source that
    is missing now keeps its row's maps (they are that key's, from the recorded bytes): reported,
    never turned into a failure. When every done row's source matches under this run's images
    folder (a corrected copy, a moved folder), the file records it as its `images_root`."""
    rows, sha256, size = writer.done_sources()
    if len(rows):
        t0 = time.perf_counter()
        changed, missing = sources.source_changes(root, keys, rows, sha256, size)
        log.info("checked the sources of %d done images in %.1f s", len(rows), time.perf_counter() - t0)
    else:
        changed = missing = np.zeros(0, np.int64)
    if len(missing):
        log.warning(
            "%d done images cannot be read under %s now (first: %s); their stored maps are kept. "
            "Restore them, or pass their folder as IMAGES, so that `fmpipe verify` can check them",
            len(missing),
            root,
            keys[int(missing[0])],
        )
    else:
        writer.record_images_root(root)
    if len(changed):
        first = keys[int(changed[0])]
        log.warning("%d source images changed since they were stored (first: %s); redoing them", len(changed), first)
        writer.redo(changed)
    return len(changed)


def _run_batches(run: Run, writer: Writer, pending: np.ndarray, tally: Tally, stop: StopSignals) -> None:
    """The batch loop. Batch i is handed to the writer after batch i+1's forward pass was
    launched, so on CUDA the device→host copy overlaps the next forward pass."""
    config, timings = run.config, tally.timings
    forward = Forward(run.tap, run.model, run.device, run.plan.encoding, config.amp)
    progress = _progress(tally.done_before, len(run.keys))
    batches = iter_batches(
        run.root,
        run.keys,
        pending,
        run.size_hw,
        config.batch_size,
        config.workers,
        pin_memory=run.device.type == "cuda",
        offset=run.plan.start,
    )
    staged = None
    t0 = time.perf_counter()
    for batch in batches_until_stopped(batches, stop):
        t1 = time.perf_counter()
        timings["decode_wait_s"] += t1 - t0
        ahead = forward(batch)
        timings["compute_s"] += time.perf_counter() - t1
        if staged is not None:
            _submit(run, staged, writer, tally)
        staged = ahead
        tally.batches += 1
        progress.update(len(batch.rows))
        if tally.batches % TRIM_EVERY == 0:
            trim_heap()
        t0 = time.perf_counter()
    if staged is not None:
        _submit(run, staged, writer, tally)
    writer.drain()
    progress.close()


def _submit(run: Run, staged: Staged, writer: Writer, tally: Tally) -> None:
    """Wait for a batch's host copy, check its values, and queue it for the writer."""
    t0 = time.perf_counter()
    result = staged.result()
    root = run.root
    if result.failures and not os.path.isdir(root):
        raise RunFailure(
            f"the image folder {root} disappeared during the run; the images done so far are "
            "kept. Restore the folder and rerun the same command to resume."
        )
    t1 = time.perf_counter()
    for index, stats in result.stats.items():
        check_values(index, stats, run.config.dtype, run.keys, result.ok_rows, tally)
    writer.submit(result)
    tally.timings["host_copy_s"] += t1 - t0
    tally.timings["write_wait_s"] += time.perf_counter() - t1
    tally.stored += len(result.ok_rows)
    tally.failed += len(result.failures)
    for row, reason in result.failures:
        log.warning("skipped %s: %s", run.keys[row], reason)


def _progress(done_before: int, total: int) -> Progress:
    """Images through the model: a bar on a terminal, else a line at the first batch and then
    every LOG_EVERY_S seconds."""
    return Progress(
        total,
        Bar("extract", "img", smoothing=0.1),
        lambda done: f"{done} of {total} images",
        log,
        initial=done_before,
        first_line_at_once=True,
    )


def _check_writable(out: Path) -> None:
    """Fail before any model work when the output folder cannot be written."""
    folder = out.parent if str(out.parent) else Path(".")
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"cannot write to {folder}: permission denied. Choose another output path.")
