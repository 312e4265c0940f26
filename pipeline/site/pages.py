"""The gallery's HTML: index pages and one page per image, with inline CSS and JavaScript only.

Pure text building, no file access: `build.py` collects what the render folder holds and
writes these strings. Every key and text goes through `html.escape`, every link through
`href` (relative, percent-encoded), and the embedded JSON cannot close its <script>.
Pages work from file:// with no server, network, external script or font.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from urllib.parse import quote

from ..records import StageInfo
from .assets import CSS, HEAD_JS, IMAGE_JS, INDEX_JS

GENERATOR = "fmpipe gallery"
PAGER_SPAN = 3  # index page links shown on each side of the current one


@dataclass(frozen=True)
class Img:
    """One <img>: a relative URL (unencoded path), its text, and its size when known."""

    src: str
    alt: str
    width: int = 0
    height: int = 0
    cls: str = ""
    data: tuple[tuple[str, str], ...] = ()  # data-* attributes


def href(path: str) -> str:
    """A relative path as an attribute value: percent-encoded ('#', '?', '%', spaces, unicode), escaped."""
    return html.escape(quote(path, safe="/"), quote=True)


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def img(image: Img) -> str:
    """<img> that loads lazily, reports loaded/broken, and keeps its box while loading."""
    size = f' width="{image.width}" height="{image.height}"' if image.width and image.height else ""
    cls = f' class="{esc(image.cls)}"' if image.cls else ""
    data = "".join(f' data-{esc(k)}="{esc(v)}"' for k, v in image.data)
    return (
        f'<img loading="lazy" decoding="async" src="{href(image.src)}" alt="{esc(image.alt)}"{size}{cls}{data} '
        'onload="fmOk(this)" onerror="fmBad(this)">'
    )


def placeholder(text: str, cls: str = "") -> str:
    return f'<span class="ph {esc(cls)}">{esc(text)}</span>'


def embed_json(value: object) -> str:
    """JSON for a <script type="application/json">: '<' written as \\u003c so no tag can close it."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def shell(title: str, generator: str, head: str, body: str) -> str:
    """The HTML every fmpipe page is made of, the gallery's and the viewer's: doctype, UTF-8, the
    generator, a phone-sized viewport and the escaped `title`; `head` (after the title) and `body`
    go in as they are."""
    return (
        "<!doctype html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><meta name="generator" content="{esc(generator)}">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>{esc(title)}</title>'
        f"{head}</head>\n<body>{body}</body></html>\n"
    )


def document(title: str, body: str, script: str) -> str:
    """A gallery page: inline CSS, the image-state helpers, `body`, then `script`."""
    return shell(
        title, GENERATOR, f"<style>{CSS}</style><script>{HEAD_JS}</script>", f"{body}\n<script>{script}</script>"
    )


def nav_link(ident: str, url: str | None, text: str) -> str:
    """A bar link with an id the keyboard handler follows; plain text when there is nowhere to go."""
    if url is None:
        return f'<span class="off">{esc(text)}</span>'
    return f'<a id="{ident}" href="{href(url)}">{esc(text)}</a>'


def pager(page: int, pages: int, name_of) -> str:
    """Links to index pages: first, a window around `page` (1-based), last; `name_of(p)` gives the file."""
    return pager_html(page, pages, lambda p: f'<a href="{href(name_of(p))}">{p}</a>')


def pager_html(page: int, pages: int, link_to) -> str:
    """The pages a pager shows (the first, a window around `page`, the last; … for gaps), the
    current one in bold and the others as `link_to(p)`; "" for a single page."""
    if pages <= 1:
        return ""
    shown = sorted({1, pages, *range(max(1, page - PAGER_SPAN), min(pages, page + PAGER_SPAN) + 1)})
    parts, last = [], 0
    for p in shown:
        if p > last + 1:
            parts.append("…")
        parts.append(f"<b>{p}</b>" if p == page else link_to(p))
        last = p
    return " ".join(parts)


