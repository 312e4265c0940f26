"""What a shard file holds and how it is laid out: the write plan, the datasets created for it,
the failures table, and the checks that decide whether an existing output can be resumed.

Only storage's writing side (`writer`, `output`, `rowstate`, `batches`) changes files through it
(only the writer creates output files); extract's `--dry-run` reads `planned_bytes`, which
creates nothing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ...errors import FingerprintMismatch, InputError, OutputExistsError
from ...records import StageInfo
from ..format import identity, schema
from ..format.codecs import Codec
from ..format.dims import attach_dimensions
from ..format.encoding import Encoding
from ..format.metadata import RunInfo
from ..format.structure import check_fmpipe, open_hdf5
from ..reading.toplists import TOP_K

log = logging.getLogger(__name__)

_STR = h5py.string_dtype("utf-8")
KEY_BLOCK = 65536  # keys compared per step when checking a file's rows against a plan


@dataclass(frozen=True)
class WritePlan:
    """What a shard file holds: its keys, stages, storage and identifying metadata."""

    keys: list[str]
    stages: list[StageInfo]
    dtype: str
    compression: str
    fingerprint: str
    fingerprint_parts: dict
    attrs: dict = field(default_factory=dict)
    start: int = 0  # row of the first key in the whole collection (a shard's offset)
    encoding: Encoding | None = None  # storage dtype, mantissa rounding, byte shuffle, pooling (None: plain dtype)

    def __post_init__(self) -> None:
        if self.encoding is None:
            object.__setattr__(self, "encoding", Encoding(self.dtype))
        if self.encoding.dtype != self.dtype:
            raise ValueError(f"a plan of {self.dtype} maps with an encoding of {self.encoding.dtype}")

    @property
    def codec(self) -> Codec:
        """How each chunk is compressed (byte-shuffled first when the encoding says so)."""
        return Codec(self.compression, self.encoding.itemsize if self.encoding.shuffle else 0)


def to_utf8(text: str) -> str:
    """Keys from non-UTF-8 file names (surrogate escapes) stored readably, never crashing."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def create_layout(file: h5py.File, plan: WritePlan) -> None:
    n = len(plan.keys)
    attrs = file.attrs
    attrs[schema.ATTR_FORMAT] = schema.FORMAT
    attrs[schema.ATTR_FORMAT_VERSION] = schema.FORMAT_VERSION
    attrs[schema.ATTR_COMPLETE] = False
    attrs[schema.ATTR_FINGERPRINT] = plan.fingerprint
    attrs[schema.ATTR_FINGERPRINT_JSON] = json.dumps(identity.canonical(plan.fingerprint_parts), sort_keys=True)
    attrs[schema.ATTR_CHUNK_CHECKSUM] = plan.codec.checksum
    for name, value in plan.attrs.items():
        attrs[name] = value
    file.create_dataset(schema.KEY, data=[to_utf8(k) for k in plan.keys], dtype=_STR)
    file.create_dataset(schema.ORIG_HW, shape=(n, 2), dtype="int32", fillvalue=-1)
    file.create_dataset(schema.DONE, shape=(n,), dtype="bool", fillvalue=False)
    file.create_dataset(schema.SOURCE_SHA256, shape=(n,), dtype="S64", fillvalue=b"")
    file.create_dataset(schema.SOURCE_SIZE, shape=(n,), dtype="int64", fillvalue=-1)
    for name in (schema.FAILURE_INDEX, schema.FAILURE_KEY, schema.FAILURE_REASON):
        dtype = "int64" if name == schema.FAILURE_INDEX else _STR
        file.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(256,), dtype=dtype)
    codec = plan.codec
    keys = file[schema.KEY][:]
    file.require_group(schema.STAGES)
    for info in plan.stages:
        _create_stage(file, info, n, plan.encoding.dtype, codec)
        attach_dimensions(file[info.group], keys)


def _create_stage(file: h5py.File, info: StageInfo, n: int, dtype: str, codec: Codec) -> None:
    group = file.create_group(info.group)
    for name, value in (
        (schema.ATTR_STAGE_INDEX, info.index),
        (schema.ATTR_STAGE_MODULE, info.module),
        (schema.ATTR_CHANNELS, info.channels),
        (schema.ATTR_STRIDE, info.stride),
        (schema.ATTR_HEIGHT, info.height),
        (schema.ATTR_WIDTH, info.width),
        (schema.ATTR_CAPTURE, info.capture),
        (schema.ATTR_LAYOUT, "NCHW"),
    ):
        group.attrs[name] = value
    itemsize = np.dtype(dtype).itemsize
    k = schema.chunk_channels(info.channels, info.height, info.width, itemsize)
    group.create_dataset(
        schema.DATA,
        shape=(n, info.channels, info.height, info.width),
        # An empty shard (more shards than images) still needs room for one chunk row.
        maxshape=(max(n, 1), info.channels, info.height, info.width),
        dtype=dtype,
        chunks=(1, k, info.height, info.width),
        # uint8 rows without maps read as q = 0, which decodes to NaN through their NaN statistics.
        fillvalue=0 if np.dtype(dtype).kind == "u" else np.nan,
        **codec.dataset_options(),
    )
    for name in schema.STAT_NAMES:
        group.create_dataset(name, shape=(n, info.channels), dtype="float32", fillvalue=np.nan)
    group.create_dataset(schema.STAT_ARGMAX, shape=(n, info.channels), dtype="int32", fillvalue=-1)


# Per image beside the maps: key (+ its copy per stage), orig_hw 8, done 1, source_sha256 64, source_size 8.
_ROW_BYTES = 8 + 1 + 64 + 8


