"""A stored map's values as float32 arrays, and as `.npy` files for `/map/...npy` downloads.

`block_values` is the one place the viewer turns stored chunks into values: every download, the
hover readout (which fetches the `.npy` of the map under the pointer) and the location page read
through it, so `stage_values` equals what `store.read` gives for the same stage and row. A storage
with its own decoding (uint8 with a scale per image and channel) is decoded there and nowhere else.
No torch.
"""

from __future__ import annotations

import io

import numpy as np

from .catalog import Catalog

NPY = ".npy"


def block_values(catalog: Catalog, stage: int | str, row: int, c0: int) -> np.ndarray:
    """(n, H, W) float32 values of channels c0.. of one stored chunk (c0 a multiple of the chunk's k)."""
    return np.asarray(catalog.block(stage, row, c0), dtype=np.float32)


def stage_values(catalog: Catalog, stage: int | str, row: int) -> np.ndarray:
    """(C, H, W) float32 maps of one image and stage (or layer), decoded from the stored chunks."""
    view, k = catalog.stage(stage), catalog.blocks[stage].k
    out = np.empty((view.channels, view.height, view.width), dtype=np.float32)
    for c0 in range(0, view.channels, k):
        block = block_values(catalog, stage, row, c0)
        out[c0 : c0 + len(block)] = block
    return out


def channel_values(catalog: Catalog, stage: int | str, row: int, channel: int) -> np.ndarray:
    """(H, W) float32 map of one image, stage (or layer) and channel: `stage_values(...)[channel]`."""
    k = catalog.blocks[stage].k
    c0 = channel // k * k
    return block_values(catalog, stage, row, c0)[channel - c0]


def cell_values(catalog: Catalog, stage: int | str, row: int, cell: tuple[int, int]) -> np.ndarray:
    """(C,) float32 values of every channel at one map cell (i, j): `stage_values(...)[:, i, j]`."""
    view, k = catalog.stage(stage), catalog.blocks[stage].k
    i, j = cell
    return np.concatenate([block_values(catalog, stage, row, c0)[:, i, j] for c0 in range(0, view.channels, k)])


def npy_bytes(array: np.ndarray) -> bytes:
    """The array as a `.npy` file (format 1.0, little-endian), as `np.save` writes it; `np.load` reads it."""
    out = io.BytesIO()
    np.lib.format.write_array(out, np.ascontiguousarray(array, dtype="<f4"), allow_pickle=False)
    return out.getvalue()


def cell_of(orig_hw: tuple[int, int], map_hw: tuple[int, int], y: int, x: int) -> tuple[int, int]:
    """The map cell (i, j) that source pixel (y, x) of an image of `orig_hw` falls in.

    The model saw the image resized to its input size without a crop, so a map of `map_hw`
    spans the whole source: the cell is the pixel's fraction of the source times the map's size.
    """
    (height, width), (rows, cols) = orig_hw, map_hw
    return min(rows - 1, y * rows // max(1, height)), min(cols - 1, x * cols // max(1, width))
