"""Whether a file is an fmpipe file this fmpipe reads, and the shape every reader relies on, checked
before anything is read: a crafted or damaged file is refused with an `InputError` (exit 2), never a
traceback, a hang or a huge allocation. No torch.

`check_fmpipe` is the one check (store, verify, info, merge and resume all make it, with one message
per problem): the format, root attributes that parse (`metadata.RunInfo`), a readable version, then
the shape (`check_structure`).

Checked on the file's metadata only (plus the failures' row numbers): every link is a hard link
(soft and external links refused, so no loop and no other file); no dataset keeps its bytes in
another file (HDF5 external storage) or is virtual outside a stage's maps and statistics (the
virtual sources themselves are checked in `virtual.py`); the per-image datasets, failures and every
stage and layer have the names, dtypes and shapes fmpipe writes; stage groups are named by ASCII
decimal indices; and the declared sizes fit the file's real size, so a small file cannot make a
reader allocate for 10^10 rows.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import h5py
import numpy as np

from ...errors import InputError
from . import schema
from .metadata import RunInfo, run_info

STAGE_NAME = re.compile(r"(0|[1-9][0-9]{0,8})")  # ASCII only: "٣".isdigit() is True
MIN_ROW_BYTES = 16  # each key's variable-length reference in images/key takes 16 bytes of the file
MAX_VALUES_PER_IMAGE = 1 << 28  # C·H·W of one image: 4x a 4096-pixel input at stride 2 with 64 channels
MAX_CHANNELS = 1 << 24
MAX_INPUT_SIDE = 1 << 16  # the model's input: overlays and the viewer's photos are decoded at this size
# (path, dtype kinds allowed, trailing shape): the per-image datasets, N rows each.
PER_IMAGE = (
    (schema.DONE, "bui", ()),
    (schema.ORIG_HW, "iu", (2,)),
    (schema.SOURCE_SHA256, "S", ()),
    (schema.SOURCE_SIZE, "iu", ()),
)
FAILURE_COLUMNS = (schema.FAILURE_INDEX, schema.FAILURE_KEY, schema.FAILURE_REASON)
TOP_SHAPES = {"rows": 2, "values": 2, "response": 1, "counts": 1}


def open_hdf5(path: Path, **options) -> h5py.File:
    """`path` opened read-only by h5py (`options`: locking, chunk cache); InputError when it is not
    a readable HDF5 file."""
    try:
        return h5py.File(path, "r", **options)
    except OSError as err:
        raise InputError(f"{path} is not a readable HDF5 file ({err}).") from None


def open_fmpipe(path: Path, structure: bool = True) -> h5py.File:
    """An fmpipe file opened for reading and checked (`check_fmpipe`); InputError for anything else.
    A running task holds HDF5's lock on its partial shard: that one is opened without the lock."""
    file = open_hdf5(path, locking=False if path.name.endswith(schema.PARTIAL_SUFFIX) else "best-effort")
    try:
        check_fmpipe(path, file, structure)
    except BaseException:
        file.close()
        raise
    return file


def check_fmpipe(path: Path, file: h5py.File, structure: bool = True) -> RunInfo:
    """Raise InputError unless `file` (at `path`) is an fmpipe file this fmpipe reads: `format` is
    'fmpipe', every root attribute parses (a malformed one is named), its format version is readable
    and, with `structure`, it is shaped as fmpipe writes it (off for a shard a running task may be
    flushing). Returns its run metadata."""
    if file.attrs.get(schema.ATTR_FORMAT) != schema.FORMAT:  # the one root attribute RunInfo does not type
        raise InputError(f"{path} is an HDF5 file but not an fmpipe file (no format='fmpipe').")
    run = run_info(file.attrs, path)
    if run.format_version not in schema.READABLE_VERSIONS:
        readable = " and ".join(map(str, schema.READABLE_VERSIONS))
        raise InputError(
            f"{path} has fmpipe format version {run.format_version}; this fmpipe reads versions {readable}. "
            "Upgrade fmpipe (python -m pip install -U fmpipe)."
        )
    if structure:
        check_structure(path, file)
    return run


