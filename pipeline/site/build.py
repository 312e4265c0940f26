"""`fmpipe gallery`: static HTML pages over a render folder, to browse every image × stage.

    OUT/index.html, index-2.html, ...   PER_PAGE images a page (source thumbnail, key), the
                                        stage table, the failures (page 1)
    OUT/gallery/000012.html             one page per stored image: the source, one row per
                                        stage (grid, overlay grid, PCA picture), a channel view
    OUT/gallery/thumbs/<sha256>-<side>.jpg  source thumbnails, named by the source's recorded digest:
                                        a replaced image (re-extracted) gets a new one, and a
                                        source whose bytes no longer match the file gets none

Every file is written through the render folder's ledger (rendering/ledger.py): a file there that
fmpipe did not write is never replaced or removed, and a stage folder rendered from another file
(another extraction, another model) is not shown as this file's.

It reads the file's keys and (N, C) statistics in blocks of rows, lists each image folder
once and reads PNG headers (size; a grid's channel order from its text); it never reads a
map. Links are relative, so the folder works from file:// and can be moved whole. No torch.
"""

from __future__ import annotations

import io
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from PIL import Image

from ..decoding import DecodeError, SourceMissing, decode_bytes, read_source
from ..errors import InputError, OutputExistsError
from ..records import StageInfo
from ..rendering.ledger import Ledger, foreign_message, store_identity, write_output
from ..rendering.pca import load_fit
from ..rendering.selection import image_folders, iter_keys
from ..sources import source_path
from ..storage.format import schema
from ..storage.reading.store import Store, open_store
from .config import GalleryConfig
from .inventory import rounded, stage_block
from .pages import Entry, Site, StageMeta, image_page, index_page

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
    ledger = Ledger.load(out)
    with open_store(config.path, require_complete=not config.allow_partial) as store:
        stages = _stage_metas(store, out, ledger)
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
        writer = _PageWriter(store, site, rows, ledger, config, root)
        _refuse_foreign(ledger, writer.page_of, pages, site)
        written = writer.run()
        summary.thumbs_written, summary.sources_missing = writer.thumbs_written, writer.sources_missing
    _remove_stale(ledger, written, pages)
    if summary.sources_missing:
        log.warning(
            "%d source images not found under %s; their pages show a placeholder (--images-root DIR if they moved).",
            summary.sources_missing,
            root,
        )
    summary.seconds = time.perf_counter() - t0
    return summary


def _stage_metas(store: Store, out: Path, ledger: Ledger) -> list[StageMeta]:
    """Each stored stage and layer; rendered when its folder holds this very file's pictures."""
    identity = store_identity(store)
    metas = []
    for view in store.maps:
        folder = out / view.folder
        rendered = folder.is_dir() and ledger.sources.get(view.folder) == identity
        if folder.is_dir() and not rendered:
            log.warning(
                "%s holds no pictures of %s as it is now (rendered from another file, or not by fmpipe); "
                "not shown. Render it again: fmpipe render %s %s --overwrite",
                folder,
                store.path,
                store.path,
                view.option,
            )
        fit = load_fit(folder / "pca.json") if ledger.owns(f"{view.folder}/pca.json") and rendered else None
        explained = tuple(float(v) for v in fit.explained) if fit is not None else None
        metas.append(
            StageMeta(
                **{f.name: getattr(view, f.name) for f in fields(StageInfo)}, rendered=rendered, explained=explained
            )
        )
    return metas


