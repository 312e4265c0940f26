"""`fmpipe merge OUT`: check a job array's shards (OUT.shards/), then combine them into OUT. No torch.

By default OUT holds virtual datasets (VDS) over the shards' stage data and statistics,
with relative source names (`OUT.shards/shard-...h5`) and NaN fill, so merging takes well
under a second whatever the data size; keys, done markers and failures (re-indexed) are
copied. `copy=True` writes a self-contained file instead, copying each compressed chunk as
it is (read_direct_chunk → write_direct_chunk), never recompressing. Either way OUT has the
single-file schema: `open_store` and `fmpipe info` treat it like an unsharded file.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..errors import FingerprintMismatch, IncompleteFileError, InputError, OutputExistsError, write_failed
from ..sources import keys_sha256
from ..storage.format import schema
from ..storage.format.dims import attach_dimensions
from ..storage.format.identity import describe_difference
from ..storage.format.metadata import RunInfo, run_info
from ..storage.format.structure import check_structure, open_fmpipe, open_hdf5
from ..storage.integrity.seal import changed_since_sealed, copied_by_merge, write_seal
from ..storage.reading.store import open_store
from ..storage.reading.toplists import merge_top_lists, top_lists_bytes
from ..storage.writing.files import merged_path, publish, reserve_space, shards_folder
from . import shards
from .chunkcopy import copy_chunks, copy_rows

log = logging.getLogger(__name__)

TMP_SUFFIX = ".merging"
_STR = h5py.string_dtype("utf-8")
# Root attributes that describe one shard, not the merged file.
_SHARD_ONLY_ATTRS = (schema.ATTR_SHARD_INDEX, schema.ATTR_TIMINGS, schema.ATTR_COMPLETE)


@dataclass(frozen=True)
class MergeSummary:
    """What a merge did; `fmpipe merge` prints it."""

    out: Path
    num_shards: int
    images: int
    failed: int
    mode: str  # "virtual" or "copy"
    seconds: float
    bytes_copied: int  # compressed chunk bytes copied (copy mode; 0 for virtual)


@dataclass(frozen=True)
class _Shard:
    """One validated, open shard and where its rows go in the merged file."""

    state: shards.ShardState
    file: h5py.File
    start: int  # first row in the merged file
    count: int  # rows
    source: str  # its name relative to OUT's folder, for the virtual datasets
    keys: np.ndarray  # (count,) object array of utf-8 bytes


def merge(out: str | os.PathLike, copy: bool = False, overwrite: bool = False) -> MergeSummary:
    """Check every shard in OUT.shards/ and write OUT (virtual datasets, or chunk copies with `copy`).

    Raises IncompleteFileError (missing or unfinished shards), FingerprintMismatch (shards of
    different configurations), InputError (unreadable, foreign or inconsistent shards) and
    OutputExistsError (OUT is something other than an earlier merge, without `overwrite`).
    """
    t0 = time.perf_counter()
    out = _resolve_out(Path(out))
    found = shards.scan(shards_folder(out))
    _check_scan(found, out)
    _check_output(out, overwrite)
    mode = "copy" if copy else "virtual"
    tmp = out.with_name(out.name + TMP_SUFFIX)
    then = f"nothing was written to {out.name} (its temporary {tmp.name} is removed); free space, then merge again."
    try:
        with ExitStack() as stack:
            opened = [stack.enter_context(h5py.File(s.path, "r", locking="best-effort")) for s in found.shards]
            parts = _check_shards(found, opened, out)
            reserve_space(tmp, _merged_bytes(parts, copy), then)
            try:
                copied = _write(tmp, parts, found, mode)
            except (OSError, RuntimeError):
                # HDF5 could not close the half-written OUT.merging, which still refers to the shards:
                # closing them now crashed the process. Left open; the CLI exits right after the message.
                stack.pop_all()
                raise
        with h5py.File(tmp, "r+", locking="best-effort") as file:  # the shards are closed: no lock clash
            write_seal(file, tmp)  # with each shard's seal: a shard replaced after the merge is named
        publish(tmp, out)
    except (OSError, RuntimeError) as err:  # disk full, quota, I/O error: from HDF5 or the publish
        _discard(tmp)
        failure = write_failed(out, err, then)
        failure.exit_now = True  # HDF5 may hold the half-written file it could not close
        raise failure from err
    except BaseException:
        _discard(tmp)
        raise
    with open_store(out, require_complete=True) as store:  # re-check: the sources resolve from OUT's folder
        images, failed = len(store), len(store.failures)
    seconds = time.perf_counter() - t0
    log.info("merged %d shards into %s (%s) in %.2f s", found.num_shards, out, mode, seconds)
    return MergeSummary(out, found.num_shards, images, failed, mode, seconds, copied)


def _merged_bytes(parts: list[_Shard], copy: bool) -> int:
    """About how many bytes OUT will take: per image its key, digests and markers, the top lists,
    and with `copy` every shard's chunks (bounded by the shards' file sizes)."""
    rows = sum(p.count for p in parts)
    need = rows * 256 + top_lists_bytes(parts[0].file)
    if copy:
        need += sum(os.path.getsize(p.state.path) for p in parts)
    return need


def _discard(tmp: Path) -> None:
    """Remove a half-written OUT.merging (and the scratch file of a space check)."""
    for path in (tmp, tmp.with_name(tmp.name + ".space")):
        with suppress(OSError):
            path.unlink()


def _resolve_out(out: Path) -> Path:
    """Accept OUT or its shards folder OUT.shards/."""
    if out.is_dir():
        merged = merged_path(out)
        if merged is None:
            raise InputError(f"{out} is a folder; give the merged file OUT (its shards are in OUT.shards/).")
        return merged
    if out.is_file() and not shards_folder(out).exists():
        try:
            open_fmpipe(out, structure=False).close()
        except InputError as err:
            raise InputError(
                f"{err} There is no {out}.shards/ to merge either: give the OUT that the job array's "
                "`fmpipe extract IMAGES OUT --num-shards N` used."
            ) from None
    return out


def _check_scan(found: shards.ShardScan, out: Path) -> None:
    """Every shard 0..N-1 present, readable and complete; no stray shard of another --num-shards."""
    n = found.num_shards
    strays = found.names.strays_problem()
    if strays:
        raise InputError(f"cannot merge {out}: {strays}")
    unreadable = found.with_state("unreadable")
    if unreadable:
        listed = " ".join(s.reason for s in unreadable)  # each names its file
        raise InputError(f"cannot merge {out}: {listed} Remove or re-extract those shards (--overwrite).")
    missing, partial = found.with_state("missing", "starting"), found.with_state("partial")
    if not missing and not partial:
        return
    problems = [f"shard {s.index} of {n} is missing ({s.path.name})" for s in missing]
    problems += [f"{s.label} is incomplete ({s.done} of {s.images} images done)" for s in partial]
    todo = ",".join(str(s.index) for s in sorted(missing + partial, key=lambda s: s.index))
    raise IncompleteFileError(
        f"cannot merge {out}: {'; '.join(problems)}. Run those tasks again (they resume): "
        f"FMPIPE_NUM_SHARDS={n} sbatch --array={todo} scripts/slurm/extract.sbatch IMAGES {out}, or "
        f"fmpipe extract IMAGES {out} --shard-index I --num-shards {n}; then merge again."
    )


def _check_output(out: Path, overwrite: bool) -> None:
    """OUT may be replaced if absent, an earlier merge of these shards, or with --overwrite."""
    if not out.exists() or overwrite:
        return
    try:
        with open_hdf5(out, locking="best-effort") as file:
            merged_from = run_info(file.attrs, out).merged_from
    except InputError:  # not HDF5, or malformed: not an earlier merge
        merged_from = None
    if merged_from == shards_folder(out).name:
        log.info("replacing the earlier merge %s", out)
        return
    raise OutputExistsError(
        f"{out} exists and is not a merge of {shards_folder(out)}/; pass --overwrite to replace it."
    )


def _check_shards(found: shards.ShardScan, opened: list[h5py.File], out: Path) -> list[_Shard]:
    """Same fingerprint and stage layout everywhere; keys disjoint, in order and covering."""
    for state, file in zip(found.shards, opened, strict=True):
        check_structure(state.path, file, top_rows=True)  # links, external storage, shapes, top-list rows
        changed = changed_since_sealed(file, state.path, copied_by_merge)  # what merge copies: unchanged
        if changed:
            raise InputError(
                f"{state.label}: {changed[0]} ({len(changed)} items changed since it was finalised). Restore "
                "it, or re-extract it (--overwrite), then merge again; `fmpipe verify` on the shards folder says more."
            )
    runs = [run_info(file.attrs, state.path) for state, file in zip(found.shards, opened, strict=True)]
    _check_fingerprints(found, runs)
    layout = _stage_layout(opened[0])
    parts, start = [], 0
    for state, file, run in zip(found.shards, opened, runs, strict=True):
        if (run.shard_index, run.num_shards) != (state.index, found.num_shards):
            raise InputError(
                f"{state.label} says it is shard {run.shard_index} of {run.num_shards}: was it renamed? "
                "Re-extract it (--overwrite)."
            )
        if _stage_layout(file) != layout:
            raise InputError(f"{state.label} stores other stages or chunking than shard 0; re-extract it.")
        count = int(file[schema.KEY].shape[0])
        if run.shard_start != start:
            raise InputError(
                f"{state.label} starts at image {run.shard_start}, expected {start}: "
                "the shards do not tile the collection. Re-extract it (--overwrite)."
            )
        keys = file[schema.KEY][:]
        source = f"{found.folder.name}/{state.path.name}"
        parts.append(_Shard(state, file, start, count, source, keys))
        start += count
    _check_keys(parts, runs[0], out)
    return parts


def _check_fingerprints(found: shards.ShardScan, runs: list[RunInfo]) -> None:
    prints = [run.fingerprint for run in runs]
    common = Counter(prints).most_common(1)[0][0]
    if all(p == common for p in prints):
        return
    ref = runs[prints.index(common)]
    odd = [(s, r) for s, r, p in zip(found.shards, runs, prints, strict=True) if p != common]
    theirs, mine = (run.fingerprint_parts for run in (ref, odd[0][1]))
    first = describe_difference(theirs, mine, now_label="this shard")
    raise FingerprintMismatch(
        f"shards {', '.join(str(s.index) for s, _ in odd)} of {found.num_shards} were made with a different "
        f"configuration than the others ({odd[0][0].label}: {first}). Re-extract them with the others' "
        "options and --overwrite, then merge again."
    )


def _stage_layout(file: h5py.File) -> dict:
    """Per stage and layer: (C, H, W), dtype, chunks and filters of its data (the fingerprint covers the rest)."""
    layout = {}
    for name in schema.map_groups(file):
        data = file[f"{name}/{schema.DATA}"]
        dcpl = data.id.get_create_plist()
        filters = tuple(dcpl.get_filter(i)[:3] for i in range(dcpl.get_nfilters()))
        layout[name] = (data.shape[1:], str(data.dtype), data.chunks[1:] if data.chunks else None, filters)
    return layout


def _check_keys(parts: list[_Shard], ref: RunInfo, out: Path) -> None:
    total = -1 if ref.total_images is None else ref.total_images
    count = sum(p.count for p in parts)
    if count != total:
        raise InputError(f"the shards of {out} hold {count} images, their collection {total}; re-extract them.")
    keys = [k.decode("utf-8") for p in parts for k in p.keys]
    expected = ref.fingerprint_parts.get("keys_sha256")
    # Undecodable file names are stored escaped ("\\x.."), so their hash cannot match: then at least
    # no key may repeat (an image list keeps its own order, so sorted keys cannot be asked for).
    if expected and not any("\\" in k for k in keys):
        if keys_sha256(keys) != expected:
            raise InputError(f"the shards' keys of {out} are not the collection they were extracted from; re-extract.")
    elif len(set(keys)) != len(keys):
        raise InputError(f"the shards of {out} overlap (an image is in two shards); re-extract them.")


# -- writing -------------------------------------------------------------------------------


def _write(tmp: Path, parts: list[_Shard], found: shards.ShardScan, mode: str) -> int:
    """Write the merged file at `tmp`; returns compressed bytes copied (copy mode)."""
    tmp.unlink(missing_ok=True)
    ref = parts[0].file
    copied = 0
    with h5py.File(tmp, "w", libver=schema.LIBVER, locking="best-effort") as file:
        _write_attrs(file, ref, found, mode)
        _write_images(file, parts)
        _write_failures(file, parts)
        file.require_group(schema.STAGES)
        for name in schema.map_groups(ref):
            group = file.create_group(name)
            group.attrs.update(dict(ref[name].attrs))
            optional = [d for d in (schema.STAT_ARGMAX,) if all(d in p.file[name] for p in parts)]
            for dset in (schema.DATA, *schema.STAT_NAMES, *optional):
                path = f"{name}/{dset}"
                if mode == "copy":
                    copied += _copy_dataset(group, dset, parts, path)
                else:
                    _virtual_dataset(group, dset, parts, path)
            attach_dimensions(group, file[schema.KEY][:])
        merge_top_lists(file, [(p.file, p.start) for p in parts])
        file.attrs[schema.ATTR_COMPLETE] = True
    return copied


def _write_attrs(file: h5py.File, ref: h5py.File, found: shards.ShardScan, mode: str) -> None:
    for name, value in ref.attrs.items():
        if name not in _SHARD_ONLY_ATTRS:
            file.attrs[name] = value
    file.attrs[schema.ATTR_COMPLETE] = False
    file.attrs[schema.ATTR_NUM_SHARDS] = found.num_shards
    file.attrs[schema.ATTR_SHARD_START] = 0
    file.attrs[schema.ATTR_SHARD_STOP] = sum(s.images for s in found.shards)
    file.attrs[schema.ATTR_MERGED_FROM] = found.folder.name
    file.attrs[schema.ATTR_MERGE_MODE] = mode


# Per-image datasets copied row for row: (name, dtype, fill value).
_PER_IMAGE = (
    (schema.ORIG_HW, "int32", -1),
    (schema.DONE, "bool", False),
    (schema.SOURCE_SHA256, "S64", b""),
    (schema.SOURCE_SIZE, "int64", -1),
)


def _write_images(file: h5py.File, parts: list[_Shard]) -> None:
    """images/key (N,) utf-8 and every per-image dataset the shards have (orig_hw, done, source digests): copied."""
    n = sum(p.count for p in parts)
    keys = np.concatenate([p.keys for p in parts]) if n else np.array([], dtype=object)
    file.create_dataset(schema.KEY, data=keys, dtype=_STR)
    for name, dtype, fill in _PER_IMAGE:
        if name not in parts[0].file:  # files of format v1 have no source digests
            continue
        shape = (n, *parts[0].file[name].shape[1:])
        dset = file.create_dataset(name, shape=shape, dtype=dtype, fillvalue=fill)
        for p in parts:
            if p.count:
                dset[p.start : p.start + p.count] = p.file[name][:]


def _write_failures(file: h5py.File, parts: list[_Shard]) -> None:
    """failures/index (F,) int64 re-indexed to merged rows; failures/key, failures/reason (F,) utf-8."""
    index = np.concatenate([p.file[schema.FAILURE_INDEX][:] + p.start for p in parts]).astype(np.int64)
    columns = {
        schema.FAILURE_INDEX: index,
        schema.FAILURE_KEY: np.concatenate([p.file[schema.FAILURE_KEY][:] for p in parts]),
        schema.FAILURE_REASON: np.concatenate([p.file[schema.FAILURE_REASON][:] for p in parts]),
    }
    for name, values in columns.items():
        dtype = "int64" if name == schema.FAILURE_INDEX else _STR
        dset = file.create_dataset(name, shape=(len(values),), maxshape=(None,), chunks=(256,), dtype=dtype)
        if len(values):
            dset[:] = values


def _virtual_dataset(group: h5py.Group, name: str, parts: list[_Shard], path: str) -> None:
    """A VDS over the shards' `path`, row blocks in shard order, NaN (uint8: 0) where no source maps."""
    ref = parts[0].file[path]
    n = sum(p.count for p in parts)
    layout = h5py.VirtualLayout(shape=(n, *ref.shape[1:]), dtype=ref.dtype)
    for p in parts:
        if p.count:
            layout[p.start : p.start + p.count] = h5py.VirtualSource(p.source, path, shape=(p.count, *ref.shape[1:]))
    # Rows no source maps: float maps read NaN; uint8 maps q = 0, decoded to NaN through their NaN
    # statistics; integer tables (argmax) their own fill value (-1).
    fill = np.nan if ref.dtype.kind == "f" else 0 if ref.dtype.kind == "u" else ref.fillvalue
    group.create_virtual_dataset(name, layout, fillvalue=fill)


def _copy_dataset(group: h5py.Group, name: str, parts: list[_Shard], path: str) -> int:
    """Same type, filters, chunks and fill as the shards; chunks copied compressed, as they are."""
    ref = parts[0].file[path]
    n = sum(p.count for p in parts)
    space = h5py.h5s.create_simple((n, *ref.shape[1:]))
    dsid = h5py.h5d.create(group.id, name.encode(), ref.id.get_type(), space, dcpl=ref.id.get_create_plist())
    dst = h5py.Dataset(dsid)
    copied = 0
    for p in parts:
        src = p.file[path]
        if not p.count:
            continue
        if src.chunks is not None:
            copied += copy_chunks(src, dst, p.start)
        else:
            copy_rows(src, dst, p.start)
    return copied
