"""A shard's write plan: its rows of the collection, and its identity (the fingerprint of what
changes the stored maps, and the file attributes that repeat it, from one source).
"""

from __future__ import annotations

import datetime as dt

from .. import sources
from ..config import RESIZE_POLICY, ExtractConfig
from ..records import StageInfo
from ..storage.format import schema
from ..storage.format.encoding import Encoding
from ..storage.format.identity import fingerprint
from ..storage.writing.writer import WritePlan
from ..version import __version__
from .models import ResolvedModel


def plan_shard(
    config: ExtractConfig,
    model: ResolvedModel,
    size_hw: tuple[int, int],
    stages: list[StageInfo],
    collection: sources.Collection,
) -> WritePlan:
    """The shard's rows and identity. The fingerprint holds everything that changes the stored
    maps (or the file's layout), the collection's keys in row order among them; the file's
    attributes repeat those parts under schema names."""
    all_keys = collection.keys
    start, stop = sources.shard_bounds(len(all_keys), config.shard_index, config.num_shards)
    keys = all_keys[start:stop]
    parts = {
        "model": config.model,
        "weights_sha256": model.weights_sha256,
        "stages": [[s.index, s.module, s.channels, s.height, s.width] for s in stages if s.layer is None],
        "size": list(size_hw),
        "mean": list(model.mean),
        "std": list(model.std),
        "resize": RESIZE_POLICY,
        "dtype": config.dtype,
        "compression": config.compression,
        "amp": config.amp,
        "keys_sha256": collection.keys_sha256,
        "num_keys": len(all_keys),
        "format_version": schema.FORMAT_VERSION,
    }
    layers = [[s.layer, s.channels, s.height, s.width] for s in stages if s.layer is not None]
    if layers:  # only then: files without layers keep the fingerprint they always had
        parts["layers"] = layers
    encoding = storage_encoding(config)
    # Only when chosen, likewise; --shuffle changes no value but every chunk's bytes: a resume must match it.
    for part, value in (("keep_bits", encoding.keep_bits), ("pool", encoding.pool), ("shuffle", encoding.shuffle)):
        if value:
            parts[part] = list(value) if isinstance(value, tuple) else value
    attrs = {attr: parts[part] for attr, part in _ATTRS_FROM_PARTS.items()}
    attrs.update(encoding.attrs())
    attrs.update(
        {
            schema.ATTR_FMPIPE_VERSION: __version__,
            schema.ATTR_CREATED: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            schema.ATTR_WEIGHTS: model.weights_id,
            schema.ATTR_CONFIG: config.to_json(),
            schema.ATTR_SHARD_INDEX: config.shard_index,
            schema.ATTR_NUM_SHARDS: config.num_shards,
            schema.ATTR_SHARD_START: start,
            schema.ATTR_SHARD_STOP: start + len(keys),
            schema.ATTR_TOTAL_IMAGES: len(all_keys),
            schema.ATTR_IMAGES_ROOT: collection.root,
        }
    )
    return WritePlan(keys, stages, config.dtype, config.compression, fingerprint(parts), parts, attrs, start, encoding)


def storage_encoding(config: ExtractConfig) -> Encoding:
    """The storage choice of a run's options (`--shuffle auto` resolved)."""
    return Encoding(config.dtype, config.keep_bits, config.shuffled, config.pool)


# File attributes that repeat a fingerprint part (one source for both).
_ATTRS_FROM_PARTS = {
    schema.ATTR_MODEL: "model",
    schema.ATTR_WEIGHTS_SHA256: "weights_sha256",
    schema.ATTR_INPUT_SIZE: "size",
    schema.ATTR_MEAN: "mean",
    schema.ATTR_STD: "std",
    schema.ATTR_RESIZE_POLICY: "resize",
    schema.ATTR_DTYPE: "dtype",
    schema.ATTR_COMPRESSION: "compression",
    schema.ATTR_AMP: "amp",
}
