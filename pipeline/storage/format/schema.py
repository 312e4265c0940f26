"""The one place that names the HDF5 file's groups, datasets and attributes (schema v2).

`docs/format.md` documents every name defined here. The paths of the stage and layer groups
come from `pipeline/groups.py` (shared, so that `records` names them alike) and are re-exported.
"""

from __future__ import annotations

import math

# The group paths of stages and layers are named below storage, where records.StageInfo.group
# uses them too; re-exported here.
from ...groups import LAYERS, STAGES, group_label, group_of, layer_group, stage_group  # noqa: F401

FORMAT = "fmpipe"
FORMAT_VERSION = 2
# Versions this fmpipe reads. v1 files lack the per-row source digests and chunk checksums.
READABLE_VERSIONS = (1, 2)
# A file still being written ends in this (OUT.partial, a shard's .h5.partial); renamed away when complete.
PARTIAL_SUFFIX = ".partial"

# Groups and datasets.
IMAGES = "images"
KEY = "images/key"  # (N,) utf-8 str, sorted relative POSIX paths
ORIG_HW = "images/orig_hw"  # (N, 2) int32, height and width before resizing
DONE = "images/done"  # (N,) bool, set after the row's batch is written and flushed
SOURCE_SHA256 = "images/source_sha256"  # (N,) 64-byte ASCII hex sha256 of the source file's bytes ("" if unread)
SOURCE_SIZE = "images/source_size"  # (N,) int64 bytes of the source file (-1 if unread)
FAILURES = "failures"
FAILURE_INDEX = "failures/index"  # (F,) int64 row in images/key
FAILURE_KEY = "failures/key"  # (F,) utf-8 str
FAILURE_REASON = "failures/reason"  # (F,) utf-8 str
# stages/<i> and layers/<name>: their paths are named in pipeline/groups.py (records needs them too).

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
ATTR_FINGERPRINT_JSON = "fingerprint_json"  # the parts the fingerprint hashes, as canonical JSON
ATTR_FMPIPE_VERSION = "fmpipe_version"
ATTR_CREATED = "created"  # ISO 8601 UTC time the file was created
ATTR_MODEL = "model"
ATTR_WEIGHTS = "weights"  # where the weights came from (package, file name + file sha256, hub tag, seed)
ATTR_WEIGHTS_SHA256 = "weights_sha256"  # sha256 of the state dict actually loaded (names, dtypes, shapes, bytes)
ATTR_INPUT_SIZE = "input_size"  # [H, W] the model saw
ATTR_MEAN = "mean"
ATTR_STD = "std"
ATTR_RESIZE_POLICY = "resize_policy"
ATTR_DTYPE = "dtype"  # float16, float32 or uint8 (scaled per image and channel by min and max)
ATTR_KEEP_BITS = "keep_bits"  # mantissa bits kept by rounding (0: all); absent in older files
ATTR_SHUFFLE = "shuffle"  # bool: HDF5's byte shuffle filter before compression
ATTR_POOL = "pool"  # [H, W]: maps adaptively average-pooled to at most this; absent: not pooled
ATTR_COMPRESSION = "compression"
ATTR_CHUNK_CHECKSUM = "chunk_checksum"  # what protects each data chunk: "zstd-xxh64", "zlib-adler32", "fletcher32"
ATTR_AMP = "amp"
ATTR_SHARD_START = "shard_start"  # row of this file's first image in the whole collection
ATTR_SHARD_STOP = "shard_stop"  # one past the row of its last image
ATTR_TOTAL_IMAGES = "total_images"  # images in the whole collection
ATTR_IMAGES_ROOT = "images_root"  # absolute folder the keys are relative to, at extraction

# Per-stage group attributes, on stages/<i>/.
ATTR_STAGE_INDEX = "index"
ATTR_STAGE_MODULE = "module"
ATTR_CHANNELS = "channels"
ATTR_STRIDE = "stride"
ATTR_HEIGHT = "height"
ATTR_WIDTH = "width"
ATTR_CAPTURE = "capture"  # "forward_intermediates" or "forward_hook"
ATTR_LAYOUT = "layout"  # always "NCHW"

