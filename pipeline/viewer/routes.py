"""What each viewer URL answers: pages, pictures and JSON computed from the file, and two assets.

    /                                       the collection (?page=N&q=TEXT)
    /image/ROW                              an image: the source, each stage's top channels, PCA
    /image/ROW/STAGE/CHANNEL                a channel of an image (?cmap=&normalize=)
    /examples/STAGE/CHANNEL                 its dataset examples (?by=max|mean&k=K&cmap=&normalize=)
    /stage/STAGE                            a stage's channels ranked (?by=&page=)
    /tile/STAGE/ROW/CHANNEL.png             render's per-channel PNG (?cmap=&normalize=&scale=N)
    /overlay/STAGE/ROW/CHANNEL.png          render's --overlay PNG (?cmap=&normalize=)
    /pca/STAGE/ROW.png                      render's --layout pca picture
    /source/ROW.jpg                         the source photo (?side=N), read only below the images root
    /api/top?stage=S&channel=C&k=K&by=max   {"items": [{"row", "key", "value"}, ...]}, best first
    /api/ranking?stage=S&by=max             {"channels": [...], "scores": [...]}, strongest first

Every number in a path is digits only; every query value is checked. A bad value is a 400,
a thing that does not exist (stage, row, channel, page, a source not found) a 404; anything
else (a damaged chunk) a 500. Unknown query parameters are ignored. No torch.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from urllib.parse import parse_qs, unquote, urlsplit

from ..decoding import DecodeError
from ..errors import FmpipeError, UsageError
from ..records import StageInfo
from ..rendering.selection import top_channels
from ..rendering.tiling import TILE_MIN_SIDE, auto_scale
from . import pages
from .assets import ASSETS
from .catalog import Catalog
from .config import BYS, DEFAULT_K, MAX_K
from .crops import crop_png, crops
from .examples import items_json, top_items
from .pages import LAYER_PREFIX, MAP
from .tiles import TileOptions, overlay_png, pca_png, tile_png

log = logging.getLogger(__name__)

PER_PAGE = 60  # images per collection page
CHANNELS_PER_PAGE = 48  # channels per stage-ranking page
IMAGE_TILES = 16  # top channels per stage on an image's page
EXAMPLES_K = 12  # dataset examples shown by default
MAX_QUERY_TEXT = 200
MAX_FIELDS = 20
_INT = re.compile(r"\d{1,9}")
HTML, PNG, JPEG, JSON = "text/html; charset=utf-8", "image/png", "image/jpeg", "application/json"


@dataclass(frozen=True)
class Response:
    status: int
    type: str
    body: bytes
    cache: str = "no-store"


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Query:
    """A request's query parameters, each read once and checked; a bad one is HttpError 400."""

    def __init__(self, text: str):
        try:
            self.values = parse_qs(text, keep_blank_values=True, max_num_fields=MAX_FIELDS, errors="strict")
        except (ValueError, UnicodeDecodeError) as err:
            raise HttpError(400, f"malformed query string ({err})") from None

    def _one(self, name: str) -> str | None:
        values = self.values.get(name)
        if values is None:
            return None
        if len(values) != 1:
            raise HttpError(400, f"{name} is given {len(values)} times; give it once")
        return values[0]

    def integer(self, name: str, default: int | None, lo: int, hi: int) -> int:
        raw = self._one(name)
        if raw is None:
            if default is None:
                raise HttpError(400, f"{name} is required")
            return default
        if not _INT.fullmatch(raw) or not lo <= int(raw) <= hi:
            raise HttpError(400, f"{name} must be an integer from {lo} to {hi}, got {raw[:40]!r}")
        return int(raw)

    def choice(self, name: str, default: str, values: tuple[str, ...]) -> str:
        raw = self._one(name)
        if raw is None:
            return default
        if raw not in values:
            raise HttpError(400, f"{name} must be one of {', '.join(values)}, got {raw[:40]!r}")
        return raw

    def map(self) -> int | str:
        """`stage=S` (an index) or `layer=NAME`: the stored map an API call is about."""
        layer = self._one("layer")
        if layer is not None:
            if not layer or len(layer) > MAX_QUERY_TEXT:
                raise HttpError(400, "layer must be a stored layer's name")
            return layer
        return self.integer("stage", None, 0, 10**9)

    def text(self, name: str) -> str:
        raw = self._one(name) or ""
        if len(raw) > MAX_QUERY_TEXT:
            raise HttpError(400, f"{name} is longer than {MAX_QUERY_TEXT} characters")
        return raw

    def tile_options(self, scale: bool = True) -> TileOptions:
        try:
            return TileOptions(
                cmap=self._one("cmap") or TileOptions.cmap,
                normalize=self._one("normalize") or TileOptions.normalize,
                scale=self.integer("scale", 0, 0, 10**9) if scale else 0,
            )
        except UsageError as err:
            raise HttpError(400, str(err)) from None


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
                (rf"/image/(\d{{1,9}})/{MAP}/(\d{{1,9}})", self.channel),
                (rf"/examples/{MAP}/(\d{{1,9}})", self.examples),
                (rf"/stage/{MAP}", self.stage),
                (rf"/tile/{MAP}/(\d{{1,9}})/(\d{{1,9}})\.png", self.tile),
                (rf"/overlay/{MAP}/(\d{{1,9}})/(\d{{1,9}})\.png", self.overlay),
                (rf"/pca/{MAP}/(\d{{1,9}})\.png", self.pca),
                (rf"/crop/{MAP}/(\d{{1,9}})/(\d{{1,9}})\.png", self.crop),
                (r"/source/(\d{1,9})\.jpg", self.source),
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
            return _text(err.status, str(err))
        except DecodeError as err:
            return _text(404, f"source image not available: {err}")
        except FmpipeError as err:
            log.warning("%s: %s", target[:200], err)
            return _text(500, str(err))
        except Exception:
            log.exception("GET %s failed", target[:200])
            return _text(500, "internal error; the viewer's log says more")

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
        middle = list(self.catalog.stages)[len(self.catalog.stages) // 2]
        return pages.Card(row, key, pages.url(f"/pca/{middle}/{row}.png"), False)

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

    def channel(self, query: Query, row: int, stage: int, channel: int) -> Response:
        self.catalog.channel(stage, channel)
        info, options = self._info(row), query.tile_options(scale=False)
        stats = [float(v) for v in self.catalog.stats(stage, row)[:, channel]]
        html = pages.channel_page(self.summary, info, self._meta(stage), channel, stats, options)
        return Response(200, HTML, html.encode())

    def examples(self, query: Query, stage: int, channel: int) -> Response:
        self.catalog.channel(stage, channel)
        by, k = query.choice("by", "max", BYS), query.integer("k", EXAMPLES_K, 1, MAX_K)
        options = query.tile_options(scale=False)
        items = top_items(self.catalog, stage, channel, k, by)
        peaks = self.catalog.stage(stage).argmax is not None  # files before receptive-field crops lack them
        cut = crops(self.catalog, stage, channel, [t.row for t in items]) if peaks else [None] * len(items)
        shown = [
            pages.Example(item, self.catalog.source(item.row, item.key) is not None, crop)
            for item, crop in zip(items, cut, strict=True)
        ]
        html = pages.examples_page(self.summary, self._meta(stage), channel, by, shown, options)
        return Response(200, HTML, html.encode())

    def stage(self, query: Query, stage: int) -> Response:
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

    def tile(self, query: Query, stage: int, row: int, channel: int) -> Response:
        options = query.tile_options()
        self._check_map(stage, row, channel)
        return Response(200, PNG, tile_png(self.catalog, stage, row, channel, options), self.immutable)

    def overlay(self, query: Query, stage: int, row: int, channel: int) -> Response:
        options = query.tile_options(scale=False)
        self._check_map(stage, row, channel)
        return Response(200, PNG, overlay_png(self.catalog, stage, row, channel, options), self.immutable)

    def pca(self, query: Query, stage: int, row: int) -> Response:
        self.catalog.stage(stage)
        self.catalog.stored_row(row)
        return Response(200, PNG, pca_png(self.catalog, stage, row), self.immutable)

    def crop(self, query: Query, stage: int, row: int, channel: int) -> Response:
        self._check_map(stage, row, channel)
        return Response(200, PNG, crop_png(self.catalog, stage, row, channel), self.immutable)

    def source(self, query: Query, row: int) -> Response:
        side = query.integer("side", 240, 16, 1024)
        self.catalog.stored_row(row)
        return Response(200, JPEG, self.catalog.thumbnail(row, side), self.immutable)

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

    def _check_map(self, stage: int, row: int, channel: int) -> None:
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


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _text(status: int, message: str) -> Response:
    return Response(status, "text/plain; charset=utf-8", (message + "\n").encode())
