"""Text description of a file for `fmpipe info`: run, completeness, storage, stages, failures. No torch."""

from __future__ import annotations

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
        f"  storage    {store.encoding.describe()}, {run.compression}{checksum}",
        f"  images     {n - len(failures)} stored, {len(failures)} failed, {n} in all",
        _bytes_line(store, done),
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
        itemsize = s.data.id.dtype.itemsize  # as stored (uint8 maps read as float32)
        raw = s.data.size * itemsize
        stored = s.data.id.get_storage_size() if not s.data.is_virtual else 0
        ratio = f"{raw / stored:5.2f}" if stored else "    -"
        per_image = s.channels * s.height * s.width * itemsize / MB
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


def _bytes_line(store: Store, done: int) -> str:
    """`  bytes      0.412 MB per done image (the whole file 1.2 MB)`: the file's size over its done rows
    (a merged virtual file counts its shards' files)."""
    size = store.path.stat().st_size
    if store.run.merged and store.run.merge_mode == "virtual":
        folder = store.path.parent / (store.run.merged_from or "")
        size += sum(p.stat().st_size for p in folder.glob("*.h5") if p.is_file()) if folder.is_dir() else 0
    per_image = f"{size / done / MB:.3f} MB per done image" if done else "no image done yet"
    return (
        f"  bytes      {per_image} (the whole file{' and its shards' if store.run.merged else ''}: {size / MB:.1f} MB)"
    )


def _hw(value) -> str:
    return "x".join(str(int(v)) for v in value) if value is not None else "?"


def _floats(value) -> str:
    return "(" + ", ".join(f"{float(v):.3f}" for v in value) + ")" if value is not None else "?"
