"""The one place that names the HDF5 file's groups, datasets and attributes (schema v1).

`docs/format.md` documents every name defined here.
"""

from __future__ import annotations

import math

FORMAT = "fmpipe"
FORMAT_VERSION = 1

# Groups and datasets.
IMAGES = "images"
KEY = "images/key"  # (N,) utf-8 str, sorted relative POSIX paths
ORIG_HW = "images/orig_hw"  # (N, 2) int32, height and width before resizing
DONE = "images/done"  # (N,) bool, set after the row's batch is written and flushed
FAILURES = "failures"
FAILURE_INDEX = "failures/index"  # (F,) int64 row in images/key
FAILURE_KEY = "failures/key"  # (F,) utf-8 str
FAILURE_REASON = "failures/reason"  # (F,) utf-8 str
STAGES = "stages"

# Root attributes.
ATTR_FORMAT = "format"
ATTR_FORMAT_VERSION = "format_version"
ATTR_COMPLETE = "complete"
ATTR_FINGERPRINT = "fingerprint"
ATTR_CONFIG = "config_json"
ATTR_SHARD_INDEX = "shard_index"
ATTR_NUM_SHARDS = "num_shards"
ATTR_TIMINGS = "timings_json"
ATTR_MERGED_FROM = "merged_from"  # merged files only: the shards folder, relative to the file
ATTR_MERGE_MODE = "merge_mode"  # merged files only: "virtual" (VDS over the shards) or "copy"

# Per-stage datasets, below stages/<i>/.
DATA = "data"  # (N, C, H, W) float16 (or float32), chunks (1, k, H, W)
STAT_MIN = "min"  # (N, C) float32
STAT_MAX = "max"  # (N, C) float32
STAT_MEAN = "mean"  # (N, C) float32
STAT_NAMES = (STAT_MIN, STAT_MAX, STAT_MEAN)

# Chunking: one image and a block of k channels, about CHUNK_TARGET_BYTES.
CHUNK_TARGET_BYTES = 512 * 1024

# Files older tools can open (notes/hdf5.md: libver latest broke HDF5 1.10 readers).
LIBVER = ("earliest", "v110")


def stage_group(index: int) -> str:
    """Group path of stage `index` (0-based, in the model's own order)."""
    return f"{STAGES}/{index}"


def chunk_channels(channels: int, height: int, width: int, itemsize: int) -> int:
    """Channels per chunk k for a (1, k, H, W) chunk of about CHUNK_TARGET_BYTES.

    k is spread evenly over the channels so that the edge chunk is as full as possible.
    """
    per_channel = max(1, height * width * itemsize)
    k = max(1, min(channels, CHUNK_TARGET_BYTES // per_channel))
    blocks = math.ceil(channels / k)
    return math.ceil(channels / blocks)