@dataclass(frozen=True)
class StageMeta(StageInfo):
    """A stored stage as the pages describe it: its `StageInfo` plus what was rendered."""

    rendered: bool = False  # OUT/stage<S>/ exists
    explained: tuple[float, ...] | None = None  # the PCA fit's variance fractions (stage<S>/pca.json)

    @property
    def summary(self) -> str:
        return f"{self.channels} channels · stride {self.stride} · {self.channels}×{self.height}×{self.width} (C×H×W)"


@dataclass(frozen=True)
class Site:
    """What every page shows about the file, and the index pages' names."""

    file: str  # the fmpipe file as given (used in command hints)
    model: str
    rows: int  # images in the file, failures included
    stored: int  # images with pages
    failures: tuple[tuple[str, str], ...]  # (key, reason)
    stages: tuple[StageMeta, ...]
    pages: int  # index pages

    @staticmethod
    def index_name(page: int) -> str:
        return "index.html" if page == 1 else f"index-{page}.html"


@dataclass(frozen=True)
class Entry:
    """One stored image: its row, key, page and thumbnail, paths relative to the render folder."""

    number: int  # 1-based position among the stored images
    row: int
    key: str
    page: str  # gallery/000012.html
    thumb: str | None  # gallery/thumbs/<folder>.jpg; None: the source was not found
    orig_hw: tuple[int, int]


@dataclass(frozen=True)
class Figure:
    """One PNG of one stage of one image (grid, grid-overlay or pca), with its caption."""

    image: Img
    caption: str


@dataclass(frozen=True)
class StageBlock:
    """One stage row of an image page: its figures, and the JSON the channel view reads."""

    meta: StageMeta
    figures: tuple[Figure, ...]
    data: dict  # key, dir, digits, channels, png, ovl, grids, min, max, mean


def index_page(site: Site, entries: list[Entry], page: int, per_page: int) -> str:
    """Index page `page` (1-based): the stage table, a pager, one card per image, failures on page 1."""
    name = site.index_name
    prev = nav_link("prev", name(page - 1) if page > 1 else None, "← previous page")
    nxt = nav_link("next", name(page + 1) if page < site.pages else None, "next page →")
    bar = f'<nav class="bar">{prev} <span>page {page} of {site.pages}</span> {nxt}'
    bar += '<span class="keys">← → page · open an image, then ← → image · ↑ ↓ stage · c channels</span></nav>'
    first = (page - 1) * per_page + 1
    here = f"images {first}–{first + len(entries) - 1}" if entries else "no image with maps"
    head = (
        f"<h1>{esc(site.file)}</h1><p>model {esc(site.model)} · {site.rows} images, {site.stored} with maps, "
        f"{len(site.failures)} failed · {here} here</p>"
    )
    cards = "".join(_card(entry) for entry in entries)
    body = f"{bar}<main>{head}{_stage_table(site)}<p>{pager(page, site.pages, name)}</p>"
    body += f'<div class="cards">{cards}</div><p>{pager(page, site.pages, name)}</p>{_failures(site, page)}</main>'
    return document(f"{site.file}: {here}", body, INDEX_JS)


def _card(entry: Entry) -> str:
    picture = img(Img(entry.thumb, entry.key)) if entry.thumb else placeholder("source image not found")
    return f'<a class="card" href="{href(entry.page)}">{picture}{esc(entry.key)}</a>'


def _stage_table(site: Site) -> str:
    rows = []
    for s in site.stages:
        pca = ", ".join(f"{v:.0%}" for v in s.explained) if s.explained else ""
        drawn = "yes" if s.rendered else f"no: fmpipe render {esc(site.file)} {esc(s.option)} --html"
        rows.append(
            f"<tr><td>{esc(str(s.ref))}</td><td>{esc(s.module)}</td><td>{s.channels}</td><td>{s.stride}</td>"
            f"<td>{s.channels}×{s.height}×{s.width}</td><td>{drawn}</td><td>{pca}</td></tr>"
        )
    head = "<tr><th>stage</th><th>module</th><th>channels</th><th>stride</th><th>C×H×W</th><th>rendered</th>"
    return f"<table>{head}<th>PCA variance (R, G, B)</th></tr>{''.join(rows)}</table>"


