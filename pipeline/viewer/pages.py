"""The viewer's HTML as text: the collection, an image, a channel of an image, a channel's dataset
examples, and a stage's channels ranked. Pure text building; `server.py` gathers the data.

Every key and text goes through `esc`, every URL through `url` (percent-encoded query, then
escaped); pages load /assets/view.css and /assets/view.js and carry no inline script. Links
that a key follows have `data-key` (see `assets.py`); pictures a user can walk with j/k have
class `pick`. No network, CDN or font: pages work offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from ..records import StageInfo
from ..rendering.colormaps import CMAPS
from ..rendering.painting import NORMALIZATIONS
from ..rendering.tiling import TILE_MIN_SIDE, auto_scale
from ..site.pages import esc, pager_html, placeholder
from .config import BYS
from .crops import Crop
from .examples import TopItem
from .tiles import TileOptions

GENERATOR = "fmpipe view"


LAYER_PREFIX = "layer:"  # a layer's part of a path: layer:NAME, the name percent-encoded
MAP = r"(\d{1,9}|layer:[^/]{1,600})"  # a stage's index or a layer's part, as routes match it


def seg(meta) -> str:
    """A stored map's part of a viewer path: the stage's index, or `layer:` and the layer's name."""
    return str(meta.index) if meta.layer is None else LAYER_PREFIX + quote(meta.layer, safe="")


def url(path: str, **query: object) -> str:
    """A server path with its query percent-encoded (None values left out), escaped for an attribute."""
    pairs = [(k, v) for k, v in query.items() if v is not None]
    return esc(path + ("?" + urlencode(pairs) if pairs else ""))


def link(path: str, text: str, key: str | None = None, cls: str = "", **query: object) -> str:
    keys = f' data-key="{esc(key)}"' if key else ""
    klass = f' class="{esc(cls)}"' if cls else ""
    return f'<a href="{url(path, **query)}"{keys}{klass}>{esc(text)}</a>'


def off(text: str) -> str:
    return f'<span class="off">{esc(text)}</span>'


def step(there: bool, path: str, text: str, key: str | None = None, **query: object) -> str:
    """A bar link when there is somewhere to go (`there`), else the text greyed out."""
    return link(path, text, key, **query) if there else off(text)


def pager(page: int, pages: int, path: str, **query: object) -> str:
    """Links to pages of a listing: the first, a window around `page` (1-based), the last."""
    return pager_html(page, pages, lambda p: link(path, str(p), page=p, **query))


def picture(src: str, alt: str, cls: str = "") -> str:
    """<img> of a server picture (src already built by `url`); reports loaded/broken to the tests."""
    klass = f' class="{esc(cls)}"' if cls else ""
    return f'<img loading="lazy" decoding="async" src="{src}" alt="{esc(alt)}"{klass}>'


@dataclass(frozen=True)
class Summary:
    """What every page says about the file."""

    file: str
    model: str
    rows: int  # images in the file, failures and undone rows included
    stored: int  # images with maps
    failures: int
    partial: bool
    stages: tuple[StageInfo, ...]


def document(summary: Summary, title: str, bar: str, body: str) -> str:
    banner = ""
    if summary.partial:
        banner = (
            f'<p class="banner">partial file: {summary.stored} of {summary.rows} images have maps so far '
            "(the extraction is unfinished; restart the viewer to see more).</p>"
        )
    return (
        "<!doctype html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><meta name="generator" content="{GENERATOR}">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>{esc(title)}</title>'
        '<link rel="icon" href="data:,"><link rel="stylesheet" href="/assets/view.css"></head>\n'
        f'<body><nav class="bar">{bar}</nav><main>{banner}{body}</main>'
        '<script src="/assets/view.js"></script></body></html>\n'
    )


def _keys(text: str) -> str:
    return f'<span class="keys">{esc(text)}</span>'


def _stage_table(summary: Summary) -> str:
    rows = "".join(
        f"<tr><td>{link(f'/stage/{seg(s)}', s.label)}</td><td>{esc(s.module)}</td>"
        f"<td>{s.channels}×{s.height}×{s.width}</td><td>{s.stride}</td></tr>"
        for s in summary.stages
    )
    head = "<tr><th>stage (channels ranked)</th><th>module</th><th>C×H×W</th><th>stride</th></tr>"
    return f"<table>{head}{rows}</table>"


