"""`fmpipe gallery`: static HTML pages over a render folder, to browse every image × stage.

    OUT/index.html, index-2.html, ...   PER_PAGE images a page (source thumbnail, key), the
                                        stage table, the failures (page 1)
    OUT/gallery/000012.html             one page per stored image: the source, one row per
                                        stage (grid, overlay grid, PCA picture), a channel view
    OUT/gallery/thumbs/<folder>.jpg     source thumbnails, rewritten only when the source is newer

It reads the file's keys and (N, C) statistics in blocks of rows, lists each image folder
once and reads PNG headers (size; a grid's channel order from its text); it never reads a
map. Links are relative, so the folder works from file:// and can be moved whole. No torch.
"""

from __future__ import annotations

import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from PIL import Image

from ..decoding import DecodeError, decode
from ..errors import InputError, OutputExistsError, RunFailure
from ..records import StageInfo
from ..rendering.pca import load_fit
from ..rendering.selection import image_folders, iter_keys
from ..sources import source_path
from ..storage import schema
from ..storage.store import Store, open_store
from .config import GalleryConfig
from .inventory import rounded, stage_block
from .pages import GENERATOR, Entry, Site, StageMeta, image_page, index_page

log = logging.getLogger(__name__)

THUMB_QUALITY = 85
ROW_BLOCK = 512  # images whose keys, statistics and thumbnails are handled together
_PAGE = re.compile(r"\d{6,}\.html")
_INDEX = re.compile(r"index-(\d+)\.html")


@dataclass
class GallerySummary:
    """What a gallery run wrote; `fmpipe gallery` prints it."""

    index: Path
    images: int = 0
    index_pages: int = 0
    stages: list[int | str] = field(default_factory=list)  # stages (indices) and layers (names) rendered
    thumbs_written: int = 0
    sources_missing: int = 0
    failures: int = 0
    seconds: float = 0.0