def _failures(site: Site, page: int) -> str:
    if not site.failures:
        return ""
    if page != 1:
        return f'<p>{len(site.failures)} images failed: listed on <a href="index.html">page 1</a>.</p>'
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(r)}</td></tr>" for k, r in site.failures)
    return f"<h2>Failures ({len(site.failures)})</h2><table><tr><th>image</th><th>reason</th></tr>{rows}</table>"


def image_page(
    site: Site, entry: Entry, blocks: list[StageBlock], prev: str | None, nxt: str | None, index: int
) -> str:
    """The page of one image (written to gallery/): source thumbnail, one row per stage, channel view.

    `prev`/`nxt`: the neighbouring images' pages (relative to the render folder); `index`: its index page.
    """
    up = "../"
    bar = (
        f'<nav class="bar">{nav_link("prev", up + prev if prev else None, "← previous")} '
        f'<a id="up" href="{href(up + site.index_name(index))}">index</a> '
        f"{nav_link('next', up + nxt if nxt else None, 'next →')} <span>{entry.number} / {site.stored}</span>"
        '<span class="keys">← → image · ↑ ↓ stage · c channel view (← → channel, Esc close) · u index</span></nav>'
    )
    source = (
        img(Img(up + entry.thumb, f"source image {entry.key}", cls="source"))
        if entry.thumb
        else placeholder("source image not found (pass --images-root if the images moved)", "source")
    )
    height, width = entry.orig_hw
    facts = f"<p>original size {width}×{height} · row {entry.row} · {esc(site.file)} · model {esc(site.model)}</p>"
    sections = "".join(_stage_section(site, block) for block in blocks)
    data = {block.meta.anchor: block.data for block in blocks if block.data}
    viewer = (
        '<div id="viewer" hidden role="dialog"><b id="vtitle"></b> <span id="vstats" class="stats"></span> '
        '<button data-act="prev">‹</button><button data-act="next">›</button><button data-act="close">×</button>'
        '<div id="vscale"></div><div id="vbody"></div><div id="vlist"></div></div>'
    )
    body = f'{bar}<main><h1>{esc(entry.key)}</h1><div class="head">{source}{facts}</div>{sections}</main>{viewer}'
    body += f'<script type="application/json" id="fm-data">{embed_json({"stages": data})}</script>'
    return document(f"{entry.key} · {site.file}", body, IMAGE_JS)


def _full_size(image: Img) -> str:
    """A link to a figure PNG itself: a grid of hundreds of channels is read at its own size."""
    size = f" ({image.width}×{image.height})" if image.width and image.height else ""
    return f' <a class="full" href="{href(image.src)}" target="_blank">open full size{size}</a>'


def _stage_section(site: Site, block: StageBlock) -> str:
    meta = block.meta
    ref = esc(meta.anchor)
    button = f'<button class="chan" data-stage="{ref}">channels (c)</button>' if block.data else ""
    if block.figures:
        figs = "".join(
            f"<figure>{img(f.image)}<figcaption>{esc(f.caption)}{_full_size(f.image)}</figcaption></figure>"
            for f in block.figures
        )
    else:
        figs = placeholder(f"not rendered for this image: fmpipe render {site.file} {meta.option} --html")
    return (
        f'<section class="stage" id="stage-{ref}" data-stage="{ref}">'
        f'<h2>{esc(meta.label)} · {esc(meta.module)}</h2><p class="meta">{esc(meta.summary)} {button}</p>'
        f'<div class="figs">{figs}</div></section>'
    )
