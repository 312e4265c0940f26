"""What a render folder holds for one image and stage, as the gallery shows it.

`stage<S>/<folder>/` may hold grid.png, grid-overlay.png, pca.png and c0007[-overlay].png
from any number of render runs. One directory listing per image and stage, and the
header of each figure PNG (size; a grid's channel order, from the text painting writes
into it), say what there is; no map and no pixel is read. No torch.
"""

from __future__ import annotations

import math
import os
import re
import struct
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

import numpy as np

from ..rendering.colormaps import CMAPS, lut
from ..rendering.png import SIGNATURE
from ..rendering.tiling import GUTTER
from .pages import Figure, Img, StageBlock, StageMeta

FIGURES = (("grid.png", "grid"), ("grid-overlay.png", "overlay grid"), ("pca.png", "PCA"))
STAT_NAMES = ("min", "max", "mean")
SIGNIFICANT = 4  # digits of the statistics the channel view shows
GRADIENT_STOPS = 32  # colours of a colour bar's CSS gradient
_CHANNEL = re.compile(r"c(\d{4,})(-overlay)?\.png")
_GRID_ORDER = re.compile(r"channels ([\d,]+)$")  # painting's grid text ends with the tile order
_GRID_TILES = re.compile(r"; (\d+)x(\d+) tiles;")  # ... and names its tile size (overlay tiles: the photo's shape)
_GRID_COLOURS = re.compile(r"colour map (\w+), normalised per (\w+)(?: from (\S+) to (\S+))?;")


def stage_block(out: Path, meta: StageMeta, folder: str, stats: np.ndarray | None, owned: set[str]) -> StageBlock:
    """One stage (or layer) row of an image page (written to out/gallery/): the figures found in
    out/stage<S>/<folder>/ (out/layer-<name>/<folder>/) and the channel view's data.
    `stats`: (3, C) min, max, mean, `rounded`. `owned`: the names render wrote there (its ledger):
    a file there that fmpipe did not write is never shown as a map."""
    names = _listing(out / meta.folder / folder) & owned if meta.rendered else set()
    channels = sorted((int(m.group(1)), bool(m.group(2))) for m in map(_CHANNEL.fullmatch, names) if m)
    if stats is None or not (channels or any(name in names for name, _ in FIGURES)):
        return StageBlock(meta, (), {})
    url = f"../{meta.folder}/{folder}/"
    figures, grids = [], []
    for name, kind in FIGURES:
        if name in names:
            figures.append(_figure(out / meta.folder / folder / name, url + name, kind, meta, grids))
    data = {
        "key": meta.anchor,
        "label": meta.label,
        "option": meta.option,
        "dir": quote(url),
        "digits": max(4, len(str(meta.channels - 1))),
        "channels": meta.channels,
        "png": [c for c, overlay in channels if not overlay],
        "ovl": [c for c, overlay in channels if overlay],
        "grids": grids,
        **{name: _numbers(stats[k]) for k, name in enumerate(STAT_NAMES)},
    }
    return StageBlock(meta, tuple(figures), data)


def _figure(path: Path, url: str, kind: str, meta: StageMeta, grids: list[dict]) -> Figure:
    """A figure PNG; a grid whose tile order and layout are known is made clickable (appended to `grids`)."""
    width, height, text = png_header(path)
    alt = f"{kind} of {meta.label}"
    order = grid_order(text) if kind != "PCA" else None
    tiles = _GRID_TILES.search(text or "")
    tile_hw = (int(tiles.group(1)), int(tiles.group(2))) if tiles else (meta.height, meta.width)
    layout = grid_layout(len(order), *tile_hw, width, height) if order else None
    if layout is None:
        return Figure(Img(url, alt, width, height, "pca" if kind == "PCA" else ""), _caption(kind, meta, order))
    cols, rows = layout
    grids.append(
        {
            "src": quote(url),
            "order": order,
            "gutter": GUTTER,
            "width": width,
            "height": height,
            "cols": cols,
            "rows": rows,
            "scale": grid_colours(text),
        }
    )
    data = (("stage", meta.anchor), ("grid", str(len(grids) - 1)))
    return Figure(Img(url, alt, width, height, "grid clickable", data), _caption(kind, meta, order))


def _caption(kind: str, meta: StageMeta, order: list[int] | None) -> str:
    if kind == "PCA":
        variance = ", ".join(f"{v:.0%}" for v in meta.explained) if meta.explained else "?"
        return f"PCA: components 1-3 of the {meta.channels} channels as R, G, B (variance {variance})"
    if order is None:
        return kind
    return f"{kind} of {len(order)} of {meta.channels} channels; click a tile for its channel"


