"""Colormaps as 256-entry lookup tables, and the normalisation of maps to table indices.

No matplotlib: the tables are matplotlib's own 8-bit tables, stored as hex text in
`colormap_data.py` (regenerate with scripts/make_colormaps.py); `gray` is built here.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from .colormap_data import TABLES
from .errors import UsageError

DEFAULT_CMAP = "viridis"
CMAPS = ("viridis", "gray", "magma", "inferno", "plasma", "cividis", "turbo")


@cache
def lut(name: str) -> np.ndarray:
    """(256, 3) uint8 RGB table of a colormap (read-only)."""
    if name == "gray":
        table = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    elif name in TABLES:
        table = np.frombuffer(bytes.fromhex("".join(TABLES[name])), dtype=np.uint8).reshape(256, 3).copy()
    else:
        raise UsageError(f"unknown colormap {name!r}; choose one of {', '.join(CMAPS)}.")
    table.setflags(write=False)
    return table


def check_cmap(name: str) -> str:
    """Return `name` if it is a known colormap, else raise UsageError listing them."""
    lut(name)
    return name


def to_indices(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(H, W) float16/float32 map → (H, W) uint8 table indices round(255·(x − lo)/(hi − lo)).

    Values outside [lo, hi] are clipped; NaN maps to 0 and ±inf to 255/0. A non-finite
    lo or hi (stats of an overflowed row) falls back to the map's own finite range; a flat
    range (hi ≤ lo, e.g. a constant map) renders as a flat image of index 0.
    """
    lo, hi = float(lo), float(hi)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        lo, hi = finite_range(values)
    span = hi - lo
    scale = 255.0 / span if span > 0 else np.inf
    if not np.isfinite(scale):
        return np.zeros(values.shape, dtype=np.uint8)
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = np.subtract(values, lo, dtype=np.float32)
        scaled *= np.float32(scale)
        np.nan_to_num(scaled, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        np.clip(scaled, 0.0, 255.0, out=scaled)
        scaled += 0.5  # non-negative here, so truncation below rounds half up
    return scaled.astype(np.uint8)


def finite_range(values: np.ndarray) -> tuple[float, float]:
    """(min, max) of the finite values of an array; (0, 0) when there are none."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return 0.0, 0.0
    return float(finite.min()), float(finite.max())
