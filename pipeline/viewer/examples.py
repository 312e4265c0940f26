"""`fmpipe top`: the images that drive one channel most (dataset examples), and a figure of them.

The ranking is `storage.reading.toplists.top_images` (per-channel top lists written at finalise and by
merge; never a scan of the maps): the K done, non-failed images whose map of the channel has
the largest stored max (or mean), best first, ties to the lower row. `--json` prints exactly
what the viewer's `/api/top` returns; `--out grid.png` draws the K maps over their sources in
one labelled grid (a map alone where the source is not found). No torch.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..decoding import DecodeError
from ..errors import OutputExistsError, RunFailure, UsageError
from ..rendering.colormaps import lut
from ..rendering.png import encode_rgb
from ..rendering.tiling import blend, fit_within
from .catalog import Catalog
from .config import TopConfig, check_k_by
from .crops import Crop, crop_pixels, crops
from .tiles import indices

CELL_SIDE = 224  # the longer side of each picture in --out's grid, pixels
LABEL_HEIGHT = 30  # two lines of text under each picture
TITLE_HEIGHT = 22
GUTTER = 6
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
CROP_INK = (255, 64, 64)  # the crop's box drawn on the whole-image picture


@dataclass(frozen=True)
class TopItem:
    row: int
    key: str
    value: float  # the image's stored max (or mean) of the channel


@dataclass(frozen=True)
class TopResult:
    """The ranking of one channel, best first; `out`: the grid written, if asked."""

    path: Path
    stage: int | str  # a stage index, or a layer name
    channel: int
    by: str
    items: tuple[TopItem, ...]
    out: Path | None = None
    crops: tuple[Crop | None, ...] = ()  # with `crop`: where each item's map peaks in its source (None: not stored)

    def to_json(self) -> str:
        """Exactly the body `/api/top` returns for the same stage, channel, k and by."""
        return items_json(self.items)

    def table(self) -> str:
        """The ranking as aligned text lines (rank, row, value, key)."""
        what = f"stage {self.stage}" if isinstance(self.stage, int) else f"layer {self.stage}"
        head = f"{what}, channel {self.channel}: top {len(self.items)} images by {self.by} ({self.path})"
        if self.crops:  # where each map peaks (map y, x) and the crop around it in the source
            lines = [head, f"{'rank':>4}  {'row':>8}  {self.by:>12}  {'peak y,x':>9}  {'crop x0,y0-x1,y1':>19}  key"]
            for i, (t, c) in enumerate(zip(self.items, self.crops, strict=True), 1):
                peak, box = ("{},{}".format(*c.peak_yx), "{},{}-{},{}".format(*c.box)) if c else ("-", "-")
                lines.append(f"{i:>4}  {t.row:>8}  {t.value:>12.5g}  {peak:>9}  {box:>19}  {t.key}")
            return "\n".join(lines)
        lines = [head, f"{'rank':>4}  {'row':>8}  {self.by:>12}  key"]
        lines += [f"{i:>4}  {t.row:>8}  {t.value:>12.5g}  {t.key}" for i, t in enumerate(self.items, 1)]
        return "\n".join(lines)


def top_items(catalog: Catalog, stage: int | str, channel: int, k: int, by: str) -> tuple[TopItem, ...]:
    """The k images that drive `channel` of `stage` most, best first, with their keys."""
    check_k_by(k, by)
    ranked = catalog.top(stage, channel, k, by)
    keys = dict(zip(sorted(r for r, _ in ranked), catalog.keys(sorted(r for r, _ in ranked)), strict=True))
    return tuple(TopItem(int(row), keys[row], float(value)) for row, value in ranked)


def items_json(items: tuple[TopItem, ...] | list[TopItem]) -> str:
    """`{"items": [{"row": ..., "key": ..., "value": ...}, ...]}`; a non-finite value is null."""
    payload = [{"row": t.row, "key": t.key, "value": t.value if math.isfinite(t.value) else None} for t in items]
    return json.dumps({"items": payload}, ensure_ascii=False, allow_nan=False)


def top(config: TopConfig) -> TopResult:
    """Rank the images of one channel (see the module doc); write the grid when `config.out` is set."""
    out = Path(config.out) if config.out else None
    if out is not None and out.exists() and not config.overwrite:
        raise OutputExistsError(f"{out} already exists; pass --overwrite to replace it, or choose another --out.")
    with Catalog(config.path, config.images_root) as catalog:
        stages = [ref for ref in catalog.stages if isinstance(ref, int)]
        if isinstance(config.stage, int) and -len(stages) <= config.stage < 0:  # from the last stage, as render's
            config = replace(config, stage=stages[config.stage])
        catalog.channel(config.stage, config.channel)
        items = top_items(catalog, config.stage, config.channel, config.k, config.by)
        found = tuple(crops(catalog, config.stage, config.channel, [t.row for t in items])) if config.crop else ()
        if out is not None:
            _write(out, figure(catalog, config, items, found))
        return TopResult(catalog.path, config.stage, config.channel, config.by, items, out, found)


def figure(catalog: Catalog, config: TopConfig, items: tuple[TopItem, ...], cut: tuple[Crop | None, ...] = ()) -> bytes:
    """PNG of the K pictures in a grid, each labelled with its rank, value and key; a title on top.
    With `cut` (one crop per item), each map over its photo has the crop beside it, its box drawn."""
    view = catalog.stage(config.stage)
    cols = max(1, math.ceil(math.sqrt(len(items))))
    rows = max(1, math.ceil(len(items) / cols))
    height, width = catalog.input_hw
    fit = CELL_SIDE / max(height, width)
    cell_h, cell_w = max(1, round(height * fit)), max(1, round(width * fit))
    step_w = cell_w + (cell_h + GUTTER if cut else 0)  # a square crop tile beside each picture
    canvas = Image.new(
        "RGB",
        (cols * (step_w + GUTTER) + GUTTER, TITLE_HEIGHT + rows * (cell_h + LABEL_HEIGHT + GUTTER) + GUTTER),
        BACKGROUND,
    )
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    title = f"{view.label} ({view.module}) · channel {config.channel} · top {len(items)} by {config.by}"
    draw.text((GUTTER, 5), _fit(draw, font, f"{title} · {catalog.model}", canvas.width - 2 * GUTTER), INK, font)
    for n, item in enumerate(items):
        y = TITLE_HEIGHT + (n // cols) * (cell_h + LABEL_HEIGHT + GUTTER)
        x = GUTTER + (n % cols) * (step_w + GUTTER)
        canvas.paste(_picture(catalog, config, item.row, (cell_w, cell_h)), (x, y))
        if cut and cut[n] is not None:
            _paste_crop(canvas, catalog, cut[n], (x, y, cell_w, cell_h))
        label = f"#{n + 1}  {config.by} {item.value:.4g}  row {item.row}"
        draw.text((x, y + cell_h + 2), label, INK, font)
        draw.text((x, y + cell_h + 15), _fit(draw, font, item.key, cell_w), INK, font)
    text = json.loads(items_json(items))
    description = f"fmpipe top, {view.label}, channel {config.channel}, by {config.by}: {json.dumps(text)}"
    return encode_rgb(np.asarray(canvas), text=description)


def _picture(catalog: Catalog, config: TopConfig, row: int, size: tuple[int, int]) -> Image.Image:
    """The map over its source photo (in the photo's shape, fitted into `size` = (w, h) with its aspect
    ratio kept), or, without a source, the map alone enlarged without smoothing."""
    table = lut(config.cmap)
    index = indices(catalog, config.stage, row, config.channel, config.normalize)
    try:
        over = blend(catalog.photo(row), index, table)
    except DecodeError:
        return Image.fromarray(table[index]).resize(size, Image.Resampling.NEAREST)
    height, width = fit_within(*over.shape[:2], size[1], size[0])
    cell = Image.new("RGB", size, BACKGROUND)
    cell.paste(Image.fromarray(over).resize((width, height), Image.Resampling.BICUBIC), ((size[0] - width) // 2, 0))
    return cell


def _paste_crop(canvas: Image.Image, catalog: Catalog, crop: Crop, cell: tuple[int, int, int, int]) -> None:
    """The crop as a square tile right of the picture at `cell` (x, y, w, h), and its box on the picture."""
    x, y, cell_w, cell_h = cell
    right = x + cell_w + GUTTER  # the crop tile's column
    src_h, src_w = (int(v) for v in catalog.orig_hw(crop.row))
    x0, y0, x1, y1 = crop.box
    shown_h, shown_w = fit_within(src_h, src_w, cell_h, cell_w)  # where `_picture` put the photo in its cell
    x, sy, sx = x + (cell_w - shown_w) // 2, shown_h / src_h, shown_w / src_w
    box = (x + x0 * sx, y + y0 * sy, x + x1 * sx - 1, y + y1 * sy - 1)
    ImageDraw.Draw(canvas).rectangle(box, outline=CROP_INK, width=2)
    try:
        tile = Image.fromarray(crop_pixels(catalog, crop))
    except DecodeError:
        return  # no source: the map alone, as for the picture
    grow = cell_h / max(tile.size)  # to the tile's side, keeping the crop's aspect
    tile = tile.resize((max(1, round(tile.width * grow)), max(1, round(tile.height * grow))), Image.Resampling.BICUBIC)
    canvas.paste(tile, (right + (cell_h - tile.width) // 2, y + (cell_h - tile.height) // 2))


def _fit(draw: ImageDraw.ImageDraw, font, text: str, width: int) -> str:
    """`text`, shortened from the left with '…' until it fits in `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength("…" + text, font=font) > width:
        text = text[1:]
    return "…" + text


def _write(out: Path, png: bytes) -> None:
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:  # bad input, not a run failure: exit 2
        blocking = next((p for p in reversed(out.parents) if p.exists() and not p.is_dir()), err.filename)
        raise UsageError(f"cannot write {out}: {blocking} is a file, not a folder (--out).") from None
    except OSError as err:
        raise RunFailure(f"writing {out} failed: {err}. Fix the cause and rerun.") from err
    try:
        tmp.write_bytes(png)
        os.replace(tmp, out)
    except OSError as err:
        raise RunFailure(f"writing {out} failed: {err}. Fix the cause and rerun.") from err