class _PageWriter:
    """Writes every image page and index page, ROW_BLOCK images at a time (keys, stats, thumbnails)."""

    def __init__(
        self, store: Store, site: Site, rows: np.ndarray, ledger: Ledger, config: GalleryConfig, root: str | None
    ):
        self.store, self.site, self.rows, self.ledger, self.config, self.root = store, site, rows, ledger, config, root
        self.out = ledger.out
        digits = max(6, len(str(max(0, len(store) - 1))))
        self.page_of = [f"gallery/{int(r):0{digits}d}.html" for r in rows]
        self.folders, self.cards, self.written = image_folders(store), [], set()  # render's folders
        self.owned = ledger.by_folder()  # {folder: names}: what render wrote in each image folder
        self.thumbs_written = self.sources_missing = 0

    def run(self) -> set[str]:
        """Write everything; returns the file names of the image pages written."""
        with ThreadPoolExecutor(max_workers=_cores()) as pool:  # thumbnails: Pillow decodes without the GIL
            for start in range(0, len(self.rows), ROW_BLOCK):
                self._block(pool, start)
        if not len(self.rows):
            self.ledger.write("index.html", index_page(self.site, [], 1, self.config.per_page).encode())
        return self.written

    def _block(self, pool: ThreadPoolExecutor, start: int) -> None:
        block = self.rows[start : start + ROW_BLOCK]
        first, last = int(block[0]), int(block[-1]) + 1
        hw = self.store.file[schema.ORIG_HW][first:last]  # (rows, 2) int32: one read per block
        digests = _digests(self.store, first, last)
        stats = _stats(self.store, self.site.stages, first, last)
        named = [(row, key, self.folders.folder(row, key)) for row, key in iter_keys(self.store, block)]
        thumbs, made = [], {}  # one thumbnail per content in a block; later blocks find it in the ledger
        for row, key, _ in named:
            digest = bytes(digests[row - first]).decode("ascii", "replace")
            content = digest if len(digest) == 64 else f"key {key}"
            if content not in made:
                thumb = _Thumb(self.ledger, self.root, key, digest, hw[row - first], self.config.thumb_side)
                made[content] = pool.submit(thumb.write)
            thumbs.append(made[content])
        self.thumbs_written += sum(future.result()[1] for future in made.values())
        for i, ((row, key, folder), thumb) in enumerate(zip(named, thumbs, strict=True)):
            path = thumb.result()[0]
            if path is not None:
                self.ledger.owned.add(path)
            self._image(start + i, row, key, folder, path, hw[row - first], stats, row - first)

    def _image(self, n: int, row: int, key: str, folder: str, path: str | None, hw, stats: dict, offset: int) -> None:
        """The page of the n-th stored image (0-based); the index page when it completes one."""
        self.sources_missing += path is None
        entry = Entry(n + 1, row, key, self.page_of[n], path, (int(hw[0]), int(hw[1])))
        blocks = [
            stage_block(self.out, m, folder, _at(stats, m.ref, offset), self.owned.get(f"{m.folder}/{folder}", set()))
            for m in self.site.stages
        ]
        prev = self.page_of[n - 1] if n else None
        nxt = self.page_of[n + 1] if n + 1 < len(self.rows) else None
        page = n // self.config.per_page + 1
        self.ledger.write(entry.page, image_page(self.site, entry, blocks, prev, nxt, page).encode())
        self.written.add(Path(entry.page).name)
        self.cards.append(entry)
        if len(self.cards) == self.config.per_page or n + 1 == len(self.rows):
            html = index_page(self.site, self.cards, page, self.config.per_page)
            self.ledger.write(self.site.index_name(page), html.encode())
            self.cards = []


def _stats(store: Store, stages, first: int, last: int) -> dict[int | str, np.ndarray]:
    """{stage or layer: (3, last - first, C) float64 min, max, mean, `rounded`} of the rendered ones, one read each."""
    out = {}
    for meta in stages:
        if meta.rendered:
            view = store.view(meta.ref)
            out[meta.ref] = rounded(np.stack([view.min[first:last], view.max[first:last], view.mean[first:last]]))
    return out


def _digests(store: Store, first: int, last: int) -> np.ndarray:
    """(rows,) 64-byte hex sha256 of the sources of rows [first, last); empty for files without them (v1)."""
    if schema.SOURCE_SHA256 not in store.file:
        return np.zeros(last - first, "S64")
    return store.file[schema.SOURCE_SHA256][first:last]


