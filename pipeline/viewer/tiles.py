"""The viewer's pictures, painted on request from decoded chunks with render's own functions.

`tile_png` is, byte for byte, the PNG that `fmpipe render OUT --stage S --images ROW
--channels C --layout channels --cmap NAME --normalize MODE [--scale N]` writes: the same
statistics (`image_ranges`), the same normalisation (`to_indices`), the same upscaling and
encoder (`painting.channel_png`). `overlay_png` is render's `--overlay` PNG and `pca_png`
render's `--layout pca` picture (same pixels; render's adds a text chunk). No torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from ..rendering.colormaps import CMAPS, DEFAULT_CMAP, lut, to_indices
from ..rendering.painting import NORMALIZATIONS, channel_png, image_ranges
from ..rendering.pca import project_blocks, scores_to_rgb
from ..rendering.png import encode_indexed, encode_rgb
from ..rendering.tiling import CHANNEL_MIN_SIDE, auto_scale, upscale
from .catalog import Catalog

MAX_TILE_PIXELS = 2048 * 2048  # a tile larger than this is refused (scale too large for the map)
COLORBAR_HEIGHT = 12  # pixels of /colorbar/NAME.png
MAX_SCALE = 256  # render takes any --scale; the viewer bounds it (and the tile's pixels) against abuse


@dataclass(frozen=True)
class TileOptions:
    """How a map is coloured: render's --cmap, --normalize and --scale (0: automatic, as render's)."""

    cmap: str = DEFAULT_CMAP
    normalize: str = "channel"
    scale: int = 0

    def __post_init__(self) -> None:
        if self.cmap not in CMAPS:
            raise UsageError(f"cmap must be one of {', '.join(CMAPS)}, got {self.cmap!r}.")
        if self.normalize not in NORMALIZATIONS:
            raise UsageError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {self.normalize!r}.")
        if not 0 <= self.scale <= MAX_SCALE:
            raise UsageError(f"scale must be 0 (automatic) to {MAX_SCALE}, got {self.scale}.")


def tile_scale(height: int, width: int, scale: int) -> int:
    """The upscaling factor of a tile of an (H, W) map: `scale`, or render's automatic one for 0."""
    scale = scale or auto_scale(height, width, CHANNEL_MIN_SIDE)
    if height * width * scale * scale > MAX_TILE_PIXELS:
        raise UsageError(f"scale {scale} makes a {height * scale}×{width * scale} tile; use a smaller scale.")
    return scale


def scale_used(catalog: Catalog, stage: int | str, row: int, channel: int, normalize: str) -> tuple[float, float]:
    """(lo, hi): the values a map's colours run from (table index 0) to (index 255), as render's
    `--normalize` picks them: the channel's own min/max, the image's, or the stage's across the file."""
    stats = catalog.stats(stage, row)
    span = catalog.span(stage) if normalize == "stage" else None
    lo, hi = image_ranges(normalize, stats[0], stats[1], [channel], span)
    return float(lo[0]), float(hi[0])


def indices(catalog: Catalog, stage: int | str, row: int, channel: int, normalize: str) -> np.ndarray:
    """(H, W) uint8 colour-table indices of one map, normalised as render does."""
    lo, hi = scale_used(catalog, stage, row, channel, normalize)
    return to_indices(catalog.plane(stage, row, channel), lo, hi)


def colorbar_png(cmap: str) -> bytes:
    """A COLORBAR_HEIGHT × 256 PNG of a colour table, index 0 on the left: the scale every map uses."""
    bar = np.broadcast_to(np.arange(256, dtype=np.uint8), (COLORBAR_HEIGHT, 256))
    return encode_indexed(np.ascontiguousarray(bar), lut(cmap))


def tile_png(catalog: Catalog, stage: int | str, row: int, channel: int, options: TileOptions) -> bytes:
    """PNG of one map, indexed colour, upscaled: the very bytes render's per-channel PNG holds."""
    view = catalog.stage(stage)
    scale = tile_scale(view.height, view.width, options.scale)
    return channel_png(indices(catalog, stage, row, channel, options.normalize), lut(options.cmap), scale)


def overlay_png(catalog: Catalog, stage: int | str, row: int, channel: int, options: TileOptions) -> bytes:
    """PNG of one map blended over its source photo at the model's input size (render --overlay).

    Raises DecodeError when the source cannot be read (missing, outside the images root)."""
    photo = catalog.photo(row)
    return channel_png(indices(catalog, stage, row, channel, options.normalize), lut(options.cmap), 1, photo)


def pca_rgb(catalog: Catalog, stage: int | str, row: int) -> np.ndarray:
    """(H, W, 3) uint8: the image's first three principal components of the stage as RGB."""
    view, k = catalog.stage(stage), catalog.blocks[stage].k
    fit = catalog.pca(stage)
    blocks = ((c0, catalog.block(stage, row, c0)) for c0 in range(0, view.channels, k))
    return scores_to_rgb(fit, project_blocks(fit, blocks, view.height, view.width))


def pca_png(catalog: Catalog, stage: int | str, row: int) -> bytes:
    """PNG of the image's PCA picture, upscaled like render's pca.png."""
    view = catalog.stage(stage)
    return encode_rgb(upscale(pca_rgb(catalog, stage, row), tile_scale(view.height, view.width, 0)))