def _listing(directory: Path) -> set[str]:
    try:
        return {entry.name for entry in os.scandir(directory)}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def png_header(path: Path) -> tuple[int, int, str | None]:
    """(width, height, Description text or None) of a PNG, reading only the chunks before IDAT."""
    width = height = 0
    try:
        with open(path, "rb") as file:
            if file.read(8) != SIGNATURE:
                return 0, 0, None
            while len(header := file.read(8)) == 8:
                length, kind = struct.unpack(">I4s", header)
                if kind in (b"IDAT", b"IEND"):
                    break
                body = file.read(length)
                file.seek(4, os.SEEK_CUR)  # CRC
                if kind == b"IHDR":
                    width, height = struct.unpack(">II", body[:8])
                elif kind == b"tEXt" and body.startswith(b"Description\0"):
                    return width, height, body[len(b"Description\0") :].decode("latin-1")
    except (OSError, struct.error):
        return 0, 0, None
    return width, height, None


def grid_order(text: str | None) -> list[int] | None:
    """The channels on a grid's tiles, row-major, from its PNG text; None when it does not say."""
    match = _GRID_ORDER.search(text or "")
    return [int(c) for c in match.group(1).split(",") if c] if match else None


def grid_colours(text: str | None) -> dict | None:
    """The colour scale a grid's text names: {"cmap", "normalize", "lo", "hi" (None per channel),
    "gradient": the colour table as a CSS gradient}; None when the text does not say (older renders)."""
    match = _GRID_COLOURS.search(text or "")
    if not match or match.group(1) not in CMAPS:
        return None
    cmap, normalize, lo, hi = match.groups()
    table = lut(cmap)[:: 256 // GRADIENT_STOPS]
    stops = ", ".join(f"rgb({r},{g},{b})" for r, g, b in [*table.tolist(), lut(cmap)[255].tolist()])
    finite = [_float(lo), _float(hi)]
    return {
        "cmap": cmap,
        "normalize": normalize,
        "lo": finite[0],
        "hi": finite[1],
        "gradient": f"linear-gradient(to right, {stops})",
    }


def _float(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


@lru_cache(maxsize=256)
def grid_layout(count: int, map_h: int, map_w: int, width: int, height: int) -> tuple[int, int] | None:
    """(cols, rows) of a grid PNG of `count` tiles of (H, W) maps as tiling.Grid lays them out;
    None when the PNG's size is no such grid (it is then shown, not clickable)."""
    cols = max(1, min(count, round(math.sqrt(count * map_h / map_w)) or 1))
    rows = -(-count // cols)
    if (width - GUTTER) % cols or (height - GUTTER) % rows:
        return None
    tile_w, tile_h = (width - GUTTER) // cols - GUTTER, (height - GUTTER) // rows - GUTTER
    scale = tile_w // map_w  # tiles are the map enlarged by an integer factor
    return (cols, rows) if scale >= 1 and (tile_w, tile_h) == (map_w * scale, map_h * scale) else None


def rounded(values: np.ndarray) -> np.ndarray:
    """Float array of any shape → float64 rounded to SIGNIFICANT digits (short in JSON); NaN/inf kept.

    Vectorised over a whole block of images (a Python format per value was half the gallery's
    time): the kept digits become an integer, then one division by an exact power of ten gives
    the double nearest that decimal, which JSON writes as 0.1234, not 0.12340000000000001.
    """
    v = values.astype(np.float64)
    safe = np.where(np.isfinite(v) & (v != 0), np.abs(v), 1.0)
    shift = (SIGNIFICANT - 1) - np.floor(np.log10(safe)).astype(np.int64)  # decimals to keep
    exact = np.abs(shift) <= 22  # powers of ten exact in float64
    power = 10.0 ** np.abs(np.where(exact, shift, 0))
    with np.errstate(invalid="ignore"):
        digits = np.round(np.where(shift >= 0, v * power, v / power))
        return np.where(exact, np.where(shift >= 0, digits / power, digits * power), v)


def _numbers(values: np.ndarray) -> list[float | None]:
    """(C,) float64 (already `rounded`) → a JSON-ready list; NaN/inf → None."""
    finite = np.isfinite(values)
    if finite.all():
        return values.tolist()
    return [x if ok else None for x, ok in zip(values.tolist(), finite.tolist(), strict=True)]
