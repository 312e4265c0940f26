"""Nearest-neighbour upscaling, overlay blending and per-image grids of channel tiles."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CHANNEL_MIN_SIDE = 128  # automatic --scale: per-channel PNGs get at least this longer side
TILE_MIN_SIDE = 64  # ... and grid tiles at least this (so a 320-channel grid stays a sane size)
MAX_SCALE = 32
GUTTER = 2  # pixels between tiles and around the grid
GUTTER_RGB = (255, 255, 255)
OVERLAY_ALPHA = 0.6  # weight of the coloured map over the (grey) photo
LABEL_MIN_TILE = 20  # tiles smaller than this (pixels) get no channel label
OVERLAY_MAX_SIDE = 1024  # an overlay's longer side at most this (or the model's input side, if longer)


def overlay_hw(orig_hw: tuple[int, int], input_hw: tuple[int, int]) -> tuple[int, int]:
    """(H, W) an overlay is drawn at: the source photo's own shape (so nothing is squashed), its longer
    side brought within [the model's longer input side, max(that, OVERLAY_MAX_SIDE)].

    The model saw the whole photo resized to its input size without a crop, so a map spans the whole
    photo: resizing the map to the photo's shape puts every cell over the pixels it was computed from.
    """
    height, width = (max(1, int(v)) for v in orig_hw)
    low = max(input_hw)
    side = min(max(height, width, low), max(low, OVERLAY_MAX_SIDE))
    scale = side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def fit_within(height: int, width: int, box_h: int, box_w: int) -> tuple[int, int]:
    """(h, w) of an (height, width) picture scaled to fit inside (box_h, box_w), aspect ratio kept."""
    scale = min(box_h / max(1, height), box_w / max(1, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def auto_scale(height: int, width: int, min_side: int = CHANNEL_MIN_SIDE) -> int:
    """Integer factor that brings an (H, W) map's longer side to at least `min_side`."""
    return max(1, min(MAX_SCALE, math.ceil(min_side / max(1, height, width))))


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscale of (H, W) or (H, W, 3) by an integer factor → (H·s, W·s[, 3])."""
    if scale == 1:
        return image
    height, width = image.shape[:2]
    rest = image.shape[2:]
    big = np.broadcast_to(image[:, None, :, None], (height, scale, width, scale, *rest))
    return big.reshape(height * scale, width * scale, *rest)


def blend(photo: np.ndarray, indices: np.ndarray, table: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Coloured map over a photo: (h, w, 3) uint8 photo, (H, W) uint8 indices → (h, w, 3) uint8.

    The indices are upsampled bilinearly to the photo's size (the map is smooth there;
    nearest would show blocks the photo does not have). The photo is drawn in grey, so
    every colour on the result belongs to the map.
    """
    height, width = photo.shape[:2]
    if indices.shape != (height, width):
        indices = np.asarray(Image.fromarray(indices).resize((width, height), Image.Resampling.BILINEAR))
    grey = photo.astype(np.uint16) @ np.array([77, 150, 29], dtype=np.uint16) >> 8  # ITU-R 601 luma
    weight = round(alpha * 256)
    mixed = grey[..., None] * (256 - weight) + table[indices].astype(np.uint16) * weight
    return (mixed >> 8).astype(np.uint8)


class Grid:
    """An RGB canvas of `count` tiles of (tile_h, tile_w), row-major, with a thin gutter."""

    def __init__(self, count: int, tile_h: int, tile_w: int):
        self.tile_h, self.tile_w = tile_h, tile_w
        self.cols = max(1, min(count, round(math.sqrt(count * tile_h / tile_w)) or 1))
        self.rows = math.ceil(count / self.cols)
        height = self.rows * (tile_h + GUTTER) + GUTTER
        width = self.cols * (tile_w + GUTTER) + GUTTER
        self.pixels = np.empty((height, width, 3), dtype=np.uint8)
        self.pixels[:] = GUTTER_RGB
        self.labels: list[tuple[int, int, str]] = []

    def put(self, position: int, tile: np.ndarray, label: str) -> None:
        """Place an (tile_h, tile_w, 3) uint8 tile at `position` (row-major) with a label."""
        y, x = self.origin(position)
        self.pixels[y : y + self.tile_h, x : x + self.tile_w] = tile
        self.labels.append((x, y, label))

    def origin(self, position: int) -> tuple[int, int]:
        """Top-left (y, x) pixel of a tile position."""
        row, col = divmod(position, self.cols)
        return GUTTER + row * (self.tile_h + GUTTER), GUTTER + col * (self.tile_w + GUTTER)

    def finish(self) -> np.ndarray:
        """(H, W, 3) uint8 grid with each tile's label drawn in its top-left corner."""
        if min(self.tile_h, self.tile_w) < LABEL_MIN_TILE or not self.labels:
            return self.pixels
        image = Image.fromarray(self.pixels)
        draw = ImageDraw.Draw(image)
        font = _font()
        for x, y, text in self.labels:
            _, _, right, bottom = draw.textbbox((x + 2, y + 1), text, font=font)
            if right - x > self.tile_w:
                continue
            draw.rectangle((x, y, right + 1, bottom + 1), fill=(0, 0, 0))
            draw.text((x + 2, y + 1), text, fill=(255, 255, 255), font=font)
        return np.asarray(image)


@lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()