def _at(stats: dict[int | str, np.ndarray], stage: int | str, offset: int) -> np.ndarray | None:
    """(3, C) min, max, mean of one image from a block's stats; None for a stage not rendered."""
    return stats[stage][:, offset] if stage in stats else None


@dataclass(frozen=True)
class _Thumb:
    """One source thumbnail, named by the source's recorded sha256 (and the side it is drawn at)."""

    ledger: Ledger
    root: str | None
    key: str
    digest: str  # 64 hex digits recorded at extraction
    hw: np.ndarray  # the source's upright (height, width) recorded at extraction: the thumbnail keeps its aspect
    side: int

    def write(self) -> tuple[str | None, bool]:
        """(thumbnail path relative to the render folder, or None when there is none; whether it was written).

        A thumbnail already written for this content is reused; a source that is missing, or whose
        bytes are no longer the ones extracted, gets none (the page shows a placeholder). A file
        without recorded digests (written by other tools) names it by the source's digest now.
        """
        recorded = self.digest if len(self.digest) == 64 else None
        if self.root is None:
            return None, False
        if recorded is not None and self._reusable(recorded):
            return self._name(recorded), False
        source = source_path(self.root, self.key)
        if source is None:
            log.warning(
                "no thumbnail for %r: the key leaves %s (absolute, or a '..' part), not read", self.key, self.root
            )
            return None, False
        try:
            data = read_source(source)
            if recorded is not None and data.sha256 != recorded:
                raise DecodeError(f"it changed after extraction (sha256 {data.sha256[:12]}…, was {recorded[:12]}…)")
            if self._reusable(data.sha256):
                return self._name(data.sha256), False
            pixels = decode_bytes(data.data, self._size()).pixels
        except DecodeError as err:
            level = logging.DEBUG if isinstance(err, SourceMissing) else logging.WARNING  # counted as missing anyway
            log.log(level, "no thumbnail for %s: %s", self.key, err)
            return None, False
        return self._save(self._name(data.sha256), pixels)

    def _name(self, sha256: str) -> str:
        return f"gallery/thumbs/{sha256[:32]}-{self.side}.jpg"

    def _reusable(self, sha256: str) -> bool:
        relative = self._name(sha256)
        return self.ledger.owns(relative) and (self.ledger.out / relative).is_file()

    def _size(self) -> tuple[int, int]:
        height, width = (int(v) for v in self.hw)
        scale = min(1.0, self.side / max(1, height, width))
        return max(1, round(height * scale)), max(1, round(width * scale))

    def _save(self, relative: str, pixels: np.ndarray) -> tuple[str | None, bool]:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=THUMB_QUALITY)
        try:
            write_output(self.ledger.out, relative, buffer.getvalue(), self.ledger.owns(relative))
        except OutputExistsError:
            log.warning("no thumbnail for %s: %s", self.key, foreign_message(self.ledger.out, relative))
            return None, False
        return relative, True


def _refuse_foreign(ledger: Ledger, page_of: list[str], pages: int, site: Site) -> None:
    """Before writing anything: a page this gallery would write that exists and is not fmpipe's is refused."""
    planned = {site.index_name(page) for page in range(1, pages + 1)} | set(page_of)
    for folder, prefix in ((ledger.out, ""), (ledger.out / "gallery", "gallery/")):
        for entry in _scan(folder):
            relative = prefix + entry.name
            if relative in planned and not ledger.owns(relative):
                raise OutputExistsError(foreign_message(ledger.out, relative))


def _remove_stale(ledger: Ledger, written: set[str], pages: int) -> None:
    """Pages of an earlier gallery that this one no longer has (fewer images or index pages); only fmpipe's own."""
    for entry in _scan(ledger.out / "gallery"):
        if _PAGE.fullmatch(entry.name) and entry.name not in written:
            ledger.remove(f"gallery/{entry.name}")
    for entry in _scan(ledger.out):
        match = _INDEX.fullmatch(entry.name)
        if match and int(match.group(1)) > pages:
            ledger.remove(entry.name)


def _scan(folder: Path) -> list[os.DirEntry]:
    try:
        return list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
