"""A typed view of a file's run metadata (its root attributes), so readers never index raw
attribute strings: `store.run.input_size`, `store.run.images_root`. No torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

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
    config: dict = field(default_factory=dict)  # the extract configuration (JSON)
    fingerprint_parts: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    @property
    def merged(self) -> bool:
        return self.merged_from is not None


def run_info(attrs: Mapping) -> RunInfo:
    """Parse a file's root attributes (an h5py AttributeManager or a dict)."""

    def text(name: str) -> str | None:
        value = attrs.get(name)
        return None if value is None else schema.text(value)

    def integer(name: str) -> int | None:
        value = attrs.get(name)
        return None if value is None else int(value)

    def floats(name: str) -> tuple[float, ...] | None:
        value = attrs.get(name)
        return None if value is None else tuple(float(v) for v in value)

    size = attrs.get(schema.ATTR_INPUT_SIZE)
    return RunInfo(
        format_version=integer(schema.ATTR_FORMAT_VERSION),
        fmpipe_version=text(schema.ATTR_FMPIPE_VERSION),
        created=text(schema.ATTR_CREATED),
        complete=bool(attrs.get(schema.ATTR_COMPLETE, False)),
        model=text(schema.ATTR_MODEL),
        weights=text(schema.ATTR_WEIGHTS),
        weights_sha256=text(schema.ATTR_WEIGHTS_SHA256),
        input_size=None if size is None else (int(size[0]), int(size[1])),
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
        config=_json(text(schema.ATTR_CONFIG)),
        fingerprint_parts=_json(text(schema.ATTR_FINGERPRINT_JSON)),
        timings=_json(text(schema.ATTR_TIMINGS)),
    )


def _json(text: str | None) -> dict:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
