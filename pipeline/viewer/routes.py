"""What each viewer URL answers: pages, pictures and JSON computed from the file, and two assets.

    /                                       the collection (?page=N&q=TEXT)
    /image/ROW                              an image: the source, each stage's top channels, PCA
    /image/ROW/STAGE                        every channel of an image and stage, paged (?page=N&cmap=&normalize=)
    /image/ROW/STAGE/CHANNEL                a channel of an image (?cmap=&normalize=)
    /compare/STAGE/CHANNEL?rows=R1,R2,...   a channel of several images side by side (?cmap=&normalize=stage)
    /location/ROW?y=Y&x=X                   source pixel (Y, X) of an image in every stage: its strongest channels
    /examples/STAGE/CHANNEL                 its dataset examples (?by=max|mean&k=K&cmap=&normalize=)
    /stage/STAGE                            a stage's channels ranked (?by=&page=)
    /tile/STAGE/ROW/CHANNEL.png             render's per-channel PNG (?cmap=&normalize=&scale=N)
    /overlay/STAGE/ROW/CHANNEL.png          render's --overlay PNG (?cmap=&normalize=)
    /pca/STAGE/ROW.png                      render's --layout pca picture
    /source/ROW.jpg                         the source photo (?side=N), read only below the images root
    /source/ROW.png                         the source photo at its full size (lossless)
    /map/STAGE/ROW.npy                      the (C, H, W) float32 maps of an image and stage, as np.save writes
    /map/STAGE/ROW/CHANNEL.npy              one (H, W) float32 map
    /colorbar/CMAP.png                      a colour table, low values on the left
    /api/top?stage=S&channel=C&k=K&by=max   {"items": [{"row", "key", "value"}, ...]}, best first
    /api/ranking?stage=S&by=max             {"channels": [...], "scores": [...]}, strongest first

STAGE is a stage's index or `layer:NAME` (NAME percent-encoded). Every number in a path is digits
only; every query value is checked. A bad value is a 400,
a thing that does not exist (stage, row, channel, page, a source not found) a 404; anything
else (a damaged chunk) a 500. A page's error is a page that links back; a picture's is text.
Unknown query parameters are ignored. No torch.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import fields
from urllib.parse import unquote, urlsplit

import numpy as np

from ..decoding import DecodeError
from ..errors import FmpipeError, UsageError
from ..records import StageInfo
from ..rendering.colormaps import CMAPS
from ..rendering.selection import top_channels
from ..rendering.tiling import TILE_MIN_SIDE, auto_scale
from . import figures, pages
from .assets import ASSETS
from .catalog import Catalog
from .config import BYS, DEFAULT_K, MAX_K
from .crops import crop_png, crops
from .examples import items_json, top_items
from .maps import cell_of, cell_values, channel_values, npy_bytes, stage_values
from .pages import LAYER_PREFIX, MAP
from .query import HTML, JPEG, JSON, NPY, PNG, TEXT, HttpError, Query, Response
from .tiles import colorbar_png, overlay_png, pca_png, scale_used, tile_png

log = logging.getLogger(__name__)

PER_PAGE = 60  # images per collection page
CHANNELS_PER_PAGE = 48  # channels per stage-ranking page
IMAGE_TILES = 16  # top channels per stage on an image's page
EXAMPLES_K = 12  # dataset examples shown by default
CELLS_PER_PAGE = 64  # channels per page of an image's every-channel page
MAX_COMPARE = 12  # images on one compare page
COMPARE_WITH = 4  # a channel page links to a comparison of its image with the channel's strongest ones
LOCATION_CHANNELS = 8  # strongest channels per stage shown at a location
Handler = Callable[..., Response]


class App:
    """Answers one GET for a path and query; safe to call from many threads at once."""

    def __init__(self, catalog: Catalog, per_page: int = PER_PAGE):
        self.catalog, self.per_page = catalog, per_page
        self.routes: list[tuple[re.Pattern, Handler, bool]] = [
            (re.compile(pattern), handler, pattern.startswith("/api/"))
            for pattern, handler in (
                (r"/", self.collection),
                (r"/image/(\d{1,9})", self.image),
                (rf"/image/(\d{{1,9}})/{MAP}", self.channels),
                (rf"/image/(\d{{1,9}})/{MAP}/(\d{{1,9}})", self.channel),
                (rf"/compare/{MAP}/(\d{{1,9}})", self.compare),
                (r"/location/(\d{1,9})", self.location),
                (rf"/examples/{MAP}/(\d{{1,9}})", self.examples),
                (rf"/stage/{MAP}", self.stage),
                (rf"/tile/{MAP}/(\d{{1,9}})/(\d{{1,9}})\.png", self.tile),
                (rf"/overlay/{MAP}/(\d{{1,9}})/(\d{{1,9}})\.png", self.overlay),
                (rf"/pca/{MAP}/(\d{{1,9}})\.png", self.pca),
                (rf"/crop/{MAP}/(\d{{1,9}})/(\d{{1,9}})\.png", self.crop),
                (r"/source/(\d{1,9})\.jpg", self.source),
                (r"/source/(\d{1,9})\.png", self.original),
                (rf"/map/{MAP}/(\d{{1,9}})\.npy", self.stage_npy),
                (rf"/map/{MAP}/(\d{{1,9}})/(\d{{1,9}})\.npy", self.channel_npy),
                (r"/colorbar/([a-z]{1,20})\.png", self.colorbar),
                (r"/api/top", self.api_top),
                (r"/api/ranking", self.api_ranking),
                (r"/assets/([a-z]{1,20}\.(?:css|js))", self.asset),
            )
        ]
        names = [f.name for f in fields(StageInfo)]
        stages = tuple(StageInfo(**{name: getattr(v, name) for name in names}) for v in catalog.stages.values())
        self.summary = pages.Summary(
            str(catalog.path), catalog.model, len(catalog), len(catalog.rows), catalog.failures, catalog.partial, stages
        )
        self.immutable = "no-cache" if catalog.partial else "private, max-age=3600"

    def get(self, target: str) -> Response:
        """The response to GET `target` (path and query); never raises."""
        try:
            parts = urlsplit(target)
            for pattern, handler, api in self.routes:
                match = pattern.fullmatch(parts.path)
                if match:
                    query = Query(parts.query)
                    try:
                        return handler(query, *(_argument(g) for g in match.groups()))
                    except UsageError as err:  # a stage, row or channel that does not exist
                        raise HttpError(400 if api else 404, str(err)) from None
            raise HttpError(404, "no such page")
        except HttpError as err:
            return _error(target, err.status, str(err))
        except DecodeError as err:
            return _error(target, 404, f"source image not available: {err}")
        except FmpipeError as err:
            log.warning("%s: %s", target[:200], err)
            return _error(target, 500, str(err))
        except Exception:
            log.exception("GET %s failed", target[:200])
            return _error(target, 500, "internal error; the viewer's log says more")

    # -- pages ---------------------------------------------------------------------------------

    def collection(self, query: Query) -> Response:
        text = query.text("q")
        rows = self.catalog.search(text)
        pages_count = max(1, math.ceil(len(rows) / self.per_page))
        page = query.integer("page", 1, 1, 10**9)
        if page > pages_count:
            raise HttpError(404, f"page {page} does not exist; there are {pages_count}")
        shown = rows[(page - 1) * self.per_page : page * self.per_page]
        cards = [self._card(int(row), key) for row, key in zip(shown, self.catalog.keys(shown), strict=True)]
        html = pages.collection_page(self.summary, cards, page, pages_count, text, len(rows))
        return Response(200, HTML, html.encode())

    def _card(self, row: int, key: str) -> pages.Card:
        if self.catalog.source(row, key) is not None:
            return pages.Card(row, key, pages.url(f"/source/{row}.jpg", side=240), True)
        # No photo: the middle stage's strongest channel for this image (a PCA picture would fit the
        # stage's PCA over the file first, seconds on large maps, on the very first page).
        middle = list(self.catalog.stages)[len(self.catalog.stages) // 2]
        channel = int(top_channels(self.catalog.stats(middle, row)[2], 1)[0])
        return pages.Card(row, key, pages.url(f"/tile/{pages.seg(self._meta(middle))}/{row}/{channel}.png"), False)

    def _info(self, row: int) -> pages.ImageInfo:
        catalog = self.catalog
        catalog.stored_row(row)
        key = catalog.key(row)
        position = int(catalog.rows.searchsorted(row))
        prev = int(catalog.rows[position - 1]) if position > 0 else None
        nxt = int(catalog.rows[position + 1]) if position + 1 < len(catalog.rows) else None
        hw = tuple(int(v) for v in catalog.orig_hw(row))
        source = catalog.source(row, key) is not None
        return pages.ImageInfo(row, key, position + 1, prev, nxt, position // self.per_page + 1, source, hw)

    def image(self, query: Query, row: int) -> Response:
        info = self._info(row)
        stages = []
        for index, view in self.catalog.stages.items():
            channels = top_channels(self.catalog.stats(index, row)[2], IMAGE_TILES)
            scale = auto_scale(view.height, view.width, TILE_MIN_SIDE)
            stages.append(pages.StageRow(self.summary.stages[len(stages)], tuple(int(c) for c in channels), scale))
        return Response(200, HTML, pages.image_page(self.summary, info, stages).encode())

    def channel(self, query: Query, row: int, stage: int | str, channel: int) -> Response:
        self.catalog.channel(stage, channel)
        info, options = self._info(row), query.tile_options(scale=False)
        stats = [float(v) for v in self.catalog.stats(stage, row)[:, channel]]
        numbers = (stats, scale_used(self.catalog, stage, row, channel, options.normalize))
        strongest = [item.row for item in top_items(self.catalog, stage, channel, COMPARE_WITH, "max")]
        compare = [row, *(r for r in strongest if r != row)][:COMPARE_WITH]
        html = figures.channel_page(self.summary, info, self._meta(stage), channel, numbers, options, compare)
        return Response(200, HTML, html.encode())

    def channels(self, query: Query, row: int, stage: int | str) -> Response:
        meta, info = self._meta(stage), self._info(row)
        options = query.tile_options(scale=False)
        pages_count = max(1, math.ceil(meta.channels / CELLS_PER_PAGE))
        page = query.integer("page", 0, 0, pages_count - 1) + 1  # ?page=0 is the first (the URL contract)
        shown = range((page - 1) * CELLS_PER_PAGE, min(meta.channels, page * CELLS_PER_PAGE))
        cells = [figures.Cell(c, *scale_used(self.catalog, stage, row, c, options.normalize)) for c in shown]
        html = figures.channels_page(self.summary, info, meta, cells, (page, pages_count), options)
        return Response(200, HTML, html.encode())

    def compare(self, query: Query, stage: int | str, channel: int) -> Response:
        self.catalog.channel(stage, channel)
        rows = query.integers("rows", MAX_COMPARE, len(self.catalog) - 1)
        options = query.tile_options(scale=False, normalize="stage")
        columns = []
        for row in rows:
            key = self.catalog.key(self.catalog.stored_row(row))
            lo, hi = scale_used(self.catalog, stage, row, channel, options.normalize)
            source = self.catalog.source(row, key) is not None
            hw = tuple(int(v) for v in self.catalog.orig_hw(row))
            columns.append(figures.Column(row, key, lo, hi, source, hw))
        html = figures.compare_page(self.summary, self._meta(stage), channel, columns, options)
        return Response(200, HTML, html.encode())

    def location(self, query: Query, row: int) -> Response:
        info = self._info(row)
        height, width = info.orig_hw
        y, x = query.integer("y", None, 0, max(0, height - 1)), query.integer("x", None, 0, max(0, width - 1))
        spots = []
        for meta in self.summary.stages:
            i, j = cell_of(info.orig_hw, (meta.height, meta.width), y, x)
            values = cell_values(self.catalog, meta.ref, row, (i, j))
            order = np.argsort(-np.nan_to_num(values, nan=-np.inf), kind="stable")[:LOCATION_CHANNELS]
            strongest = tuple((int(c), float(values[c])) for c in order)
            spots.append(figures.Spot(meta, (i, j), strongest, auto_scale(meta.height, meta.width, TILE_MIN_SIDE)))
        return Response(200, HTML, figures.location_page(self.summary, info, (y, x), spots).encode())

    def examples(self, query: Query, stage: int | str, channel: int) -> Response:
        self.catalog.channel(stage, channel)
        by, k = query.choice("by", "max", BYS), query.integer("k", EXAMPLES_K, 1, MAX_K)
        options = query.tile_options(scale=False)
        items = top_items(self.catalog, stage, channel, k, by)
        peaks = self.catalog.stage(stage).argmax is not None  # files before receptive-field crops lack them
        cut = crops(self.catalog, stage, channel, [t.row for t in items]) if peaks else [None] * len(items)
        shown = [
            pages.Example(
                item,
                self.catalog.source(item.row, item.key) is not None,
                crop,
                scale=scale_used(self.catalog, stage, item.row, channel, options.normalize),
            )
            for item, crop in zip(items, cut, strict=True)
        ]
        html = pages.examples_page(self.summary, self._meta(stage), channel, by, shown, options)
        return Response(200, HTML, html.encode())

    def stage(self, query: Query, stage: int | str) -> Response:
        meta, by = self._meta(stage), query.choice("by", "max", BYS)
        channels, scores = self.catalog.ranking(stage, by)
        pages_count = max(1, math.ceil(len(channels) / CHANNELS_PER_PAGE))
        page = query.integer("page", 1, 1, pages_count)
        start = (page - 1) * CHANNELS_PER_PAGE
        ranked = []
        for channel, score in zip(channels[start : start + CHANNELS_PER_PAGE], scores[start:], strict=False):
            best = top_items(self.catalog, stage, int(channel), 1, by)
            ranked.append(pages.RankedChannel(int(channel), float(score), best[0] if best else None))
        html = pages.stage_page(self.summary, meta, by, ranked, page, pages_count, start + 1)
        return Response(200, HTML, html.encode())

    def _meta(self, stage: int | str) -> StageInfo:
        self.catalog.stage(stage)
        return next(s for s in self.summary.stages if s.ref == stage)

    # -- pictures and JSON ----------------------------------------------------------------------

    def tile(self, query: Query, stage: int | str, row: int, channel: int) -> Response:
        options = query.tile_options()
        self._check_map(stage, row, channel)
        return Response(200, PNG, tile_png(self.catalog, stage, row, channel, options), self.immutable)

    def overlay(self, query: Query, stage: int | str, row: int, channel: int) -> Response:
        options = query.tile_options(scale=False)
        self._check_map(stage, row, channel)
        return Response(200, PNG, overlay_png(self.catalog, stage, row, channel, options), self.immutable)

    def pca(self, query: Query, stage: int | str, row: int) -> Response:
        self.catalog.stage(stage)
        self.catalog.stored_row(row)
        return Response(200, PNG, pca_png(self.catalog, stage, row), self.immutable)

    def crop(self, query: Query, stage: int | str, row: int, channel: int) -> Response:
        self._check_map(stage, row, channel)
        return Response(200, PNG, crop_png(self.catalog, stage, row, channel), self.immutable)

    def source(self, query: Query, row: int) -> Response:
        side = query.integer("side", 240, 16, 1024)
        self.catalog.stored_row(row)
        return Response(200, JPEG, self.catalog.thumbnail(row, side), self.immutable)

    def original(self, query: Query, row: int) -> Response:
        self.catalog.stored_row(row)
        return Response(200, PNG, self.catalog.original(row), self.immutable)

    def stage_npy(self, query: Query, stage: int | str, row: int) -> Response:
        meta = self._meta(stage)
        self.catalog.stored_row(row)
        name = _file_name(f"{meta.folder}-row{row}.npy")
        return Response(200, NPY, npy_bytes(stage_values(self.catalog, stage, row)), self.immutable, name)

    def channel_npy(self, query: Query, stage: int | str, row: int, channel: int) -> Response:
        meta = self._meta(stage)
        self._check_map(stage, row, channel)
        name = _file_name(f"{meta.folder}-row{row}-c{channel}.npy")
        return Response(200, NPY, npy_bytes(channel_values(self.catalog, stage, row, channel)), self.immutable, name)

    def colorbar(self, query: Query, cmap: str) -> Response:
        if cmap not in CMAPS:
            raise HttpError(404, f"no colour map {cmap!r}; there are {', '.join(CMAPS)}")
        return Response(200, PNG, colorbar_png(cmap), "private, max-age=3600")

    def api_top(self, query: Query) -> Response:
        stage, channel = query.map(), query.integer("channel", None, 0, 10**9)
        k, by = query.integer("k", DEFAULT_K, 1, MAX_K), query.choice("by", "max", BYS)
        self.catalog.channel(stage, channel)
        return Response(200, JSON, items_json(top_items(self.catalog, stage, channel, k, by)).encode())

    def api_ranking(self, query: Query) -> Response:
        stage, by = query.map(), query.choice("by", "max", BYS)
        channels, scores = self.catalog.ranking(stage, by)
        body = {"channels": [int(c) for c in channels], "scores": [_finite(s) for s in scores]}
        return Response(200, JSON, json.dumps(body, allow_nan=False).encode())

    def asset(self, query: Query, name: str) -> Response:
        if name not in ASSETS:
            raise HttpError(404, "no such asset")
        kind, body = ASSETS[name]
        return Response(200, kind, body, "no-cache")

    def _check_map(self, stage: int | str, row: int, channel: int) -> None:
        self.catalog.channel(stage, channel)
        self.catalog.stored_row(row)


def _argument(group: str) -> int | str:
    """A path part as the handler takes it: digits are an int (a row, channel, stage); a map part
    `layer:NAME` (NAME percent-encoded) is the layer's name; anything else (an asset) as it is."""
    if group.isdigit():
        return int(group)
    if group.startswith(LAYER_PREFIX):
        return unquote(group[len(LAYER_PREFIX) :])
    return group


def _file_name(name: str) -> str:
    """A download's name with nothing a Content-Disposition header or a file system could misread."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:200]


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


_UP = re.compile(r"(?:/[\w.:%-]+)+")  # the page above an error: non-empty path parts, nothing else
RESOURCES = ("/tile/", "/overlay/", "/pca/", "/source/", "/map/", "/colorbar/", "/api/", "/assets/")


def _error(target: str, status: int, message: str) -> Response:
    """A page's error as a page that links back up (and to the collection); a picture's, a download's
    or an API call's as plain text."""
    path = urlsplit(target).path if target.startswith("/") else "/"
    if path.startswith(RESOURCES):
        return Response(status, TEXT, (message + "\n").encode())
    up = path.rstrip("/").rsplit("/", 1)[0]
    if not _UP.fullmatch(up):  # `//host` or `/\host` would be a link off this viewer: back to the collection
        up = "/"
    return Response(status, HTML, figures.error_page(status, message, up).encode())
