"""The one reader of what a file's root attributes mean: `RunInfo` (`store.run`), a typed view of
the run that wrote the file. A malformed attribute (bad JSON, a count that is not an integer) is
an InputError naming it, never read as empty. No torch.

What that promises, exactly:
- Code that reads a root attribute for its meaning reads it through `run_info`, or through
  `encoding.encoding_of` for the storage choice (dtype, keep_bits, shuffle, pool), which sits
  beside `Encoding.attrs`, the code that writes it. `Store`, verify and merge open a file
  through `structure.check_structure`, which parses them all here first: a damaged attribute
  stops the open, whichever one a reader wants.
- Not reads in this sense: writing attributes (the writer's job: `extraction/planning.py` builds
  them, `storage/writing/layout.py`, `seal.py`, `toplists.py` and `jobs/merge.py` write them); taking
  them as bytes without reading a meaning (the seal hashes every attribute, `export` copies them).
- Not root attributes: a stage's or layer's group attributes (index, module, shape) and a top
  list's (k, rows) are read by the modules that own those groups, by schema names.
- One raw read on purpose: `structure.check_fmpipe` reads the `format` attribute (is this an
  fmpipe file at all?) before it lets `run_info` parse the rest.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field

from ...errors import InputError
from . import schema


@dataclass(frozen=True)
class RunInfo:
    """What the root attributes say about the run that wrote a file (missing ones are None)."""

    format_version: int | None
    fmpipe_version: str | None
    created: str | None
    complete: bool
    model: str | None
    weights: str | None
    weights_sha256: str | None
    input_size: tuple[int, int] | None  # (H, W) every image was resized to
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    resize_policy: str | None
    dtype: str | None
    compression: str | None
    chunk_checksum: str | None  # None for files written before checksums (format v1)
    amp: bool
    shard_index: int | None
    num_shards: int
    shard_start: int
    shard_stop: int | None
    total_images: int | None
    images_root: str | None
    fingerprint: str | None
    merged_from: str | None  # merged files: the shards folder, relative to the file
    merge_mode: str | None  # merged files: "virtual" or "copy"
    seal_sha256: str | None  # the seal's one digest (None: never sealed, e.g. a partial file)
    config: dict = field(default_factory=dict)  # the extract configuration (JSON)
    fingerprint_parts: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    @property
    def merged(self) -> bool:
        return self.merged_from is not None


def run_info(attrs: Mapping, path: object = None) -> RunInfo:
    """Parse a file's root attributes (an h5py AttributeManager or a dict) read from `path`.

    A missing attribute is None (or its default); a malformed one (a JSON attribute that is not a
    JSON object, a count that is not an integer) is an InputError naming the attribute, never
    read as empty.
    """

    def checked(name: str, parse):
        value = attrs.get(name)
        if value is None:
            return None
        try:
            return parse(value)
        except (TypeError, ValueError, IndexError) as err:
            where = f"{path}: " if path is not None else ""
            raise InputError(
                f"{where}the root attribute {name!r} is malformed ({_short(value)}: {err}); the file was "
                "damaged or edited after fmpipe wrote it: restore it from a copy or extract it again."
            ) from None

    def text(name: str) -> str | None:
        return checked(name, schema.text)

    def integer(name: str) -> int | None:
        return checked(name, _integer)

    def floats(name: str) -> tuple[float, ...] | None:
        return checked(name, lambda value: tuple(float(v) for v in value))

    def mapping(name: str) -> dict:
        return checked(name, lambda value: _json_object(schema.text(value))) or {}

    size = checked(schema.ATTR_INPUT_SIZE, lambda value: (_integer(value[0]), _integer(value[1])))
    return RunInfo(
        format_version=integer(schema.ATTR_FORMAT_VERSION),
        fmpipe_version=text(schema.ATTR_FMPIPE_VERSION),
        created=text(schema.ATTR_CREATED),
        complete=bool(attrs.get(schema.ATTR_COMPLETE, False)),
        model=text(schema.ATTR_MODEL),
        weights=text(schema.ATTR_WEIGHTS),
        weights_sha256=text(schema.ATTR_WEIGHTS_SHA256),
        input_size=size,
        mean=floats(schema.ATTR_MEAN),
        std=floats(schema.ATTR_STD),
        resize_policy=text(schema.ATTR_RESIZE_POLICY),
        dtype=text(schema.ATTR_DTYPE),
        compression=text(schema.ATTR_COMPRESSION),
        chunk_checksum=text(schema.ATTR_CHUNK_CHECKSUM),
        amp=bool(attrs.get(schema.ATTR_AMP, False)),
        shard_index=integer(schema.ATTR_SHARD_INDEX),
        num_shards=integer(schema.ATTR_NUM_SHARDS) or 1,
        shard_start=integer(schema.ATTR_SHARD_START) or 0,
        shard_stop=integer(schema.ATTR_SHARD_STOP),
        total_images=integer(schema.ATTR_TOTAL_IMAGES),
        images_root=text(schema.ATTR_IMAGES_ROOT),
        fingerprint=text(schema.ATTR_FINGERPRINT),
        merged_from=text(schema.ATTR_MERGED_FROM),
        merge_mode=text(schema.ATTR_MERGE_MODE),
        seal_sha256=text(schema.ATTR_SEAL),
        config=mapping(schema.ATTR_CONFIG),
        fingerprint_parts=mapping(schema.ATTR_FINGERPRINT_JSON),
        timings=mapping(schema.ATTR_TIMINGS),
    )


def _integer(value) -> int:
    """An integer attribute (a numpy or Python int, its text, or an integral float); else a ValueError."""
    try:
        return operator.index(value)
    except TypeError:
        pass
    if isinstance(value, str | bytes):
        return int(value)
    number = float(value)
    if not number.is_integer():
        raise ValueError("not an integer")
    return int(number)


def _json_object(text: str) -> dict:
    """A JSON object attribute; invalid JSON or another JSON value is a ValueError."""
    value = json.loads(text)  # json.JSONDecodeError is a ValueError
    if not isinstance(value, dict):
        raise ValueError(f"a JSON {type(value).__name__}, not an object")
    return value


def _short(value) -> str:
    text = repr(schema.text(value) if isinstance(value, bytes) else value)
    return text if len(text) <= 60 else f"{text[:57]}..."