# Per-stage datasets, below stages/<i>/.
DATA = "data"  # (N, C, H, W) float16, float32 or uint8, chunks (1, k, H, W); storage/format/encoding.py decodes it
STAT_MIN = "min"  # (N, C) float32
STAT_MAX = "max"  # (N, C) float32
STAT_MEAN = "mean"  # (N, C) float32
STAT_NAMES = (STAT_MIN, STAT_MAX, STAT_MEAN)
# (N, C) int32: where each map's maximum lies, y * W + x (first one on ties); -1 for unwritten and
# failed rows. Files written before it lack it (crops of dataset examples need it).
STAT_ARGMAX = "argmax"
# Dimension scales in every stage group (storage/format/dims.py): xarray's dimension names and coordinates.
DIM_IMAGE = "image"  # (N,) utf-8 str, the keys (a copy of images/key)
DIM_CHANNEL = "channel"  # (C,) int32 0..C-1
DIM_Y = "y"  # (H,) int32 0..H-1, map rows
DIM_X = "x"  # (W,) int32 0..W-1, map columns
DIMS = (DIM_IMAGE, DIM_CHANNEL, DIM_Y, DIM_X)  # the axes of data, in order
# stages/<i>/top/: per-channel top lists (storage/reading/toplists.py). For by in ("max", "mean"):
# {by}_rows (C, k) int64 and {by}_values (C, k) float32, best first, -1/NaN padded;
# {by}_response (C,) float32, the channel's mean over images of their per-image {by};
# {by}_counts (C,) int64, the images that mean is over.
TOP = "top"
ATTR_TOP_K = "k"  # entries per channel
ATTR_TOP_ROWS = "rows"  # images the lists were computed over (done, not failed)

# The seal (storage/integrity/seal.py): a digest of every part a reader relies on, written at finalise and merge.
SEAL = "seal"
SEAL_ITEM = "seal/item"  # (M,) utf-8 str: what each digest covers ("images/key", "attr:model", ...)
SEAL_SHA256 = "seal/sha256"  # (M,) 64-byte ASCII hex sha256 of that item
ATTR_SEAL = "seal_sha256"  # root attribute: sha256 of the item table, the file's one digest
SHARD_ITEM = "shard:"  # merged (virtual) files: "shard:<source>" → that shard's seal_sha256
# Not sealed: the seal itself; what differs per run; where the images were (they may move, and
# their content is pinned by the per-row source digests, which are sealed).
UNSEALED_ATTRS = (ATTR_SEAL, ATTR_CREATED, ATTR_TIMINGS, ATTR_IMAGES_ROOT)

# Chunking: one image and a block of k channels, about CHUNK_TARGET_BYTES.
CHUNK_TARGET_BYTES = 512 * 1024

# Files older tools can open (docs/hdf5.md: libver latest broke HDF5 1.10 readers).
LIBVER = ("earliest", "v110")


def text(value: bytes | str) -> str:
    """A string as stored (h5py gives utf-8 bytes for keys, reasons and attributes) as str."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def map_groups(file) -> list[str]:
    """Every stored map group of an open file: the stages in index order, then the layers."""
    stages = sorted(file[STAGES], key=int) if STAGES in file else []
    layers = list(file[LAYERS]) if LAYERS in file else []
    layers.sort(key=lambda n: int(file[layer_group(n)].attrs.get(ATTR_STAGE_INDEX, 0)))
    return [stage_group(int(s)) for s in stages] + [layer_group(n) for n in layers]


def chunk_channels(channels: int, height: int, width: int, itemsize: int) -> int:
    """Channels per chunk k for a (1, k, H, W) chunk of about CHUNK_TARGET_BYTES.

    k is spread evenly over the channels so that the edge chunk is as full as possible.
    """
    per_channel = max(1, height * width * itemsize)
    k = max(1, min(channels, CHUNK_TARGET_BYTES // per_channel))
    blocks = math.ceil(channels / k)
    return math.ceil(channels / blocks)
