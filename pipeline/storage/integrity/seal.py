"""The file's seal: one sha256 per part a reader relies on, written when a file is finalised or
merged and checked by `fmpipe verify`, so that a change made afterwards is found and named. No torch.

Items (`seal/item`, `seal/sha256`; `docs/format.md`):
- `attr:NAME`: every root attribute but `created`, `timings_json` and the seal's own;
- `PATH`: every other dataset's values with its dtype and shape (keys, done markers, `orig_hw`,
  source digests, failures, statistics, dimension scales, top lists);
- `PATH@attrs`: a group's attributes (a stage's index, module, shape and stride; a top list's k);
- `GROUP/data`: a stage's or layer's chunk table: per stored chunk its row, first channel, stored
  size, filter mask and last 4 bytes, which are the checksum of its contents (zstd XXH64, zlib
  Adler-32 or Fletcher-32). Verify decodes every chunk against its own checksum; the table pins
  which checksum lies where, so a chunk moved to another row is found too. It depends on the
  stored bytes only, never on the map dtype or the codec;
- `shard:SOURCE` (merged virtual files): that shard's own `seal_sha256`, so a shard replaced or
  rewritten after the merge is named.

The root attribute `seal_sha256` hashes the item table. Tamper-evident, not tamper-proof: whoever
rewrites a file can write a matching seal; it catches accidents and mistakes.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from ..format import schema
from ..format.metadata import run_info
from .chunks import C0, MASK, OFFSET, ROW, SIZE, SOURCE, ChunkIndex, RawFiles, index_chunks

BLOCK_BYTES = 16 * 1024 * 1024  # a dataset is hashed in row blocks of about this size
STRING_BLOCK_ROWS = 65536
TAIL_BYTES = 4  # a chunk's checksum: the last 4 bytes of its zstd frame, zlib stream or Fletcher-32 chunk
MISSING = "missing"  # what an item absent from the file digests to
_STR = h5py.string_dtype("utf-8")


def write_seal(file: h5py.File, path: str | os.PathLike) -> str:
    """Seal an open, writable, finished file at `path` (replacing an earlier seal); returns `seal_sha256`."""
    file.flush()  # the chunk table is read from the file's bytes
    if schema.SEAL in file:
        del file[schema.SEAL]
    with RawFiles() as files:
        items = seal_items(file, Path(path), files)
    names = sorted(items)
    file.create_dataset(schema.SEAL_ITEM, data=np.array(names, dtype=object), dtype=_STR)
    file.create_dataset(schema.SEAL_SHA256, data=np.array([items[n] for n in names], dtype="S64"))
    root = table_sha256(items)
    file.attrs[schema.ATTR_SEAL] = root
    return root


def recorded_seal(file: h5py.File) -> dict[str, str] | None:
    """The seal's items as written (item → sha256 hex); None for a file never sealed."""
    if schema.SEAL_ITEM not in file or schema.SEAL_SHA256 not in file:
        return None
    names, digests = file[schema.SEAL_ITEM], file[schema.SEAL_SHA256]
    if names.shape != digests.shape or len(names.shape) != 1 or h5py.check_string_dtype(names.dtype) is None:
        return {}
    return {schema.text(n): schema.text(bytes(d)) for n, d in zip(names[:], digests[:], strict=True)}


def table_sha256(items: dict[str, str]) -> str:
    """sha256 of an item table: the file's one digest (`seal_sha256`)."""
    digest = hashlib.sha256()
    for name in sorted(items):
        digest.update(f"{name}\0{items[name]}\n".encode("utf-8", "replace"))
    return digest.hexdigest()


def seal_items(
    file: h5py.File,
    path: Path,
    files: RawFiles,
    chunk_digests: dict[str, str] | None = None,
    select: Callable[[str], bool] = lambda item: True,
) -> dict[str, str]:
    """Every item of `file` (at `path`) as it is now, or those `select` picks. `chunk_digests`: map
    groups' `data` items already computed (verify computes them from the chunk index it reads anyway)."""
    items = {f"attr:{name}": _sha256(_value_bytes(value)) for name, value in file.attrs.items()}
    for name in schema.UNSEALED_ATTRS:
        items.pop(f"attr:{name}", None)
    maps = {f"{group}/{schema.DATA}" for group in schema.map_groups(file)}
    known = chunk_digests or {}

    def visit(name: str, obj) -> None:
        if name == schema.SEAL or name.startswith(f"{schema.SEAL}/"):
            return
        if not select(f"{name}@attrs" if isinstance(obj, h5py.Group) else name):
            return
        if isinstance(obj, h5py.Group):
            if len(obj.attrs):
                items[f"{name}@attrs"] = _sha256(b"".join(_attr_bytes(obj.attrs)))
        elif name in maps:
            items[name] = known.get(name) or chunk_table_sha256(index_chunks(obj, path, files))
        else:
            items[name] = dataset_sha256(obj)

    file.visititems(visit)
    items.update(shard_items(file, path))
    return {name: digest for name, digest in items.items() if select(name)}


def copied_by_merge(item: str) -> bool:
    """The items merge copies or relies on, cheap to check (no statistics, no chunks): attributes,
    per-image datasets, failures, top lists, groups' attributes."""
    copied = item.startswith(("attr:", f"{schema.IMAGES}/", f"{schema.FAILURES}/"))
    return copied or f"/{schema.TOP}" in item or item.endswith("@attrs")


