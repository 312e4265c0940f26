"""`fmpipe render`: lazy, parallel PNG export of one stage's feature maps.

parent:  open the store (complete? virtual sources present?), select images and channels,
         the stage-wide range if asked, every image's folder, refuse to clobber ──► one task per image
workers: the image's stats row ─► one chunk block of channels at a time ─► table indices
         ─► per-channel PNGs and/or one grid per image (or overlays on the source photo)

Memory per worker is one chunk block plus one image's grid, whatever the file's size.
The module is `rendering`, not `render`: a submodule named `render` would replace the
`pipeline.render` function on the package as soon as it is imported.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from ..errors import IncompleteFileError, InputError, OutputExistsError
from ..progress import Bar, Progress
from ..storage.reading.store import Store, open_store
from .config import RenderConfig, default_out_dir
from .ledger import Ledger, foreign_message, store_identity
from .painting import (
    ImageResult,
    ImageTask,
    Painter,
    RenderJob,
    colorize,
    existing_outputs,
    stage_range,
)
from .pca import fit_pca
from .selection import FolderMap, image_folders, iter_keys, select_channels, select_rows
from .tiling import CHANNEL_MIN_SIDE, TILE_MIN_SIDE, auto_scale

log = logging.getLogger(__name__)

__all__ = ["RenderConfig", "RenderSummary", "colorize", "default_out_dir", "render"]

IN_FLIGHT_PER_WORKER = 2  # queued tasks per worker: keeps workers busy, memory flat


@dataclass
class RenderSummary:
    """What a render did; `fmpipe render` prints it."""

    out_dir: Path
    stage: int | str  # the stage index, or the layer name
    images: int = 0
    pngs: int = 0  # every PNG written, grids included
    grids: int = 0
    workers: int = 1
    seconds: float = 0.0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    source: Path | None = None  # the file read (OUT, or OUT.partial with allow_partial)
    folder: str = ""  # the stage's (or layer's) folder below out_dir: stage2, layer-layer4

    @property
    def ms_per_png(self) -> float:
        return 1e3 * self.seconds / self.pngs if self.pngs else 0.0


def render(config: RenderConfig) -> RenderSummary:
    """Render one stage of an fmpipe file to PNGs as `config` says (see the module doc)."""
    t0 = time.perf_counter()
    with open_store(_source(config), require_complete=not config.allow_partial) as store:
        job, rows = _plan(config, store)
        folders = image_folders(store)  # from every key of the file, so any --images names alike
        ledger = Ledger.load(config.out_dir)
        replacing = _other_files_pictures(ledger, store, job)
        owned = _owned_below(ledger, job.out_stage.name)
        _refuse_clobber(store, job, rows, folders, owned, store.view(config.stage).channels)
        if replacing:  # --overwrite: fmpipe's pictures of the other file go, a user's files stay
            for relative in sorted(r for r in ledger.owned if r.startswith(job.out_stage.name + "/")):
                ledger.remove(relative)
            owned = {}
        if replacing or job.out_stage.name not in ledger.sources:
            ledger.set_source(job.out_stage.name, store_identity(store))
        if job.pca is not None:
            ledger.write(f"{job.out_stage.name}/pca.json", (job.pca.to_json() + "\n").encode())
        workers = max(1, min(config.workers or _cpu_count(), len(rows)))
        summary = RenderSummary(
            job.out_stage.parent, job.stage, workers=workers, source=store.path, folder=job.out_stage.name
        )
        progress = _progress(len(rows), job.pngs_per_image, summary)
        # A file being written is painted in a worker process even for one worker: a reopen after a
        # stale read must not share this process's open file (HDF5 shares one per process).
        run = _run_inline if workers == 1 and store.complete else _run_pool
        # The parent keeps the store open only to stream keys; workers open their own.
        for result in run(job, _tasks(store, rows, folders, owned), workers):
            summary.images += 1
            summary.pngs += result.pngs
            summary.grids += result.grids
            if result.error:
                summary.failed.append((result.key, result.error))
                log.warning("skipped %s: %s", result.key, result.error)
            progress.update(job.pngs_per_image)
        progress.close()
    summary.seconds = time.perf_counter() - t0
    return summary


def _plan(config: RenderConfig, store: Store) -> tuple[RenderJob, np.ndarray]:
    """Resolve the config against the file: stage, rows, channels, ranges, scales, out dir."""
    view = store.view(config.stage)
    rows = select_rows(store, config.images)
    channels = select_channels(config.channels, view.channels, view.label if view.layer else view.index)
    count = len(channels) if channels else min(config.top_k or view.channels, view.channels)
    pca = fit_pca(store, view.index, config.pca_samples, config.pca_seed) if config.layout == "pca" else None
    photos = _photo_root(config, store) if config.overlay else None
    job = RenderJob(
        path=str(store.path.resolve()),
        stage=view.ref,
        channels=channels,
        top_k=config.top_k,
        count=count,
        channel_digits=max(4, len(str(view.channels - 1))),
        layout_channels=config.layout in ("channels", "both"),
        layout_grid=config.layout in ("grid", "both"),
        cmap=config.cmap,
        normalize=config.normalize,
        stage_range=stage_range(view, store.ok) if config.normalize == "stage" else None,
        scale=config.scale or auto_scale(view.height, view.width, CHANNEL_MIN_SIDE),
        grid_scale=config.scale or auto_scale(view.height, view.width, TILE_MIN_SIDE),
        photos=photos,
        input_hw=store.run.input_size or (view.height, view.width),
        out_stage=config.out_dir / view.folder,
        overwrite=config.overwrite,
        pca=pca,
    )
    return job, rows


def _source(config: RenderConfig) -> Path:
    """The file to read; an extraction still running has only OUT.partial."""
    path = Path(config.path)
    partial = path.with_name(path.name + ".partial")
    if path.exists() or not partial.exists():
        return path
    if config.allow_partial:
        return partial
    raise IncompleteFileError(
        f"{path} is not finished yet: only {partial} exists. Rerun the extract command to finish it, "
        "or pass --allow-partial to render the images done so far."
    )


def _cpu_count() -> int:
    """Cores this process may use (Slurm and taskset restrict them below os.cpu_count())."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _photo_root(config: RenderConfig, store: Store) -> str:
    recorded = store.run.images_root
    root = Path(config.images_root or recorded or "")
    if not config.images_root and not recorded:
        raise InputError(f"{store.path} does not record where its images are; pass --images-root DIR.")
    if not root.is_dir():
        raise InputError(
            f"--overlay needs the source images, but {root} is not a folder (recorded at extraction: "
            f"{recorded}). If they moved, pass --images-root NEW_FOLDER."
        )
    return str(root)


