"""What a shard file holds and how it is laid out: the write plan, the datasets created for it,
the failures table, and the checks that decide whether an existing output can be resumed.

Only the writer calls this module (only the writer creates output files).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..config import describe_difference
from ..errors import FingerprintMismatch, InputError, OutputExistsError
from ..records import StageInfo
from . import schema
from .codecs import Codec

log = logging.getLogger(__name__)

_STR = h5py.string_dtype("utf-8")


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
    attrs["fingerprint_json"] = json.dumps(plan.fingerprint_parts, sort_keys=True)
    for name, value in plan.attrs.items():
        attrs[name] = value
    file.create_dataset(schema.KEY, data=[to_utf8(k) for k in plan.keys], dtype=_STR)
    file.create_dataset(schema.ORIG_HW, shape=(n, 2), dtype="int32", fillvalue=-1)
    file.create_dataset(schema.DONE, shape=(n,), dtype="bool", fillvalue=False)
    for name in (schema.FAILURE_INDEX, schema.FAILURE_KEY, schema.FAILURE_REASON):
        dtype = "int64" if name == schema.FAILURE_INDEX else _STR
        file.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(256,), dtype=dtype)
    codec = Codec(plan.compression)
    for info in plan.stages:
        _create_stage(file, info, n, plan.dtype, codec)


def _create_stage(file: h5py.File, info: StageInfo, n: int, dtype: str, codec: Codec) -> None:
    group = file.create_group(schema.stage_group(info.index))
    for name, value in (
        ("index", info.index),
        ("module", info.module),
        ("channels", info.channels),
        ("stride", info.stride),
        ("height", info.height),
        ("width", info.width),
        ("capture", info.capture),
        ("layout", "NCHW"),
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
        fillvalue=np.nan,
        **codec.dataset_options(),
    )
    for name in schema.STAT_NAMES:
        group.create_dataset(name, shape=(n, info.channels), dtype="float32", fillvalue=np.nan)


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


def _stored_parts(file: h5py.File) -> dict:
    try:
        return json.loads(file.attrs.get("fingerprint_json", "{}"))
    except (TypeError, ValueError):
        return {}


def check_resumable(file: h5py.File, path: Path, plan: WritePlan) -> None:
    if file.attrs.get(schema.ATTR_FORMAT) != schema.FORMAT:
        file.close()
        raise InputError(f"{path} exists but is not an fmpipe file; move it away or pass --overwrite.")
    if file.attrs.get(schema.ATTR_FINGERPRINT) != plan.fingerprint:
        diff = describe_difference(_stored_parts(file), plan.fingerprint_parts)
        file.close()
        raise FingerprintMismatch(
            f"{path} was started with a different configuration ({diff}). Rerun with the "
            "original options to resume it, or pass --overwrite to start over."
        )


def check_finished(out: Path, plan: WritePlan) -> None:
    try:
        with h5py.File(out, "r", locking="best-effort") as file:
            same = file.attrs.get(schema.ATTR_FINGERPRINT) == plan.fingerprint and bool(
                file.attrs.get(schema.ATTR_COMPLETE)
            )
            diff = describe_difference(_stored_parts(file), plan.fingerprint_parts)
    except OSError:
        same, diff = False, "it is not a readable HDF5 file"
    if not same:
        raise OutputExistsError(
            f"{out} already exists ({diff}); pass --overwrite to replace it, or choose another output path."
        )
    log.info("%s is already complete with this configuration; nothing to do", out)
