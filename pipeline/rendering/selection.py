"""Which images and channels render draws, and the safe output folder of each image.

`--images 0:4,7,cats/a.jpg` selects rows of /images/key (indices, Python-style ranges,
keys); `--channels 5,9,16:32` selects channels; `--top-k K` picks each image's K most
active channels by the stored mean.

Each image renders into stage<S>/<folder>/, its folder a function of the file's whole key
list, never of what a command asked for: render with any --images and the gallery agree,
and so do a merged file, its --copy and the unsharded run (same keys, same rows). The
folder is the key without its extension, made safe (`cats/a.jpg` → `cats/a`; never
absolute, never `..`). Keys whose safe names are equal case-insensitively (`a.jpg`,
`a.png`, `A.jpg`) are told apart in row order (keys are sorted): the first keeps the name,
each later one takes the first free of `a_png`, `a~ROW`, `a~ROW~2`, ..., where free means
no key's plain name and no earlier pick, case-insensitively. So no two images share a folder.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..config import pick_indices
from ..errors import UsageError
from ..storage.format import schema
from ..storage.reading.store import Store
from .config import Spec

log = logging.getLogger(__name__)

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
            indices = pick_indices(item, n, "image", str(store.path))
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


def select_channels(spec: Spec, channels: int, stage: int | str) -> tuple[int, ...] | None:
    """Channel indices of a stage with `channels` channels, in the order given (no duplicates); None: all."""
    if spec is None:
        return None
    out: dict[int, None] = {}
    for item in spec_items(spec):
        where = f"stage {stage}" if isinstance(stage, int) else stage  # an index, or a label like "layer x"
        indices = pick_indices(item, channels, "channel", f"{where} ({channels} channels)")
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
        yield row, schema.text(block[row - block_start])


@dataclass(frozen=True)
class FolderMap:
    """Each image's folder below stage<S>/, a function of the file's whole key list.

    Only the rows renamed because of a clash are held; every other key's folder is its
    plain `safe_folder` name, computed when asked.
    """

    renamed: dict[int, str]  # row → folder, for keys whose plain name an earlier key holds

    def folder(self, row: int, key: str) -> str:
        """The folder of the image at `row`, whose key is `key` (as stored at that row)."""
        return self.renamed.get(row) or safe_folder(key)[0]


def image_folders(store: Store) -> FolderMap:
    """Name every image's folder from the file's keys (see the module doc), streaming them in blocks.

    One pass keeps an (N,) int64 hash of each casefolded plain name; only rows whose hash is
    shared are named with care, comparing the strings, so a hash clash changes no name.
    """
    dset = store.file[schema.KEY]
    hashes = np.empty(len(store), np.int64)
    for start in range(0, len(hashes), KEY_BLOCK):
        block = dset[start : start + KEY_BLOCK]
        # Python's str hash (salted per process) only groups candidates; names come from the strings.
        hashes[start : start + len(block)] = [hash(safe_folder(schema.text(key))[0].casefold()) for key in block]
    order = np.argsort(hashes, kind="stable")
    ordered = hashes[order]
    del hashes
    same = ordered[1:] == ordered[:-1]
    shared = np.zeros(len(ordered), bool)
    shared[1:] |= same
    shared[:-1] |= same
    renamed = _rename_clashes(store, np.sort(order[shared]), _PlainNames(store, ordered, order))
    if renamed:
        row, name = next(iter(renamed.items()))
        log.warning(
            "%d images render into a folder other than their plain name, which another image's name equals "
            "up to case or extension (first: %r → %r)",
            len(renamed),
            next(iter_keys(store, [row]))[1],
            name,
        )
    return FolderMap(renamed)


def _rename_clashes(store: Store, rows: np.ndarray, plain: _PlainNames) -> dict[int, str]:
    """Folders of the clashing `rows` (ascending) whose plain name an earlier row already has.

    The first row of a name keeps it; each later one takes the first free of `NAME_EXT`,
    `NAME~ROW`, `NAME~ROW~2`, ...: free means no key's plain name and no earlier pick, case-insensitively.
    """
    first_seen: set[str] = set()
    picked: set[str] = set()
    renamed: dict[int, str] = {}
    for row, key in iter_keys(store, rows):
        base, ext = safe_folder(key)
        if base.casefold() not in first_seen:
            first_seen.add(base.casefold())
            continue
        tries = ([f"{base}_{ext}"] if ext else []) + [f"{base}~{row}"]
        names = itertools.chain(tries, (f"{base}~{row}~{i}" for i in itertools.count(2)))
        name = next(n for n in names if n.casefold() not in picked and not plain.holds(n.casefold()))
        picked.add(name.casefold())
        renamed[row] = name
    return renamed


class _PlainNames:
    """Whether any key's casefolded plain folder name equals a string: a hash lookup, then the keys."""

    def __init__(self, store: Store, ordered: np.ndarray, order: np.ndarray):
        self.store, self.ordered, self.order = store, ordered, order

    def holds(self, folded: str) -> bool:
        value = hash(folded)
        lo, hi = np.searchsorted(self.ordered, value, "left"), np.searchsorted(self.ordered, value, "right")
        rows = np.sort(self.order[lo:hi])
        return any(safe_folder(key)[0].casefold() == folded for _, key in iter_keys(self.store, rows))


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
    if part.lower().endswith((".png", ".npy")):  # could clash with a channel PNG, or an exported .npy, beside it
        part = part[:-4] + "_" + part[-3:].lower()
    raw = part.encode("utf-8", "surrogateescape")
    if len(raw) > MAX_COMPONENT_BYTES:
        digest = hashlib.sha1(raw).hexdigest()[:8]
        part = raw[:MAX_COMPONENT_BYTES].decode("utf-8", "ignore") + f"~{digest}"
    return part