def check_structure(path: Path, file: h5py.File, top_rows: bool = False) -> None:
    """Raise InputError unless `file` (at `path`) is shaped as fmpipe writes it (see the module).
    `top_rows`: also read every top list and check its rows are this file's (merge shifts them)."""
    try:
        _check_links(path, file)
        n = _check_images(path, file)
        _check_failures(path, file, n)
        groups = _check_maps(path, file, n)
        _check_storage(path, file, groups)
        size = run_info(file.attrs, path).input_size
        for group in groups if top_rows else ():
            _check_top_rows(path, file[group], n)
    except InputError:
        raise
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError, OSError) as err:
        raise InputError(f"{path} is damaged or not shaped as an fmpipe file ({err}).") from None
    if size is not None and not all(1 <= side <= MAX_INPUT_SIDE for side in size):
        raise InputError(f"{path}: its input_size {size} is not an image size (1..{MAX_INPUT_SIDE}); refusing it.")


def _check_links(path: Path, file: h5py.File) -> None:
    odd: list[str] = []

    def visit(name: str, link) -> None:
        if not isinstance(link, h5py.HardLink):
            odd.append(f"/{name} is {'an external' if isinstance(link, h5py.ExternalLink) else 'a soft'} link")

    file.visititems_links(visit)
    if odd:
        raise InputError(f"{path}: {odd[0]}; fmpipe never writes links, and reads nothing a link points at.")


def _check_storage(path: Path, file: h5py.File, groups: list[str]) -> None:
    # A merged file's per-image, per-channel datasets of a stage or layer are virtual (their sources are
    # checked by virtual.py, which reads every dataset of these groups); nothing else may be.
    virtual_ok = set(groups)
    found: list[str] = []

    def check(name: str, obj) -> None:
        if not isinstance(obj, h5py.Dataset):
            return
        if obj.id.get_create_plist().get_external_count():
            found.append(f"/{name} keeps its bytes in another file (HDF5 external storage)")
        elif obj.is_virtual and name.rpartition("/")[0] not in virtual_ok:
            found.append(f"/{name} is a virtual dataset, which fmpipe writes only in a stage's or layer's group")

    file.visititems(check)
    if found:
        raise InputError(f"{path}: {found[0]}; refusing to read it.")


def _check_images(path: Path, file: h5py.File) -> int:
    """Checks /images; returns N, the rows."""
    for name in (schema.KEY, schema.DONE, schema.ORIG_HW, schema.FAILURE_INDEX, schema.STAGES):
        if name not in file:
            raise InputError(f"{path} claims to be an fmpipe file but lacks /{name}.")
    keys = _dataset(path, file, schema.KEY)
    if keys.ndim != 1 or h5py.check_string_dtype(keys.dtype) is None:
        raise InputError(f"{path}: /{schema.KEY} is not a list of strings ({keys.dtype}, shape {keys.shape}).")
    n = keys.shape[0]
    size = os.path.getsize(path)
    if n * MIN_ROW_BYTES > size:
        raise InputError(
            f"{path} declares {n} images but is only {size} bytes long: it cannot hold their keys; refusing it."
        )
    for name, kinds, tail in PER_IMAGE:
        if name not in file:
            continue  # the source digests are absent from format v1 files
        dset = _dataset(path, file, name)
        if dset.shape != (n, *tail) or dset.dtype.kind not in kinds:
            raise InputError(f"{path}: /{name} is {dset.dtype} of shape {dset.shape}, expected ({n}, ...).")
    return n


def _check_failures(path: Path, file: h5py.File, n: int) -> None:
    columns = [_dataset(path, file, name) for name in FAILURE_COLUMNS if name in file]
    count = columns[0].shape
    if any(c.ndim != 1 or c.shape != count for c in columns) or count[0] > n:
        raise InputError(f"{path}: /{schema.FAILURES} has columns of other lengths, or more rows than images.")
    index = columns[0]
    if index.dtype.kind not in "iu" or any(h5py.check_string_dtype(c.dtype) is None for c in columns[1:]):
        raise InputError(f"{path}: /{schema.FAILURES} has columns of the wrong types.")
    rows = index[:]
    if len(rows) and (rows.min() < 0 or rows.max() >= n):
        bad = int(rows[(rows < 0) | (rows >= n)][0])
        raise InputError(f"{path}: /{schema.FAILURE_INDEX} lists row {bad}, outside 0..{n - 1}; the file is damaged.")


def _map_paths(file: h5py.File) -> list[str]:
    """The map groups' paths, after checking the stage groups' names (ASCII decimal indices)."""
    for kind in (schema.STAGES, schema.LAYERS):
        if kind in file and not isinstance(file[kind], h5py.Group):
            raise InputError(f"/{kind} is not a group")
    names = list(file[schema.STAGES])
    odd = [name for name in names if not STAGE_NAME.fullmatch(name)]
    if odd:
        raise InputError(f"/{schema.STAGES} holds a group {odd[0]!r} that is not named by a stage index (0, 1, 2, ...)")
    return schema.map_groups(file)