def _tasks(store: Store, rows: np.ndarray, folders: FolderMap, owned: dict[str, set[str]]) -> Iterator[ImageTask]:
    """One task per selected image with its folder and the files fmpipe owns there, streamed (keys in blocks)."""
    for row, key in iter_keys(store, rows):
        folder = folders.folder(row, key)
        yield ImageTask(row, key, folder, frozenset(owned.get(folder, ())))


def _other_files_pictures(ledger: Ledger, store: Store, job: RenderJob) -> bool:
    """Whether the stage's folder holds pictures rendered from another file (another extraction,
    another model): refused without --overwrite, so no earlier file's picture is shown as this one's."""
    previous = ledger.sources.get(job.out_stage.name)
    if previous is None or previous == store_identity(store):
        return False
    if not job.overwrite:
        raise OutputExistsError(
            f"{job.out_stage} holds pictures rendered from another file (not {store.path} as it is now); "
            "pass --overwrite to replace them, or choose another --out."
        )
    return True


def _owned_below(ledger: Ledger, stage: str) -> dict[str, set[str]]:
    """{image folder below `stage`: the names of the files fmpipe wrote there}."""
    prefix = stage + "/"
    return {folder[len(prefix) :]: names for folder, names in ledger.by_folder().items() if folder.startswith(prefix)}


def _refuse_clobber(
    store: Store, job: RenderJob, rows: np.ndarray, folders: FolderMap, owned: dict[str, set[str]], channels: int
) -> None:
    """Raise before drawing anything if this run could write over a file fmpipe did not write, or
    would replace its own PNGs with --overwrite off. `channels`: the stage's channel count."""
    if not job.out_stage.is_dir():
        return
    names = {job.grid_name, "pca.png"} | {job.channel_name(c) for c in (job.channels or range(channels))}
    for task in _tasks(store, rows, folders, owned):
        found = existing_outputs(job, job.out_stage / task.folder)
        foreign = [path for path in found if path.name not in task.owned and path.name in names]
        if foreign:
            raise OutputExistsError(foreign_message(job.out_stage.parent, _relative(job, foreign[0])))
        mine = [path for path in found if path.name in task.owned]
        if mine and not job.overwrite:
            raise OutputExistsError(
                f"{mine[0]} already exists ({len(mine)} PNGs of this kind in that folder); pass "
                "--overwrite to replace them, or choose another --out."
            )


def _relative(job: RenderJob, path: Path) -> str:
    return path.relative_to(job.out_stage.parent).as_posix()


def _run_inline(job: RenderJob, tasks, workers: int) -> Iterator[ImageResult]:
    painter = Painter(job)
    try:
        for task in tasks:
            yield painter.paint(task)
    finally:
        painter.close()


def _run_pool(job: RenderJob, tasks, workers: int) -> Iterator[ImageResult]:
    """Paint in `workers` spawned processes, at most IN_FLIGHT_PER_WORKER tasks queued each."""
    # spawn, not fork: h5py/HDF5 state and threads in the parent must not leak into workers.
    context = get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(job,)) as pool:
        pending: set[Future] = set()
        try:
            for task in tasks:
                if len(pending) >= workers * IN_FLIGHT_PER_WORKER:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    yield from (f.result() for f in done)
                pending.add(pool.submit(_paint_in_worker, task))
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (f.result() for f in done)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


_painter: Painter | None = None


def _init_worker(job: RenderJob) -> None:
    global _painter
    _painter = Painter(job)


def _paint_in_worker(task: ImageTask) -> ImageResult:
    assert _painter is not None, "worker not initialised"
    return _painter.paint(task)


def _progress(images: int, per_image: int, summary: RenderSummary) -> Progress:
    """A bar in PNGs on a terminal; a line of images and PNGs written every LOG_EVERY_S seconds otherwise."""
    return Progress(
        images * per_image,
        Bar("render", "png", smoothing=0.1),
        lambda _: f"{summary.images} of {images} images, {summary.pngs} PNGs",
        log,
    )