# -- the collection ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Card:
    row: int
    key: str
    thumb: str  # built by `url`: the source thumbnail, or a stage picture when the source is not found
    source: bool


def collection_page(summary: Summary, cards: Sequence[Card], page: int, pages: int, query: str, matched: int) -> str:
    """Page `page` (1-based) of the images with maps (those whose key contains `query`, if any)."""
    q = query or None
    prev = link("/", "← previous page", "ArrowLeft p", page=page - 1, q=q) if page > 1 else off("← previous page")
    nxt = link("/", "next page →", "ArrowRight n", page=page + 1, q=q) if page < pages else off("next page →")
    search = f'<form action="/" method="get"><input name="q" value="{esc(query)}" placeholder="search keys (/)"></form>'
    bar = f"{prev} <span>page {page} of {pages}</span> {nxt} {search}"
    bar += _keys("← → page · j k pick · Enter open · / search")
    found = f"{matched} images whose key contains “{esc(query)}”" if query else f"{summary.stored} images with maps"
    head = (
        f"<h1>{esc(summary.file)}</h1><p>model {esc(summary.model)} · {summary.rows} images, {found}, "
        f"{summary.failures} failed</p>{_stage_table(summary)}"
    )
    items = "".join(
        f'<a class="card pick" href="{url(f"/image/{c.row}")}">'
        f"{picture(c.thumb, c.key if c.source else f'stage picture of {c.key}')}{esc(c.key)}</a>"
        for c in cards
    )
    pages_links = pager(page, pages, "/", q=q)
    empty = "" if cards else "<p>no image to show</p>"
    body = f'{head}<p>{pages_links}</p><div class="cards">{items}</div>{empty}'
    return document(summary, f"{summary.file} · page {page}", bar, body)


# -- one image -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageRow:
    """One stage on an image's page: its top channels (by the image's mean) as tiles."""

    meta: StageInfo
    channels: tuple[int, ...]
    scale: int  # tile upscaling


@dataclass(frozen=True)
class ImageInfo:
    row: int
    key: str
    number: int  # 1-based among the images with maps
    prev: int | None  # neighbouring rows with maps
    next: int | None
    index_page: int  # the collection page that lists it
    source: bool  # its source photo is reachable
    orig_hw: tuple[int, int]


def _image_nav(info: ImageInfo, summary: Summary, keys: str = "ArrowLeft p", back: str = "ArrowRight n") -> str:
    prev = step(info.prev is not None, f"/image/{info.prev}", "← previous image", keys)
    nxt = step(info.next is not None, f"/image/{info.next}", "next image →", back)
    up = link("/", "collection", "u h", page=info.index_page)
    return f"{prev} {up} {nxt} <span>{info.number} / {summary.stored}</span>"


def image_page(summary: Summary, info: ImageInfo, stages: Sequence[StageRow]) -> str:
    """The source, then one row per stage: its top channels as tiles (each opens the channel) and its PCA picture."""
    bar = _image_nav(info, summary) + _keys("← → image · j k pick a channel · Enter open · u collection")
    source = (
        picture(url(f"/source/{info.row}.jpg", side=240), f"source image {info.key}", "source")
        if info.source
        else placeholder("source image not found (pass --images-root if the images moved)", "source")
    )
    height, width = info.orig_hw
    facts = f"<p>row {info.row} · original size {width}×{height} · {esc(summary.file)} · model {esc(summary.model)}</p>"
    sections = "".join(_stage_row(info, s) for s in stages)
    body = f'<h1>{esc(info.key)}</h1><div class="head">{source}{facts}</div>{sections}'
    return document(summary, f"{info.key} · {summary.file}", bar, body)


def _stage_row(info: ImageInfo, stage: StageRow) -> str:
    meta = stage.meta
    tiles = "".join(
        f'<a class="tile pick" href="{url(f"/image/{info.row}/{seg(meta)}/{c}")}">'
        f"{picture(url(f'/tile/{seg(meta)}/{info.row}/{c}.png', scale=stage.scale), f'channel {c}')}c{c}</a>"
        for c in stage.channels
    )
    pca = picture(url(f"/pca/{seg(meta)}/{info.row}.png"), f"{meta.label} PCA picture")
    return (
        f'<section class="stage" id="stage-{esc(meta.anchor)}"><h2>{esc(meta.label)} · {esc(meta.module)}</h2>'
        f'<p class="meta">{meta.channels}×{meta.height}×{meta.width} (C×H×W) · stride {meta.stride} · '
        f"top {len(stage.channels)} channels by this image's mean · "
        f"{link(f'/stage/{seg(meta)}', 'channels ranked')}</p>"
        f'<div class="figs"><div class="tiles">{tiles}</div><figure class="stagepca">{pca}'
        "<figcaption>PCA (R, G, B)</figcaption></figure></div></section>"
    )