def write_gallery(config: GalleryConfig) -> GallerySummary:
    """Write (or refresh) the gallery of a render folder; see the module doc."""
    t0 = time.perf_counter()
    out = config.out_dir
    _refuse_foreign(out / "index.html")
    with open_store(config.path, require_complete=not config.allow_partial) as store:
        stages = _stage_metas(store, out)
        if not any(s.rendered for s in stages):
            raise InputError(
                f"{out} holds no rendered stage; draw one first: fmpipe render {config.path} --stage 0 --html"
            )
        rows = np.flatnonzero(store.ok)
        pages = max(1, -(-len(rows) // config.per_page))
        site = Site(
            config.path,
            store.run.model or "?",
            len(store),
            len(rows),
            tuple(store.failures),
            tuple(stages),
            pages,
        )
        summary = GallerySummary(out / "index.html", len(rows), pages, [s.ref for s in stages if s.rendered])
        summary.failures = len(site.failures)
        root = config.images_root or store.run.images_root
        writer = _PageWriter(store, site, rows, out, config, root)
        written = writer.run()
        summary.thumbs_written, summary.sources_missing = writer.thumbs_written, writer.sources_missing
    _remove_stale(out, written, pages)
    if summary.sources_missing:
        log.warning(
            "%d source images not found under %s; their pages show a placeholder (--images-root DIR if they moved).",
            summary.sources_missing,
            root,
        )
    summary.seconds = time.perf_counter() - t0
    return summary


def _stage_metas(store: Store, out: Path) -> list[StageMeta]:
    metas = []
    for view in store.maps:
        folder = out / view.folder
        fit = load_fit(folder / "pca.json")
        explained = tuple(float(v) for v in fit.explained) if fit is not None else None
        metas.append(
            StageMeta(
                **{f.name: getattr(view, f.name) for f in fields(StageInfo)},
                rendered=folder.is_dir(),
                explained=explained,
            )
        )
    return metas


class _PageWriter:
    """Writes every image page and index page, ROW_BLOCK images at a time (keys, stats, thumbnails)."""

    def __init__(self, store: Store, site: Site, rows: np.ndarray, out: Path, config: GalleryConfig, root: str | None):
        self.store, self.site, self.rows, self.out, self.config, self.root = store, site, rows, out, config, root
        digits = max(6, len(str(max(0, len(store) - 1))))
        self.page_of = [f"gallery/{int(r):0{digits}d}.html" for r in rows]
        self.folders, self.cards, self.written = image_folders(store), [], set()  # render's folders
        self.thumbs_written = self.sources_missing = 0

    def run(self) -> set[str]:
        """Write everything; returns the file names of the image pages written."""
        with ThreadPoolExecutor(max_workers=_cores()) as pool:  # thumbnails: Pillow decodes without the GIL
            for start in range(0, len(self.rows), ROW_BLOCK):
                self._block(pool, start)
        if not len(self.rows):
            _write_text(self.out / "index.html", index_page(self.site, [], 1, self.config.per_page))
        return self.written

    def _block(self, pool: ThreadPoolExecutor, start: int) -> None:
        block = self.rows[start : start + ROW_BLOCK]
        first, last = int(block[0]), int(block[-1]) + 1
        hw = self.store.file[schema.ORIG_HW][first:last]  # (rows, 2) int32: one read per block
        stats = _stats(self.store, self.site.stages, first, last)
        named = [(row, key, self.folders.folder(row, key)) for row, key in iter_keys(self.store, block)]
        side = self.config.thumb_side
        thumbs = [
            pool.submit(_thumb, self.out, self.root, key, folder, hw[row - first], side) for row, key, folder in named
        ]
        for i, ((row, key, folder), thumb) in enumerate(zip(named, thumbs, strict=True)):
            self._image(start + i, row, key, folder, thumb.result(), hw[row - first], stats, row - first)

    def _image(self, n: int, row: int, key: str, folder: str, thumb, hw, stats: dict, offset: int) -> None:
        """The page of the n-th stored image (0-based); the index page when it completes one."""
        path, made = thumb
        self.thumbs_written += made
        self.sources_missing += path is None
        entry = Entry(n + 1, row, key, self.page_of[n], path, (int(hw[0]), int(hw[1])))
        blocks = [stage_block(self.out, m, folder, _at(stats, m.ref, offset)) for m in self.site.stages]
        prev = self.page_of[n - 1] if n else None
        nxt = self.page_of[n + 1] if n + 1 < len(self.rows) else None
        page = n // self.config.per_page + 1
        _write_text(self.out / entry.page, image_page(self.site, entry, blocks, prev, nxt, page))
        self.written.add(Path(entry.page).name)
        self.cards.append(entry)
        if len(self.cards) == self.config.per_page or n + 1 == len(self.rows):
            html = index_page(self.site, self.cards, page, self.config.per_page)
            _write_text(self.out / self.site.index_name(page), html)
            self.cards = []


def _stats(store: Store, stages, first: int, last: int) -> dict[int | str, np.ndarray]:
    """{stage or layer: (3, last - first, C) float64 min, max, mean, `rounded`} of the rendered ones, one read each."""
    out = {}
    for meta in stages:
        if meta.rendered:
            view = store.view(meta.ref)
            out[meta.ref] = rounded(np.stack([view.min[first:last], view.max[first:last], view.mean[first:last]]))
    return out


def _at(stats: dict[int | str, np.ndarray], stage: int | str, offset: int) -> np.ndarray | None:
    """(3, C) min, max, mean of one image from a block's stats; None for a stage not rendered."""
    return stats[stage][:, offset] if stage in stats else None


def _thumb(out: Path, root: str | None, key: str, folder: str, hw, side: int) -> tuple[str | None, bool]:
    """(thumbnail path relative to `out`, or None when the source is missing; whether it was written).

    `hw`: the source's upright (height, width) recorded at extraction; the thumbnail keeps its aspect.
    """
    relative = f"gallery/thumbs/{folder}.jpg"
    if root is None:
        return None, False
    source = source_path(root, key)
    if source is None:
        log.warning("no thumbnail for %r: the key leaves %s (absolute, or a '..' part), so it is not read", key, root)
        return None, False
    target = out / relative
    try:
        source_mtime = os.stat(source).st_mtime
    except OSError:
        return None, False
    try:
        if target.stat().st_mtime >= source_mtime:
            return relative, False
    except OSError:
        pass
    height, width = (int(v) for v in hw)
    scale = min(1.0, side / max(1, height, width))
    try:
        pixels = decode(source, (max(1, round(height * scale)), max(1, round(width * scale)))).pixels
    except DecodeError as err:
        log.warning("no thumbnail for %s: %s", key, err)
        return None, False
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(target, "JPEG", quality=THUMB_QUALITY)
    except OSError as err:
        raise RunFailure(f"writing {target} failed: {err}. Fix the cause and rerun.") from err
    return relative, True


def _write_text(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise RunFailure(f"writing {path} failed: {err}. Fix the cause and rerun.") from err


def _refuse_foreign(index: Path) -> None:
    """An index.html that fmpipe did not write is someone else's: never replace it."""
    try:
        head = index.read_bytes()[:600]
    except FileNotFoundError:
        return
    except OSError as err:
        raise InputError(f"cannot read {index}: {err}.") from err
    if GENERATOR.encode() not in head:
        raise OutputExistsError(
            f"{index} exists and was not written by {GENERATOR}; move it away or choose another --out."
        )


def _remove_stale(out: Path, written: set[str], pages: int) -> None:
    """Pages of an earlier gallery that this one no longer has (fewer images or index pages)."""
    for entry in _scan(out / "gallery"):
        if _PAGE.fullmatch(entry.name) and entry.name not in written:
            os.unlink(entry.path)
    for entry in _scan(out):
        match = _INDEX.fullmatch(entry.name)
        if match and int(match.group(1)) > pages:
            os.unlink(entry.path)


def _scan(folder: Path) -> list[os.DirEntry]:
    try:
        return list(os.scandir(folder))
    except FileNotFoundError:
        return []


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
