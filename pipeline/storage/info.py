"""Text descriptions for `fmpipe info` (a file) and `fmpipe stages` (a model). No torch."""

from __future__ import annotations

import numpy as np

from .store import Store

MB = 1e6


def describe_store(store: Store, failures_shown: int = 10) -> str:
    """Multi-line description of an fmpipe file: run, completeness, stages, failures."""
    run = store.run
    n, done = len(store), store.done_count
    failures = store.failures
    state = "complete" if store.complete else f"INCOMPLETE ({done} of {n} images done)"
    checksum = f", chunks checked by {run.chunk_checksum}" if run.chunk_checksum else ", no chunk checksums"
    lines = [
        f"{store.path}: fmpipe format v{run.format_version}, {state}",
        f"  model      {run.model}  (weights: {run.weights}; state dict sha256 {(run.weights_sha256 or '?')[:16]}…)",
        f"  input      {_hw(run.input_size)}, {run.resize_policy}, mean {_floats(run.mean)}, std {_floats(run.std)}",
        f"  storage    {run.dtype}, {run.compression}{checksum}",
        f"  images     {n - len(failures)} stored, {len(failures)} failed, {n} in all",
    ]
    if run.merged:
        lines.append(
            f"  shards     {run.num_shards} of {run.num_shards} merged ({run.merge_mode}) from "
            f"{run.merged_from}/; images done {done} of {n}"
        )
    elif run.num_shards > 1:
        lines.append(f"  shard      {run.shard_index} of {run.num_shards}; images done {done} of {n}")
    lines.append("  stage  module               channels  stride  shape (C, H, W)      MB/image  stored MB  ratio")
    for s in store.maps:
        raw = s.data.size * s.data.dtype.itemsize
        stored = s.data.id.get_storage_size() if not s.data.is_virtual else 0
        ratio = f"{raw / stored:5.2f}" if stored else "    -"
        per_image = s.channels * s.height * s.width * s.data.dtype.itemsize / MB
        lines.append(
            f"  {s.index if s.layer is None else 'layer':>5}  {s.module:<20} {s.channels:>8}  {s.stride:>6}  "
            f"{(s.channels, s.height, s.width)!s:<20} {per_image:8.3f}  "
            f"{f'{stored / MB:9.2f}' if stored or not s.data.is_virtual else '  (shards)'}  {ratio}"
        )
    for key, reason in failures[:failures_shown]:
        lines.append(f"  failed     {key}: {reason}")
    if len(failures) > failures_shown:
        lines.append(
            f"  ... and {len(failures) - failures_shown} more failures "
            "(pipeline.open_store(path).failures lists them all)"
        )
    t = run.timings
    if t:
        phases = ", ".join(f"{k[:-2]} {v:.1f}s" for k, v in t.items() if k.endswith("_s"))
        bound = f"; bound by {t['bound_by']}" if "bound_by" in t else ""
        lines.append(f"  timings    {phases}{bound}")
    return "\n".join(lines)


def describe_stages(model: str, size_hw, stages, itemsize: int = 2, label: str = "all stages") -> str:
    """Table of a model's stages at one input size, with MB per image at `itemsize`; the total is
    labelled `label` (what the table holds: all stages, or a run's chosen ones)."""
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
    lines.append(
        f"  {label}: {total:.3f} MB per image before compression ({'float16' if itemsize == 2 else 'float32'})"
    )
    return "\n".join(lines)


def _hw(value) -> str:
    return "x".join(str(int(v)) for v in value) if value is not None else "?"


def _floats(value) -> str:
    return "(" + ", ".join(f"{float(v):.3f}" for v in value) + ")" if value is not None else "?"


def describe_layers(found, itemsize: int = 2) -> str:
    """Table for `fmpipe layers`: every module call in execution order with its stored shape.

    `found`: an `extraction.layers.ModelLayers` (model, size_hw, calls)."""
    h, w = found.size_hw
    lines = [
        f"{found.model} at {h}x{w}: {len(found.calls)} module calls; --layers takes the names below "
        "(a module that runs more than once is named per call, NAME:CALL)",
        f"  {'layer':<40} {'calls':>5}  {'output':<22} {'stored (C, H, W)':<20} MB/image",
    ]
    for call in found.calls:
        shape = "(not storable)" if call.map_shape is None else str(call.map_shape)
        mb = "" if call.map_shape is None else f"{np.prod(call.map_shape) * itemsize / MB:8.3f}"
        lines.append(f"  {call.spec:<40} {call.calls:>5}  {call.output:<22} {shape:<20} {mb}")
    return "\n".join(lines)