# -- a channel of one image ------------------------------------------------------------------------


def _cycle(values: Sequence[str], current: str) -> str:
    return values[(values.index(current) + 1) % len(values)]


def channel_page(
    summary: Summary, info: ImageInfo, meta: StageInfo, channel: int, stats: Sequence[float], options: TileOptions
) -> str:
    """One map large, over the source, with its statistics; colour map and normalisation switchable."""
    here = f"/image/{info.row}/{seg(meta)}"
    style = {"cmap": options.cmap, "normalize": options.normalize}
    prev_c = step(channel > 0, f"{here}/{channel - 1}", "← channel", "ArrowLeft p", **style)
    nxt_c = step(channel + 1 < meta.channels, f"{here}/{channel + 1}", "channel →", "ArrowRight n", **style)
    prev_i = step(info.prev is not None, f"/image/{info.prev}/{seg(meta)}/{channel}", "[ image", "[", **style)
    nxt_i = step(info.next is not None, f"/image/{info.next}/{seg(meta)}/{channel}", "image ]", "]", **style)
    up = link(f"/image/{info.row}", "image page", "u")
    examples = link(f"/examples/{seg(meta)}/{channel}", "dataset examples", "e", **style)
    bar = f"{prev_c} {nxt_c} {prev_i} {nxt_i} {up} {examples}"
    bar += _keys("← → channel · [ ] image · m colour map · z normalisation · e examples · u image")
    page = f"{here}/{channel}"
    cmaps = _choices("colour map", CMAPS, options.cmap, lambda v: (page, {**style, "cmap": v}), "m")
    norms = _choices(
        "normalise per", NORMALIZATIONS, options.normalize, lambda v: (page, {**style, "normalize": v}), "z"
    )
    pictured = f"/{seg(meta)}/{info.row}/{channel}.png"
    tile = picture(url(f"/tile{pictured}", **style), f"channel {channel}", "map")
    over = (
        picture(url(f"/overlay{pictured}", **style), f"channel {channel} over the source", "over")
        if info.source
        else placeholder("source image not found: no overlay", "over")
    )
    low, high, mean = (_num(v) for v in stats)
    body = (
        f"<h1>{esc(info.key)} · {esc(meta.label)} ({esc(meta.module)}) · channel {channel} of {meta.channels}</h1>"
        f'<p class="stats">min <span class="value">{low}</span> · max <span class="value">{high}</span> · '
        f'mean <span class="value">{mean}</span></p>{cmaps}{norms}<div class="big">{tile}{over}</div>'
    )
    return document(summary, f"{info.key} · {meta.label} · channel {channel}", bar, body)


def _choices(label: str, values: Sequence[str], current: str, target, key: str) -> str:
    parts = []
    for value in values:
        path, query = target(value)
        if value == current:
            parts.append(f"<b>{esc(value)}</b>")
        else:
            parts.append(link(path, value, key if value == _cycle(values, current) else None, **query))
    return f'<p class="choices">{esc(label)}: {" ".join(parts)}</p>'


def _num(value: float) -> str:
    if value != value:  # NaN
        return "n/a"
    return f"{value:.4e}" if abs(value) >= 1e4 or (value != 0 and abs(value) < 1e-3) else f"{value:.4f}"


# -- a channel across the collection ---------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    item: TopItem
    source: bool
    crop: Crop | None = None  # where the map peaks, cut from the source (files with stored peaks)


