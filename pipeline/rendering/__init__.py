"""Rendering: feature maps to pictures (colour tables, PNG, grids, overlays, PCA), lazily. No torch.

    from pipeline.rendering import colorize
    rgb = colorize("out.h5", "chelsea.jpg", stage=2, channel=7)   # (H, W, 3) uint8

The names below load on first use, so importing `pipeline.rendering.config` (the CLI does, for
`--help`) does not open HDF5.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "RenderConfig": "config",
    "default_out_dir": "config",
    "RenderSummary": "run",
    "render": "run",
    "colorize": "painting",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