def planned_bytes(plan: WritePlan) -> tuple[int, int]:
    """(maps, everything else) in bytes a complete file of this plan holds before compression:
    the maps at the storage dtype; the keys (once, and again as every stage's `image` axis), the
    per-image tables, the statistics (3 float32 per image and channel) and the top lists."""
    n, itemsize = len(plan.keys), plan.encoding.itemsize
    key_bytes = sum(len(k.encode("utf-8", "surrogateescape")) + 16 for k in plan.keys)  # + HDF5's vlen record
    maps = n * sum(s.nbytes(itemsize) for s in plan.stages)
    other = key_bytes + n * _ROW_BYTES
    k = max(1, min(TOP_K, n))
    for s in plan.stages:
        other += key_bytes + n * s.channels * 3 * 4  # the `image` axis, min/max/mean
        other += 2 * s.channels * (k * (8 + 4) + 4 + 8)  # top lists by max and mean
    return maps, other


def append_failures(file: h5py.File, keys: list[str], failures: list[tuple[int, str]]) -> None:
    rows = [row for row, _ in failures]
    new = {
        schema.FAILURE_INDEX: np.asarray(rows, dtype=np.int64),
        schema.FAILURE_KEY: [to_utf8(keys[r]) for r in rows],
        schema.FAILURE_REASON: [to_utf8(reason) for _, reason in failures],
    }
    for name, values in new.items():
        dset = file[name]
        start = dset.shape[0]
        dset.resize((start + len(rows),))
        dset[start:] = values


def drop_unfinished_failures(file: h5py.File) -> None:
    """Forget failures listed by a batch that was killed before its done markers: it is redone."""
    index = file[schema.FAILURE_INDEX][:]
    keep = file[schema.DONE][:][index]
    if keep.all():
        return
    for name in (schema.FAILURE_INDEX, schema.FAILURE_KEY, schema.FAILURE_REASON):
        dset = file[name]
        values = dset[:][keep]
        dset.resize((len(values),))
        if len(values):
            dset[:] = values
    file.flush()


def check_resumable(file: h5py.File, path: Path, plan: WritePlan) -> None:
    """Raise before anything is written unless `file` holds exactly this plan's rows: same
    fingerprint (model, weights, stages, size, ...), same keys in the same rows, same range of
    the collection. Every row resumed then provably belongs to its key."""
    try:
        run = check_fmpipe(path, file)
    except InputError as err:
        raise InputError(f"{err} Move it away, or pass --overwrite to start this output over.") from None
    done = int(np.count_nonzero(file[schema.DONE][:]))
    if run.fingerprint != plan.fingerprint:
        raise FingerprintMismatch(_mismatch(path, run.fingerprint_parts, plan, done))
    problem = _rows_problem(file, run, plan)
    if problem:
        raise FingerprintMismatch(
            f"{path} cannot be resumed by this run: {problem}. Rerun the command that started it, "
            f"or pass --overwrite to start over (discarding its {done} done images)."
        )


def check_finished(out: Path, plan: WritePlan) -> None:
    """Return when `out` is complete and holds exactly this plan's rows; raise otherwise."""
    try:
        with open_hdf5(out, locking=False) as file:
            run = check_fmpipe(out, file)
            same = run.fingerprint == plan.fingerprint
            problem = _rows_problem(file, run, plan) if same else None
            complete = run.complete and bool(file[schema.DONE][:].all())
    except InputError as err:
        raise OutputExistsError(
            f"{err} It already exists: pass --overwrite to replace it, or choose another output path."
        ) from None
    except (OSError, KeyError) as err:
        raise OutputExistsError(
            f"{out} already exists but is not a readable fmpipe file ({err}); pass --overwrite to replace it, "
            "or choose another output path."
        ) from None
    if not same:
        found = identity.differences(run.fingerprint_parts, plan.fingerprint_parts)
        raise OutputExistsError(
            f"{out} already exists, made with {'; '.join(map(str, found)) or 'another configuration'}; pass "
            "--overwrite to replace it, or choose another output path."
        )
    if problem or not complete:
        raise OutputExistsError(
            f"{out} already exists but {problem or 'is not complete'}; pass --overwrite to replace it, "
            "or choose another output path."
        )
    log.info("%s is already complete with this configuration and these images; nothing to do", out)


def _mismatch(path: Path, stored: dict, plan: WritePlan, done: int) -> str:
    found = identity.differences(stored, plan.fingerprint_parts)
    what = "; ".join(map(str, found)) or "another configuration"
    hint = identity.rerun_hint(found)
    again = f"rerun with {hint} to resume it" if hint else "rerun the command that started it to resume it"
    return (
        f"{path} was started with {what}. To keep its {done} done images, {again}; or pass --overwrite to start over."
    )


def _rows_problem(file: h5py.File, run: RunInfo, plan: WritePlan) -> str | None:
    """Why the stored rows are not this plan's rows (None when they are)."""
    if run.shard_start != plan.start:
        return f"it holds images {run.shard_start}.. of the collection, this shard starts at image {plan.start}"
    stored = file[schema.KEY]
    if stored.shape != (len(plan.keys),):
        return f"it holds {stored.shape[0]} images, this shard has {len(plan.keys)}"
    for lo in range(0, len(plan.keys), KEY_BLOCK):
        got = [schema.text(k) for k in stored[lo : lo + KEY_BLOCK]]
        want = [to_utf8(k) for k in plan.keys[lo : lo + KEY_BLOCK]]
        if got != want:
            at = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
            return f"its row {lo + at} is {got[at]!r}, this run's is {want[at]!r}"
    return None
