"""Text for `fmpipe stages` and `fmpipe layers`: a model's stages and layers as
stored (shapes as `--pool` stores them, MB per image at the dtype). No torch.
"""

from __future__ import annotations

import numpy as np

from ..storage.format.encoding import pooled_shape

MB = 1e6


def describe_stages(model: str, size_hw, stages, itemsize: int = 2, label: str = "all stages") -> str:
    """Table of a model's stages at one input size, with MB per image at `itemsize` (the stages as
    stored: pooled already when `--pool` is given); the total is labelled `label` (what the table
    holds: all stages, or a run's chosen ones)."""
    lines = [
        f"{model} at {size_hw[0]}x{size_hw[1]}:",
        "  stage  module               channels  stride  shape (C, H, W)      MB/image",
    ]
    total = 0
    for s in stages:
        mb = s.nbytes(itemsize) / MB
        total += mb
        lines.append(
            f"  {s.index if s.layer is None else 'layer':>5}  {s.module:<20} {s.channels:>8}  {s.stride:>6}  "
            f"{(s.channels, s.height, s.width)!s:<20} {mb:8.3f}"
        )
    lines.append(f"  {label}: {total:.3f} MB per image before compression ({_DTYPE_OF[itemsize]})")
    return "\n".join(lines)


_DTYPE_OF = {1: "uint8", 2: "float16", 4: "float32"}


def describe_layers(found, itemsize: int = 2, pool: tuple[int, int] | None = None) -> str:
    """Table for `fmpipe layers`: every module call in execution order with its stored shape
    (pooled with `pool`, as `--pool` stores it).

    `found`: an `extraction.layers.ModelLayers` (model, size_hw, calls)."""
    h, w = found.size_hw
    lines = [
        f"{found.model} at {h}x{w}: {len(found.calls)} module calls; --layers takes the names below "
        "(a module that runs more than once is named per call, NAME:CALL)",
        f"  {'layer':<40} {'calls':>5}  {'output':<22} {'stored (C, H, W)':<20} MB/image",
    ]
    for call in found.calls:
        stored = None if call.map_shape is None else _pooled_map(call.map_shape, pool)
        shape = "(not storable)" if stored is None else str(stored)
        mb = "" if stored is None else f"{np.prod(stored) * itemsize / MB:8.3f}"
        lines.append(f"  {call.spec:<40} {call.calls:>5}  {call.output:<22} {shape:<20} {mb}")
    return "\n".join(lines)


def _pooled_map(shape: tuple[int, int, int], pool: tuple[int, int] | None) -> tuple[int, int, int]:
    return (shape[0], *pooled_shape(shape[1], shape[2], pool))
