"""Colormaps as 256-entry lookup tables, and the normalisation of maps to table indices.

No matplotlib: the tables are matplotlib's own 8-bit tables, stored as hex text in
`colormap_data.py` (regenerate with scripts/make_colormaps.py); `gray` is built here.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from ..errors import UsageError
from .colormap_data import TABLES

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
    scale = np.float32(255.0 / (hi - lo)) if hi > lo else np.float32(np.inf)
    if not np.isfinite(scale):
        return np.zeros(values.shape, dtype=np.uint8)
    # v·scale + (0.5 − lo·scale), kept in [0.5, 255.5], truncated: round(255·(v − lo)/(hi − lo)).
    # clip sends ±inf to 255/0; NaN passes clip, so it is set to 0 before the cast.
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = values.astype(np.float32)
        scaled *= scale
        scaled += np.float32(0.5 - lo * float(scale))
        np.clip(scaled, np.float32(0.5), np.float32(255.5), out=scaled)
        nan = np.isnan(scaled)
        if nan.any():
            scaled[nan] = 0.5
    return scaled.astype(np.uint8)


def finite_range(values: np.ndarray) -> tuple[float, float]:
    """(min, max) of the finite values of an array; (0, 0) when there are none."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return 0.0, 0.0
    return float(finite.min()), float(finite.max())
