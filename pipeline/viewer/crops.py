"""Receptive-field crops of dataset examples: each top image cut around where the channel fired.

Extraction stores, per image and channel, where the map's maximum lies (`argmax`, y * W + x). The
map position (y, x) of a stage with stride s stands for the input pixels around
((x + 0.5) * s, (y + 0.5) * s); the run resized the source (orig_hw) to the input size exactly
(no crop), so that point scales to the source by orig / input per axis. The crop is a window of
CROP_STRIDES strides of input pixels (at least MIN_CROP_INPUT) around it, scaled the same way,
shifted to stay inside the photo. Shown by `fmpipe top --crop` and the viewer's dataset examples.
No torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..decoding import DecodeError, decode
from ..errors import InputError
from ..rendering.png import encode_rgb
from .catalog import Catalog

CROP_STRIDES = 4  # a crop spans this many of the stage's strides (input pixels), about its receptive field's core
MIN_CROP_INPUT = 32  # input pixels: early stages (stride 2) still get a recognisable patch
MAX_PNG_SIDE = 448  # the viewer's crop pictures are shrunk to this (a crop of a 4000-pixel photo is large)


@dataclass(frozen=True)
class Crop:
    """Where one image's map of one channel peaks, in the map and in the source photo."""

    row: int
    channel: int
    peak_yx: tuple[int, int]  # map position of the maximum (y, x)
    centre_xy: tuple[float, float]  # that position's centre in source pixels (x, y)
    box: tuple[int, int, int, int]  # the crop in source pixels: x0, y0, x1, y1 (x1, y1 exclusive)

    def to_json(self) -> dict:
        return {"peak_yx": list(self.peak_yx), "centre_xy": list(self.centre_xy), "box": list(self.box)}


def crop_at(
    row: int,
    channel: int,
    flat: int,
    map_hw: tuple[int, int],
    stride: int,
    input_hw: tuple[int, int],
    orig_hw: tuple[int, int],
) -> Crop:
    """The crop around map position `flat` (= y * W + x) of a (H, W) map, for a source of `orig_hw`
    resized to `input_hw`. A stride of 0 (unknown) counts as input / map size."""
    (height, width), (in_h, in_w), (src_h, src_w) = map_hw, input_hw, orig_hw
    y, x = divmod(int(flat), width)
    step_y, step_x = (stride, stride) if stride > 0 else (in_h / height, in_w / width)
    centre_in = (min((x + 0.5) * step_x, in_w), min((y + 0.5) * step_y, in_h))
    scale_x, scale_y = src_w / in_w, src_h / in_h
    centre = (centre_in[0] * scale_x, centre_in[1] * scale_y)
    side_in = max(MIN_CROP_INPUT, CROP_STRIDES * max(step_x, step_y))
    x0, x1 = _window(centre[0], side_in * scale_x, src_w)
    y0, y1 = _window(centre[1], side_in * scale_y, src_h)
    return Crop(row, channel, (y, x), centre, (x0, y0, x1, y1))


def _window(centre: float, side: float, limit: int) -> tuple[int, int]:
    """[lo, hi) of about `side` pixels around `centre`, moved (not shrunk) to stay in [0, limit)."""
    size = max(1, min(limit, round(side)))
    lo = min(max(0, round(centre - size / 2)), limit - size)
    return lo, lo + size


def crops(catalog: Catalog, stage: int | str, channel: int, rows: list[int]) -> list[Crop | None]:
    """The crop of each of `rows` (done, not failed) for one channel, from the stored argmax; None
    for a row without a stored peak (-1: written without one) or with one outside the map."""
    view = catalog.stage(stage)
    if view.argmax is None:
        raise InputError(
            f"{catalog.path} records no peak positions (`argmax`): an fmpipe before receptive-field crops "
            "wrote it. Extract it again (--overwrite) to get crops."
        )
    found = []
    for row in rows:
        flat = int(view.argmax[row, channel])
        if not 0 <= flat < view.height * view.width:
            found.append(None)
            continue
        orig = tuple(int(v) for v in catalog.orig_hw(row))
        found.append(crop_at(row, channel, flat, (view.height, view.width), view.stride, catalog.input_hw, orig))
    return found


def crop_pixels(catalog: Catalog, crop: Crop) -> np.ndarray:
    """(h, w, 3) uint8: the crop's box of the source photo at its original size; DecodeError when
    the source is not found."""
    path = catalog.source(crop.row)
    if path is None:
        raise DecodeError("source image not found below the images root")
    height, width = (int(v) for v in catalog.orig_hw(crop.row))
    pixels = decode(path, (height, width)).pixels
    x0, y0, x1, y1 = crop.box
    return pixels[y0:y1, x0:x1]


def crop_png(catalog: Catalog, stage: int | str, row: int, channel: int) -> bytes:
    """PNG of one crop for the viewer (`/crop/...png`), its longer side at most MAX_PNG_SIDE."""
    crop = crops(catalog, stage, channel, [row])[0]
    if crop is None:
        raise DecodeError(f"no peak position is stored for row {row}, channel {channel}")
    image = Image.fromarray(crop_pixels(catalog, crop))
    image.thumbnail((MAX_PNG_SIDE, MAX_PNG_SIDE), Image.Resampling.BICUBIC)
    box = ",".join(map(str, crop.box))
    return encode_rgb(np.asarray(image), text=f"fmpipe crop of row {row}, channel {channel}, source box {box}")
