"""The viewer's pages that show values: every channel of an image and stage, a channel compared
across images, one location across stages, colour bars, and error pages that link back.

Every map drawn here carries what the hover readout needs (`data-npy`: the `/map/...npy` of
its values, `data-h`/`data-w`: its shape) and sits beside a colour bar whose ends are the
values its colours run between (`data-lo`/`data-hi`, exact; the text rounded). Pure text
building, as `pages.py`. No torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..records import StageInfo
from ..site.pages import esc, placeholder, shell
from .pages import (
    GENERATOR,
    READOUT,
    ImageInfo,
    Summary,
    colorbar,
    document,
    hover_map,
    image_nav,
    keys,
    link,
    num,
    pager,
    picture,
    seg,
    step,
    url,
)
from .tiles import TileOptions


def _style(options: TileOptions) -> dict[str, str]:
    return {"cmap": options.cmap, "normalize": options.normalize}


def _switches(options: TileOptions, path: str, **query: object) -> str:
    """Links that switch the normalisation (z) and colour map (m) of the page at `path`."""
    from ..rendering.colormaps import CMAPS
    from ..rendering.painting import NORMALIZATIONS

    def choices(label: str, values: Sequence[str], current: str, name: str, key: str) -> str:
        nxt = values[(values.index(current) + 1) % len(values)]
        parts = [
            f"<b>{esc(v)}</b>"
            if v == current
            else link(path, v, key if v == nxt else None, **{**query, **_style(options), name: v})
            for v in values
        ]
        return f'<p class="choices">{esc(label)}: {" ".join(parts)}</p>'

    return choices("colour map", CMAPS, options.cmap, "cmap", "m") + choices(
        "normalise per", NORMALIZATIONS, options.normalize, "normalize", "z"
    )


# -- a channel of one image --------------------------------------------------------------------------


def channel_page(
    summary: Summary,
    info: ImageInfo,
    meta: StageInfo,
    channel: int,
    numbers: tuple[Sequence[float], tuple[float, float]],
    options: TileOptions,
    compare: Sequence[int] = (),
) -> str:
    """One map large and over the source, with its statistics (min, max, mean), the scale its colours
    use, the value under the pointer; colour map and normalisation switchable. `compare`: rows to
    compare it with (the channel's strongest images)."""
    (low, high, mean), (lo, hi) = numbers
    here, style = f"/image/{info.row}/{seg(meta)}", _style(options)
    prev_c = step(channel > 0, f"{here}/{channel - 1}", "← channel", "ArrowLeft p", **style)
    nxt_c = step(channel + 1 < meta.channels, f"{here}/{channel + 1}", "channel →", "ArrowRight n", **style)
    prev_i = step(info.prev is not None, f"/image/{info.prev}/{seg(meta)}/{channel}", "[ image", "[", **style)
    nxt_i = step(info.next is not None, f"/image/{info.next}/{seg(meta)}/{channel}", "image ]", "]", **style)
    up = link(f"/image/{info.row}", "image page", "u")
    examples = link(f"/examples/{seg(meta)}/{channel}", "dataset examples", "e", **style)
    bar = f"{prev_c} {nxt_c} {prev_i} {nxt_i} {up} {examples}"
    bar += keys("← → channel · [ ] image · m colour map · z normalisation · e examples · u image")
    pictured = f"/{seg(meta)}/{info.row}/{channel}"
    npy, what, shape = url(f"/map{pictured}.npy"), f"{info.key} · {meta.label} c{channel}", (meta.height, meta.width)
    locate = (info.row, info.orig_hw)
    tile = hover_map(url(f"/tile{pictured}.png", **style), npy, what, shape, "map", locate)
    over = (
        hover_map(url(f"/overlay{pictured}.png", **style), npy, what, shape, "over", locate)
        if info.source
        else placeholder("source image not found: no overlay", "over")
    )
    more = [
        link(here, f"all {meta.channels} channels", **style),
        link(f"/map{pictured}.npy", "this map's values (.npy)"),
        link(f"/map/{seg(meta)}/{info.row}.npy", "all channels' values (.npy)"),
    ]
    if info.source:
        more.append(link(f"/source/{info.row}.png", "full-size source"))
    if len(compare) > 1:
        more.append(
            link(
                f"/compare/{seg(meta)}/{channel}",
                "compare with its strongest images",
                "c",
                rows=",".join(map(str, compare)),
                **style,
            )
        )
    body = (
        f"<h1>{esc(info.key)} · {esc(meta.label)} ({esc(meta.module)}) · channel {channel} of {meta.channels}</h1>"
        f'<p class="stats">min <span class="value">{num(low)}</span> · max <span class="value">{num(high)}</span> · '
        f'mean <span class="value">{num(mean)}</span></p>{_switches(options, f"{here}/{channel}")}'
        f"<p>{colorbar(options.cmap, lo, hi, f'scale: {options.normalize}')}</p>"
        f'<div class="big">{tile}{over}</div>{READOUT}<p>{" · ".join(more)}</p>'
        "<p>a click on the map opens that point in every stage</p>"
    )
    return document(summary, f"{info.key} · {meta.label} · channel {channel}", bar, body)


# -- every channel of an image and stage ------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One channel on the every-channel page and the scale its colours use."""

    channel: int
    lo: float
    hi: float


def channels_page(
    summary: Summary,
    info: ImageInfo,
    meta: StageInfo,
    cells: Sequence[Cell],
    paging: tuple[int, int],
    options: TileOptions,
) -> str:
    """Page `paging[0]` (1-based, as shown) of `paging[1]` of every channel of one image and stage, like
    the article's figure. Its URL counts pages from 0 (`?page=0` is the first: the viewer's URL contract)."""
    page, pages = paging
    here, style = f"/image/{info.row}/{seg(meta)}", _style(options)
    prev = step(page > 1, here, "← page", "ArrowLeft p", page=page - 2, **style)
    nxt = step(page < pages, here, "page →", "ArrowRight n", page=page, **style)
    prev_i = step(info.prev is not None, f"/image/{info.prev}/{seg(meta)}", "[ image", "[", **style)
    nxt_i = step(info.next is not None, f"/image/{info.next}/{seg(meta)}", "image ]", "]", **style)
    bar = (
        f"{prev} <span>page {page} of {pages}</span> {nxt} {prev_i} {nxt_i} {link(f'/image/{info.row}', 'image', 'u')}"
    )
    bar += keys("← → page · [ ] image · m colour map · z normalisation · u image")
    shared = options.normalize != "channel" and cells
    scale = (
        colorbar(options.cmap, cells[0].lo, cells[0].hi, f"one scale for every map ({options.normalize})")
        if shared
        else (
            f'<span class="legend">its min <img src="{url(f"/colorbar/{options.cmap}.png")}" alt="colour bar" '
            'class="bar"> its max: each map on its own scale, written under it</span>'
        )
    )
    shape = (meta.height, meta.width)
    figures = []
    for cell in cells:
        c = cell.channel
        src = url(f"/tile/{seg(meta)}/{info.row}/{c}.png", **style)
        npy = url(f"/map/{seg(meta)}/{info.row}/{c}.npy")
        target = url(f"{here}/{c}", **style)
        own = "" if shared else colorbar(options.cmap, cell.lo, cell.hi)
        figures.append(
            f'<figure class="cell" data-channel="{c}"><a href="{target}" class="pick">'
            f"{hover_map(src, npy, f'{meta.label} c{c}', shape)}</a><figcaption>c{c} {own}</figcaption></figure>"
        )
    first, last = cells[0].channel if cells else 0, cells[-1].channel if cells else 0
    body = (
        f"<h1>{esc(info.key)} · {esc(meta.label)} ({esc(meta.module)}): channels {first}–{last} of {meta.channels}</h1>"
        f'<p class="meta">{meta.channels}×{meta.height}×{meta.width} (C×H×W) · stride {meta.stride} · '
        f"{link(f'/map/{seg(meta)}/{info.row}.npy', 'all values (.npy)')}</p>"
        f"{_switches(options, here, page=page - 1)}<p>{scale}</p>"
        f"<p>{pager(page, pages, here, first=0, **style)}</p>"
        f'<div class="cells">{"".join(figures)}</div>{READOUT}'
    )
    return document(summary, f"{info.key} · {meta.label} · channels page {page}", bar, body)


# -- a channel compared across images ----------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One image on the compare page: its row and key, the scale its colours use, its source."""

    row: int
    key: str
    lo: float
    hi: float
    source: bool
    orig_hw: tuple[int, int]


def compare_page(
    summary: Summary, meta: StageInfo, channel: int, columns: Sequence[Column], options: TileOptions
) -> str:
    """One stage and channel of several images side by side, each map over its photo too."""
    rows = ",".join(str(c.row) for c in columns)
    here, style = f"/compare/{seg(meta)}/{channel}", _style(options)
    prev_c = step(
        channel > 0, f"{here[: here.rfind('/')]}/{channel - 1}", "← channel", "ArrowLeft p", rows=rows, **style
    )
    nxt_c = step(
        channel + 1 < meta.channels,
        f"{here[: here.rfind('/')]}/{channel + 1}",
        "channel →",
        "ArrowRight n",
        rows=rows,
        **style,
    )
    examples = link(f"/examples/{seg(meta)}/{channel}", "dataset examples", "e", **style)
    bar = f"{prev_c} {nxt_c} {examples} {link('/', 'collection', 'u h')}"
    bar += keys("← → channel · m colour map · z normalisation · e examples · b back")
    shape = (meta.height, meta.width)
    cols = []
    for col in columns:
        pictured = f"/{seg(meta)}/{col.row}/{channel}"
        npy = url(f"/map{pictured}.npy")
        what = f"{col.key} · {meta.label} c{channel}"
        tile = hover_map(url(f"/tile{pictured}.png", **style), npy, what, shape, locate=(col.row, col.orig_hw))
        over = (
            hover_map(url(f"/overlay{pictured}.png", **style), npy, what, shape, "over", (col.row, col.orig_hw))
            if col.source
            else placeholder("source image not found: no overlay", "over")
        )
        head = link(f"/image/{col.row}/{seg(meta)}/{channel}", col.key, **style)
        cols.append(
            f'<figure class="column" data-row="{col.row}" data-channel="{channel}"><figcaption>{head} (row {col.row})'
            f"</figcaption>{tile}{over}{colorbar(options.cmap, col.lo, col.hi)}</figure>"
        )
    scale = (
        "one scale for all (stage)"
        if options.normalize == "stage"
        else f"each image its own scale ({options.normalize})"
    )
    body = (
        f"<h1>{esc(meta.label)} ({esc(meta.module)}) · channel {channel}: {len(columns)} images compared</h1>"
        f"<p>{esc(scale)}; a click on a map opens that point across every stage</p>"
        f'{_switches(options, here, rows=rows)}<div class="columns">{"".join(cols)}</div>{READOUT}'
    )
    return document(summary, f"{meta.label} · channel {channel} · compare", bar, body)


# -- one location of one image across stages -----------------------------------------------------------


@dataclass(frozen=True)
class Spot:
    """One stage at the chosen point: its cell, and the channels strongest there with their values."""

    meta: StageInfo
    cell: tuple[int, int]  # (i, j) in the stage's map
    channels: tuple[tuple[int, float], ...]  # (channel, value at the cell), largest first
    scale: int


def location_page(summary: Summary, info: ImageInfo, point: tuple[int, int], spots: Sequence[Spot]) -> str:
    """Source pixel `point` (y, x) of one image in every stage: the cell it falls in and its strongest channels."""
    y, x = point
    height, width = info.orig_hw
    bar = image_nav(info, summary, "[", "]", f"/location/{{}}?y={y}&x={x}")
    bar += f" {link(f'/image/{info.row}', 'image page', 'u')}" + keys("[ ] image · u image · b back")
    marker = f'<span class="mark" data-fy="{(y + 0.5) / height:.6f}" data-fx="{(x + 0.5) / width:.6f}"></span>'
    source = (
        f'<span class="marked">{picture(url(f"/source/{info.row}.jpg", side=480), info.key, "source")}{marker}</span>'
        if info.source
        else placeholder("source image not found", "source")
    )
    sections = "".join(_spot(info, s, marker) for s in spots)
    body = (
        f"<h1>{esc(info.key)} · source pixel y {y}, x {x} (of {width}×{height}) in every stage</h1>"
        f'<div class="head">{source}<p>each stage: the map cell this pixel falls in (the model saw the whole '
        "image resized, so a cell spans stride × stride input pixels) and the channels strongest there</p></div>"
        f"{sections}{READOUT}"
    )
    return document(summary, f"{info.key} · y {y}, x {x}", bar, body)


def _spot(info: ImageInfo, spot: Spot, marker: str) -> str:
    meta, (i, j) = spot.meta, spot.cell
    shape = (meta.height, meta.width)
    figs = []
    for channel, value in spot.channels:
        pictured = f"/{seg(meta)}/{info.row}/{channel}"
        img = hover_map(
            url(f"/tile{pictured}.png", scale=spot.scale), url(f"/map{pictured}.npy"), f"{meta.label} c{channel}", shape
        )
        target = url(f"/image/{info.row}/{seg(meta)}/{channel}")
        figs.append(
            f'<figure class="cell" data-channel="{channel}" data-value="{value!r}">'
            f'<a href="{target}" class="marked pick">{img}{marker}</a>'
            f'<figcaption>c{channel} <span class="value">{num(value)}</span></figcaption></figure>'
        )
    return (
        f'<section class="stage" data-stage="{esc(meta.anchor)}" data-cell="{i},{j}"><h2>{esc(meta.label)} · '
        f'{esc(meta.module)}</h2><p class="meta">cell y {i}, x {j} of {meta.height}×{meta.width} · stride '
        f"{meta.stride} · its {len(spot.channels)} strongest of {meta.channels} channels there</p>"
        f'<div class="cells">{"".join(figs)}</div></section>'
    )


# -- errors ------------------------------------------------------------------------------------------


def error_page(status: int, message: str, up: str) -> str:
    """An error as a page with links back: to the page above the one asked for, and the collection."""
    return shell(
        f"{status}: {message[:80]}",
        GENERATOR,
        '<link rel="icon" href="data:,"><link rel="stylesheet" href="/assets/view.css">',
        f'<nav class="bar">{link(up, "← back up", "u")} {link("/", "collection", "h")}</nav>'
        f'<main><h1>{status}</h1><p class="error">{esc(message)}</p>'
        f"<p>{link(up, 'back up to ' + up)} · {link('/', 'the collection')}</p></main>"
        '<script src="/assets/view.js"></script>',
    )