def examples_page(
    summary: Summary, meta: StageInfo, channel: int, by: str, examples: Sequence[Example], options: TileOptions
) -> str:
    """The images whose map of this channel has the largest max (or mean), best first, each over its source."""
    here, style = f"/examples/{seg(meta)}", {"cmap": options.cmap, "normalize": options.normalize}
    k = len(examples) or None
    prev_c = step(channel > 0, f"{here}/{channel - 1}", "← channel", "ArrowLeft p", by=by, k=k, **style)
    nxt_c = step(channel + 1 < meta.channels, f"{here}/{channel + 1}", "channel →", "ArrowRight n", by=by, k=k, **style)
    other = _cycle(BYS, by)
    switch = link(f"{here}/{channel}", f"rank by {other}", "x", by=other, k=k, **style)
    up = link(f"/stage/{seg(meta)}", "stage ranking", "u", by=by)
    bar = f"{prev_c} {nxt_c} {switch} {up} {link('/', 'collection', 'h')}"
    bar += _keys("← → channel · x max/mean · j k pick · Enter open · u stage · b back")
    cards = "".join(_example(meta, channel, n, e, by, style) for n, e in enumerate(examples, 1))
    body = (
        f"<h1>{esc(meta.label)} ({esc(meta.module)}) · channel {channel}: dataset examples</h1>"
        f"<p>the {len(examples)} images whose map of this channel has the largest {esc(by)}, best first "
        f'(ties: lower row first)</p><div class="examples">{cards or placeholder("no image with maps")}</div>'
    )
    return document(summary, f"{meta.label} · channel {channel} · dataset examples", bar, body)


def _example(meta: StageInfo, channel: int, rank: int, example: Example, by: str, style: dict) -> str:
    item = example.item
    if example.source:
        shown = picture(url(f"/overlay/{seg(meta)}/{item.row}/{channel}.png", **style), f"{item.key}, channel over it")
    else:
        shown = picture(url(f"/tile/{seg(meta)}/{item.row}/{channel}.png", **style), f"map of {item.key}", "map")
    target = url(f"/image/{item.row}/{seg(meta)}/{channel}", **style)
    if example.crop is not None and example.source:  # the receptive-field crop beside the whole image
        box = ",".join(map(str, example.crop.box))
        cut = picture(f"/crop/{seg(meta)}/{item.row}/{channel}.png", f"{item.key} cut around the peak", "crop")
        return (
            f'<a class="example cropped pick" href="{target}" data-crop="{box}"><span class="pair">{shown}{cut}'
            f"</span>#{rank} · {esc(by)} "
            f'<span class="value">{_num(item.value)}</span><br>{esc(item.key)}</a>'
        )
    return (
        f'<a class="example pick" href="{target}">{shown}#{rank} · {esc(by)} '
        f'<span class="value">{_num(item.value)}</span><br>{esc(item.key)}</a>'
    )


@dataclass(frozen=True)
class RankedChannel:
    channel: int
    score: float
    top: TopItem | None  # the image that drives it most


def stage_page(
    summary: Summary, meta: StageInfo, by: str, ranked: Sequence[RankedChannel], page: int, pages: int, first: int
) -> str:
    """A stage's channels by how strongly they respond across the collection; each opens its examples."""
    here = f"/stage/{seg(meta)}"
    prev = step(page > 1, here, "← previous", "ArrowLeft p", by=by, page=page - 1)
    nxt = step(page < pages, here, "next →", "ArrowRight n", by=by, page=page + 1)
    other = _cycle(BYS, by)
    switch, up = link(here, f"by {other}", "x", by=other), link("/", "collection", "u h")
    bar = f"{prev} <span>page {page} of {pages}</span> {nxt} {switch} {up}"
    bar += _keys("← → page · x max/mean · j k pick · Enter examples · u collection")
    scale = auto_scale(meta.height, meta.width, TILE_MIN_SIDE)
    tiles = []
    for n, r in enumerate(ranked, first):
        shown = placeholder("no image")
        if r.top:
            src = url(f"/tile/{seg(meta)}/{r.top.row}/{r.channel}.png", scale=scale)
            shown = picture(src, f"channel {r.channel} on {r.top.key}")
        target = url(f"/examples/{seg(meta)}/{r.channel}", by=by)
        score = f'<span class="value">{_num(r.score)}</span>'
        tiles.append(f'<a class="tile pick" href="{target}">{shown}#{n} c{r.channel} {score}</a>')
    body = (
        f"<h1>{esc(meta.label)} ({esc(meta.module)}): channels by how strongly they respond ({esc(by)})</h1>"
        f"<p>score: the mean over the images of each image's {esc(by)} of the channel; each tile shows the "
        "channel on the image that drives it most; open one for its dataset examples</p>"
        f'<div class="tiles">{"".join(tiles)}</div>'
    )
    return document(summary, f"{meta.label} · channels by {by}", bar, body)
