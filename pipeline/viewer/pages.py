"""The viewer's HTML as text: the collection, an image, a channel of an image, a channel's dataset
examples, and a stage's channels ranked. Pure text building; `routes.py` gathers the data
(from `catalog.py`).

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
from ..rendering.tiling import TILE_MIN_SIDE, auto_scale
from ..site.pages import esc, pager_html, placeholder, shell
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


def pager(page: int, pages: int, path: str, first: int = 1, **query: object) -> str:
    """Links to pages of a listing: the first, a window around `page` (1-based, as shown), the last;
    `first`: the URL's number of the first page (1 for the collection, 0 for an image's channels)."""
    return pager_html(page, pages, lambda p: link(path, str(p), page=p - 1 + first, **query))


def picture(src: str, alt: str, cls: str = "") -> str:
    """<img> of a server picture (src already built by `url`); reports loaded/broken to the tests."""
    klass = f' class="{esc(cls)}"' if cls else ""
    return f'<img loading="lazy" decoding="async" src="{src}" alt="{esc(alt)}"{klass}>'


READOUT = '<output id="readout" class="readout">point at a map: its value and position show here</output>'


def hover_map(
    src: str, npy: str, what: str, shape: tuple[int, int], cls: str = "map", locate: tuple[int, tuple] | None = None
) -> str:
    """<img> of a map (src, npy built by `url`) that reports the value under the pointer to the readout;
    with `locate` (row, (H, W) of its source), a click opens that point of the source in every stage."""
    height, width = shape
    extra = ""
    if locate is not None:
        row, (orig_h, orig_w) = locate
        extra = f' data-locate="{url(f"/location/{row}")}" data-orig="{orig_h}x{orig_w}"'

    return (
        f'<img loading="lazy" decoding="async" src="{src}" alt="{esc(what)}" class="{esc(cls)} hover" data-npy="{npy}" '
        f'data-what="{esc(what)}" data-h="{height}" data-w="{width}"{extra}>'
    )


def colorbar(cmap: str, lo: float, hi: float, note: str = "") -> str:
    """The colour table from `lo` (left) to `hi` (right): the scale the maps beside it use."""
    bar = f'<img src="{url(f"/colorbar/{cmap}.png")}" alt="colour bar {esc(cmap)}" class="bar">'
    text = f'<span class="why">{esc(note)}</span>' if note else ""
    return (
        f'<span class="cbar" data-lo="{lo!r}" data-hi="{hi!r}"><span class="lo">{num(lo)}</span>{bar}'
        f'<span class="hi">{num(hi)}</span>{text}</span>'
    )


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
    """A viewer page: the shared shell with the viewer's stylesheet, its bar, a partial file's banner,
    `body`, and its one script."""
    banner = ""
    if summary.partial:
        banner = (
            f'<p class="banner">partial file: {summary.stored} of {summary.rows} images have maps so far '
            "(the extraction is unfinished; restart the viewer to see more).</p>"
        )
    return shell(
        title,
        GENERATOR,
        '<link rel="icon" href="data:,"><link rel="stylesheet" href="/assets/view.css">',
        f'<nav class="bar">{bar}</nav><main>{banner}{body}</main><script src="/assets/view.js"></script>',
    )


def keys(text: str) -> str:
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
    bar += keys("← → page · j k pick · Enter open · / search")
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


def image_nav(
    info: ImageInfo,
    summary: Summary,
    back: str = "ArrowLeft p [",
    forth: str = "ArrowRight n ]",
    path: str = "/image/{}",
) -> str:
    """Links to the previous and next image (`path` with the row put in), its collection page, and where we are."""
    prev = step(info.prev is not None, path.format(info.prev), "← previous image", back)
    nxt = step(info.next is not None, path.format(info.next), "next image →", forth)
    up = link("/", "collection", "u h", page=info.index_page)
    return f"{prev} {up} {nxt} <span>{info.number} / {summary.stored}</span>"


def image_page(summary: Summary, info: ImageInfo, stages: Sequence[StageRow]) -> str:
    """The source, then one row per stage: its top channels as tiles (each opens the channel) and its PCA picture."""
    bar = image_nav(info, summary) + keys("← → [ ] image · j k pick a channel · Enter open · u collection")
    source = (
        f'<a href="{url(f"/source/{info.row}.png")}">'
        f"{picture(url(f'/source/{info.row}.jpg', side=240), f'source image {info.key}', 'source')}</a>"
        if info.source
        else placeholder("source image not found (pass --images-root if the images moved)", "source")
    )
    height, width = info.orig_hw
    full = f" · {link(f'/source/{info.row}.png', 'full-size source')}" if info.source else ""
    facts = f"<p>row {info.row} · original size {width}×{height}{full} · {esc(summary.file)}"
    facts += f" · model {esc(summary.model)}</p>"
    sections = "".join(_stage_row(info, s) for s in stages)
    body = f'<h1>{esc(info.key)}</h1><div class="head">{source}{facts}</div>{sections}{READOUT}'
    return document(summary, f"{info.key} · {summary.file}", bar, body)


def _stage_row(info: ImageInfo, stage: StageRow) -> str:
    meta = stage.meta
    tiles = []
    for c in stage.channels:
        pictured, shape = f"/{seg(meta)}/{info.row}/{c}", (meta.height, meta.width)
        tile = hover_map(
            url(f"/tile{pictured}.png", scale=stage.scale), url(f"/map{pictured}.npy"), f"{meta.label} c{c}", shape
        )
        tiles.append(f'<a class="tile pick" href="{url(f"/image/{info.row}/{seg(meta)}/{c}")}">{tile}c{c}</a>')
    # The PCA is fitted over the file on the first request for a stage (seconds on large maps):
    # drawn when asked for, so the page itself answers at once (view.js swaps the link for the picture).
    pca = f'<a class="pca" href="{url(f"/pca/{seg(meta)}/{info.row}.png")}">show the PCA picture</a>'
    every = link(f"/image/{info.row}/{seg(meta)}", f"all {meta.channels} channels")
    return (
        f'<section class="stage" id="stage-{esc(meta.anchor)}"><h2>{esc(meta.label)} · {esc(meta.module)}</h2>'
        f'<p class="meta">{meta.channels}×{meta.height}×{meta.width} (C×H×W) · stride {meta.stride} · '
        f"top {len(stage.channels)} channels by this image's mean · "
        f"{every} · {link(f'/stage/{seg(meta)}', 'channels ranked')}</p>"
        f'<div class="figs"><div class="tiles">{"".join(tiles)}</div><figure class="stagepca">{pca}'
        "<figcaption>PCA (R, G, B)</figcaption></figure></div></section>"
    )


# -- a channel of one image ------------------------------------------------------------------------


def _cycle(values: Sequence[str], current: str) -> str:
    return values[(values.index(current) + 1) % len(values)]


def num(value: float) -> str:
    if value != value:  # NaN
        return "n/a"
    return f"{value:.4e}" if abs(value) >= 1e4 or (value != 0 and abs(value) < 1e-3) else f"{value:.4f}"


# -- a channel across the collection ---------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    item: TopItem
    source: bool
    crop: Crop | None = None  # where the map peaks, cut from the source (files with stored peaks)
    scale: tuple[float, float] | None = None  # (lo, hi) its colours run between


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
    rows = ",".join(str(e.item.row) for e in examples[:12])
    compare = link(f"/compare/{seg(meta)}/{channel}", "compare them", "c", rows=rows, **style) if examples else ""
    bar = f"{prev_c} {nxt_c} {switch} {up} {compare} {link('/', 'collection', 'h')}"
    bar += keys("← → channel · x max/mean · j k pick · Enter open · u stage · b back")
    cards = "".join(_example(meta, channel, n, e, by, style) for n, e in enumerate(examples, 1))
    body = (
        f"<h1>{esc(meta.label)} ({esc(meta.module)}) · channel {channel}: dataset examples</h1>"
        f"<p>the {len(examples)} images whose map of this channel has the largest {esc(by)}, best first "
        f'(ties: lower row first)</p><div class="examples">{cards or placeholder("no image with maps")}</div>{READOUT}'
    )
    return document(summary, f"{meta.label} · channel {channel} · dataset examples", bar, body)


def _example(meta: StageInfo, channel: int, rank: int, example: Example, by: str, style: dict) -> str:
    item = example.item
    pictured, shape = f"/{seg(meta)}/{item.row}/{channel}", (meta.height, meta.width)
    npy, what = url(f"/map{pictured}.npy"), f"{item.key} · {meta.label} c{channel}"
    if example.source:
        shown = hover_map(url(f"/overlay{pictured}.png", **style), npy, what, shape, "over")
    else:
        shown = hover_map(url(f"/tile{pictured}.png", **style), npy, what, shape)
    target = url(f"/image/{item.row}/{seg(meta)}/{channel}", **style)
    bar = colorbar(style["cmap"], *example.scale) if example.scale else ""
    if example.crop is not None and example.source:  # the receptive-field crop beside the whole image
        box = ",".join(map(str, example.crop.box))
        cut = picture(f"/crop/{seg(meta)}/{item.row}/{channel}.png", f"{item.key} cut around the peak", "crop")
        return (
            f'<a class="example cropped pick" href="{target}" data-crop="{box}"><span class="pair">{shown}{cut}'
            f"</span>#{rank} · {esc(by)} "
            f'<span class="value">{num(item.value)}</span><br>{esc(item.key)}<br>{bar}</a>'
        )
    return (
        f'<a class="example pick" href="{target}">{shown}#{rank} · {esc(by)} '
        f'<span class="value">{num(item.value)}</span><br>{esc(item.key)}<br>{bar}</a>'
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
    bar += keys("← → page · x max/mean · j k pick · Enter examples · u collection")
    scale = auto_scale(meta.height, meta.width, TILE_MIN_SIDE)
    tiles = []
    for n, r in enumerate(ranked, first):
        shown = placeholder("no image")
        if r.top:
            src = url(f"/tile/{seg(meta)}/{r.top.row}/{r.channel}.png", scale=scale)
            npy, what = url(f"/map/{seg(meta)}/{r.top.row}/{r.channel}.npy"), f"{r.top.key} · {meta.label} c{r.channel}"
            shown = hover_map(src, npy, what, (meta.height, meta.width))
        target = url(f"/examples/{seg(meta)}/{r.channel}", by=by)
        score = f'<span class="value">{num(r.score)}</span>'
        on = f'<span class="on" title="{esc(r.top.key)}">on {esc(r.top.key)}</span>' if r.top else ""
        tiles.append(f'<a class="tile pick" href="{target}">{shown}#{n} c{r.channel} {score}{on}</a>')
    body = (
        f"<h1>{esc(meta.label)} ({esc(meta.module)}): channels by how strongly they respond ({esc(by)})</h1>"
        f"<p>score: the mean over the images of each image's {esc(by)} of the channel; each tile shows the "
        "channel on the image that drives it most; open one for its dataset examples</p>"
        f'<div class="tiles">{"".join(tiles)}</div>{READOUT}'
    )
    return document(summary, f"{meta.label} · channels by {by}", bar, body)