def changed_since_sealed(file: h5py.File, path: Path, select: Callable[[str], bool]) -> list[str]:
    """`changed_items` for the items `select` picks (none for a file never sealed)."""
    recorded = recorded_seal(file)
    if not recorded:
        return []
    with RawFiles() as files:
        now = seal_items(file, path, files, select=select)
    return changed_items({name: digest for name, digest in recorded.items() if select(name)}, now)


def shard_items(file: h5py.File, path: Path) -> dict[str, str]:
    """`shard:SOURCE` → the seal_sha256 each virtual source has now ("" unsealed, "unreadable")."""
    base = Path(os.path.abspath(path)).parent
    items = {}
    for source in virtual_source_names(file):
        try:
            with h5py.File(base / source, "r", locking="best-effort") as shard:
                seal = run_info(shard.attrs, base / source).seal_sha256
            items[f"{schema.SHARD_ITEM}{source}"] = seal or ""
        except OSError:
            items[f"{schema.SHARD_ITEM}{source}"] = "unreadable"
    return items


def virtual_source_names(file: h5py.File) -> list[str]:
    """The files the virtual datasets of every map group read (sorted; "." is the file itself)."""
    names = set()
    for group in (file[path] for path in schema.map_groups(file)):
        for dset in group.values():
            if isinstance(dset, h5py.Dataset) and dset.is_virtual:
                names.update(vs.file_name for vs in dset.virtual_sources())
    names.discard(".")
    return sorted(names)


def changed_items(recorded: dict[str, str], now: dict[str, str]) -> list[str]:
    """Why `now` differs from the seal, one line per item (changed, gone, added)."""
    lines = []
    for name in sorted(set(recorded) | set(now)):
        was, got = recorded.get(name), now.get(name, MISSING)
        if was is None:
            lines.append(f"{describe(name)} was added after the file was sealed")
        elif got != was:
            gone = got == MISSING
            lines.append(f"{describe(name)} {'is gone' if gone else 'changed'} since the file was sealed")
    return lines


def describe(item: str) -> str:
    """An item in words: `attr:model` → "the root attribute 'model'"."""
    if item.startswith("attr:"):
        return f"the root attribute {item[5:]!r}"
    if item.startswith(schema.SHARD_ITEM):
        return f"its shard {item[len(schema.SHARD_ITEM) :]!r} (its seal)"
    if item.endswith("@attrs"):
        return f"the attributes of /{item[:-6]}"
    return f"/{item}"


# -- digests -------------------------------------------------------------------------------------


def chunk_table_sha256(index: ChunkIndex) -> str:
    """sha256 of a map dataset's chunk table: (row, first channel, size, mask, checksum) per chunk."""
    table = index.table
    tails = np.full(len(table), -1, np.int64)
    for number, source in enumerate(index.sources):
        picked = np.flatnonzero(table[:, SOURCE] == number)
        if len(picked):
            tails[picked] = _tails(source.fd, table[picked, OFFSET], table[picked, SIZE])
    rows = np.column_stack([table[:, ROW], table[:, C0], table[:, SIZE], table[:, MASK], tails])
    return _sha256(b"chunks\n" + rows.astype("<i8").tobytes())


def _tails(fd: int, offsets: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The last TAIL_BYTES of each chunk as an int (-1 where the chunk lies past the file's end)."""
    length = os.fstat(fd).st_size
    ends = offsets + sizes
    good = (sizes >= TAIL_BYTES) & (offsets >= 0) & (ends <= length)
    out = np.full(len(offsets), -1, np.int64)
    if not good.any():
        return out
    with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapped:
        view = np.frombuffer(mapped, np.uint8)
        try:
            picked = view[ends[good][:, None] - TAIL_BYTES + np.arange(TAIL_BYTES)].astype(np.int64)
        finally:
            del view  # the map cannot close while an array still points into it
    out[good] = picked @ (256 ** np.arange(TAIL_BYTES, dtype=np.int64))
    return out


def dataset_sha256(dset: h5py.Dataset) -> str:
    """sha256 of a dataset's dtype, shape and values, read in row blocks (bounded memory)."""
    digest = hashlib.sha256(f"{dset.dtype.str}|{dset.shape}\n".encode())
    if dset.shape is None or dset.size == 0:
        return digest.hexdigest()
    if not dset.shape:
        digest.update(_value_bytes(dset[()]))
        return digest.hexdigest()
    strings = h5py.check_string_dtype(dset.dtype) is not None or dset.dtype.kind == "O"
    row_bytes = max(1, int(np.prod(dset.shape[1:])) * dset.dtype.itemsize)
    step = STRING_BLOCK_ROWS if strings else max(1, BLOCK_BYTES // row_bytes)
    for lo in range(0, dset.shape[0], step):
        digest.update(_value_bytes(dset[lo : lo + step]))
    return digest.hexdigest()


def _attr_bytes(attrs) -> list[bytes]:
    return [f"{name}=".encode("utf-8", "replace") + _value_bytes(attrs[name]) + b"\n" for name in sorted(attrs)]


def _value_bytes(value) -> bytes:
    """Canonical bytes of a stored value: text as utf-8, numbers with their dtype and shape."""
    if isinstance(value, (bytes, str)):
        return b"s" + schema.text(value).encode("utf-8", "replace")
    array = np.asarray(value)
    if array.dtype.kind in "OSU":
        texts = [(schema.text(v) if isinstance(v, (bytes, str)) else repr(v)) for v in array.ravel()]
        encoded = [t.encode("utf-8", "replace") for t in texts]
        return b"t" + b"".join(len(e).to_bytes(8, "little") + e for e in encoded)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return f"n{array.dtype.str}{array.shape}".encode() + np.ascontiguousarray(array).tobytes()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
