"""Which images and channels render draws, and the safe output folder of each image.

`--images 0:4,7,cats/a.jpg` selects rows of /images/key (indices, Python-style ranges,
keys); `--channels 5,9,16:32` selects channels; `--top-k K` picks each image's K most
active channels by the stored mean. Output folders come from keys but can never be
absolute or climb out of the output folder, and two images never share one.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator, Sequence

import numpy as np

from ..errors import UsageError
from ..storage import schema
from ..storage.store import Store

log = logging.getLogger(__name__)

Spec = str | Sequence[int | str] | None
KEY_BLOCK = 4096  # keys read per HDF5 call when scanning /images/key
MAX_COMPONENT_BYTES = 200  # folder name parts above this are shortened (file systems allow 255)
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\\:]")


def spec_items(spec: Spec) -> list[int | str]:
    """`"0:4,7,a.jpg"` or `[0, "a.jpg"]` → a list of ints and strings (strings stripped)."""
    if spec is None:
        return []
    if isinstance(spec, str):
        return [part.strip() for part in spec.split(",") if part.strip()]
    return [item if isinstance(item, int) else str(item).strip() for item in spec]


def select_rows(store: Store, spec: Spec) -> np.ndarray:
    """Sorted unique int64 rows chosen by `spec` (all rows when None), failed/undone rows dropped."""
    n = len(store)
    if spec is None:
        wanted = np.arange(n, dtype=np.int64)
    else:
        picked: list[int] = []
        keys: list[str] = []
        for item in spec_items(spec):
            indices = _index_item(item, n, "image", str(store.path))
            if indices is None:
                keys.append(str(item))
            else:
                picked.extend(indices)
        picked.extend(_rows_of_keys(store, keys))
        wanted = np.unique(np.asarray(picked, dtype=np.int64))
    if not len(wanted):
        raise UsageError(f"--images selects no image of {store.path} ({n} images; rows 0..{n - 1}).")
    ok = store.ok
    dropped = wanted[~ok[wanted]]
    if len(dropped):
        log.warning(
            "skipping %d selected images that failed or are not done yet (first: row %d); "
            "`fmpipe info %s` lists failures",
            len(dropped),
            int(dropped[0]),
            store.path,
        )
    return wanted[ok[wanted]]


def select_channels(spec: Spec, channels: int, stage: int) -> tuple[int, ...] | None:
    """Channel indices of a stage with `channels` channels, in the order given (no duplicates); None: all."""
    if spec is None:
        return None
    out: dict[int, None] = {}
    for item in spec_items(spec):
        indices = _index_item(item, channels, "channel", f"stage {stage} ({channels} channels)")
        if indices is None:
            raise UsageError(f"--channels takes indices and ranges like 5,9,16:32; got {item!r}.")
        out.update(dict.fromkeys(indices))
    if not out:
        raise UsageError(f"--channels selects no channel (this stage has {channels}: 0..{channels - 1}).")
    return tuple(out)


def top_channels(mean: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest (C,) means, largest first (ties: lower channel first; NaN last)."""
    score = np.where(np.isnan(mean), -np.inf, mean)
    return np.argsort(-score, kind="stable")[: min(k, len(mean))]


def _index_item(item: int | str, count: int, what: str, where: str) -> list[int] | None:
    """One index or `lo:hi` range → indices in 0..count-1; None when `item` is not numeric."""
    if isinstance(item, int) or re.fullmatch(r"-?\d+", item):
        index = int(item)
        if not -count <= index < count:
            raise UsageError(
                f"{what} {index} does not exist in {where}: valid indices are 0..{count - 1} (or -{count}..-1)."
            )
        return [index % count]
    match = re.fullmatch(r"(-?\d*):(-?\d*)", item)
    if match is None:
        return None
    lo, hi = (int(v) if v else None for v in match.groups())
    indices = list(range(count))[slice(lo, hi)]
    if not indices:
        raise UsageError(f"{what} range {item!r} is empty in {where}: valid indices are 0..{count - 1}.")
    return indices


def _rows_of_keys(store: Store, keys: list[str]) -> list[int]:
    """Rows of image keys, scanning /images/key in blocks (no full key list in memory)."""
    if not keys:
        return []
    missing = set(keys)
    rows = []
    for row, key in iter_keys(store, range(len(store))):
        if key in missing:
            rows.append(row)
            missing.discard(key)
            if not missing:
                break
    if missing:
        example = next(iter_keys(store, [0]))[1] if len(store) else "?"
        raise UsageError(
            f"no image with key {sorted(missing)[0]!r} in {store.path}. Keys are paths relative to "
            f"the extracted folder, with extension (e.g. {example!r}); indices and ranges like 0:4 work too."
        )
    return rows


def iter_keys(store: Store, rows: Sequence[int] | np.ndarray) -> Iterator[tuple[int, str]]:
    """(row, key) for ascending `rows`, reading the key dataset one block at a time."""
    dset = store.file[schema.KEY]
    block_start, block = -1, None
    for row in rows:
        row = int(row)
        if block is None or not block_start <= row < block_start + len(block):
            block_start = row
            block = dset[row : row + KEY_BLOCK]
        key = block[row - block_start]
        yield row, key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)


class FolderNamer:
    """Maps image keys to distinct safe relative folders: `cats/a.jpg` → `cats/a`.

    Extensions are dropped; `..`, `.`, empty parts, control characters, backslashes and
    colons are neutralised, so a folder never leaves the output directory. A name already
    taken (case-insensitively) gets the extension back (`a_png`), then `~ROW`.
    """

    def __init__(self) -> None:
        self._used: set[str] = set()

    def folder(self, row: int, key: str) -> str:
        base, ext = safe_folder(key)
        candidates = [base, *([f"{base}_{ext}"] if ext else []), f"{base}~{row}"]
        for name in candidates:
            if name.casefold() not in self._used:
                break
        else:
            name = f"{base}~{row}~{hashlib.sha1(key.encode('utf-8', 'replace')).hexdigest()[:8]}"
        if name != base:
            log.warning("image %r renders into %r: its plain name %r is taken by another image", key, name, base)
        self._used.add(name.casefold())
        return name


def safe_folder(key: str) -> tuple[str, str]:
    """(relative folder, dropped extension) for an image key; never absolute, never `..`."""
    parts = [p for p in key.replace("\\", "/").split("/") if p not in ("", ".")]
    ext = ""
    if parts:
        stem, dot, suffix = parts[-1].rpartition(".")
        if dot and stem.strip("."):
            parts[-1], ext = stem, _clean(suffix)
    cleaned = [_clean(p) for p in parts] or ["_"]
    return "/".join(cleaned), ext


def _clean(part: str) -> str:
    part = _UNSAFE.sub("_", part)
    if part in ("", ".", ".."):
        return part.replace(".", "_") or "_"
    if part.lower().endswith(".png"):  # could clash with a channel PNG beside it
        part = part[:-4] + "_png"
    raw = part.encode("utf-8", "surrogateescape")
    if len(raw) > MAX_COMPONENT_BYTES:
        digest = hashlib.sha1(raw).hexdigest()[:8]
        part = raw[:MAX_COMPONENT_BYTES].decode("utf-8", "ignore") + f"~{digest}"
    return part
