#!/usr/bin/env python3
"""Are two fmpipe outputs the same, bit for bit? Compares every dataset (floats as raw bits, so
NaN and -0.0 count) and every attribute, except those that name a moment (`created`, timings).

    python scripts/same_output.py A.h5 B.h5          # exit 0 when identical, 1 otherwise
    python scripts/same_output.py DIR_A DIR_B        # every file below two folders, by relative path:
                                                     # HDF5 files by content, any other byte for byte
    python scripts/same_output.py A B --ignore images_root   # outputs made from different folders

Used to show that a refactoring changed no output (ARCHITECTURE.md, issue notes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (zstd filter)
import numpy as np

VOLATILE_ATTRS = {"created", "timings_json"}
# Files that record a moment or a process: a job array's collection (its pid, creation time) and
# render's ledger (each stage folder's source file identity, which includes its inode and time).
VOLATILE_FILES = {"collection.json", ".fmpipe-ledger"}


def contents(path: Path, ignore: set[str]) -> dict[str, object]:
    """Every dataset's values and every attribute of `path` (but `ignore`d ones), keyed by HDF5 path."""
    found: dict[str, object] = {}

    def visit(name: str, obj) -> None:
        for attr, value in obj.attrs.items():
            if attr not in ignore:
                found[f"{name}@{attr}"] = np.asarray(_resolved(obj.file, value), dtype=object)
        if isinstance(obj, h5py.Dataset) and not isinstance(obj.dtype, h5py.Datatype):
            value = np.asarray(obj[()])
            found[name] = value.view(f"u{value.dtype.itemsize}") if value.dtype.kind == "f" else value

    with h5py.File(path, "r") as file:
        visit("/", file)
        file.visititems(visit)
    return found


def _resolved(file: h5py.File, value):
    """An attribute with its object references replaced by the referenced objects' names (the
    dimension scales' DIMENSION_LIST and REFERENCE_LIST), so two files compare by what they mean."""
    if isinstance(value, h5py.Reference):
        return file[value].name if value else None
    if isinstance(value, np.void):  # a compound record (REFERENCE_LIST: dataset, dimension)
        return tuple(_resolved(file, v) for v in value.tolist())
    if isinstance(value, np.ndarray) and (value.dtype.kind in "OV"):
        return (
            [_resolved(file, v) for v in value.tolist()]
            if value.dtype.kind == "O"
            else [_resolved(file, v) for v in value]
        )
    if isinstance(value, tuple):
        return tuple(_resolved(file, v) for v in value)
    if isinstance(value, list):
        return [_resolved(file, v) for v in value]
    return value


def differences(a: Path, b: Path, ignore: set[str] = VOLATILE_ATTRS) -> list[str]:
    left, right = contents(a, ignore), contents(b, ignore)
    out = [f"only in {a}: {name}" for name in sorted(set(left) - set(right))]
    out += [f"only in {b}: {name}" for name in sorted(set(right) - set(left))]
    for name in sorted(set(left) & set(right)):
        x, y = left[name], right[name]
        same = (
            x.shape == y.shape
            and x.dtype == y.dtype
            and (x.tolist() == y.tolist() if x.dtype == object else np.array_equal(x, y))
        )
        if not same:
            out.append(f"differs: {name}")
    return out


def pairs(a: Path, b: Path) -> list[tuple[Path, Path]]:
    if a.is_file():
        return [(a, b)]
    names = sorted({p.relative_to(a) for p in _files(a)} | {p.relative_to(b) for p in _files(b)})
    return [(a / n, b / n) for n in names]


def _files(folder: Path) -> list[Path]:
    """Every plain file below `folder`, but the images a reference run starts from (images/, sample/)."""
    return [
        p
        for p in folder.rglob("*")
        if p.is_file() and p.relative_to(folder).parts[0] not in ("images", "sample") and p.name not in VOLATILE_FILES
    ]


def file_differences(a: Path, b: Path, ignore: set[str]) -> list[str]:
    """An HDF5 file's differences by content; any other file's, byte for byte."""
    if a.suffix == ".h5" or h5py.is_hdf5(a):
        return differences(a, b, ignore)
    return [] if a.read_bytes() == b.read_bytes() else [f"bytes differ ({a.stat().st_size} vs {b.stat().st_size})"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--ignore", action="append", default=[], metavar="ATTR", help="another attribute to ignore")
    args = parser.parse_args()
    ignore = VOLATILE_ATTRS | set(args.ignore)
    failed = False
    for x, y in pairs(args.a, args.b):
        if not x.exists() or not y.exists():
            print(f"{x if not x.exists() else y}: missing")
            failed = True
            continue
        found = file_differences(x, y, ignore)
        print(f"{x} == {y}" if not found else f"{x} != {y}:\n  " + "\n  ".join(found[:20]))
        failed |= bool(found)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