def _check_maps(path: Path, file: h5py.File, n: int) -> list[str]:
    """Checks every stage and layer; returns their group paths."""
    try:
        groups = _map_paths(file)
    except InputError as err:
        raise InputError(f"{path}: {err}.") from None
    for group_path in groups:
        group = file[group_path]
        label = schema.group_label(group_path)
        label = f"stage {label}" if isinstance(label, int) else label
        if not isinstance(group, h5py.Group):
            raise InputError(f"{path}: /{group_path} is not a group.")
        index = int(group_path.rpartition("/")[2]) if group_path.startswith(f"{schema.STAGES}/") else None
        _check_map(path, group, label, n, index)
    return groups


def _check_map(path: Path, group: h5py.Group, label: str, n: int, index: int | None) -> None:
    """A stage's (or layer's) group: its datasets, their dtypes and shapes and its attributes agree."""
    for name in (schema.DATA, *schema.STAT_NAMES):
        if name not in group or not isinstance(group[name], h5py.Dataset):
            raise InputError(f"{path}: {label} lacks its {name!r} dataset.")
    data = group[schema.DATA]
    if data.ndim != 4 or data.shape[0] != n or data.dtype.kind not in "fui":
        raise InputError(f"{path}: {label} data is {data.dtype} of shape {data.shape}, expected ({n}, C, H, W).")
    values = int(np.prod(data.shape[1:], dtype=np.int64))
    if min(data.shape[1:]) < 1 or values > MAX_VALUES_PER_IMAGE or data.shape[1] > MAX_CHANNELS:
        raise InputError(f"{path}: {label} declares maps of shape {data.shape[1:]} per image; refusing it.")
    try:
        names = (schema.ATTR_CHANNELS, schema.ATTR_HEIGHT, schema.ATTR_WIDTH, schema.ATTR_STRIDE)
        declared = tuple(int(group.attrs[a]) for a in (*names, schema.ATTR_STAGE_INDEX))
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{path}: {label} has a missing or malformed attribute ({err}).") from None
    if declared[:3] != data.shape[1:] or (index is not None and declared[4] != index):
        raise InputError(
            f"{path}: {label} attributes (index {declared[4]}, C, H, W = {declared[:3]}) "
            f"disagree with its data {data.shape}; the file is damaged."
        )
    for name in schema.STAT_NAMES:
        stat = group[name]
        if stat.shape != data.shape[:2] or stat.dtype.kind != "f":
            raise InputError(
                f"{path}: {label} {name!r} is {stat.dtype} of shape {stat.shape}, expected float32 {data.shape[:2]}."
            )
    if schema.TOP in group:
        _check_top(path, group[schema.TOP], label, data.shape[1])


def _check_top(path: Path, top, label: str, channels: int) -> None:
    if not isinstance(top, h5py.Group):
        raise InputError(f"{path}: {label}'s top lists are not a group.")
    k = None
    for by in ("max", "mean"):
        for part, ndim in TOP_SHAPES.items():
            name = f"{by}_{part}"
            dset = top.get(name)
            kinds = "iu" if part in ("rows", "counts") else "f"
            if not isinstance(dset, h5py.Dataset) or dset.ndim != ndim or dset.dtype.kind not in kinds:
                raise InputError(f"{path}: {label}'s top list {name!r} is missing or malformed.")
            if dset.shape[0] != channels or (ndim == 2 and k is not None and dset.shape[1] != k):
                raise InputError(
                    f"{path}: {label}'s top list {name!r} has shape {dset.shape}; it has {channels} channels."
                )
            k = dset.shape[1] if ndim == 2 else k


def _dataset(path: Path, file: h5py.File, name: str) -> h5py.Dataset:
    dset = file[name]
    if not isinstance(dset, h5py.Dataset):
        raise InputError(f"{path}: /{name} is not a dataset.")
    return dset


def _check_top_rows(path: Path, group: h5py.Group, n: int) -> None:
    top = group.get(schema.TOP)
    for by in ("max", "mean") if top is not None else ():
        problem = top_rows_problem(top[f"{by}_rows"][:], n)
        if problem:
            raise InputError(f"{path}: {group.name.lstrip('/')} {problem}.")


def top_rows_problem(rows: np.ndarray, n: int) -> str | None:
    """Why top-list rows (any shape) cannot be rows of an N-image file (-1 pads), or None."""
    bad = rows[(rows < -1) | (rows >= n)]
    return None if not len(bad) else f"its top lists name row {int(bad[0])}, outside 0..{n - 1}; the file is damaged"
